"""`modelwatch features`: emit a random diabetes row every FEATURES_INTERVAL_S seconds.

FEATURES_DRIFT shifts chosen features from a chosen row on, to see the monitor react.

With FEATURES_COUNT=N it stops after N rows and exits 0 once the broker confirmed all of them.
Up to FEATURES_MAX_IN_FLIGHT rows wait for confirms at once, so full speed is not one round trip
per row.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import uuid

from sklearn.datasets import load_diabetes

from observability import attributes as attr
from observability import tracer
from services.common.broker import Broker, MessageTooLarge
from services.common.contracts import Contracts
from services.common.messages import utc_now
from services.common.runtime import run
from services.common.settings import ConfigError, environ
from services.features import handler
from services.features.settings import Settings

log = logging.getLogger("modelwatch.features")
# At full speed, rows are handed to the loop in bursts: their publishes share socket writes
# (one write per row made the send syscall a large share of this process's CPU; docs/benchmark.md).
FULL_SPEED_BURST = 64


async def main(stop: asyncio.Event) -> int:
    data = load_diabetes()
    settings = Settings.from_env(environ(), data.feature_names)
    contracts = Contracts(settings.contracts_dir)
    version = emitted_version(contracts, settings.schema_version)
    stds = data.data.std(axis=0)  # FEATURES_DRIFT's unit: each feature's std over all rows
    if settings.drifts:
        log.info("FEATURES_DRIFT: %s", "; ".join(map(str, settings.drifts)))
    rng = random.Random(settings.seed)
    broker = Broker(settings.broker, contracts, "features")
    if not await broker.start(stop):
        return 0
    window = asyncio.Semaphore(settings.max_in_flight)
    in_flight: set[asyncio.Task[bool]] = set()
    emitted, refused = 0, 0

    def finished(task: asyncio.Task[bool]) -> None:
        nonlocal refused
        in_flight.discard(task)
        window.release()
        refused += not task.cancelled() and task.exception() is None and not task.result()

    for index in itertools.count() if settings.count == 0 else range(settings.count):
        if stop.is_set():
            break
        for starting in (d for d in settings.drifts if d.after == index):
            log.info("drift starts at row %d: %s", index, starting)
        row = rng.randrange(len(data.target))
        values = handler.drift(data.data[row], data.feature_names, settings.drifts, index, stds)
        messages = handler.emit(
            values, data.target[row], str(uuid.uuid4()), utc_now(), version, data.feature_names
        )
        await window.acquire()
        task = asyncio.create_task(_send_all(broker, messages))
        in_flight.add(task)
        task.add_done_callback(finished)
        emitted += 1
        if settings.interval_s:
            await _sleep_or_stop(stop, settings.interval_s)
        elif emitted % FULL_SPEED_BURST == 0:
            await asyncio.sleep(0)  # let the socket and the confirms be serviced
    # A finite run waits as long as it takes; a stopped one gives the broker a bounded time.
    _, unconfirmed = (
        await asyncio.wait(in_flight, timeout=30 if stop.is_set() else None)
        if in_flight
        else (set(), set())
    )
    await broker.stop()
    if refused:
        log.error("%d of %d rows were refused as too large and not sent", refused, emitted)
        return 1
    if unconfirmed:
        log.error(
            "stopping with %d of %d rows not confirmed by the broker", len(unconfirmed), emitted
        )
        return 1
    log.info("emitted %d rows, all confirmed by the broker", emitted)
    return 0


def emitted_version(contracts: Contracts, requested: int) -> int:
    """The features version to emit: the catalog's, or FEATURES_SCHEMA_VERSION if it is safe."""
    features = contracts.types["features"]
    version = requested or features.produces
    if version not in features.versions:
        raise ConfigError(
            f"FEATURES_SCHEMA_VERSION: features has versions {sorted(features.versions)}, "
            f"not {version}"
        )
    refusing = contracts.unaccepted_by("features", version)
    if refusing:
        raise ConfigError(
            f"FEATURES_SCHEMA_VERSION={version}: not accepted by {', '.join(refusing)}; "
            "release the consumers first (contracts/README.md, Migration)"
        )
    return version


async def _send_all(broker: Broker, messages: list) -> bool:
    """Publish one row's messages; False if the broker's size limit refuses them."""
    # One emission, one trace: both publishes are children of this span, which ends once the
    # broker confirmed them.
    try:
        with tracer().start_as_current_span(
            "emit", attributes={attr.MESSAGING_MESSAGE_ID: messages[0].id}
        ):
            await broker.publish(*messages)
    except MessageTooLarge as exc:
        log.error("row not sent: %s", exc)  # resending cannot help; go on with the next row
        return False
    return True


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


if __name__ == "__main__":
    run("features", main)
