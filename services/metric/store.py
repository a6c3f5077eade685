"""What the metric service knows, kept so a restart loses nothing and writes nothing twice.

- `halves` (SQLite, WAL) holds every half received in the last METRIC_DEDUP_RETENTION_S: a half
  waiting for its partner is acknowledged as soon as it is stored here, so the broker never holds
  deliveries while a join waits.
- The CSV files are append-only. Rows are buffered, then `flush` writes them, fsyncs, and only then
  commits the SQLite transaction that records the new end of each file. The broker acknowledges
  the inputs after `flush` returns.

A crash between the CSV write and the commit leaves rows past the recorded end: on start-up they
are read back and their ids marked recorded, so the redelivered inputs are seen as duplicates. A
torn last line (a crash inside a write) is cut off: it was never committed.

Commits are durable before the broker hears an ack (`synchronous=FULL`: the WAL is fsynced at each
commit; with NORMAL a power loss could undo a commit whose inputs were already acknowledged). A
commit that fails (a full disk: SQLite then rolls the whole transaction back) is retried like a
failed CSV write: the statements since the last commit are kept, replayed into a new transaction
at once, so every later lookup still sees them, and `flush` raises OSError for the caller to keep
the inputs unacknowledged and try again.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from services.common.settings import ConfigError
from services.metric.handler import Half

SCHEMA = """
CREATE TABLE IF NOT EXISTS halves (
    id TEXT NOT NULL, kind TEXT NOT NULL, value REAL NOT NULL, model_version TEXT NOT NULL,
    emitted_at TEXT NOT NULL, received_at TEXT NOT NULL, trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL, state TEXT NOT NULL, since REAL NOT NULL, PRIMARY KEY (id, kind)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS halves_by_state ON halves (state, since);
CREATE TABLE IF NOT EXISTS file_ends (path TEXT PRIMARY KEY, size INTEGER NOT NULL);
"""
LOCK_WAIT_S = 5.0  # at most this long for another metric process to finish a write
_HALF_COLUMNS = "id, kind, value, model_version, emitted_at, received_at, trace_id, span_id, state"
_TEN_PLACES = ", ".join("?" * 10)


class AppendOnlyCsv:
    """A CSV file that only grows by whole, fsynced lines, shared by the metric's shards.

    Several stores (shards, in one process or several) append to one file: each write, and each
    cut of a torn line, happens under an exclusive `flock` of the file, so lines never interleave
    and a line without its newline at the end can only be a dead writer's (cut off: it was never
    committed). `size` is where this writer's last write ended (its committed end, store.py).
    """

    def __init__(self, path: Path, columns: Sequence[str], setting: str) -> None:
        self.path = path
        self.columns = list(columns)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\n")
        with self._locked():
            self.size = _cut_torn_tail(self._fd)
            if self.size == 0:  # a new file: its header goes out now, before any writer's rows
                self._writer.writerow(self.columns)
                self._write()
        header = os.pread(self._fd, 64 * 1024, 0).decode().split("\n", 1)[0]
        if header.split(",") != self.columns:
            raise ConfigError(
                f"{setting}: {path} has columns {header!r}, expected "
                f"{','.join(self.columns)!r}; move the old file aside"
            )

    def add(self, row: dict) -> None:
        self._writer.writerow([row[c] for c in self.columns])

    @property
    def buffered(self) -> bool:
        return self._buffer.tell() > 0

    def flush(self) -> None:
        if not self.buffered:
            return
        with self._locked():
            self._write()

    def _write(self) -> None:
        """Append the buffer (the caller holds the lock); on failure, nothing of it stays."""
        data = self._buffer.getvalue().encode()
        start = _cut_torn_tail(self._fd)  # after another writer's rows, or a dead one's torn line
        try:
            pending = memoryview(data)
            while pending:  # a full disk can take part of a write without raising: finish or fail
                pending = pending[os.write(self._fd, pending) :]
            os.fsync(self._fd)
        except OSError:
            os.ftruncate(self._fd, start)
            raise
        self.size = start + len(data)
        self._buffer.seek(0)
        self._buffer.truncate()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Polled, not a blocking flock: a writer that hangs holding it (stopped, or a disk that
        # does not answer) must not freeze this event loop; after LOCK_WAIT_S the flush fails
        # like a failed write, and the settler retries it with the inputs unacked.
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OSError(f"{self.path}: another writer held its lock for "
                                  f"{LOCK_WAIT_S:g} s") from None  # fmt: skip
                time.sleep(0.001)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def rows_after(self, offset: int) -> list[dict]:
        """The rows from `offset` up to where the file ended when this writer last held the
        lock (beyond it, another writer may be half way through a line)."""
        text = os.pread(self._fd, max(self.size - offset, 0), offset).decode()
        return list(csv.DictReader(io.StringIO(text), fieldnames=self.columns))

    def close(self) -> None:
        os.close(self._fd)


class Store:
    def __init__(
        self, db_path: Path, metrics: AppendOnlyCsv, orphans: AppendOnlyCsv, publish: bool = True,
        owns: Callable[[str], bool] = lambda _id: True,
    ) -> None:  # fmt: skip
        """`owns(id)`: whether an id is this store's (its shard's), in files other shards share."""
        self._db = sqlite3.connect(db_path, isolation_level="DEFERRED")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db_path = db_path
        self._since_commit: list[tuple[str, tuple]] = []  # replayed if a commit is rolled back
        self._owns = owns
        self._db.executescript(SCHEMA)
        self.metrics = metrics
        self.orphans = orphans
        self._recover(metrics, "joined", _metric_halves)
        self._recover(orphans, "orphaned", _orphan_halves)
        # The rows flushed but not yet published as metric_record messages (the outbox), each
        # batch with the CSV's end after it; `published` is where the confirmed ones end.
        self.outbox: deque[tuple[list[tuple[dict, Any]], int]] = deque()
        self.orphaned = 0  # orphan records written since start, for the orphans metric
        self._recorded: list[tuple[dict, Any]] = []
        self._published_key = f"published:{metrics.path}"
        found = self._db.execute(
            "SELECT size FROM file_ends WHERE path = ?", (self._published_key,)
        ).fetchone()
        published = found[0] if found else metrics.size  # a log from before rows were published
        self._publish = publish
        if not publish:
            published = metrics.size  # no queue takes metric_record: nothing to send, ever
        if metrics.size > published:
            rows = [(_typed(r), None) for r in self._rows_after(metrics, published)]
            self.outbox.append((rows, metrics.size))
        self.mark_published(published)
        self._commit()

    def lookup(self, id_: str, kind: str) -> tuple[Half | None, Half | None]:
        """The stored half of this kind and its partner, if any."""
        found = {
            row[1]: Half(*row)
            for row in self._db.execute(
                f"SELECT {_HALF_COLUMNS} FROM halves WHERE id = ?",
                (id_,),
            )
        }
        return found.get(kind), found.get("y_pred" if kind == "y_true" else "y_true")

    def keep(self, half: Half) -> None:
        self._put(half, "pending")

    def record(self, half: Half, row: dict, context: Any = None) -> None:
        """Buffer the row (`context` travels with it to the outbox: the trace to publish in)."""
        self.metrics.add(row)
        self._recorded.append((row, context))
        self._put(half, "joined")
        partner = "y_pred" if half.kind == "y_true" else "y_true"
        self._write(
            "UPDATE halves SET state = 'joined', since = ? WHERE id = ? AND kind = ?",
            (time.time(), half.id, partner),
        )

    def orphan(self, half: Half, record: dict) -> None:
        self.orphans.add(record)
        self.orphaned += 1
        self._put(half, "orphaned")

    def expired(self, older_than: float) -> list[Half]:
        """Halves still waiting for a partner that were received before `older_than` (epoch)."""
        return [
            Half(*row)
            for row in self._db.execute(
                f"SELECT {_HALF_COLUMNS} FROM halves WHERE state = 'pending' AND since < ?",
                (older_than,),
            )
        ]

    def forget(self, settled_before: float) -> int:
        """Drop recorded and orphaned halves older than the dedup window; returns how many."""
        return self._write(
            "DELETE FROM halves WHERE state IN ('joined', 'orphaned') AND since < ?",
            (settled_before,),
        ).rowcount

    def pending_count(self) -> int:
        return self._db.execute("SELECT count(*) FROM halves WHERE state = 'pending'").fetchone()[0]

    def flush(self) -> list[dict]:
        """Make everything since the last flush durable: CSV lines first, then the database.
        Returns the rows it made durable."""
        if not (self._since_commit or self.metrics.buffered or self.orphans.buffered):
            return []  # an idle shard: no empty commit (an fsync) at every batch of the others
        self.metrics.flush()
        self.orphans.flush()
        self._set_end(self.metrics)
        self._set_end(self.orphans)
        self._commit()
        if self._recorded and self._publish:
            self.outbox.append((self._recorded, self.metrics.size))
        rows = [row for row, _ in self._recorded]
        self._recorded = []
        return rows

    def mark_published(self, end: int) -> None:
        """The rows up to `end` of the metrics CSV were confirmed as messages (saved with the
        next commit: after a crash, a few rows may be published again, never none)."""
        self._write("INSERT OR REPLACE INTO file_ends VALUES (?, ?)", (self._published_key, end))

    def close(self) -> None:
        self._db.close()
        self.metrics.close()
        self.orphans.close()

    def _write(self, sql: str, parameters: tuple) -> sqlite3.Cursor:
        self._since_commit.append((sql, parameters))
        return self._db.execute(sql, parameters)

    def _commit(self) -> None:
        try:
            self._db.commit()
        except sqlite3.OperationalError as exc:
            if not self._db.in_transaction:  # rolled back: put the work back where lookups see it
                for sql, parameters in self._since_commit:
                    self._db.execute(sql, parameters)
            raise OSError(f"{self._db_path}: {exc}") from exc
        self._since_commit.clear()

    def _put(self, half: Half, state: str) -> None:
        self._write(
            f"INSERT OR REPLACE INTO halves ({_HALF_COLUMNS}, since) VALUES ({_TEN_PLACES})",
            (
                half.id,
                half.kind,
                half.value,
                half.model_version,
                half.emitted_at,
                half.received_at,
                half.trace_id,
                half.span_id,
                state,
                time.time(),
            ),
        )

    def _set_end(self, file: AppendOnlyCsv) -> None:
        self._write("INSERT OR REPLACE INTO file_ends VALUES (?, ?)", (str(file.path), file.size))

    def _recover(
        self, file: AppendOnlyCsv, state: str, halves: Callable[[dict], list[Half]]
    ) -> None:
        """Mark rows written after the last commit (a crash before it) as already recorded."""
        found = self._db.execute(
            "SELECT size FROM file_ends WHERE path = ?", (str(file.path),)
        ).fetchone()
        committed = found[0] if found else 0
        if file.size > committed:
            for row in self._rows_after(file, committed):
                for half in halves(row):
                    self._put(half, state)
        self._set_end(file)

    def _rows_after(self, file: AppendOnlyCsv, offset: int) -> list[dict]:
        """This store's rows after `offset` (other shards' rows are interleaved with them)."""
        return [
            row
            for row in file.rows_after(offset)
            if row["message_id"] != "message_id" and self._owns(row["message_id"])
        ]


_NUMBERS = ("y_true", "y_pred", "absolute_error", "latency_ms")


def _typed(row: dict) -> dict:
    """A metric_record row read back from the CSV, with its numbers as numbers again."""
    return {k: float(v) if k in _NUMBERS else v for k, v in row.items()}


def _metric_halves(row: dict) -> list[Half]:
    common = (row["message_id"],)
    return [
        Half(
            *common,
            "y_true",
            float(row["y_true"]),
            "",
            row["emitted_at"],
            row["recorded_at"],
            row["trace_id"],
        ),
        Half(
            *common,
            "y_pred",
            float(row["y_pred"]),
            row["model_version"],
            row["emitted_at"],
            row["recorded_at"],
            row["trace_id"],
        ),
    ]


def _orphan_halves(row: dict) -> list[Half]:
    return [
        Half(
            row["message_id"],
            row["half"],
            float(row["value"]),
            row["model_version"],
            row["emitted_at"],
            row["received_at"],
            row["trace_id"],
        )
    ]


def _cut_torn_tail(fd: int) -> int:
    """Drop a last line without its newline (a write cut short); return the file's size."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    text = os.pread(fd, size, 0)
    keep = text.rfind(b"\n") + 1
    os.ftruncate(fd, keep)
    return keep
