"""`modelwatch metric`: join y_true and y_pred by id, append one CSV row per id and publish it
as a metric_record message once it is durable. With METRIC_SHARDS > 1, several metric processes
share the join, a shard each at a time (shards.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.common.broker import Broker
from services.common.contracts import Contracts
from services.common.runtime import run
from services.common.settings import environ
from services.metric.settings import Settings
from services.metric.shards import POLL_S, Shards

log = logging.getLogger("modelwatch.metric")


async def main(stop: asyncio.Event) -> None:
    settings = Settings.from_env(environ())
    contracts = Contracts(settings.contracts_dir)
    broker = Broker(settings.broker, contracts, "metric")
    shards = Shards(settings, contracts, broker)
    try:
        # Before connecting: a standby (every shard held by others) holds no connection open.
        while not shards.owned and not stop.is_set():
            await shards.balance()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)
        broker.on_flush(shards.flush)
        broker.on_stop(shards.drained)
        if not await broker.start(stop):
            return
        shards.start()
        if not contracts.routed("metric_record"):
            log.info("no queue takes metric_record in the catalog: rows are not published")
        balancer = broker.watch(shards.balance_forever(stop), "shard balance")
        try:
            await broker.run_until(stop)
        finally:
            balancer.cancel()
    finally:
        shards.close()


if __name__ == "__main__":
    run("metric", main)
