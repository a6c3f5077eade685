"""`modelwatch metric`: join y_true and y_pred by id and append one CSV row per id."""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from services.common.broker import Broker
from services.common.contracts import Contracts
from services.common.messages import Message, Outgoing, utc_now
from services.common.runtime import run
from services.common.settings import environ
from services.metric import handler
from services.metric.settings import Settings
from services.metric.store import AppendOnlyCsv, Store

log = logging.getLogger("modelwatch.metric")


def on_half(message: Message, store: Store, contracts: Contracts) -> list[Outgoing]:
    """Apply the handler's decision to the store; the broker acks after the next flush."""
    half = handler.half_of(message, utc_now())
    same, partner = store.lookup(half.id, half.kind)
    decision = handler.handle(half, same, partner, utc_now())
    match decision:
        case handler.Keep():
            store.keep(half)
        case handler.Record(row=row):
            contracts.check_output("metric_record", row)
            store.record(half, row)
        case handler.Orphan(record=record):
            contracts.check_output("orphan_record", record)
            store.orphan(half, record)
        case handler.Duplicate():
            log.info("duplicate %s for %s ignored", half.kind, half.id)
    return []


def sweep(store: Store, contracts: Contracts, settings: Settings) -> None:
    """Record halves that waited longer than the join timeout as orphans; forget old ids."""
    now = time.time()
    for half in store.expired(now - settings.join_timeout_s):
        record = handler.orphan_record(half, utc_now(), "timeout")
        contracts.check_output("orphan_record", record)
        store.orphan(half, record)
        log.warning(
            "%s for %s had no partner after %g s: recorded as an orphan",
            half.kind,
            half.id,
            settings.join_timeout_s,
        )
    store.forget(now - settings.dedup_retention_s)
    try:
        store.flush()
    except OSError as exc:
        log.error("could not write orphan records (%s); will retry", exc)


async def sweep_forever(store: Store, contracts: Contracts, settings: Settings) -> None:
    every = min(settings.join_timeout_s / 4, 5.0)
    while True:
        await asyncio.sleep(every)
        sweep(store, contracts, settings)


async def main(stop: asyncio.Event) -> None:
    settings = Settings.from_env(environ())
    contracts = Contracts(settings.contracts_dir)
    store = Store(
        settings.state_path,
        AppendOnlyCsv(settings.log_path, contracts.columns("metric_record"), "METRIC_LOG_PATH"),
        AppendOnlyCsv(
            settings.orphan_log_path, contracts.columns("orphan_record"), "METRIC_ORPHAN_LOG_PATH"
        ),
    )
    store.flush()  # writes the header of a new file
    log.info(
        "writing %s (%d halves waiting for a partner)", settings.log_path, store.pending_count()
    )
    broker = Broker(settings.rabbitmq_url, contracts, "metric", prefetch=settings.prefetch)
    process = functools.partial(on_half, store=store, contracts=contracts)
    broker.consume("y_true", process)
    broker.consume("y_pred", process)
    broker.on_flush(store.flush)
    await broker.start()
    sweeper = asyncio.create_task(sweep_forever(store, contracts, settings))
    try:
        await broker.run_until(stop)
    finally:
        sweeper.cancel()
    store.flush()
    store.close()


if __name__ == "__main__":
    run("metric", main)
