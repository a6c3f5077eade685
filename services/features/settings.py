"""The features service's settings, read once from the environment."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common import settings as env_
from services.common.settings import ConfigError

DRIFT_FORM = "<feature>:<shift in standard deviations>@<after N rows>, e.g. bmi:+2@1000"


@dataclass(frozen=True)
class Drift:
    """From row `after` on (rows counted from 0), add `shift` standard deviations to `feature`."""

    feature: str
    shift: float
    after: int

    def __str__(self) -> str:
        return f"{self.feature} {self.shift:+g} sd from row {self.after}"


@dataclass(frozen=True)
class Settings:
    broker: env_.BrokerSettings
    contracts_dir: Path
    interval_s: float
    count: int
    seed: int | None
    max_in_flight: int
    schema_version: int
    drifts: tuple[Drift, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str], feature_names: Sequence[str]) -> Settings:
        seed = env_.integer(env, "FEATURES_SEED", -1, minimum=-1)
        return cls(
            broker=env_.BrokerSettings.from_env(env),
            contracts_dir=env_.contracts_dir(env),
            interval_s=env_.number(env, "FEATURES_INTERVAL_S", 1.0),
            count=env_.integer(env, "FEATURES_COUNT", 0),
            seed=None if seed < 0 else seed,
            max_in_flight=env_.integer(env, "FEATURES_MAX_IN_FLIGHT", 1000, minimum=1),
            schema_version=env_.integer(env, "FEATURES_SCHEMA_VERSION", 0, minimum=0),
            drifts=drifts(env, "FEATURES_DRIFT", feature_names),
        )


def drifts(env: Mapping[str, str], name: str, feature_names: Sequence[str]) -> tuple[Drift, ...]:
    """Comma-separated `<feature>:<shift>@<N>` entries, one per feature; empty or unset: none."""
    raw = env.get(name, "").strip()
    if not raw:
        return ()
    found = tuple(_drift(name, entry.strip(), feature_names) for entry in raw.split(","))
    named = [d.feature for d in found]
    twice = next((f for f in named if named.count(f) > 1), None)
    if twice:
        raise ConfigError(f"{name}: {twice} is given twice in {raw!r}; one entry per feature")
    return found


def _drift(name: str, entry: str, feature_names: Sequence[str]) -> Drift:
    feature, colon, rest = entry.partition(":")
    shift, at, after = rest.partition("@")
    feature, shift, after = feature.strip(), shift.strip(), after.strip()
    if not (colon and at and feature and shift and after):
        raise ConfigError(f"{name}: malformed entry {entry!r}; expected {DRIFT_FORM}")
    if feature not in feature_names:
        raise ConfigError(
            f"{name}: unknown feature {feature!r} in {entry!r}; the features are "
            f"{', '.join(feature_names)}"
        )
    try:
        drift = Drift(feature, float(shift), int(after))
    except ValueError:
        raise ConfigError(f"{name}: malformed entry {entry!r}; expected {DRIFT_FORM}") from None
    if not math.isfinite(drift.shift):
        raise ConfigError(f"{name}: the shift in {entry!r} must be a finite number")
    if drift.after < 0:
        raise ConfigError(f"{name}: N in {entry!r} must be >= 0 (rows are counted from 0)")
    return drift
