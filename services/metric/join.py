"""Applies the handler's decisions to the store; called by the broker loop and the sweeper."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, TraceFlags

from observability import attributes as attr
from observability import tracer
from services.common.contracts import Contracts
from services.common.messages import Message, Outgoing, utc_now
from services.metric import handler
from services.metric.settings import Settings
from services.metric.store import Store

log = logging.getLogger("modelwatch.metric")


def on_half(message: Message, store: Store, contracts: Contracts) -> list[Outgoing]:
    """Apply the handler's decision to the store; the broker acks after the next flush."""
    processing = trace.get_current_span().get_span_context()
    span_id = f"{processing.span_id:016x}" if processing.is_valid else ""
    now = utc_now()  # received and, if it completes a row, recorded at the same moment
    half = replace(handler.half_of(message, now), span_id=span_id)
    same, partner = store.lookup(half.id, half.kind)
    decision = handler.handle(half, same, partner, now)
    match decision:
        case handler.Keep():
            store.keep(half)
        case handler.Record(row=row):
            # The row joins two messages: its span links to the process span of each half.
            with tracer().start_as_current_span(
                "record error",
                links=[Link(c) for c in map(_span_context, (partner, half)) if c],
                attributes={
                    attr.MESSAGING_MESSAGE_ID: half.id,
                    attr.ABSOLUTE_ERROR: row["absolute_error"],
                    attr.MODEL_VERSION: row["model_version"],
                },
            ):
                contracts.check_output("metric_record", row)
                # Published from the outbox once durable, as a child of this span.
                store.record(half, row, trace.get_current_span().get_span_context())
        case handler.Orphan(record=record):
            contracts.check_output("orphan_record", record)
            store.orphan(half, record)
        case handler.Duplicate():
            log.info("duplicate %s for %s ignored", half.kind, half.id)
    return []


def _span_context(half: handler.Half | None) -> SpanContext | None:
    if half is None or not (half.trace_id and half.span_id):
        return None
    return SpanContext(
        int(half.trace_id, 16), int(half.span_id, 16), is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )  # fmt: skip


def sweep(store: Store, contracts: Contracts, settings: Settings) -> None:
    """Record halves that waited longer than the join timeout as orphans; forget old ids."""
    now = time.time()
    for half in store.expired(now - settings.join_timeout_s):
        record = handler.orphan_record(half, utc_now(), "timeout")
        contracts.check_output("orphan_record", record)
        store.orphan(half, record)
        log.warning(
            "%s for %s had no partner after %g s: recorded as an orphan",
            half.kind,
            half.id,
            settings.join_timeout_s,
        )
    store.forget(now - settings.dedup_retention_s)
    try:
        store.flush()
    except OSError as exc:
        log.error("could not write orphan records (%s); will retry", exc)
