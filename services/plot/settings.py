"""The plot service's settings, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common import settings as env_


@dataclass(frozen=True)
class Settings:
    metric_log_path: Path
    plot_path: Path
    interval_s: float

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        plot_path = env_.writable_file(env, "PLOT_PATH", "logs/error_distribution.png")
        if plot_path.suffix.lower() != ".png":
            raise env_.ConfigError(f"PLOT_PATH must end in .png, got {str(plot_path)!r}")
        return cls(
            metric_log_path=env_.path(env, "METRIC_LOG_PATH", "logs/metric_log.csv"),
            plot_path=plot_path,
            interval_s=env_.number(env, "PLOT_INTERVAL_S", 10.0, minimum=0.1),
        )
