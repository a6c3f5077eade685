"""The statistics of a closed window, each against its threshold (docs/monitoring.md).

- features windows: per feature PSI, KS p-value and normed Wasserstein distance against the
  training data, and the share of features that drifted (Evidently's dataset drift);
- predictions windows: MAE, RMSE and p90 of the absolute error against the holdout's, the same
  drift statistics for the predictions, and how often the change detector fired.

Which drift test decides follows Evidently's defaults: KS (p-value below 0.05) for a reference of
up to 1,000 rows, normed Wasserstein (0.1) above; PSI is judged for every column. A statistic with
threshold None is reported only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.monitor import stats
from services.monitor.settings import Judging
from services.monitor.state import Window

EXAMPLES = 3
KS_REFERENCE_MAX = 1000  # Evidently: KS up to this many reference rows, Wasserstein above


@dataclass(frozen=True, slots=True)
class Statistic:
    statistic: str
    feature: str
    value: float
    threshold: float | None
    breached: bool
    examples: tuple[int, ...] = ()  # row numbers in the window behind the value
    column: int = 0  # which value of those rows the examples show

    def entry(self) -> dict:
        return {"statistic": self.statistic, "feature": self.feature, "value": self.value,
                "threshold": self.threshold, "breached": self.breached}  # fmt: skip


def judge(window: Window, reference: dict | None, judging: Judging) -> list[Statistic]:
    rows = np.asarray(window.rows, dtype=float)
    if window.stream == "features":
        assert reference is not None
        names = list(reference["features"])
        features = reference["features"]
        found = [s for j, name in enumerate(names)
                 for s in drift(name, rows[:, j], features[name], judging, j)]  # fmt: skip
        deciding = [s for s in found if s.statistic in ("ks_pvalue", "wasserstein") and s.threshold]
        share = sum(s.breached for s in deciding) / max(len(names), 1)
        found.append(Statistic("drift_share", "", share, judging.drift_share,
                               share >= judging.drift_share))  # fmt: skip
        return found
    return errors(rows, reference, judging, window.changes)


def drift(
    name: str, values: np.ndarray, ref: dict, judging: Judging, column: int
) -> list[Statistic]:
    far = _furthest(np.abs(values - ref["mean"]))
    psi = stats.psi(ref, values)
    _, pvalue = stats.ks(ref, values)
    distance = stats.wasserstein_normed(ref, values)
    small = ref["n"] <= KS_REFERENCE_MAX
    ks_threshold = judging.ks_pvalue if small else None
    w_threshold = None if small else judging.wasserstein
    return [
        Statistic("psi", name, psi, judging.psi, psi >= judging.psi, far, column),
        Statistic("ks_pvalue", name, pvalue, ks_threshold,
                  bool(small and pvalue < judging.ks_pvalue), far, column),
        Statistic("wasserstein", name, distance, w_threshold,
                  bool(not small and distance >= judging.wasserstein), far, column),
    ]  # fmt: skip


def errors(
    rows: np.ndarray, reference: dict | None, judging: Judging, changes: int
) -> list[Statistic]:
    predictions, absolute = rows[:, 0], rows[:, 1]
    summary = stats.error_summary(absolute)
    worst = _furthest(absolute)
    holdout = reference["holdout_error"] if reference else {}
    found = []
    for name, key in (("mae", "mae"), ("rmse", "rmse"), ("p90_error", "p90")):
        limit = holdout[key] * (1 + judging.error_tolerance) if holdout else None
        value = summary[key]
        breached = limit is not None and value > limit
        found.append(Statistic(name, "", value, limit, breached, worst, 1))
    if reference is None:
        return found
    found += drift("prediction", predictions, reference["prediction"], judging, 0)
    found.append(Statistic("error_change", "", float(changes), 1.0, changes >= 1,
                           tuple(range(max(len(rows) - EXAMPLES, 0), len(rows))), 1))  # fmt: skip
    return found


def _furthest(distance: np.ndarray) -> tuple[int, ...]:
    """The rows furthest from the reference: the examples an alert names."""
    return tuple(int(i) for i in np.argsort(-distance, kind="stable")[:EXAMPLES])
