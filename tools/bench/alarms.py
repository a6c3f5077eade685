"""How often the monitor alerts without drift, and how soon with one: `python -m
tools.bench.alarms --seeds 40`.

Rows are drawn as the features service draws them (uniformly from the diabetes data), predicted
by the real model, and fed as the monitor's events straight to its handler (no broker: the figures
are about the statistics, not the transport). docs/benchmark.md keeps the results.
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.datasets import load_diabetes

from services.model.artifact import load, train
from services.model.reference import load_reference, reference_path
from services.monitor import handler
from services.monitor.settings import Judging
from services.monitor.state import Event, State


def stream(model_path: Path, rows: int, seed: int, drift: dict[int, float] | None = None,
           after: int = 0, start: float = 1_000_000.0) -> list[Event]:  # fmt: skip
    """The monitor's events for `rows` random rows (features, then the recorded row), with the
    features shifted by `drift` (column -> shift in standard deviations) from row `after` on."""
    data = load_diabetes()
    model = load(model_path)
    rng = np.random.default_rng(seed)
    stds = data.data.std(axis=0)
    events = []
    for n, row in enumerate(rng.integers(0, len(data.target), rows)):
        values = data.data[row].copy()
        for column, shift in (drift or {}).items():
            if n >= after:
                values[column] += shift * stds[column]
        id_, now = str(uuid.UUID(int=int(rng.integers(2**62)), version=4)), start + n * 0.01
        trace = f"{n + 1:032x}"
        prediction = model.predict_row(list(values))
        error = abs(data.target[row] - prediction)
        events.append(Event("features", now, id_, trace, "", tuple(values)))
        events.append(Event("predictions", now, id_, trace, model.version, (prediction, error)))
    return events


def fired(state: State, events: list[Event], reference: dict, judging: Judging) -> list[dict]:
    out = [o for e in events for o in handler.apply(state, e, reference, judging)]
    return [o.payload for o in out if o.type == "alert" and o.payload["state"] == "firing"]


def spreads(reference: dict, model_path: Path, trials: int = 300) -> None:
    """Why MONITOR_MIN_ROWS and MONITOR_ERROR_TOLERANCE: PSI of undrifted windows by size, and
    the error of windows over the holdout's with and without a shift."""
    from services.monitor import stats

    data, model = load_diabetes(), load(model_path)
    rng = np.random.default_rng(0)
    for size in (100, 200, 500):
        values = [stats.psi(reference["features"][name], data.data[rows, j])
                  for _ in range(trials) for rows in [rng.integers(0, len(data.target), size)]
                  for j, name in enumerate(reference["features"])]  # fmt: skip
        print(f"PSI of undrifted {size}-row windows: {np.mean(np.array(values) > 0.1):.1%} "
              f"over 0.1 ({len(values)} column-windows)")  # fmt: skip
    holdout = reference["holdout_error"]
    for shift in (0.0, 2.0):
        ratios = []
        for _ in range(500):
            rows = rng.integers(0, len(data.target), 500)
            x = data.data[rows].copy()
            x[:, 2] += shift * data.data[:, 2].std()
            s = stats.error_summary(np.abs(data.target[rows] - model.estimator.predict(x)))
            ratios.append([s["mae"] / holdout["mae"], s["rmse"] / holdout["rmse"],
                           s["p90"] / holdout["p90"]])  # fmt: skip
        q = np.percentile(ratios, 99 if shift == 0 else 1, axis=0)
        print(f"bmi shifted {shift:g} std: window MAE/RMSE/p90 over the holdout's, "
              f"{'99th' if shift == 0 else '1st'} percentile of 500 windows: "
              f"{' / '.join(f'{v:.2f}' for v in q)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--rows", type=int, default=5000)
    args = parser.parse_args()
    model_path = Path(tempfile.mkdtemp()) / "model.json"
    train(model_path)
    model = load(model_path)
    reference = load_reference(reference_path(model_path), model.version, model.sha256)
    evidently = replace(Judging(), ks_pvalue=0.05)
    for name, judging in (("defaults", Judging()), ("MONITOR_KS_PVALUE=0.05", evidently)):
        runs_with_alert, kinds = 0, Counter()
        for seed in range(args.seeds):
            alerts = fired(State(), stream(model_path, args.rows, seed), reference, judging)
            runs_with_alert += bool(alerts)
            kinds.update(f"{a['statistic']}/{a['feature'] or '-'}" for a in alerts)
        print(f"{name}: no drift, {runs_with_alert} of {args.seeds} runs of {args.rows} rows "
              f"raised an alert: {dict(kinds) or 'none'}")  # fmt: skip
    spreads(reference, model_path)
    bmi = list(reference["features"]).index("bmi")
    windows, followers = Counter(), Counter()
    for seed in range(10):
        events = stream(model_path, 2500, 100 + seed, {bmi: 2.0}, after=1000)
        alerts = fired(State(), events, reference, Judging())
        drift = [a for a in alerts if a["alert"].startswith("psi/bmi/")]
        windows[drift[0]["window"]["index"] if drift else None] += 1
        followers.update(f"{a['statistic']}/{a['feature'] or '-'}" for a in alerts)
    print(
        f"bmi:+2@1000 over 10 seeds: psi/bmi fired at features window {dict(windows)} "
        f"(window 2 is the first after the shift); all alerts fired: {dict(followers)}"
    )


if __name__ == "__main__":
    main()
