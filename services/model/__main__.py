"""`modelwatch model`: load and verify the artifact, then predict for every features message."""

from __future__ import annotations

import asyncio
import functools
import logging

from observability import attributes as attr
from services.common.broker import Broker
from services.common.contracts import Contracts
from services.common.runtime import run
from services.common.settings import ConfigError, environ
from services.model import handler
from services.model.artifact import ArtifactError, load
from services.model.settings import Settings

log = logging.getLogger("modelwatch.model")


async def main(stop: asyncio.Event) -> None:
    settings = Settings.from_env(environ())
    try:
        model = load(settings.model_path, settings.model_sha256)
    except ArtifactError as exc:
        raise ConfigError(str(exc)) from None
    log.info("loaded model %s (sha256 %s)", model.version, model.sha256)
    broker = Broker(settings.broker, Contracts(settings.contracts_dir), "model")
    broker.consume(
        "features",
        functools.partial(handler.handle, model=model),
        span="predict",
        span_attributes={attr.MODEL_VERSION: model.version},
    )
    if not await broker.start(stop):
        return
    await broker.run_until(stop)


if __name__ == "__main__":
    run("model", main)
