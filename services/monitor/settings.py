"""The monitor service's settings, read once from the environment (docs/settings.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common import settings as env_
from services.common.settings import ConfigError


@dataclass(frozen=True)
class Judging:
    """How windows are cut and judged; the defaults and why are in docs/monitoring.md."""

    window_rows: int = 500
    window_s: float = 600.0
    min_rows: int = 300
    psi: float = 0.1  # Evidently's default PSI threshold
    # Evidently's test for a reference of up to 1,000 rows is KS at 0.05; an alert is judged on
    # every column of every window, so a stricter level keeps false alarms rare (monitoring.md).
    ks_pvalue: float = 0.01
    wasserstein: float = 0.1  # Evidently's default (normed) for a larger reference
    drift_share: float = 0.5  # Evidently's dataset drift: this share of the features drifted
    error_tolerance: float = 0.2  # error statistics may exceed the holdout's by this fraction
    change_delta: float = 0.1
    change_threshold: float = 50.0


@dataclass(frozen=True)
class Settings:
    broker: env_.BrokerSettings
    contracts_dir: Path
    model_path: Path
    reference_path: Path
    state_path: Path
    judging: Judging

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        model_path = env_.path(env, "MODEL_PATH", "models/model.json")
        judging = Judging(
            window_rows=env_.integer(env, "MONITOR_WINDOW_ROWS", Judging.window_rows, minimum=2),
            window_s=env_.number(env, "MONITOR_WINDOW_S", Judging.window_s, minimum=0.1),
            min_rows=env_.integer(env, "MONITOR_MIN_ROWS", Judging.min_rows, minimum=2),
            psi=env_.number(env, "MONITOR_PSI_THRESHOLD", Judging.psi),
            ks_pvalue=_share(env, "MONITOR_KS_PVALUE", Judging.ks_pvalue),
            wasserstein=env_.number(env, "MONITOR_WASSERSTEIN_THRESHOLD", Judging.wasserstein),
            drift_share=_share(env, "MONITOR_DRIFT_SHARE", Judging.drift_share),
            error_tolerance=env_.number(env, "MONITOR_ERROR_TOLERANCE", Judging.error_tolerance),
            change_delta=env_.number(env, "MONITOR_CHANGE_DELTA", Judging.change_delta),
            change_threshold=env_.number(
                env, "MONITOR_CHANGE_THRESHOLD", Judging.change_threshold, minimum=0.001
            ),
        )
        if judging.min_rows > judging.window_rows:
            raise ConfigError(
                f"MONITOR_MIN_ROWS ({judging.min_rows}) must not exceed MONITOR_WINDOW_ROWS "
                f"({judging.window_rows}): no window would ever be judged"
            )
        default_reference = str(model_path.with_name(model_path.name + ".reference.json"))
        return cls(
            broker=env_.BrokerSettings.from_env(env),
            contracts_dir=env_.contracts_dir(env),
            model_path=model_path,
            reference_path=env_.path(env, "MONITOR_REFERENCE_PATH", default_reference),
            state_path=env_.writable_file(env, "MONITOR_STATE_PATH", "logs/monitor_state.sqlite3"),
            judging=judging,
        )


def _share(env: Mapping[str, str], name: str, default: float) -> float:
    value = env_.number(env, name, default)
    if not 0 < value < 1:
        raise ConfigError(f"{name} must be between 0 and 1 (exclusive), got {value:g}")
    return value
