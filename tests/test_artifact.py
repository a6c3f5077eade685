"""The model artifact: trained from scratch, verified on load, never unpickled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import train_test_split

from services.model.artifact import ArtifactError, load, manifest_path, train


def test_training_is_reproducible_and_versioned_by_hash(tmp_path: Path, model_path: Path) -> None:
    again = tmp_path / "model.json"
    manifest = train(again)
    assert again.read_bytes() == model_path.read_bytes()
    assert manifest["version"] == f"linreg-{manifest['sha256'][:12]}"
    assert load(again).version == manifest["version"]


def test_loaded_model_predicts_like_sklearn_fitted_on_the_same_split(model_path: Path) -> None:
    data = load_diabetes()
    x_train, _, y_train, _ = train_test_split(data.data, data.target, test_size=0.2, random_state=0)
    reference = LinearRegression().fit(x_train, y_train)
    loaded = load(model_path)
    np.testing.assert_allclose(
        loaded.estimator.predict(data.data), reference.predict(data.data), rtol=1e-12
    )


def test_artifact_is_plain_json_not_pickle(model_path: Path) -> None:
    params = json.loads(model_path.read_text())
    assert params["format"].startswith("modelwatch-linear-regression/")
    assert len(params["coef"]) == 10


def test_altered_artifact_is_refused(tmp_path: Path, model_path: Path) -> None:
    copy = tmp_path / "model.json"
    shutil.copy(model_path, copy)
    shutil.copy(manifest_path(model_path), manifest_path(copy))
    params = json.loads(copy.read_text())
    params["intercept"] += 1
    copy.write_text(json.dumps(params, indent=2) + "\n")
    with pytest.raises(ArtifactError, match="SHA-256"):
        load(copy)


def test_pinned_hash_must_match(model_path: Path) -> None:
    with pytest.raises(ArtifactError, match="MODEL_SHA256"):
        load(model_path, "0" * 64)
    assert load(model_path, load(model_path).sha256).sha256


def test_missing_artifact_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"MODEL_PATH.*modelwatch train"):
        load(tmp_path / "absent.json")


def test_predict_row_is_the_estimators_prediction(model_path: Path) -> None:
    loaded = load(model_path)
    data = load_diabetes()
    rows = [loaded.predict_row(list(x)) for x in data.data]
    np.testing.assert_allclose(rows, loaded.estimator.predict(data.data), rtol=1e-12)
