"""FEATURES_DRIFT: the features service shifts chosen features from a chosen row on."""

from __future__ import annotations

import asyncio
import logging
import random

import numpy as np
import pytest
from sklearn.datasets import load_diabetes

import services.features.__main__ as features_main
from services.common.contracts import Contracts
from services.features import handler
from services.features.settings import Drift

DATA = load_diabetes()
NAMES = DATA.feature_names
STDS = DATA.data.std(axis=0)


def test_a_drift_starts_at_row_n_and_shifts_only_its_feature() -> None:
    row = DATA.data[7]
    drifts = [Drift("bmi", 2.0, 1000)]
    assert handler.drift(row, NAMES, drifts, 999, STDS) == list(row)
    shifted = handler.drift(row, NAMES, drifts, 1000, STDS)
    bmi = NAMES.index("bmi")
    assert shifted[bmi] == row[bmi] + 2.0 * STDS[bmi]
    assert np.std(DATA.data[:, bmi]) == STDS[bmi]  # numpy's std, ddof=0, over all 442 rows
    assert [v for i, v in enumerate(shifted) if i != bmi] == [
        v for i, v in enumerate(row) if i != bmi
    ]
    assert handler.drift(row, NAMES, drifts, 5000, STDS) == shifted


def test_several_drifts_start_each_at_its_own_row() -> None:
    row = DATA.data[0]
    drifts = [Drift("bmi", 2.0, 10), Drift("s5", -1.5, 0)]
    bmi, s5 = NAMES.index("bmi"), NAMES.index("s5")
    early = handler.drift(row, NAMES, drifts, 9, STDS)
    late = handler.drift(row, NAMES, drifts, 10, STDS)
    assert (early[bmi], early[s5]) == (row[bmi], row[s5] - 1.5 * STDS[s5])
    assert (late[bmi], late[s5]) == (row[bmi] + 2.0 * STDS[bmi], early[s5])
    assert handler.drift(row, NAMES, [], 10**6, STDS) == list(row)


@pytest.mark.parametrize("version", [1, 2])
def test_the_service_emits_drifted_rows_in_both_versions(
    version: int,
    contracts: Contracts,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The service's own loop, its broker replaced by one that records what is published."""
    sent = []

    class Recorder:
        def __init__(self, *_: object) -> None: ...
        async def start(self, _stop: asyncio.Event) -> bool:
            return True

        async def publish(self, *messages) -> None:
            sent.extend(messages)

        async def stop(self) -> None: ...

    monkeypatch.setattr(features_main, "Broker", Recorder)
    for name, value in {
        "FEATURES_COUNT": "30", "FEATURES_INTERVAL_S": "0", "FEATURES_SEED": "7",
        "FEATURES_DRIFT": "bmi:+2@20,s5:-1.5@0", "FEATURES_SCHEMA_VERSION": str(version),
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.INFO, logger="modelwatch.features"):
        assert asyncio.run(features_main.main(asyncio.Event())) == 0
    rng = random.Random(7)
    emitted = [m for m in sent if m.type == "features"]
    assert len(emitted) == 30
    for index, message in enumerate(emitted):
        contracts.check_output("features", message.payload, message.version)
        values = message.payload["features"]
        values = values if version == 1 else [values[name] for name in NAMES]
        row = DATA.data[rng.randrange(len(DATA.target))].copy()
        row[NAMES.index("s5")] -= 1.5 * STDS[NAMES.index("s5")]
        if index >= 20:
            row[NAMES.index("bmi")] += 2.0 * STDS[NAMES.index("bmi")]
        assert values == list(row), index
    logged = [r.getMessage() for r in caplog.records]
    assert "FEATURES_DRIFT: bmi +2 sd from row 20; s5 -1.5 sd from row 0" in logged
    assert "drift starts at row 0: s5 -1.5 sd from row 0" in logged
    assert "drift starts at row 20: bmi +2 sd from row 20" in logged
