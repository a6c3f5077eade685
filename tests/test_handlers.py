"""Handlers called with the contract examples: no broker, real model, real contracts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes

from services.common.contracts import Contracts
from services.common.messages import Message, Rejected
from services.features import handler as features
from services.metric import handler as metric
from services.model import handler as model
from services.model.artifact import load
from services.plot.handler import draw
from tests.conftest import REPO

EXAMPLES = REPO / "contracts"


def example(type_: str, name: str, version: int = 1) -> dict:
    return json.loads((EXAMPLES / type_ / f"v{version}" / "examples" / "valid" / name).read_text())


def message(type_: str, payload: dict, headers: dict | None = None) -> Message:
    return Message(type_, 1, payload, headers or {})


def test_features_emits_a_valid_pair_sharing_id_and_time(contracts: Contracts) -> None:
    data = load_diabetes()
    out = features.emit(
        data.data[3],
        data.target[3],
        "3f2b8c1e-6a4d-4e2f-9b1a-0c7d5e8f9a01",
        "2026-11-27T11:40:35.123456Z",
    )
    assert [o.type for o in out] == ["features", "y_true"]
    for o in out:
        contracts.check_output(o.type, o.payload)
    assert out[0].id == out[1].id
    assert out[0].payload["emitted_at"] == out[1].payload["emitted_at"]
    assert out[1].payload["y_true"] == data.target[3]


def test_model_predicts_what_the_fitted_estimator_predicts(
    contracts: Contracts, model_path: Path
) -> None:
    loaded = load(model_path)
    row = example("features", "row.json")
    [out] = model.handle(message("features", row), loaded)
    contracts.check_output("y_pred", out.payload)
    assert out.id == row["id"]
    assert out.payload["model_version"] == loaded.version
    assert out.payload["emitted_at"] == row["emitted_at"]
    expected = loaded.estimator.predict(np.asarray([row["features"]]))[0]
    assert out.payload["y_pred"] == pytest.approx(expected, rel=1e-12)


def _halves(trace: str = "") -> tuple[metric.Half, metric.Half]:
    headers = {"traceparent": f"00-{trace}-00f067aa0ba902b7-01"} if trace else {}
    y_true = metric.half_of(
        message("y_true", example("y_true", "label.json"), headers), "2026-11-27T11:40:35.2Z"
    )
    y_pred = metric.half_of(
        message("y_pred", example("y_pred", "prediction.json")), "2026-11-27T11:40:35.3Z"
    )
    return y_true, y_pred


def _pending(half: metric.Half) -> metric.Half:
    return replace(half, state="pending")


def test_first_half_is_kept_and_second_records_a_valid_row(contracts: Contracts) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    y_true, y_pred = _halves(trace)
    assert metric.handle(y_true, None, None, "2026-11-27T11:40:36Z") == metric.Keep(y_true)
    decision = metric.handle(y_pred, None, _pending(y_true), "2026-11-27T11:40:36.123456Z")
    assert isinstance(decision, metric.Record)
    row = decision.row
    contracts.check_output("metric_record", row)
    assert row["absolute_error"] == pytest.approx(abs(151.0 - 206.1167))
    assert row["latency_ms"] == pytest.approx(1000.0, abs=0.01)
    assert row["trace_id"] == trace
    assert list(row) == contracts.columns("metric_record")


def test_order_of_arrival_does_not_matter() -> None:
    y_true, y_pred = _halves()
    now = "2026-11-27T11:40:36Z"
    a = metric.handle(y_pred, None, _pending(y_true), now)
    b = metric.handle(y_true, None, _pending(y_pred), now)
    assert isinstance(a, metric.Record) and isinstance(b, metric.Record)
    assert a.row == b.row


def test_identical_redelivery_is_a_duplicate_and_a_different_value_is_rejected() -> None:
    _, y_pred = _halves()
    assert isinstance(metric.handle(y_pred, _pending(y_pred), None, "x"), metric.Duplicate)
    changed = replace(y_pred, value=1.0)
    with pytest.raises(Rejected, match="conflicting duplicate"):
        metric.handle(changed, _pending(y_pred), None, "x")


def test_half_whose_partner_was_orphaned_is_orphaned_late(contracts: Contracts) -> None:
    y_true, y_pred = _halves()
    orphaned = replace(y_true, state="orphaned")
    decision = metric.handle(y_pred, None, orphaned, "2026-11-27T11:50:00Z")
    assert isinstance(decision, metric.Orphan)
    assert decision.record["reason"] == "late"
    contracts.check_output("orphan_record", decision.record)


def test_timeout_orphan_record_is_valid(contracts: Contracts) -> None:
    y_true, _ = _halves()
    record = metric.orphan_record(y_true, "2026-11-27T11:45:35Z", "timeout")
    contracts.check_output("orphan_record", record)
    assert record["half"] == "y_true" and record["model_version"] == ""


@pytest.mark.parametrize("value", [None, "garbage", "00-0000-1-01", b"00-" + b"0" * 32 + b"-1-01"])
def test_bad_traceparent_gives_empty_trace_id(value: object) -> None:
    assert metric.trace_id_of({"traceparent": value}) == ""


def test_plot_draws_rows_and_the_empty_state() -> None:
    row = example("metric_record", "row.json")
    frame = pd.DataFrame([row, {**row, "absolute_error": 3.0}])
    frame["recorded_at"] = pd.to_datetime(frame["recorded_at"], utc=True, format="ISO8601")
    fig = draw(frame)
    assert "2 rows" in fig.get_suptitle()
    assert "no rows" in draw(frame.iloc[0:0]).get_suptitle()


def test_features_v2_names_the_values_in_data_set_order(contracts: Contracts) -> None:
    data = load_diabetes()
    [features_v2, _] = features.emit(
        data.data[7], data.target[7], "3f2b8c1e-6a4d-4e2f-9b1a-0c7d5e8f9a01",
        "2026-11-27T11:40:35Z", 2, data.feature_names,
    )  # fmt: skip
    assert contracts.check_output("features", features_v2.payload, features_v2.version) == 2
    assert list(features_v2.payload["features"].values()) == list(data.data[7])
    assert list(features_v2.payload["features"]) == list(data.feature_names)


def test_model_predicts_the_same_for_a_row_in_v1_and_v2(model_path: Path) -> None:
    loaded = load(model_path)
    v1 = example("features", "row.json", 1)
    v2 = example("features", "row.json", 2)
    assert list(v2["features"].values()) == v1["features"]
    [a] = model.handle(Message("features", 1, v1), loaded)
    [b] = model.handle(Message("features", 2, v2), loaded)
    assert a.payload["y_pred"] == b.payload["y_pred"]
    shuffled = {k: v2["features"][k] for k in reversed(v2["features"])}
    [c] = model.handle(Message("features", 2, {**v2, "features": shuffled}), loaded)
    assert c.payload["y_pred"] == a.payload["y_pred"]


def test_model_rejects_a_prediction_that_is_not_finite(model_path: Path) -> None:
    row = {**example("features", "row.json"), "features": [1e308] * 10}
    with pytest.raises(Rejected, match="not a finite number"):
        model.handle(Message("features", 1, row), load(model_path))
