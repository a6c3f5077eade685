"""What the monitor keeps on disk so a restart forgets no open alert and resets no window.

One SQLite file (MONITOR_STATE_PATH, WAL, `synchronous=FULL`):
- `snapshot`: the whole state, saved when a window closes (a window holds at most
  MONITOR_WINDOW_ROWS rows, so the snapshot stays small);
- `journal`: every event applied since that snapshot, one row (a JSON array) per flush, replayed
  on start-up;
- `alerts`: every alert sent, for `modelwatch alerts`.

`flush` commits what was applied since the last one; the broker acknowledges the inputs after it
returns. A failed commit (a full disk) keeps the pending work for the next attempt and raises
OSError, so the inputs stay unacknowledged.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import orjson

from services.monitor.state import Event

_NUMPY = orjson.OPT_SERIALIZE_NUMPY  # detector state computed with numpy may hold its floats

SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshot (k INTEGER PRIMARY KEY CHECK (k = 1), state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, events BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY, alert TEXT NOT NULL, state TEXT NOT NULL, emitted_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (emitted_at);
"""


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level="DEFERRED")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._db.commit()
        self._snapshot: bytes | None = None
        self._events: list[Event] = []
        self._alerts: list[dict] = []

    def load(self) -> tuple[dict | None, list[Event]]:
        """The last snapshot and the events journaled after it."""
        row = self._db.execute("SELECT state FROM snapshot").fetchone()
        events = [Event.from_list(e) for (batch,) in
                  self._db.execute("SELECT events FROM journal ORDER BY seq")
                  for e in orjson.loads(batch)]  # fmt: skip
        return (orjson.loads(row[0]) if row else None), events

    def append(self, event: Event) -> None:
        self._events.append(event)

    def snapshot(self, state: dict) -> None:
        """`state` includes every event so far: they need no journal. Serialised now: the state
        changes on with the next event."""
        self._snapshot = orjson.dumps(state, option=_NUMPY)
        self._events.clear()

    def alert(self, payload: dict) -> None:
        self._alerts.append(payload)

    def flush(self) -> None:
        if self._snapshot is None and not self._events and not self._alerts:
            return
        try:
            if self._snapshot is not None:
                self._db.execute("DELETE FROM journal")
                self._db.execute("INSERT OR REPLACE INTO snapshot VALUES (1, ?)",
                                 (self._snapshot,))  # fmt: skip
            if self._events:
                batch = orjson.dumps([e.to_list() for e in self._events], option=_NUMPY)
                self._db.execute("INSERT INTO journal (events) VALUES (?)", (batch,))
            self._db.executemany(
                "INSERT OR IGNORE INTO alerts VALUES (?, ?, ?, ?, ?)",
                [(a["id"], a["alert"], a["state"], a["emitted_at"], json.dumps(a))
                 for a in self._alerts],
            )  # fmt: skip
            self._db.commit()
        except sqlite3.OperationalError as exc:
            self._db.rollback()
            raise OSError(f"{self.path}: {exc}") from exc
        self._snapshot = None
        self._events.clear()
        self._alerts.clear()

    def close(self) -> None:
        self._db.close()


def recent_alerts(path: Path, limit: int) -> list[dict]:
    """The newest `limit` alerts in a monitor's state file, oldest first (read-only)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT body FROM alerts ORDER BY emitted_at DESC, id DESC LIMIT ?", (limit,)
        ).fetchall()
    finally:
        db.close()
    return [json.loads(body) for (body,) in reversed(rows)]
