"""Publishing recorded rows as `metric_record` messages once they are durable (the outbox).

`Store.flush` makes rows durable (CSV fsynced, SQLite committed) and queues them in
`store.outbox`; this task publishes them with confirms, then marks where the confirmed rows end
in the CSV. Rows flushed but not confirmed when the process dies are read back from the CSV on
start-up and published again: a consumer may see a row twice (same message id), never not at all.
The inputs' acks do not wait for these publishes: the row is the effect, the message its echo.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from opentelemetry.trace import SpanContext

from services.common.broker import Broker
from services.common.messages import Outgoing
from services.metric.store import Store

MAX_BATCHES = 64  # flushed batches per publish, so one publish stays a bounded size


async def publish_forever(store: Store, broker: Broker, ready: asyncio.Event) -> None:
    while True:
        await ready.wait()
        ready.clear()
        while store.outbox:
            # Everything waiting goes in one publish (one network write, confirms awaited once):
            # a batch at a time fell behind the flushes at full speed and the outbox grew.
            batches = list(itertools.islice(store.outbox, MAX_BATCHES))
            rows = [row for batch, _ in batches for row in batch]
            await broker.publish(
                *(Outgoing("metric_record", row) for row, _ in rows),
                parents=[_valid(span) for _, span in rows],
            )
            for _ in batches:
                store.outbox.popleft()
            store.mark_published(batches[-1][1])


async def drained(store: Store) -> None:
    """Return once every flushed row is confirmed (the broker awaits this on a clean stop)."""
    while store.outbox:
        await asyncio.sleep(0.02)


def _valid(span: Any) -> SpanContext | None:
    return span if isinstance(span, SpanContext) and span.is_valid else None
