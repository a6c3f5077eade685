"""What the monitor remembers between rows: open windows, open alerts, change detectors.

It is plain data, saved whole (`to_dict`) when a window closes and rebuilt (`from_dict`) on
start-up; the rows applied since the last save are replayed from the store's journal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from services.monitor.stats import PageHinkley


@dataclass(frozen=True, slots=True)
class Event:
    """One thing the monitor applies, journaled as it came so a replay gives the same state.

    `kind` is "features" (values: the features, in the reference's order), "predictions"
    (values: [y_pred, absolute_error]) or "tick" (time passing: closes windows that are due).
    """

    kind: str
    now: float  # epoch seconds when it was received
    id: str = ""
    trace_id: str = ""
    model_version: str = ""
    values: tuple[float, ...] = ()

    def to_list(self) -> list:
        return [self.kind, self.now, self.id, self.trace_id, self.model_version, list(self.values)]

    @classmethod
    def from_list(cls, item: list) -> Event:
        kind, now, id_, trace_id, version, values = item
        return cls(kind, now, id_, trace_id, version, tuple(values))


@dataclass(slots=True)
class Window:
    stream: str  # "features" or "predictions"
    model_version: str
    index: int
    opened_at: float
    ids: list[str] = field(default_factory=list)
    trace_ids: list[str] = field(default_factory=list)
    rows: list[list[float]] = field(default_factory=list)
    changes: int = 0  # change-detector alarms while this window was open

    @property
    def key(self) -> str:
        return window_key(self.stream, self.model_version)


_WINDOW_FIELDS = tuple(f.name for f in fields(Window))


def window_key(stream: str, model_version: str) -> str:
    return stream if stream == "features" else f"{stream}:{model_version}"


@dataclass
class State:
    windows: dict[str, Window] = field(default_factory=dict)
    next_index: dict[str, int] = field(default_factory=dict)
    # Ids of each stream's last closed window: a redelivery of one of them is not counted twice.
    previous_ids: dict[str, list[str]] = field(default_factory=dict)
    open_alerts: dict[str, dict] = field(default_factory=dict)  # alert name -> its firing message
    detectors: dict[str, PageHinkley] = field(default_factory=dict)  # model version -> detector
    _seen: dict[str, set[str]] = field(default_factory=dict, repr=False)

    def seen(self, key: str, id_: str) -> bool:
        if key not in self._seen:
            window = self.windows.get(key)
            self._seen[key] = set(self.previous_ids.get(key, ())) | set(
                window.ids if window else ()
            )
        return id_ in self._seen[key]

    def remember(self, key: str, id_: str) -> None:
        self._seen.setdefault(key, set()).add(id_)

    def closed(self, window: Window) -> None:
        """Forget a closed window, keeping its ids for the redelivery check."""
        del self.windows[window.key]
        self.previous_ids[window.key] = window.ids
        self._seen[window.key] = set(window.ids)
        self.next_index[window.key] = window.index + 1

    def to_dict(self) -> dict:
        return {
            # Not dataclasses.asdict, which deep-copies every row: a snapshot is serialised at once.
            "windows": {
                k: {f: getattr(w, f) for f in _WINDOW_FIELDS} for k, w in self.windows.items()
            },
            "next_index": self.next_index,
            "previous_ids": self.previous_ids,
            "open_alerts": self.open_alerts,
            "detectors": {k: d.to_dict() for k, d in self.detectors.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> State:
        return cls(
            windows={k: Window(**w) for k, w in data["windows"].items()},
            next_index=dict(data["next_index"]),
            previous_ids={k: list(v) for k, v in data["previous_ids"].items()},
            open_alerts=dict(data["open_alerts"]),
            detectors={k: PageHinkley.from_dict(d) for k, d in data["detectors"].items()},
        )
