"""Opening and resolving alerts: at most one open per statistic, feature and model version."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.messages import Outgoing
from services.monitor.judge import Statistic
from services.monitor.state import Window


def name_of(statistic: str, feature: str, model_version: str) -> str:
    return f"{statistic}/{feature or '-'}/{model_version}"


def update(
    open_alerts: dict[str, dict], found: Sequence[Statistic], window: Window, where: dict, now: str
) -> list[Outgoing]:
    """Fire what newly breached its threshold, resolve what came back; nothing else."""
    out = []
    for stat in (s for s in found if s.threshold is not None):
        name = name_of(stat.statistic, stat.feature, window.model_version)
        if stat.breached and name not in open_alerts:
            out.append(_alert(open_alerts, name, "firing", stat, window, where, now))
        elif not stat.breached and name in open_alerts:
            out.append(_alert(open_alerts, name, "resolved", stat, window, where, now))
    return out


def change(open_alerts: dict[str, dict], window: Window, where: dict, now: str) -> list[Outgoing]:
    """The change detector fired inside `window`: open its alert unless it is open already."""
    name = name_of("error_change", "", window.model_version)
    if name in open_alerts:
        return []
    last = len(window.rows) - 1
    stat = Statistic("error_change", "", 1.0, 1.0, True, (last, last - 1, last - 2), 1)
    return [_alert(open_alerts, name, "firing", stat, window, where, now)]


def _alert(
    open_alerts: dict[str, dict], name: str, state: str, stat: Statistic, window: Window,
    where: dict, now: str,
) -> Outgoing:  # fmt: skip
    opened_at = now if state == "firing" else open_alerts[name]["opened_at"]
    payload = {
        "id": f"{name}:{window.stream}:{window.index}:{state}",
        "alert": name,
        "state": state,
        "statistic": stat.statistic,
        "feature": stat.feature,
        "model_version": window.model_version,
        "window": where,
        "value": stat.value,
        "threshold": stat.threshold,
        "summary": _summary(stat, state, len(window.rows)),
        "examples": [_example(window, i, stat.column) for i in stat.examples if i >= 0]
        if state == "firing"
        else [],
        "opened_at": opened_at,
        "emitted_at": now,
    }
    if state == "firing":
        open_alerts[name] = payload
    else:
        del open_alerts[name]
    return Outgoing("alert", payload)


def _example(window: Window, row: int, column: int) -> dict:
    return {"message_id": window.ids[row], "trace_id": window.trace_ids[row],
            "value": window.rows[row][column]}  # fmt: skip


def _summary(stat: Statistic, state: str, rows: int) -> str:
    what = f"{stat.statistic} of {stat.feature}" if stat.feature else stat.statistic
    below = stat.statistic == "ks_pvalue"
    side = "below" if below else "above"
    if state == "resolved":
        return (
            f"{what} back within its threshold: {stat.value:.4g} over {rows} rows "
            f"(threshold {stat.threshold:.4g})"
        )
    if stat.statistic == "error_change":
        return "the absolute error's mean rose (Page-Hinkley change detector)"
    return f"{what} is {stat.value:.4g} over {rows} rows, {side} the threshold {stat.threshold:.4g}"
