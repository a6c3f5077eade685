"""The monitor without a broker: windows, alerts, restarts, on events from the real model."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from services.common.contracts import Contracts
from services.common.messages import Message, Rejected
from services.model.artifact import load
from services.model.reference import load_reference, reference_path
from services.monitor import handler
from services.monitor.monitor import Monitor
from services.monitor.settings import Judging
from services.monitor.state import Event, State
from services.monitor.store import Store, recent_alerts
from tests.conftest import REPO
from tools.bench.alarms import stream

JUDGING = Judging(window_rows=500, window_s=600, min_rows=300)


@pytest.fixture(scope="module")
def reference(model_path: Path) -> dict:
    model = load(model_path)
    return load_reference(reference_path(model_path), model.version, model.sha256)


def run(state: State, events: list[Event], reference: dict, judging: Judging = JUDGING) -> list:
    out = []
    for event in events:
        out += handler.apply(state, event, reference, judging)
    return out


def firing(out: list) -> dict[str, dict]:
    return {o.payload["alert"]: o.payload for o in out if o.type == "alert"
            and o.payload["state"] == "firing"}  # fmt: skip


def test_windows_close_by_rows_and_every_report_is_valid(
    model_path: Path, reference: dict, contracts: Contracts
) -> None:
    out = run(State(), stream(model_path, 1200, seed=1), reference)
    reports = [o.payload for o in out if o.type == "window_report"]
    assert [(r["stream"], r["window"]["index"]) for r in reports] == [
        ("features", 0), ("predictions", 0), ("features", 1), ("predictions", 1)]  # fmt: skip
    assert all(r["window"]["rows"] == 500 and r["judged"] for r in reports)
    for o in out:
        contracts.check_output(o.type, o.payload)
    features = {(s["statistic"], s["feature"]) for s in reports[0]["statistics"]}
    assert ("psi", "bmi") in features and ("ks_pvalue", "s5") in features
    assert firing(out) == {}, "no drift, no alert"


def test_a_shifted_feature_fires_one_drift_alert_then_resolves(
    model_path: Path, reference: dict
) -> None:
    state = State()
    bmi = list(reference["features"]).index("bmi")
    out = run(state, stream(model_path, 2500, seed=2, drift={bmi: 2.0}, after=1000), reference)
    fired = firing(out)
    version = reference["model_version"]
    assert f"psi/bmi/{version}" in fired and f"ks_pvalue/bmi/{version}" in fired
    assert fired[f"psi/bmi/{version}"]["window"]["index"] in (2, 3)
    assert not [a for a in fired if "/bmi/" not in a and a.split("/")[1] not in ("-", "prediction")]
    assert f"mae/-/{version}" in fired, "the error follows the drift"
    example = fired[f"psi/bmi/{version}"]["examples"][0]
    assert abs(example["value"] - reference["features"]["bmi"]["mean"]) > 0.05
    # More drifted rows: nothing fires twice while the alert is open.
    again = run(state, stream(model_path, 1000, seed=3, drift={bmi: 2.0}, start=2e6), reference)
    assert not firing(again)
    # Back to normal: each open alert resolves once.
    back = run(state, stream(model_path, 1000, seed=4, start=3e6), reference)
    resolved = [o.payload["alert"] for o in back if o.type == "alert"]
    assert f"psi/bmi/{version}" in resolved and len(resolved) == len(set(resolved))
    assert all(o.payload["state"] == "resolved" for o in back if o.type == "alert")
    assert state.open_alerts == {}


def test_time_closes_a_quiet_window_and_a_small_one_is_reported_not_judged(
    model_path: Path, reference: dict
) -> None:
    state = State()
    events = stream(model_path, 50, seed=5)
    out = run(state, events, reference, replace(JUDGING, window_s=5))
    assert out == []
    later = events[-1].now + 5
    out = handler.apply(state, Event("tick", later), reference, replace(JUDGING, window_s=5))
    reports = [o.payload for o in out]
    assert {r["stream"] for r in reports} == {"features", "predictions"}
    assert all(r["window"]["closed_by"] == "time" and not r["judged"] for r in reports)
    assert state.windows == {}


def test_a_redelivered_row_is_counted_once(model_path: Path, reference: dict) -> None:
    state = State()
    events = stream(model_path, 10, seed=6)
    run(state, events + events, reference)
    assert [len(w.rows) for w in state.windows.values()] == [10, 10]


def test_a_row_that_contradicts_itself_is_rejected(contracts: Contracts) -> None:
    example = REPO / "contracts/metric_record/v1/examples/valid/traced-row.json"
    payload = json.loads(example.read_text())
    message = Message("metric_record", 1, {**payload, "absolute_error": 1.0})
    with pytest.raises(Rejected, match="absolute_error"):
        handler.event_of(message, 0.0, ("age",))


def test_a_restart_replays_to_the_same_state_and_remembers_open_alerts(
    model_path: Path, reference: dict, tmp_path: Path
) -> None:
    bmi = list(reference["features"]).index("bmi")
    events = stream(model_path, 1700, seed=7, drift={bmi: 2.0}, after=0)
    first = Monitor(Store(tmp_path / "state.sqlite3"), reference, JUDGING)
    fired = []
    for event in events[:2600]:
        fired += first._apply(event)
        if len(fired) % 7 == 0:
            first.store.flush()
    first.store.flush()
    # A new process on the same file: same windows, same open alerts.
    second = Monitor(Store(tmp_path / "state.sqlite3"), reference, JUDGING)
    assert second.state.to_dict() == first.state.to_dict()
    assert second.state.open_alerts
    rest = [o for e in events[2600:] for o in second._apply(e)]
    assert not firing(rest), "open alerts are not fired again after a restart"
    second.store.flush()
    listed = recent_alerts(tmp_path / "state.sqlite3", 100)
    assert {a["alert"] for a in listed} == set(firing(fired))


def test_a_failed_commit_keeps_the_work_for_the_next_flush(
    model_path: Path, reference: dict, tmp_path: Path
) -> None:
    path = tmp_path / "state.sqlite3"
    monitor = Monitor(Store(path), reference, JUDGING)
    events = stream(model_path, 20, seed=8)
    for event in events:
        monitor._apply(event)
    blocker = sqlite3.connect(path)
    blocker.execute("BEGIN EXCLUSIVE")
    monitor.store._db.execute("PRAGMA busy_timeout = 0")
    with pytest.raises(OSError, match="locked"):
        monitor.store.flush()
    blocker.rollback()
    monitor.store.flush()
    again = Monitor(Store(path), reference, JUDGING)
    assert again.state.to_dict() == monitor.state.to_dict()


def test_rows_of_a_model_without_reference_are_reported_never_judged(
    model_path: Path, reference: dict
) -> None:
    state = State()
    other = [replace(e, model_version="linreg-000000000000") if e.kind == "predictions" else e
             for e in stream(model_path, 600, seed=9, drift={2: 3.0})]  # fmt: skip
    out = run(state, [e for e in other if e.kind == "predictions"], reference)
    [report] = [o.payload for o in out]
    assert report["model_version"] == "linreg-000000000000" and not report["judged"]
    assert {s["statistic"] for s in report["statistics"]} == {"mae", "rmse", "p90_error"}
    assert all(s["threshold"] is None for s in report["statistics"])
    assert state.open_alerts == {} and state.detectors == {}
