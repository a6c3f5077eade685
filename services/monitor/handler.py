"""Consumes `features` and `metric_record`, produces `window_report` and `alert`.

Each input becomes an `Event` (`event_of`) added to the open window of its stream: the features
window, or the predictions window of the row's model version. `apply` closes a window when it
holds MONITOR_WINDOW_ROWS rows, or (also on a "tick" event) when MONITOR_WINDOW_S passed since
its first row, and returns what to publish: one `window_report` and an `alert` for each statistic
that crossed its threshold (state firing) or came back (state resolved); at most one alert is
open per statistic, feature and model version. The change detector on the absolute error fires
its alert at the row it detects the change, without waiting for the window.

`apply` is a function of the state and the event only (it reads no clock and publishes nothing),
so replaying the journaled events after a restart rebuilds the same state.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from services.common.messages import Message, Outgoing, Rejected, format_time, trace_id_of
from services.monitor import alerts
from services.monitor.judge import judge
from services.monitor.settings import Judging
from services.monitor.state import Event, State, Window, window_key
from services.monitor.stats import PageHinkley

# |y_true - y_pred| is recomputed to check a row; float rounding in JSON allows this much slack.
_ERROR_SLACK = 1e-6


def event_of(message: Message, now: float, features: Sequence[str]) -> Event:
    """The event an input message is; `Rejected` if the row contradicts itself."""
    payload = message.payload
    trace_id = trace_id_of(message.headers)
    if message.type == "features":
        row = payload["features"]
        values = row if isinstance(row, list) else [row[name] for name in features]
        if len(values) != len(features):
            raise Rejected(f"features has {len(values)} values; the reference has {len(features)}")
        return Event("features", now, payload["id"], trace_id, "", tuple(map(float, values)))
    error = abs(payload["y_true"] - payload["y_pred"])
    if abs(error - payload["absolute_error"]) > _ERROR_SLACK * max(1.0, error):
        raise Rejected(f"absolute_error {payload['absolute_error']} is not |y_true - y_pred| "
                       f"= {error}")  # fmt: skip
    return Event("predictions", now, payload["message_id"], payload["trace_id"] or trace_id,
                 payload["model_version"], (float(payload["y_pred"]), float(error)))  # fmt: skip


def apply(state: State, event: Event, reference: dict, judging: Judging) -> list[Outgoing]:
    """Add `event` to its window; return the reports and alerts it causes."""
    out: list[Outgoing] = []
    for window in [
        w for w in state.windows.values() if event.now - w.opened_at >= judging.window_s
    ]:
        out += close(state, window, event.now, "time", reference, judging)
    if event.kind == "tick":
        return out
    version = event.model_version or reference["model_version"]
    key = window_key(event.kind, version)
    if state.seen(key, event.id):
        return out  # a redelivery of a row already counted
    window = state.windows.get(key)
    if window is None:
        window = Window(event.kind, version, state.next_index.get(key, 0), event.now)
        state.windows[key] = window
    window.ids.append(event.id)
    window.trace_ids.append(event.trace_id)
    window.rows.append(list(event.values))
    state.remember(key, event.id)
    if event.kind == "predictions" and version == reference["model_version"]:
        out += _detect_change(state, window, event, reference, judging)
    if len(window.rows) >= judging.window_rows:
        out += close(state, window, event.now, "rows", reference, judging)
    return out


def close(
    state: State, window: Window, now: float, by: str, reference: dict, judging: Judging
) -> list[Outgoing]:
    """Judge the window, report it, open and resolve alerts; the window is then forgotten."""
    known = window.model_version == reference["model_version"]
    found = judge(window, reference if known else None, judging)
    judged = known and len(window.rows) >= judging.min_rows
    where = window_of(window, now, by)
    report = {
        "id": f"{window.stream}:{window.model_version}:{window.index}",
        "stream": window.stream,
        "model_version": window.model_version,
        "window": where,
        "judged": judged,
        "statistics": [s.entry() for s in found],
        "emitted_at": time_of(now),
    }
    out = [Outgoing("window_report", report)]
    if judged:
        out += alerts.update(state.open_alerts, found, window, where, time_of(now))
    state.closed(window)
    return out


def _detect_change(
    state: State, window: Window, event: Event, reference: dict, judging: Judging
) -> list[Outgoing]:
    version = window.model_version
    detector = state.detectors.get(version)
    if detector is None:
        detector = PageHinkley(delta=judging.change_delta, threshold=judging.change_threshold)
        state.detectors[version] = detector
    if not detector.update(event.values[1] / reference["holdout_error"]["mae"]):
        return []
    window.changes += 1
    return alerts.change(state.open_alerts, window, window_of(window, event.now, "open"),
                         time_of(event.now))  # fmt: skip


def window_of(window: Window, now: float, by: str) -> dict:
    return {"stream": window.stream, "index": window.index, "opened_at": time_of(window.opened_at),
            "closed_at": time_of(now), "rows": len(window.rows), "closed_by": by}  # fmt: skip


def time_of(epoch: float) -> str:
    return format_time(datetime.fromtimestamp(epoch, UTC))
