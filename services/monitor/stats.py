"""The statistics the monitor computes per window, as plain functions of numbers.

A distribution (of a feature, or of the predictions) is described by `distribution`: the reference
side of every drift statistic. It is written by `modelwatch train` beside the model and compared
with each window's values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import kstwo

BINS = 10
MAX_SAMPLE = 5000


def distribution(values: Sequence[float], bins: int = BINS, max_sample: int = MAX_SAMPLE) -> dict:
    """Describe `values` for later drift checks.

    - `edges`: the bins - 1 inner edges, the values' quantiles at 1/bins ... (bins-1)/bins
      (numpy's default, linear); a value v falls in bin `np.searchsorted(edges, v, side="right")`.
    - `proportions`: the share of `values` in each of the `bins` bins.
    - `sample`: the sorted values, or `max_sample` evenly spaced order statistics of them when
      there are more (exact Wasserstein and KS need a sample, not bins).
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("a distribution needs at least one value")
    edges = np.quantile(data, np.arange(1, bins) / bins)
    counts = np.bincount(np.searchsorted(edges, data, side="right"), minlength=bins)
    sample = np.sort(data)
    if sample.size > max_sample:
        sample = np.quantile(data, np.linspace(0.0, 1.0, max_sample))
    return {
        "n": int(data.size),
        "mean": float(data.mean()),
        "std": float(data.std()),
        "edges": [float(e) for e in edges],
        "proportions": [float(c) / data.size for c in counts],
        "sample": [float(v) for v in sample],
    }


# Evidently's PSI (its legacy stattests' get_binned_data, read at 0.7.23) keeps non-zero shares
# and fills a share of exactly 0 with 0.0001 - or with a millionth of the smallest non-zero share
# when that is 0.0001 or less - so that ln() stays finite.
EMPTY_BIN = 0.0001
# Evidently's normed Wasserstein divides by max(reference std, 0.001): a constant reference column
# is normed by the floor instead of dividing by zero.
STD_FLOOR = 0.001


def psi(reference: dict, current: Any) -> float:
    """Population Stability Index of `current` over the reference's bins: the sum over bins of
    (current share - reference share) * ln(current share / reference share), with empty bins
    filled as Evidently fills them (`EMPTY_BIN`) and bins empty on both sides left out."""
    values = _as_array(current)
    bins = np.searchsorted(reference["edges"], values, side="right")
    now = np.bincount(bins, minlength=len(reference["proportions"])) / values.size
    then = np.asarray(reference["proportions"], dtype=float)
    # A bin empty on both sides says nothing; with unequal fills it would still add a little.
    used = (now > 0) | (then > 0)
    now, then = _fill_empty(now)[used], _fill_empty(then)[used]
    return float(np.sum((now - then) * np.log(now / then)))


def _fill_empty(shares: np.ndarray) -> np.ndarray:
    smallest = shares[shares > 0].min()
    return np.where(shares == 0, smallest / 1e6 if smallest <= EMPTY_BIN else EMPTY_BIN, shares)


def _cdfs(reference: dict, current: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both empirical CDFs at every point of the merged samples, and the gaps between points."""
    ref = np.asarray(reference["sample"], dtype=float)  # sorted by `distribution`
    cur = np.sort(_as_array(current))
    points = np.sort(np.concatenate([ref, cur]))
    ref_cdf = np.searchsorted(ref, points, side="right") / ref.size
    cur_cdf = np.searchsorted(cur, points, side="right") / cur.size
    return ref_cdf, cur_cdf, np.diff(points)


def wasserstein_normed(reference: dict, current: Any) -> float:
    """The 1-Wasserstein distance between `current` and the reference sample (the area between
    their empirical CDFs), divided by the reference std floored at `STD_FLOOR`: Evidently's
    "wasserstein" stattest."""
    ref_cdf, cur_cdf, gaps = _cdfs(reference, current)
    distance = float(np.sum(np.abs(ref_cdf[:-1] - cur_cdf[:-1]) * gaps))
    return distance / max(reference["std"], STD_FLOOR)


def ks(reference: dict, current: Any) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and its two-sided p-value.

    The p-value is the asymptotic one, as scipy's ks_2samp(method="asymp") computes it, with the
    reference's full size `n` (which a capped sample stands for). scipy's default below 10,000
    values is the exact p-value, which costs up to 5 ms for 5000 x 500 values (x 11 columns per
    window); where decisions are made (p from 0.01 to 0.2) the two differ by a few percent
    (tests/test_monitor_stats.py bounds it).
    """
    ref_cdf, cur_cdf, _ = _cdfs(reference, current)
    statistic = float(np.max(np.abs(ref_cdf - cur_cdf)))
    n, m = reference["n"], np.size(current)
    pvalue = float(kstwo.sf(statistic, round(n * m / (n + m))))
    return statistic, min(max(pvalue, 0.0), 1.0)


def error_summary(absolute_errors: Any) -> dict[str, float]:
    """Mean, root mean square and the 50th, 90th and 99th percentiles (numpy's default linear
    quantiles) of the absolute errors."""
    errors = _as_array(absolute_errors)
    p50, p90, p99 = np.quantile(errors, [0.5, 0.9, 0.99])
    rmse = np.sqrt(np.mean(errors**2))
    return {"mae": float(errors.mean()), "rmse": float(rmse), "p50": float(p50),
            "p90": float(p90), "p99": float(p99)}  # fmt: skip


class PageHinkley:
    """The Page-Hinkley change detector with river.drift.PageHinkley's parameters and arithmetic
    (tests compare their detections value by value), its state a JSON-able dict.

    The monitor feeds it each row's absolute error divided by the holdout MAE (mean about 1
    without a change) and looks for increases. Defaults:
    - delta 0.1: rises below a tenth of the holdout MAE are tolerated;
    - threshold 50: the excess must add up to 50 holdout MAEs;
    - alpha 1 (no forgetting), not river's 0.9999: river fades the cumulated sum but not its
      minimum, so once the faded sum has levelled off noise alone starts to fire.
    Detection delays and false-alarm rates are in docs/benchmark.md (the monitor).
    """

    FIELDS = ("n", "mean", "sum_up", "sum_down", "min_up", "max_down", "detected")

    def __init__(self, min_instances: int = 30, delta: float = 0.1, threshold: float = 50.0,
                 alpha: float = 1.0, mode: str = "up") -> None:  # fmt: skip
        if mode not in ("up", "down", "both"):
            raise ValueError(f"mode must be up, down or both, not {mode!r}")
        self.params = {"min_instances": min_instances, "delta": delta, "threshold": threshold,
                       "alpha": alpha, "mode": mode}  # fmt: skip
        self._reset()

    def _reset(self) -> None:
        self.n, self.mean, self.sum_up, self.sum_down = 0, 0.0, 0.0, 0.0
        self.min_up, self.max_down = float("inf"), -1.0  # river starts max_down at -1
        self.detected = False

    def update(self, x: float) -> bool:
        """Add one value; True if a change is detected at it (the detector then starts over)."""
        p = self.params
        if self.detected:
            self._reset()
        self.n += 1
        # (1 / n) * (x - mean), not (x - mean) / n: river's rounding, so detections agree exactly.
        self.mean += (1.0 / self.n) * (x - self.mean)
        deviation = x - self.mean
        self.sum_up = p["alpha"] * self.sum_up + deviation - p["delta"]
        self.sum_down = p["alpha"] * self.sum_down + deviation + p["delta"]
        self.min_up = min(self.min_up, self.sum_up)
        self.max_down = max(self.max_down, self.sum_down)
        if self.n >= p["min_instances"]:
            up = p["mode"] != "down" and self.sum_up - self.min_up > p["threshold"]
            down = p["mode"] != "up" and self.max_down - self.sum_down > p["threshold"]
            self.detected = up or down
        return self.detected

    def to_dict(self) -> dict:
        """Parameters and state as JSON-able values (`from_dict` restores them)."""
        state = {f: getattr(self, f) for f in self.FIELDS}
        # inf is not JSON: a detector that has seen no value keeps min_up as None.
        state["min_up"] = None if self.min_up == float("inf") else self.min_up
        return {"params": dict(self.params), "state": state}

    @classmethod
    def from_dict(cls, data: dict) -> PageHinkley:
        """The detector `to_dict` described, continuing exactly where it stopped."""
        detector = cls(**data["params"])
        for field in cls.FIELDS:
            setattr(detector, field, data["state"][field])
        if detector.min_up is None:
            detector.min_up = float("inf")
        return detector


def _as_array(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("a window needs at least one value")
    return array
