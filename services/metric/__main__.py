"""`modelwatch metric`: join y_true and y_pred by id, append one CSV row per id and publish it
as a metric_record message once it is durable."""

from __future__ import annotations

import asyncio
import functools
import logging

from observability import attributes as attr
from observability import instruments
from services.common.broker import Broker
from services.common.contracts import Contracts
from services.common.runtime import run
from services.common.settings import environ
from services.metric import standby
from services.metric.join import on_half, sweep
from services.metric.outbox import drained, publish_forever
from services.metric.settings import Settings
from services.metric.store import AppendOnlyCsv, Store

log = logging.getLogger("modelwatch.metric")


async def sweep_forever(store: Store, contracts: Contracts, settings: Settings) -> None:
    every = min(settings.join_timeout_s / 4, 5.0)
    while True:
        await asyncio.sleep(every)
        sweep(store, contracts, settings)
        instruments().orphans.set((), store.orphaned)


async def main(stop: asyncio.Event) -> None:
    settings = Settings.from_env(environ())
    contracts = Contracts(settings.contracts_dir)
    # Before the files are read: another process may be writing them (standby.py).
    files = [settings.state_path, settings.log_path, settings.orphan_log_path]
    locks = await standby.hold(files, stop)
    if locks is None:
        return
    store = Store(
        settings.state_path,
        AppendOnlyCsv(settings.log_path, contracts.columns("metric_record"), "METRIC_LOG_PATH"),
        AppendOnlyCsv(
            settings.orphan_log_path, contracts.columns("orphan_record"), "METRIC_ORPHAN_LOG_PATH"
        ),
        publish=contracts.routed("metric_record"),
    )
    store.flush()  # writes the header of a new file
    log.info(
        "writing %s (%d halves waiting for a partner)", settings.log_path, store.pending_count()
    )
    broker = Broker(settings.broker, contracts, "metric")
    process = functools.partial(on_half, store=store, contracts=contracts)
    broker.consume("y_true", process)
    broker.consume("y_pred", process)
    recorded = asyncio.Event()
    recorded.set()  # rows left unpublished by an earlier run go first

    meters = instruments()

    def flush() -> None:
        for row in store.flush():  # counted once durable, like the rows in the CSV
            meters.rows.add(((attr.MODEL_VERSION, row["model_version"]),))
            meters.absolute_error.record(row["absolute_error"],
                                         {attr.MODEL_VERSION: row["model_version"]})  # fmt: skip
        meters.orphans.set((), store.orphaned)
        if store.outbox:
            recorded.set()

    broker.on_flush(flush)
    broker.on_stop(lambda: drained(store))
    if not await broker.start(stop):
        store.close()
        return
    sweeper = broker.watch(sweep_forever(store, contracts, settings), "orphan sweep")
    outbox = broker.watch(publish_forever(store, broker, recorded), "metric_record outbox")
    if not contracts.routed("metric_record"):
        log.info("no queue takes metric_record in the catalog: rows are not published")
    try:
        await broker.run_until(stop)
    finally:
        sweeper.cancel()
        outbox.cancel()
    store.flush()
    store.close()


if __name__ == "__main__":
    run("metric", main)
