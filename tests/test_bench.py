"""`modelwatch bench --quick` as a smoke test of the harness: it runs and reports, nothing timed.

Both commands run against the broker under test, told by MODELWATCH_BENCH_URL and _CTL.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.session_broker import Broker
from tools.bench.run import targets
from tools.broker import CTL_SETTING, URL_SETTING

pytestmark = pytest.mark.broker


def _env(broker: Broker, model_path: Path) -> dict[str, str]:
    told = {URL_SETTING: broker.url, CTL_SETTING: shlex.join(broker.ctl)}
    return {**os.environ, "MODEL_PATH": str(model_path), **told}


def test_quick_bench_runs_every_pipeline_and_reports_each_figure(
    tmp_path: Path, model_path: Path, broker: Broker
) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "bench", "--quick", "--out", str(out)],
        env=_env(broker, model_path), cwd=tmp_path,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    for key in ("rows_per_s", "rows_per_s_sampled_1pct", "reference_rows_per_s"):
        assert report[key]["median"] > 0, key
    assert report["ratio_to_reference"]["median"] > 0
    paced = report["paced_200_rows_per_s"]
    assert 0 < paced["p50_ms"]["median"] <= paced["p99_ms"]["median"]
    assert set(report["cpu_us_per_row"]) >= {"features", "model", "metric", "monitor", "dashboard"}
    assert report["ratio_to_reference_core_only"]["median"] > 0
    assert set(report["cpu_us_per_row_core_only"]) >= {"features", "model", "metric"}
    assert report["side_consumers_lag_s"]["min"] >= 0
    assert report["ratio_to_reference_without_metrics"]["median"] > 0
    assert report["ratio_to_reference_sampled_1pct"]["median"] > 0
    assert len(report["targets"]) == 4 and "targets met in this run: " in done.stdout
    assert report["metric_exports"] > 0, "the services exported their metrics over OTLP"
    assert "without monitor and dashboard" in done.stdout
    if broker.installation is not None:  # a broker on this machine: its VM's CPU is found too
        assert report["cpu_us_per_row"]["broker"]["median"] > 0
    # Every span is exported, not sampled or dropped: 10 per row (3 in each of features, model
    # and metric, the metric's publish of the row), the monitor's batch spans and the flush spans
    # of batches.
    assert report["spans_per_row"]["median"] > 10
    assert "bare reference pipeline" in done.stdout and "p99 latency" in done.stdout
    assert set(report["otlp_encode_us_per_span"]) == {"sdk", "modelwatch"}
    assert "OTLP encoding per span" in done.stdout
    assert report["machine"]["cores"] == str(os.cpu_count())
    assert report["machine"]["rabbitmq"] == broker.version  # it measured the broker under test


def test_a_short_soak_keeps_the_accounting_while_connections_are_closed(
    tmp_path: Path, model_path: Path, broker: Broker
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "soak", "--rows", "1500", "--close-every", "0.5"],
        env=_env(broker, model_path), cwd=tmp_path,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout  # the report is the JSON object after the model line
    report = json.loads(out[out.index("{") : out.index("}") + 1])
    assert report["connection_closes"] >= 1
    assert report["recorded"] == report["confirmed_distinct"] == 1500
    assert "accounting holds" in done.stdout
    assert "monitor RSS MiB" in done.stdout


def test_the_targets_are_judged_on_the_medians_at_their_bounds() -> None:
    def report(ratio: float, sampled: float, p99: float, metric_us: float) -> dict:
        return {
            "ratio_to_reference": {"median": ratio},
            "ratio_to_reference_sampled_1pct": {"median": sampled},
            "paced_200_rows_per_s": {"p99_ms": {"median": p99}},
            "cpu_us_per_row": {"metric": {"median": metric_us}},
        }

    assert [t["met"] for t in targets(report(0.8, 1.2, 10.0, 300.0))] == [True] * 4
    assert [t["met"] for t in targets(report(0.79, 1.19, 10.1, 301.0))] == [False] * 4
    assert targets(report(0.8, 1.2, 10.0, 300.0))[2]["target"] == "p99 at 200 rows/s <= 10 ms"
