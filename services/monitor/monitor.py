"""Applies events to the monitor's state and keeps the store in step; called by the broker loop
and the ticker."""

from __future__ import annotations

import logging
import time

from observability import attributes as attr
from observability import instruments
from services.common.messages import Message, Outgoing
from services.monitor import handler
from services.monitor.settings import Judging
from services.monitor.state import Event, State
from services.monitor.store import Store

log = logging.getLogger("modelwatch.monitor")


class Monitor:
    def __init__(self, store: Store, reference: dict, judging: Judging) -> None:
        self.store = store
        self.reference = reference
        self.judging = judging
        self.features = tuple(reference["features"])
        self._unreferenced: set[str] = set()
        snapshot, events = store.load()
        self.state = State.from_dict(snapshot) if snapshot else State()
        for event in events:  # what was applied after the snapshot; its outputs went out then
            handler.apply(self.state, event, reference, judging)
        log.info(
            "monitor state: %d open windows, %d open alerts, %d events replayed",
            len(self.state.windows),
            len(self.state.open_alerts),
            len(events),
        )

    def on_message(self, message: Message) -> list[Outgoing]:
        """Handle one input; the broker publishes the outputs, then acks after `store.flush`."""
        return self._apply(handler.event_of(message, time.time(), self.features))

    def tick(self) -> list[Outgoing]:
        """Close the windows whose time is up even when no rows come."""
        return self._apply(Event("tick", time.time()))

    def _apply(self, event: Event) -> list[Outgoing]:
        version = event.model_version
        if (
            version
            and version != self.reference["model_version"]
            and version not in self._unreferenced
        ):
            self._unreferenced.add(version)
            log.warning(
                "rows from model %s, which the reference is not for (%s): reported, never judged",
                version,
                self.reference["model_version"],
            )
        out = handler.apply(self.state, event, self.reference, self.judging)
        if any(o.type == "window_report" for o in out):
            self.store.snapshot(self.state.to_dict())
        elif event.kind != "tick":
            self.store.append(event)
        measure(out)
        for alert in (o for o in out if o.type == "alert"):
            self.store.alert(alert.payload)
            log.warning("alert %s %s: %s", alert.payload["state"], alert.payload["alert"],
                        alert.payload["summary"])  # fmt: skip
        return out


def measure(out: list[Outgoing]) -> None:
    """The statistics of each reported window, and which alerts are open, as gauges."""
    meters = instruments()
    for o in out:
        p = o.payload
        if o.type == "window_report":
            for s in p["statistics"]:
                labels = {
                    "statistic": s["statistic"], "feature": s["feature"], "stream": p["stream"],
                    attr.MODEL_VERSION: p["model_version"],
                }  # fmt: skip
                meters.statistic.set(s["value"], labels)
                if s["threshold"] is not None:
                    meters.threshold.set(s["threshold"], labels)
        elif o.type == "alert":
            labels = {"statistic": p["statistic"], "feature": p["feature"],
                      attr.MODEL_VERSION: p["model_version"]}  # fmt: skip
            meters.alert_open.set(0 if p["state"] == "resolved" else 1, labels)
