"""Publishing recorded rows as `metric_record` messages once they are durable (the outbox).

`Store.flush` makes rows durable (CSV fsynced, SQLite committed) and queues them in
`store.outbox`; this task publishes them with confirms, then marks where the confirmed rows end
in the CSV. Rows flushed but not confirmed when the process dies are read back from the CSV on
start-up and published again: a consumer may see a row twice (same message id), never not at all.
The inputs' acks do not wait for these publishes: the row is the effect, the message its echo.
"""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext

from services.common.broker import Broker
from services.common.messages import Outgoing
from services.metric.store import Store


async def publish_forever(store: Store, broker: Broker, ready: asyncio.Event) -> None:
    while True:
        await ready.wait()
        ready.clear()
        while store.outbox:
            rows, end = store.outbox[0]
            await asyncio.gather(*(_publish(broker, row, ctx) for row, ctx in rows))
            store.outbox.popleft()
            store.mark_published(end)


async def drained(store: Store) -> None:
    """Return once every flushed row is confirmed (the broker awaits this on a clean stop)."""
    while store.outbox:
        await asyncio.sleep(0.02)


async def _publish(broker: Broker, row: dict, span: Any) -> None:
    # Each row goes out in its own trace (under its "record error" span) where it has one.
    token = None
    if isinstance(span, SpanContext) and span.is_valid:
        token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(span)))
    try:
        await broker.publish(Outgoing("metric_record", row))
    finally:
        if token is not None:
            otel_context.detach(token)
