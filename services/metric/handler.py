"""Consumes `y_true` and `y_pred`, produces `metric_record` rows and `orphan_record` rows.

The two halves of an id arrive in any order. `handle` decides, from the half that arrived and what
the store already knows about that id, what to do; it never touches the store itself:

- first half of an id              -> Keep it until its partner comes
- partner already waiting          -> Record one CSV row (metric_record)
- partner was already orphaned     -> Orphan this half too (reason "late")
- same half again, same value      -> Duplicate: nothing to do (a redelivery or a re-publish)
- same half again, different value -> Rejected: quarantined in the dead-letter queue
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.messages import Message, Rejected, parse_time, trace_id_of


@dataclass(frozen=True, slots=True)
class Half:
    id: str
    kind: str  # "y_true" or "y_pred"
    value: float
    model_version: str  # "" for a y_true
    emitted_at: str
    received_at: str
    trace_id: str
    span_id: str = ""  # of the span that processed this half, for the record span's links
    state: str = "new"  # new, pending, joined or orphaned


@dataclass(frozen=True, slots=True)
class Keep:
    half: Half


@dataclass(frozen=True, slots=True)
class Record:
    half: Half
    row: dict


@dataclass(frozen=True, slots=True)
class Orphan:
    half: Half
    record: dict


@dataclass(frozen=True, slots=True)
class Duplicate:
    half: Half


Decision = Keep | Record | Orphan | Duplicate


def half_of(message: Message, received_at: str) -> Half:
    payload = message.payload
    return Half(
        id=payload["id"],
        kind=message.type,
        value=float(payload[message.type]),
        model_version=payload.get("model_version", ""),
        emitted_at=payload["emitted_at"],
        received_at=received_at,
        trace_id=trace_id_of(message.headers),
    )


def handle(half: Half, same: Half | None, partner: Half | None, now: str) -> Decision:
    if same is not None:
        if (same.value, same.model_version) == (half.value, half.model_version):
            return Duplicate(half)
        raise Rejected(
            f"conflicting duplicate: {half.kind} for {half.id} is {_describe(half)}, "
            f"but {_describe(same)} was already received"
        )
    if partner is None:
        return Keep(half)
    if partner.state == "pending":
        y_true, y_pred = (half, partner) if half.kind == "y_true" else (partner, half)
        return Record(half, metric_row(y_true, y_pred, now))
    if partner.state == "orphaned":
        return Orphan(half, orphan_record(half, now, "late"))
    raise Rejected(f"{half.id} was already recorded without a {half.kind}")


def metric_row(y_true: Half, y_pred: Half, now: str) -> dict:
    """One metric_record v1 row; the column order is the schema's property order."""
    latency = parse_time(now) - parse_time(y_true.emitted_at)
    return {
        "message_id": y_true.id,
        "y_true": y_true.value,
        "y_pred": y_pred.value,
        "absolute_error": abs(y_true.value - y_pred.value),
        "model_version": y_pred.model_version,
        "emitted_at": y_true.emitted_at,
        "recorded_at": now,
        "latency_ms": round(latency.total_seconds() * 1000, 3),
        "trace_id": y_true.trace_id or y_pred.trace_id,
    }


def orphan_record(half: Half, now: str, reason: str) -> dict:
    """One orphan_record v1 row for a half whose partner never came (or came too late)."""
    return {
        "message_id": half.id,
        "half": half.kind,
        "value": half.value,
        "model_version": half.model_version,
        "emitted_at": half.emitted_at,
        "received_at": half.received_at,
        "orphaned_at": now,
        "reason": reason,
        "trace_id": half.trace_id,
    }


def _describe(half: Half) -> str:
    return f"{half.value!r}" + (f" from model {half.model_version}" if half.model_version else "")
