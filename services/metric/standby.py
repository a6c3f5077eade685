"""One metric process per metrics log and state: any other waits as a standby.

Two processes writing one CSV and one SQLite state would each truncate the CSV to the end they
know (store.py's recovery) and cut off the other's fsynced rows, and could each keep one half of
an id; so `docker compose up --scale metric=3` would lose rows. Each process first takes an
exclusive `flock` on `<path>.lock` beside the state and both logs; while another holds them, it
waits, and takes over when that process ends, however it ends (the kernel drops the lock of a
killed process), recovering from the files as after any restart.

flock works between processes of one machine, containers sharing a bind mount included; not on
NFS or other network filesystems, where the lock may not be seen by another host.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
from pathlib import Path
from typing import IO

from services.common.settings import ConfigError

log = logging.getLogger("modelwatch.metric")

POLL_S = 0.5


async def hold(paths: list[Path], stop: asyncio.Event) -> list[IO[bytes]] | None:
    """Lock `<path>.lock` for each of `paths` (kept until the process ends); None if `stop` came
    first. Says once, naming the files, when another process holds them."""
    said = False
    while not stop.is_set():
        held = _try(paths)
        if held is not None:
            if said:
                log.info("took over %s from the process that held it", _names(paths))
            return held
        if not said:
            log.info("another metric process holds %s: waiting as a standby", _names(paths))
            said = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL_S)
    return None


def _try(paths: list[Path]) -> list[IO[bytes]] | None:
    """All the locks, or none held (a process never waits holding some: no deadlock)."""
    held: list[IO[bytes]] = []
    try:
        for path in sorted({p.resolve() for p in paths}):
            lock = open(f"{path}.lock", "ab")  # noqa: SIM115 - open for the process's life
            held.append(lock)
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        for lock in held:
            lock.close()  # closing drops the lock
        return None
    except OSError as exc:
        for lock in held:
            lock.close()
        raise ConfigError(f"cannot lock {exc.filename or path}.lock: {exc.strerror}") from None
    return held


def _names(paths: list[Path]) -> str:
    return " and ".join(str(p) for p in paths)
