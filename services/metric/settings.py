"""The metric service's settings, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common import settings as env_


@dataclass(frozen=True)
class Settings:
    broker: env_.BrokerSettings
    contracts_dir: Path
    log_path: Path
    orphan_log_path: Path
    state_path: Path
    join_timeout_s: float
    dedup_retention_s: float

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        return cls(
            broker=env_.BrokerSettings.from_env(env),
            contracts_dir=env_.contracts_dir(env),
            log_path=env_.writable_file(env, "METRIC_LOG_PATH", "logs/metric_log.csv"),
            orphan_log_path=env_.writable_file(env, "METRIC_ORPHAN_LOG_PATH", "logs/orphans.csv"),
            state_path=env_.writable_file(env, "METRIC_STATE_PATH", "logs/metric_state.sqlite3"),
            join_timeout_s=env_.number(env, "METRIC_JOIN_TIMEOUT_S", 300.0, minimum=0.01),
            dedup_retention_s=env_.number(env, "METRIC_DEDUP_RETENTION_S", 3600.0, minimum=1.0),
        )
