"""`modelwatch monitor`: the model's quality and drift per window, as reports and alerts."""

from __future__ import annotations

import asyncio
import logging

from services.common.broker import Broker
from services.common.contracts import Contracts
from services.common.runtime import run
from services.common.settings import ConfigError, environ
from services.model.files import ArtifactError, verify
from services.model.reference import load_reference
from services.monitor.monitor import Monitor
from services.monitor.settings import Settings
from services.monitor.store import Store

log = logging.getLogger("modelwatch.monitor")
TICK_S = 1.0


async def tick_forever(monitor: Monitor, broker: Broker) -> None:
    while True:
        await asyncio.sleep(TICK_S)
        out = monitor.tick()
        if out:
            await broker.publish(*out)
        try:
            monitor.store.flush()
        except OSError as exc:
            log.error("could not save the monitor's state (%s); will retry", exc)


async def main(stop: asyncio.Event) -> None:
    settings = Settings.from_env(environ())
    contracts = Contracts(settings.contracts_dir)
    try:
        model = verify(settings.model_path)
        reference = load_reference(settings.reference_path, model.version, model.sha256)
    except ArtifactError as exc:
        raise ConfigError(str(exc)) from None
    store = Store(settings.state_path)
    monitor = Monitor(store, reference, settings.judging)
    log.info("monitoring model %s against %s", model.version, settings.reference_path)
    broker = Broker(settings.broker, contracts, "monitor")
    # Every report and alert sums up a window of rows: a span per delivery batch, linked to each
    # row, rather than one in every row's trace.
    broker.consume("features", monitor.on_message, aggregate=True)
    broker.consume("metric_record", monitor.on_message, aggregate=True)
    broker.on_flush(store.flush)
    if not await broker.start(stop):
        store.close()
        return
    ticker = broker.watch(tick_forever(monitor, broker), "window ticker")
    try:
        await broker.run_until(stop)
    finally:
        ticker.cancel()
    store.flush()
    store.close()


if __name__ == "__main__":
    run("monitor", main)
