"""The model service's settings, read once from the environment."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common import settings as env_
from services.common.settings import ConfigError


@dataclass(frozen=True)
class Settings:
    broker: env_.BrokerSettings
    contracts_dir: Path
    model_path: Path
    model_sha256: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        pinned = env.get("MODEL_SHA256", "").strip().lower()
        if pinned and not re.fullmatch(r"[0-9a-f]{64}", pinned):
            raise ConfigError(f"MODEL_SHA256 must be 64 hex digits, got {pinned!r}")
        return cls(
            broker=env_.BrokerSettings.from_env(env),
            contracts_dir=env_.contracts_dir(env),
            model_path=env_.path(env, "MODEL_PATH", "models/model.json"),
            model_sha256=pinned,
        )
