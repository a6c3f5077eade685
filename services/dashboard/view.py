"""What the page shows, kept from the messages the dashboard consumes.

`View` holds the latest rows, the recent windows of each stream, every alert's latest state and the
dead-letter counts. The page gets it whole when it connects (`snapshot`), then only what changed,
batched (`take_update`): at full pipeline speed that is one small message every DASHBOARD_PUSH_S
instead of one per row. Nothing here knows about HTTP or the broker.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

ROWS = 50  # latest rows kept and shown
WINDOWS = 120  # windows kept per stream: the charts' x axis
ALERT_EVENTS = 100  # firing and resolved messages kept, newest last
RATE_S = 10  # rows/s is measured over this many seconds
HEARTBEAT_S = 2.0  # an update goes out at least this often, so the page sees a live stream
# Row ids remembered to drop a redelivery (a restart redelivers what was not yet acked: up to the
# prefetch); more than PREFETCH's default, and a few dozen kB.
SEEN = 2048
ROW_FIELDS = ("message_id", "trace_id", "y_true", "y_pred", "absolute_error", "model_version",
              "recorded_at", "latency_ms")  # fmt: skip


class View:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.rows: deque[dict[str, Any]] = deque(maxlen=ROWS)
        self.rows_total = 0
        self.windows: dict[str, OrderedDict[str, dict[str, Any]]] = {
            "features": OrderedDict(), "predictions": OrderedDict()}  # fmt: skip
        self.alerts: dict[str, dict[str, Any]] = {}  # alert key -> its latest message
        self.alert_events: deque[dict[str, Any]] = deque(maxlen=ALERT_EVENTS)
        self.dead_letters: dict[str, int] = {}
        self.model_version = ""
        self._arrivals: deque[list[float]] = deque()  # [second, rows that arrived in it]
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque(maxlen=SEEN)
        self._new: dict[str, list[dict[str, Any]]] = {"rows": [], "windows": [], "alerts": []}
        self._dirty = False
        self._last_push = float("-inf")
        self.version = 0  # bumps on every change (store.py saves when it moved)
        self.key_version = 0  # bumps when a window or an alert arrives

    # -- applying messages ----------------------------------------------------------------------

    def row(self, record: dict[str, Any]) -> None:
        """Show and count a recorded row, once: a row seen lately (redelivered) changes nothing."""
        if record["message_id"] in self._seen:
            return
        if len(self._seen_order) == SEEN:
            self._seen.discard(self._seen_order[0])
        self._seen_order.append(record["message_id"])
        self._seen.add(record["message_id"])
        row = {k: record[k] for k in ROW_FIELDS}
        self.rows.append(row)
        self.rows_total += 1
        self.model_version = record["model_version"]
        self._count_arrival()
        self._add("rows", row)

    def window(self, report: dict[str, Any]) -> None:
        window = compact_window(report)
        kept = self.windows[report["stream"]]
        kept[window["id"]] = window  # a window reported again after a restart keeps its id
        while len(kept) > WINDOWS:
            kept.popitem(last=False)
        self.key_version += 1
        self._add("windows", window)

    def alert(self, message: dict[str, Any]) -> None:
        self.alerts[message["alert"]] = message
        if message["state"] != "open":  # "open" restates an alert already announced
            self.alert_events.append(message)
        self.key_version += 1
        self._add("alerts", message)

    def set_dead_letters(self, counts: dict[str, int]) -> None:
        if counts != self.dead_letters:
            self.dead_letters = dict(counts)
            self._dirty = True
            self.version += 1

    # -- what the page gets ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, for a page that just connected."""
        return {
            **self._counters(),
            "rows": list(self.rows),
            "windows": {s: list(w.values()) for s, w in self.windows.items()},
            "alerts": list(self.alerts.values()),
            "alert_events": list(self.alert_events),
        }

    def take_update(self) -> dict[str, Any] | None:
        """What changed since the last update, or None when nothing did and the heartbeat is
        not due. New rows beyond ROWS are left out: the page shows only the latest ROWS."""
        now = self._clock()
        if not self._dirty and now - self._last_push < HEARTBEAT_S:
            return None
        update = {**self._counters(), **self._new, "rows": self._new["rows"][-ROWS:]}
        self._new = {"rows": [], "windows": [], "alerts": []}
        self._dirty = False
        self._last_push = now
        return update

    def open_alerts(self) -> list[dict[str, Any]]:
        return [a for a in self.alerts.values() if a["state"] != "resolved"]

    def rate(self) -> float:
        """Rows recorded per second over the last RATE_S seconds."""
        now = self._clock()
        while self._arrivals and self._arrivals[0][0] <= now - RATE_S:
            self._arrivals.popleft()
        return sum(n for _, n in self._arrivals) / RATE_S

    # -- the state file -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": list(self.rows), "rows_total": self.rows_total,
            "windows": {s: list(w.values()) for s, w in self.windows.items()},
            "alerts": list(self.alerts.values()), "alert_events": list(self.alert_events),
            "model_version": self.model_version,
        }  # fmt: skip

    def restore(self, saved: dict[str, Any]) -> None:
        self.rows.extend(saved["rows"])
        for row in saved["rows"]:
            self._seen_order.append(row["message_id"])
            self._seen.add(row["message_id"])
        self.rows_total = saved["rows_total"]
        for stream, windows in saved["windows"].items():
            self.windows[stream].update((w["id"], w) for w in windows)
        self.alerts.update((a["alert"], a) for a in saved["alerts"])
        self.alert_events.extend(saved["alert_events"])
        self.model_version = saved["model_version"]

    def _counters(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "rows_total": self.rows_total,
            "rows_per_s": round(self.rate(), 1),
            "dead_letters": self.dead_letters,
        }

    def _add(self, kind: str, item: dict[str, Any]) -> None:
        self._new[kind].append(item)
        self._dirty = True
        self.version += 1

    def _count_arrival(self) -> None:
        second = float(int(self._clock()))
        if self._arrivals and self._arrivals[-1][0] == second:
            self._arrivals[-1][1] += 1
        else:
            self._arrivals.append([second, 1])


def compact_window(report: dict[str, Any]) -> dict[str, Any]:
    """A window_report as the charts use it: each statistic keyed `statistic/feature`."""
    window = report["window"]
    return {
        "id": report["id"],
        "stream": report["stream"],
        "model_version": report["model_version"],
        "index": window["index"],
        "closed_at": window["closed_at"],
        "rows": window["rows"],
        "closed_by": window["closed_by"],
        "judged": report["judged"],
        "statistics": {
            f"{s['statistic']}/{s['feature']}": [s["value"], s["threshold"], s["breached"]]
            for s in report["statistics"]
        },
    }
