"""`modelwatch plot`: redraw PLOT_PATH when the CSV changed, at most every PLOT_INTERVAL_S."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.common.runtime import run
from services.common.settings import environ
from services.plot.render import render, signature
from services.plot.settings import Settings

log = logging.getLogger("modelwatch.plot")


async def main(stop: asyncio.Event) -> None:
    settings = Settings.from_env(environ())
    drawn: tuple[int, int] | str | None = "never"
    log.info(
        "drawing %s from %s every %g s when it changes",
        settings.plot_path,
        settings.metric_log_path,
        settings.interval_s,
    )
    while not stop.is_set():
        current = signature(settings.metric_log_path)
        if current != drawn:
            try:
                rows = render(settings.metric_log_path, settings.plot_path)
                log.info("drew %d rows to %s", rows, settings.plot_path)
                drawn = current
            except Exception:
                log.exception("could not draw; trying again in %g s", settings.interval_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.interval_s)


if __name__ == "__main__":
    run("plot", main)
