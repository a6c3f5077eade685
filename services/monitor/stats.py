"""The statistics the monitor computes per window, as plain functions of numbers.

A distribution (of a feature, or of the predictions) is described by `distribution`: the reference
side of every drift statistic. It is written by `modelwatch train` beside the model and compared
with each window's values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

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


def _as_array(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=float)
