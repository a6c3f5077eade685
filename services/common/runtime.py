"""Start-up and shutdown shared by every service's `__main__`.

`run(name, main)` sets up logging and tracing, turns SIGTERM and Ctrl+C into a stop event, and
maps a bad setting or a fatal broker error to a one-line message and exit status 2 instead of a
traceback.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from observability import setup_metrics, setup_tracing, shutdown_metrics, shutdown_tracing
from observability.tracing import TraceContextFilter
from services.common.broker import BrokerError
from services.common.broker.broker import BackgroundTaskFailed
from services.common.settings import ConfigError

log = logging.getLogger("modelwatch")


def setup_logging(service: str) -> None:
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s%(trace)s")
    )
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("pika").setLevel(logging.WARNING)


def run(service: str, main: Callable[[asyncio.Event], Awaitable[int | None]]) -> None:
    """Run `main(stop)` until it returns; exit with its status (0 when it returns None)."""
    status: int | None = 2
    try:
        setup_logging(service)
        setup_tracing(service)
        setup_metrics(service)
        tune_gc()
        status = asyncio.run(_with_signals(main))
    except ConfigError as exc:
        print(f"{service}: configuration error: {exc}", file=sys.stderr)
    except BrokerError as exc:
        print(f"{service}: {exc}", file=sys.stderr)
    except BackgroundTaskFailed as exc:  # logged with its traceback where it happened
        print(f"{service}: stopped: {exc}", file=sys.stderr)
        status = 1
    finally:
        # The work is done: a late SIGTERM (e.g. from `modelwatch up` stopping everything) must
        # not kill the exiting interpreter, which restores default handlers while it shuts down.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        shutdown_tracing()
        shutdown_metrics()
    sys.exit(status or 0)


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a long-running message loop.

    Every message makes short-lived objects (spans, frames, dicts) and a span waits in the export
    queue long enough to be promoted, so collections came often and each full one walked every
    object the imports made (numpy, scikit-learn, pika, the SDK). Freezing what exists after
    start-up takes those out of every collection, and a larger first generation collects far less
    often. Reference counting still frees everything that is not in a cycle at once. What it
    saved per row, measured with `modelwatch bench`, is in docs/benchmark.md.
    """
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


async def _with_signals(main: Callable[[asyncio.Event], Awaitable[int | None]]) -> int | None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # signal.signal rather than loop.add_signal_handler: the handler must outlive the loop, or a
    # second SIGTERM during interpreter shutdown kills the process with status -15.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stopper(loop, stop))
    return await main(stop)


def _stopper(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Callable[..., None]:
    def request_stop(signum: int, _frame: object) -> None:
        if loop.is_closed():
            return
        log.info("received %s: finishing in-flight work", signal.Signals(signum).name)
        loop.call_soon_threadsafe(stop.set)

    return request_stop
