"""The monitor's statistics against independent implementations: scipy, numpy, river."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from river.drift import PageHinkley as RiverPageHinkley
from scipy import stats as scipy_stats

from services.monitor import stats

RNG = np.random.default_rng(42)
SAMPLES = {
    "normal": (RNG.normal(0, 1, 353), RNG.normal(0, 1, 500)),
    "shifted": (RNG.normal(0, 1, 353), RNG.normal(0.3, 1, 500)),
    "heavy tails": (RNG.standard_t(2, 1000), RNG.standard_t(2, 300)),
    "ties": (RNG.integers(0, 5, 400).astype(float), RNG.integers(0, 6, 500).astype(float)),
    "large reference": (RNG.normal(0, 1, 4000), RNG.normal(0, 1.2, 800)),
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


def test_a_reference_over_the_sample_cap_keeps_order_statistics() -> None:
    ref, cur = RNG.normal(0, 1, 50_000), RNG.normal(0.1, 1, 500)
    reference = stats.distribution(ref)
    assert len(reference["sample"]) == stats.MAX_SAMPLE == 5000
    exact = scipy_stats.wasserstein_distance(ref, cur) / ref.std()
    assert stats.wasserstein_normed(reference, cur) == pytest.approx(exact, abs=0.005)
    assert stats.ks(reference, cur)[0] == pytest.approx(
        scipy_stats.ks_2samp(ref, cur).statistic, abs=0.002
    )


def test_distribution_bins_hold_a_tenth_each() -> None:
    reference = stats.distribution(RNG.normal(0, 1, 1000))
    assert reference["edges"] == sorted(reference["edges"]) and len(reference["edges"]) == 9
    assert sum(reference["proportions"]) == pytest.approx(1.0)
    assert reference["proportions"] == pytest.approx([0.1] * 10, abs=0.002)


@pytest.mark.parametrize("name", ["normal", "shifted", "ties", "large reference"])
def test_psi_matches_the_formula_over_numpy_histograms(name: str) -> None:
    ref, cur = SAMPLES[name]
    reference = stats.distribution(ref)
    # Independently: np.histogram over the same bin edges (right-open bins, like searchsorted
    # with side="right"), then the formula written out, empty bins at Evidently's 0.0001.
    edges = np.concatenate([[-np.inf], reference["edges"], [np.inf]])
    counts_ref = np.array([np.sum((ref >= lo) & (ref < hi)) for lo, hi in pairwise(edges)])
    counts_cur = np.array([np.sum((cur >= lo) & (cur < hi)) for lo, hi in pairwise(edges)])
    p = np.maximum(counts_ref / ref.size, 0.0001)
    q = np.maximum(counts_cur / cur.size, 0.0001)
    assert stats.psi(reference, cur) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))


def test_psi_of_a_sample_against_itself_is_zero_and_grows_with_a_shift() -> None:
    ref = RNG.normal(0, 1, 2000)
    reference = stats.distribution(ref)
    assert stats.psi(reference, ref) == pytest.approx(0.0, abs=1e-12)
    assert stats.psi(reference, ref + 0.2) < stats.psi(reference, ref + 1.0)


def test_error_summary_matches_numpy() -> None:
    errors = np.abs(RNG.normal(0, 50, 777))
    summary = stats.error_summary(errors)
    assert summary["mae"] == pytest.approx(errors.mean())
    assert summary["rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)))
    assert summary["p90"] == pytest.approx(np.percentile(errors, 90))


def _streams() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    calm = np.abs(rng.normal(0, 1.25, 6000))
    return {
        "no change": calm,
        "step up": np.concatenate([calm[:2000], 1.4 * calm[2000:4000]]),
        "gradual": calm * np.linspace(1, 2, calm.size),
        "step down": np.concatenate([calm[:2000], 0.3 * calm[2000:4000]]),
    }


@pytest.mark.parametrize("mode", ["up", "both"])
@pytest.mark.parametrize("params", [{}, {"delta": 0.005, "threshold": 5.0}])
def test_page_hinkley_fires_where_rivers_does(mode: str, params: dict) -> None:
    detections = 0
    for name, values in _streams().items():
        ours, theirs = stats.PageHinkley(mode=mode, **params), RiverPageHinkley(mode=mode,
            **{"delta": 0.1, "threshold": 50.0, **params})  # fmt: skip
        fired, expected = [], []
        for i, x in enumerate(values):
            theirs.update(float(x))
            if ours.update(float(x)):
                fired.append(i)
            if theirs.drift_detected:
                expected.append(i)
        assert fired == expected, name
        detections += len(fired)
    assert detections, "some streams change: some detection is expected"


def test_page_hinkley_detects_a_40_percent_rise_and_not_noise() -> None:
    streams = _streams()
    detector = stats.PageHinkley()
    assert not any(detector.update(float(x)) for x in streams["no change"])
    detector = stats.PageHinkley()
    at = next(i for i, x in enumerate(streams["step up"]) if detector.update(float(x)))
    assert 2000 < at < 2400


def test_page_hinkley_resumes_exactly_from_its_saved_state() -> None:
    values = _streams()["step up"]
    whole, first = stats.PageHinkley(), stats.PageHinkley()
    expected = [whole.update(float(x)) for x in values]
    got = [first.update(float(x)) for x in values[:2100]]
    resumed = stats.PageHinkley.from_dict(first.to_dict())
    got += [resumed.update(float(x)) for x in values[2100:]]
    assert got == expected and any(expected)
    assert stats.PageHinkley.from_dict(stats.PageHinkley().to_dict()).min_up == float("inf")
