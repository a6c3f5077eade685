"""The monitor's statistics against independent implementations: scipy, numpy, pandas, river, and
values Evidently computed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from river.drift import PageHinkley as RiverPageHinkley
from scipy import stats as scipy_stats

from services.monitor import stats

RNG = np.random.default_rng(42)
SAMPLES = {
    "normal": (RNG.normal(0, 1, 353), RNG.normal(0, 1, 500)),
    "shifted": (RNG.normal(0, 1, 353), RNG.normal(0.3, 1, 500)),
    "wider": (RNG.normal(0, 1, 1000), RNG.normal(0, 1.5, 500)),
    "heavy tails": (RNG.standard_t(2, 1000), RNG.standard_t(2, 300)),
    "ties": (RNG.integers(0, 5, 400).astype(float), RNG.integers(0, 6, 500).astype(float)),
    "small": (RNG.normal(0, 1, 8), RNG.normal(1, 1, 5)),
    "one current value": (RNG.normal(0, 1, 50), np.array([0.3])),
    "large reference": (RNG.normal(0, 1, 5000), RNG.normal(0, 1.2, 800)),
}


@pytest.mark.parametrize("name", SAMPLES)
def test_ks_and_wasserstein_match_scipy(name: str) -> None:
    ref, cur = SAMPLES[name]
    reference = stats.distribution(ref)
    statistic, pvalue = stats.ks(reference, cur)
    expected = scipy_stats.ks_2samp(ref, cur, method="asymp")
    assert statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert pvalue == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
    distance = scipy_stats.wasserstein_distance(ref, cur) / ref.std()
    assert stats.wasserstein_normed(reference, cur) == pytest.approx(distance, rel=1e-9)


def test_wasserstein_of_a_constant_reference_is_normed_by_evidentlys_floor() -> None:
    ref, cur = np.full(300, 2.0), RNG.normal(2, 0.1, 500)
    expected = scipy_stats.wasserstein_distance(ref, cur) / 0.001
    assert stats.wasserstein_normed(stats.distribution(ref), cur) == pytest.approx(expected)


def test_ks_pvalue_is_near_scipys_exact_one_where_decisions_are_made() -> None:
    """scipy's default for these sizes is the exact p-value; the asymptotic one stays within
    10% of it for p-values between 0.01 and 0.2 (measured: at most 6%)."""
    rng = np.random.default_rng(1)
    compared = 0
    for n in (30, 100, 300, 500):
        for _ in range(50):
            ref, cur = rng.normal(0, 1, 353), rng.normal(0.15, 1, n)
            exact = scipy_stats.ks_2samp(ref, cur).pvalue
            if 0.01 < exact < 0.2:
                compared += 1
                assert stats.ks(stats.distribution(ref), cur)[1] == pytest.approx(exact, rel=0.1)
    assert compared > 20


@pytest.mark.parametrize("draw", [lambda n: RNG.normal(0, 1, n), lambda n: RNG.integers(0, 20, n)])
def test_a_reference_over_the_sample_cap_keeps_order_statistics(draw) -> None:
    ref, cur = draw(50_000).astype(float), draw(500) + 0.1
    reference = stats.distribution(ref)
    sample = np.asarray(reference["sample"])
    assert sample.size == stats.MAX_SAMPLE == 5000
    # Against scipy given the capped sample (normed by the full data's std): exact.
    statistic, pvalue = stats.ks(reference, cur)
    assert statistic == pytest.approx(scipy_stats.ks_2samp(sample, cur).statistic, abs=1e-12)
    assert stats.wasserstein_normed(reference, cur) == pytest.approx(
        scipy_stats.wasserstein_distance(sample, cur) / ref.std(), rel=1e-9
    )
    # Against scipy given all 50,000 values: the sample's order statistics are 1/4999 apart,
    # so the KS statistic moves by < 0.0002 and the p-value (from the full n) by < 5%
    # (measured: 2.5%); the distance by < 0.005 std for these light-tailed data (measured:
    # 0.0005; heavy tails lose more, their extremes fall between the order statistics).
    full = scipy_stats.ks_2samp(ref, cur)  # asymptotic p-value: scipy's choice over 10,000
    assert statistic == pytest.approx(full.statistic, abs=0.0002)
    assert pvalue == pytest.approx(full.pvalue, rel=0.05)
    exact = scipy_stats.wasserstein_distance(ref, cur) / ref.std()
    assert stats.wasserstein_normed(reference, cur) == pytest.approx(exact, abs=0.005)


def test_distribution_describes_values_in_ten_bins() -> None:
    values = RNG.normal(0, 1, 1000)
    reference = stats.distribution(values)
    assert reference["n"] == 1000
    assert reference["mean"] == pytest.approx(values.mean())
    assert reference["std"] == pytest.approx(values.std())
    assert reference["edges"] == sorted(reference["edges"]) and len(reference["edges"]) == 9
    assert sum(reference["proportions"]) == pytest.approx(1.0)
    assert reference["proportions"] == pytest.approx([0.1] * 10, abs=0.002)
    assert reference["sample"] == sorted(values.tolist())


def test_distribution_caps_its_sample_and_keeps_the_extremes() -> None:
    values = RNG.lognormal(0, 1, 12_345)
    reference = stats.distribution(values)
    sample = reference["sample"]
    assert len(sample) == stats.MAX_SAMPLE and sample == sorted(sample)
    assert (sample[0], sample[-1]) == (values.min(), values.max())
    assert sum(reference["proportions"]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        stats.distribution([])


def _psi_written_out(reference: dict, ref: np.ndarray, cur: np.ndarray) -> float:
    """PSI from np.histogram over the same edges (bins closed on the left, as searchsorted
    with side="right" makes them), empty bins filled as Evidently's get_binned_data fills them,
    bins empty on both sides left out."""
    edges = np.concatenate([[-np.inf], reference["edges"], [np.inf]])
    p, q = np.histogram(ref, edges)[0] / ref.size, np.histogram(cur, edges)[0] / cur.size
    assert p == pytest.approx(reference["proportions"])
    used = (p > 0) | (q > 0)

    def fill(shares: np.ndarray) -> np.ndarray:
        smallest = min(s for s in shares if s != 0)
        return np.where(shares == 0, 0.0001 if smallest > 0.0001 else smallest / 10**6, shares)

    p, q = fill(p)[used], fill(q)[used]
    return float(sum((qi - pi) * np.log(qi / pi) for pi, qi in zip(p, q, strict=True)))


@pytest.mark.parametrize("name", ["normal", "shifted", "wider", "ties", "large reference"])
def test_psi_matches_the_formula_over_numpy_histograms(name: str) -> None:
    ref, cur = SAMPLES[name]
    assert stats.psi(stats.distribution(ref), cur) == pytest.approx(
        _psi_written_out(stats.distribution(ref), ref, cur), rel=1e-12
    )


def test_psi_of_a_window_in_few_bins_fills_the_empty_ones() -> None:
    ref, cur = RNG.normal(0, 1, 2000), RNG.normal(3, 0.3, 500)
    reference = stats.distribution(ref)
    assert np.count_nonzero(np.histogram(cur, [-np.inf, *reference["edges"], np.inf])[0]) < 3
    assert stats.psi(reference, cur) == pytest.approx(_psi_written_out(reference, ref, cur))
    assert stats.psi(reference, ref) == pytest.approx(0.0, abs=1e-12)
    assert stats.psi(reference, ref + 0.2) < stats.psi(reference, ref + 1.0)


# Evidently 0.7.23's PSI (evidently.legacy.calculations.stattests.psi) given the same bins: each
# value replaced by its bin's index, passed as a categorical column. "tiny" has a bin holding
# 0.005% of the reference, so Evidently fills empty bins with a millionth of that share.
_TINY = np.r_[np.zeros(50_000), np.full(5, 0.7), np.ones(49_995)]
_GRID = np.linspace(-3, 3, 1001)
EVIDENTLY_PSI = [
    (_GRID, np.linspace(-1, 5, 500), 2.566161160431274),
    (_GRID, np.linspace(4, 5, 500), 8.265862877851877),
    (_TINY, np.r_[np.zeros(250), np.ones(250)], 3.466235927801393e-05),
    (_TINY, np.r_[np.zeros(250), np.full(50, 0.7), np.ones(200)], 0.7820034032853032),
    (_TINY, np.r_[np.zeros(20_000), [0.7], np.ones(19_999)], 1.7329929607755922e-05),
]


@pytest.mark.parametrize(("ref", "cur", "expected"), EVIDENTLY_PSI)
def test_psi_equals_evidentlys(ref: np.ndarray, cur: np.ndarray, expected: float) -> None:
    assert stats.psi(stats.distribution(ref), cur) == pytest.approx(expected, rel=1e-12)


def test_error_summary_matches_pandas() -> None:
    errors = np.abs(RNG.normal(0, 50, 777))
    series = pd.Series(errors)
    summary = stats.error_summary(errors)
    assert summary == pytest.approx(
        {
            "mae": series.mean(),
            "rmse": np.linalg.norm(errors) / np.sqrt(errors.size),
            "p50": series.median(),
            "p90": series.quantile(0.9),
            "p99": series.quantile(0.99),
        },
        rel=1e-12,
    )
    with pytest.raises(ValueError):
        stats.error_summary([])


# Absolute values of normal noise scaled to mean 1 (sd 0.76): the normalised error stream.
_SCALE = np.sqrt(np.pi / 2)


def _streams() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    calm = np.abs(rng.normal(0, _SCALE, 6000))
    return {
        "no change": calm,
        "step up": np.concatenate([calm[:2000], 1.4 * calm[2000:4000]]),
        "gradual": calm * np.linspace(1, 2, calm.size),
        "step down": np.concatenate([calm[:2000], 0.3 * calm[2000:4000]]),
        "bursts": calm * np.where(np.arange(calm.size) % 1000 < 300, 2.0, 1.0),
    }


PARAMS = [
    {},  # ours
    {"delta": 0.005, "alpha": 1 - 0.0001},  # river's
    {"delta": 0.05, "threshold": 5.0, "min_instances": 10},  # many detections, many resets
]


@pytest.mark.parametrize("mode", ["up", "down", "both"])
@pytest.mark.parametrize("params", PARAMS)
def test_page_hinkley_fires_where_rivers_does(mode: str, params: dict) -> None:
    ours = {"min_instances": 30, "delta": 0.1, "threshold": 50.0, "alpha": 1.0, **params}
    detections = 0
    for name, values in _streams().items():
        detector, river = stats.PageHinkley(mode=mode, **ours), RiverPageHinkley(mode=mode, **ours)
        fired, expected = [], []
        for i, x in enumerate(values.tolist()):
            river.update(x)
            if detector.update(x):
                fired.append(i)
            if river.drift_detected:
                expected.append(i)
        assert fired == expected, name
        detections += len(fired)
    assert detections, "some streams change: some detection is expected"


def test_page_hinkley_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError):
        stats.PageHinkley(mode="sideways")


def test_page_hinkley_detects_a_40_percent_rise_and_not_noise() -> None:
    """The defaults' figures (PageHinkley's docstring), with looser bounds."""
    false_alarms, delays = 0, []
    for seed in range(50):
        rng = np.random.default_rng(seed)
        detector = stats.PageHinkley()
        false_alarms += sum(map(detector.update, np.abs(rng.normal(0, _SCALE, 10_000)).tolist()))
        values = np.abs(rng.normal(0, _SCALE, 3000)) * np.where(np.arange(3000) < 2000, 1, 1.4)
        detector = stats.PageHinkley()
        delays.append(next(i for i, x in enumerate(values.tolist()) if detector.update(x)) - 2000)
    assert false_alarms == 0
    assert min(delays) >= 0 and np.median(delays) < 250 and max(delays) < 500


@pytest.mark.parametrize("cut", [0, 10, 2100, None])
def test_page_hinkley_resumes_exactly_from_its_saved_state(cut: int | None) -> None:
    values = _streams()["bursts"].tolist()
    whole = stats.PageHinkley(delta=0.05, threshold=10.0)
    expected = [whole.update(x) for x in values]
    if cut is None:  # right at a detection: the restored detector must start over next
        cut = expected.index(True) + 1
    first = stats.PageHinkley(delta=0.05, threshold=10.0)
    got = [first.update(x) for x in values[:cut]]
    saved = json.dumps(first.to_dict(), allow_nan=False)
    resumed = stats.PageHinkley.from_dict(json.loads(saved))
    got += [resumed.update(x) for x in values[cut:]]
    assert got == expected and sum(expected) > 2
    assert json.loads(saved)["params"]["threshold"] == 10.0
