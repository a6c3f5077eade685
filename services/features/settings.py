"""The features service's settings, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common import settings as env_


@dataclass(frozen=True)
class Settings:
    broker: env_.BrokerSettings
    contracts_dir: Path
    interval_s: float
    count: int
    seed: int | None
    max_in_flight: int
    schema_version: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        seed = env_.integer(env, "FEATURES_SEED", -1, minimum=-1)
        return cls(
            broker=env_.BrokerSettings.from_env(env),
            contracts_dir=env_.contracts_dir(env),
            interval_s=env_.number(env, "FEATURES_INTERVAL_S", 1.0),
            count=env_.integer(env, "FEATURES_COUNT", 0),
            seed=None if seed < 0 else seed,
            max_in_flight=env_.integer(env, "FEATURES_MAX_IN_FLIGHT", 1000, minimum=1),
            schema_version=env_.integer(env, "FEATURES_SCHEMA_VERSION", 0, minimum=0),
        )
