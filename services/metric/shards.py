"""Which shards of the join this process owns, and how several metric processes share them.

The join's queues are split by message id into METRIC_SHARDS shards (contracts.py: both halves
of an id carry the same routing key, so they reach the same shard). Shard k is the queues
`metric.y_true.k` and `metric.y_pred.k` with its own state file
(`metric_state.shard-k-of-n.sqlite3`); with one shard (the default) it is `metric.y_true`,
`metric.y_pred` and METRIC_STATE_PATH as they always were. The metrics and orphans CSVs are one
file for all shards (store.AppendOnlyCsv), so users and the plot read one log.

- A process owns a shard while it holds an exclusive `flock` on `<state>.lock`. Only the owner
  consumes the shard's queues and opens its state, so one id's halves always meet in one store,
  and the kernel drops the lock of a process that dies however it dies; the next owner recovers
  the state and the shared CSVs as a restarted metric does (store.py), and the broker gives it
  the dead owner's unacknowledged halves again. A process never consumes a shard it does not
  own (as a standby consumer, say): deliveries it could not take would be rejected, and each
  reject counts toward the delivery limit.
- Processes share the shards evenly: each holds a `flock` on a member file in
  `<state stem>.members/`, counts the members whose file is locked, and takes free shards up to
  `ceil(shards / members)`, giving back (cleanly: consumers cancelled, acks sent, outbox
  drained) any over that. A process that finds no free shard waits as a standby.

flock works between processes of one machine, containers sharing a bind mount included; not on
NFS or other network filesystems, where another host may not see the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import math
import os
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from observability import attributes as attr
from observability import instruments
from services.common.broker import Broker
from services.common.broker.consumer import Consumer
from services.common.contracts import Contracts, shard_key, shard_of
from services.common.settings import ConfigError
from services.metric.join import on_half, sweep
from services.metric.outbox import drained, publish_forever
from services.metric.settings import Settings
from services.metric.store import AppendOnlyCsv, Store

log = logging.getLogger("modelwatch.metric")

POLL_S = 0.5  # how often shares are looked at again (and a standby looks for a free shard)
GIVE_BACK_S = 10.0  # at most this long for a shard's outbox to drain when it is given back


def state_path(settings: Settings, shard: int, shards: int) -> Path:
    if shards == 1:
        return settings.state_path
    path = settings.state_path
    return path.with_name(f"{path.stem}.shard-{shard}-of-{shards}{path.suffix}")


def try_lock(path: Path) -> IO[bytes] | None:
    """An exclusive flock on `path` (held while the file is open); None if another holds it."""
    try:
        lock = open(path, "ab")  # noqa: SIM115 - open for as long as the lock is held
    except OSError as exc:
        raise ConfigError(f"cannot lock {path}: {exc.strerror}") from None
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    except OSError as exc:
        lock.close()
        raise ConfigError(f"cannot lock {path}: {exc.strerror}") from None
    return lock


class Members:
    """The live metric processes sharing a state directory, counted by their locked files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            directory.mkdir(exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"METRIC_STATE_PATH: cannot create {directory}: {exc}") from None
        # Locked before it is given its name, so no one counts it dead in between (the pending
        # name is not one `live` looks at).
        name = f"{uuid.uuid4().hex}.member"
        pending = directory / f"{name}.joining"
        lock = try_lock(pending)
        assert lock is not None, "a new file is locked by no one"
        pending.rename(directory / name)
        self._lock = lock
        self.path = directory / name

    def live(self) -> int:
        """Members whose file is locked, this one included; files of dead ones are removed."""
        count = 0
        for path in self.directory.glob("*.member"):
            if path == self.path:
                count += 1
                continue
            try:
                fd = os.open(path, os.O_RDONLY)  # not created again if removed meanwhile
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                count += 1
            else:  # its process is gone
                with contextlib.suppress(OSError):
                    path.unlink()
            finally:
                os.close(fd)
        return count

    def leave(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._lock.close()


@dataclass
class Shard:
    """A shard this process owns: its lock, its store and what works on it."""

    index: int
    lock: IO[bytes]
    store: Store
    consumers: list[Consumer] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    recorded: asyncio.Event = field(default_factory=asyncio.Event)


class Shards:
    """This process's shards: taken, given back, flushed together, closed at the end."""

    def __init__(self, settings: Settings, contracts: Contracts, broker: Broker) -> None:
        self.settings = settings
        self.contracts = contracts
        self.broker = broker
        self.count = settings.broker.shards
        self.owned: dict[int, Shard] = {}
        self.members = (
            Members(settings.state_path.with_name(f"{settings.state_path.stem}.members"))
            if self.count > 1
            else None
        )
        self._standby_said = False
        self._over = 0  # looks in a row at which this process held more than its share
        self.started = False
        self._columns = contracts.columns("metric_record"), contracts.columns("orphan_record")

    def share(self) -> int:
        live = self.members.live() if self.members else 1
        return math.ceil(self.count / max(live, 1))

    async def balance(self) -> None:
        """Take free shards up to this process's share; give back any over it (when over it
        twice in a row: a member counted twice for a moment must not move shards)."""
        share = self.share()
        self._over = self._over + 1 if len(self.owned) > share else 0
        while self._over >= 2 and len(self.owned) > share:
            await self.give_back(max(self.owned))
        if len(self.owned) < share:
            start = random.randrange(self.count)  # processes starting together try different ones
            for index in [(start + i) % self.count for i in range(self.count)]:
                if len(self.owned) >= share:
                    break
                if index not in self.owned:
                    lock = try_lock(Path(f"{state_path(self.settings, index, self.count)}.lock"))
                    if lock is not None:
                        self.take(index, lock)
        if not self.owned and not self._standby_said:
            log.info("another metric process holds %s: waiting as a standby", self._what())
            self._standby_said = True

    async def balance_forever(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                await self.balance()
                failures = 0
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - a disk or broker hiccup: look again later
                failures += 1
                log.error("sharing the join's shards failed (%r); trying again", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(POLL_S * 2**failures, 30.0))

    def take(self, index: int, lock: IO[bytes]) -> None:
        settings = self.settings
        owns: Callable[[str], bool] = (
            (lambda id_: shard_of(shard_key(id_), self.count) == index)
            if self.count > 1
            else (lambda _id: True)
        )
        metrics_columns, orphan_columns = self._columns
        path = state_path(settings, index, self.count)
        files: list[AppendOnlyCsv] = []
        try:
            files.append(AppendOnlyCsv(settings.log_path, metrics_columns, "METRIC_LOG_PATH"))
            files.append(
                AppendOnlyCsv(settings.orphan_log_path, orphan_columns, "METRIC_ORPHAN_LOG_PATH")
            )
            store = Store(path, *files, publish=self.contracts.routed("metric_record"), owns=owns)
        except BaseException:
            for file in files:
                file.close()
            lock.close()
            raise
        shard = Shard(index, lock, store)
        shard.recorded.set()  # rows left unpublished by an earlier owner go first
        process = functools.partial(on_half, store=store, contracts=self.contracts)
        for type_ in ("y_true", "y_pred"):
            queue = self.broker.queues(type_)[index]
            shard.consumers.append(self.broker.consume(type_, process, queue=queue))
        self.owned[index] = shard
        if self.started:
            self._start(shard)
        waiting = store.pending_count()
        if self._standby_said:
            log.info("took over %s from the process that held it", self._what(index))
            self._standby_said = False
        if self.count == 1:
            log.info("writing %s (%d halves waiting for a partner)", settings.log_path, waiting)
        else:
            log.info("took shard %d of %d, %s (%d halves waiting for a partner)",
                     index, self.count, path.name, waiting)  # fmt: skip

    def start(self) -> None:
        """Once the broker runs: the sweep and outbox of each shard (and of those taken later).
        Not before: a task that fails before the broker started could not stop the service."""
        self.started = True
        for shard in self.owned.values():
            self._start(shard)

    def _start(self, shard: Shard) -> None:
        store = shard.store
        of = f" of shard {shard.index}" if self.count > 1 else ""
        shard.tasks = [
            self.broker.watch(self._sweep_forever(store), f"orphan sweep{of}"),
            self.broker.watch(
                publish_forever(store, self.broker, shard.recorded), f"metric_record outbox{of}"
            ),
        ]

    async def give_back(self, index: int) -> None:
        """Stop consuming the shard, let what it received be flushed and acknowledged, publish
        its recorded rows, then close its store and drop the lock for another process."""
        shard = self.owned[index]
        for consumer in shard.consumers:
            await self.broker.cancel(consumer)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drained(shard.store), GIVE_BACK_S)  # else the next owner sends
        del self.owned[index]
        self._close(shard)
        log.info("gave shard %d of %d back (more metric processes now share them)",
                 index, self.count)  # fmt: skip

    def flush(self) -> None:
        """The broker's flush hook: every owned shard's results made durable, then counted."""
        meters = instruments()
        for shard in list(self.owned.values()):
            for row in shard.store.flush():  # counted once durable, like the rows in the CSV
                version = row["model_version"]
                meters.rows.add(((attr.MODEL_VERSION, version),))
                meters.absolute_error.record(row["absolute_error"], {attr.MODEL_VERSION: version})
            if shard.store.outbox:
                shard.recorded.set()
        meters.orphans.set((), self.orphaned)

    @property
    def orphaned(self) -> int:
        return sum(shard.store.orphaned for shard in self.owned.values())

    async def drained(self) -> None:
        """Every owned shard's recorded rows published (the broker awaits this on a clean stop)."""
        for shard in list(self.owned.values()):
            await drained(shard.store)

    def close(self) -> None:
        """At the end: every shard flushed and closed, its lock dropped; this member leaves."""
        for shard in list(self.owned.values()):
            self._close(shard)
        self.owned.clear()
        if self.members:
            self.members.leave()

    def _close(self, shard: Shard) -> None:
        for task in shard.tasks:
            task.cancel()
        try:
            shard.store.flush()  # at most where the published rows end: else sent again, later
        except OSError as exc:
            log.error("shard %d: %s; the next owner publishes its last rows again", shard.index,
                      exc)  # fmt: skip
        finally:
            shard.store.close()
            shard.lock.close()  # drops the lock, after the store is closed

    async def _sweep_forever(self, store: Store) -> None:
        every = min(self.settings.join_timeout_s / 4, 5.0)
        while True:
            await asyncio.sleep(every)
            sweep(store, self.contracts, self.settings)
            instruments().orphans.set((), self.orphaned)

    def _what(self, index: int | None = None) -> str:
        if self.count == 1:
            return f"{self.settings.state_path} and {self.settings.log_path}"
        if index is None:
            return f"every shard of {self.settings.state_path.stem}"
        return f"shard {index} of {self.count}"
