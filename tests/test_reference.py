"""The monitor's reference: written by `modelwatch train` beside the model, refused unless it is
intact and belongs to the model the monitor sees."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error
from sklearn.model_selection import train_test_split

from services import cli
from services.model.artifact import ArtifactError, load, manifest_path
from services.model.reference import FORMAT, load_reference, reference_path


@pytest.fixture(scope="module")
def split() -> tuple[np.ndarray, ...]:
    data = load_diabetes()
    return tuple(train_test_split(data.data, data.target, test_size=0.2, random_state=0))


def written(model_path: Path) -> dict:
    return json.loads(reference_path(model_path).read_text())


def copied(model_path: Path, folder: Path) -> Path:
    """The model, its manifest and its reference copied to `folder`; the copy's model path."""
    for source in (model_path, manifest_path(model_path), reference_path(model_path)):
        shutil.copy(source, folder / source.name)
    return folder / model_path.name


def test_train_writes_the_reference_of_this_model(model_path: Path) -> None:
    reference, model = written(model_path), load(model_path)
    assert reference["format"] == FORMAT == "modelwatch-reference/1"
    assert (reference["model_version"], reference["model_sha256"]) == (model.version, model.sha256)
    assert list(reference["features"]) == list(model.feature_names)
    assert set(reference["holdout_error"]) == {"n", "mae", "rmse", "p50", "p90", "p99"}
    manifest = json.loads(manifest_path(model_path).read_text())
    assert manifest["reference"] == reference_path(model_path).name == "model.json.reference.json"
    body = reference_path(model_path).read_bytes()
    assert manifest["reference_sha256"] == hashlib.sha256(body).hexdigest()


def test_distributions_are_those_of_the_training_rows(model_path: Path, split) -> None:
    x_train, _, y_train, _ = split
    reference = written(model_path)
    for i, name in enumerate(load_diabetes().feature_names):
        column = x_train[:, i]
        described = reference["features"][name]
        assert described["n"] == 353
        assert described["sample"] == sorted(column.tolist())
        np.testing.assert_allclose(described["mean"], column.mean(), rtol=1e-12)
        np.testing.assert_allclose(described["std"], column.std(), rtol=1e-12)
        np.testing.assert_allclose(described["edges"], np.quantile(column, np.arange(1, 10) / 10))
    predicted = LinearRegression().fit(x_train, y_train).predict(x_train)
    np.testing.assert_allclose(reference["prediction"]["sample"], np.sort(predicted), rtol=1e-9)
    np.testing.assert_allclose(reference["prediction"]["mean"], predicted.mean(), rtol=1e-9)


def test_holdout_error_is_the_models_error_on_the_holdout(model_path: Path, split) -> None:
    x_train, x_test, y_train, y_test = split
    predicted = LinearRegression().fit(x_train, y_train).predict(x_test)
    error = np.abs(y_test - predicted)
    holdout = written(model_path)["holdout_error"]
    assert holdout["n"] == len(y_test) == 89
    np.testing.assert_allclose(holdout["mae"], mean_absolute_error(y_test, predicted), rtol=1e-9)
    np.testing.assert_allclose(holdout["rmse"], np.sqrt(np.mean(error**2)), rtol=1e-9)
    for key, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        np.testing.assert_allclose(holdout[key], np.quantile(error, q), rtol=1e-9)


def test_the_reference_of_the_model_is_accepted(model_path: Path) -> None:
    model = load(model_path)
    reference = load_reference(reference_path(model_path), model.version, model.sha256)
    assert reference == written(model_path)


def test_a_reference_of_another_version_is_refused(model_path: Path) -> None:
    model = load(model_path)
    with pytest.raises(ArtifactError, match=r"^MONITOR_REFERENCE_PATH: .*belongs to model") as e:
        load_reference(reference_path(model_path), "linreg-000000000000", model.sha256)
    assert "refuses a reference that does not belong to the model version it sees" in str(e.value)


def test_a_reference_of_another_sha_is_refused(model_path: Path) -> None:
    model = load(model_path)
    with pytest.raises(ArtifactError, match=r"^MONITOR_REFERENCE_PATH: .*belongs to model"):
        load_reference(reference_path(model_path), model.version, "0" * 64)


def test_an_edited_reference_is_refused(tmp_path: Path, model_path: Path) -> None:
    copy = copied(model_path, tmp_path)
    reference = written(copy)
    reference["holdout_error"]["p90"] *= 2  # e.g. to silence an alert
    reference_path(copy).write_text(json.dumps(reference, indent=2) + "\n")
    model = load(copy)
    with pytest.raises(ArtifactError, match=r"^MONITOR_REFERENCE_PATH: .*SHA-256.*altered"):
        load_reference(reference_path(copy), model.version, model.sha256)


def test_a_missing_reference_is_refused(tmp_path: Path, model_path: Path) -> None:
    copy = copied(model_path, tmp_path)
    reference_path(copy).unlink()
    model = load(copy)
    with pytest.raises(ArtifactError, match=r"^MONITOR_REFERENCE_PATH: .*modelwatch train"):
        load_reference(reference_path(copy), model.version, model.sha256)


def test_a_reference_without_its_manifest_is_refused(tmp_path: Path, model_path: Path) -> None:
    copy = copied(model_path, tmp_path)
    manifest_path(copy).unlink()
    model = load(model_path)
    with pytest.raises(ArtifactError, match=r"^MONITOR_REFERENCE_PATH: .*manifest.json"):
        load_reference(reference_path(copy), model.version, model.sha256)
    renamed = tmp_path / "reference.json"
    shutil.copy(reference_path(model_path), renamed)
    with pytest.raises(ArtifactError, match=r"^MONITOR_REFERENCE_PATH: .*not named"):
        load_reference(renamed, model.version, model.sha256)


def test_an_unknown_format_is_refused(tmp_path: Path, model_path: Path) -> None:
    copy = copied(model_path, tmp_path)
    body = json.dumps(written(copy) | {"format": "modelwatch-reference/9"}).encode()
    reference_path(copy).write_bytes(body)
    manifest = json.loads(manifest_path(copy).read_text())
    manifest["reference_sha256"] = hashlib.sha256(body).hexdigest()
    manifest_path(copy).write_text(json.dumps(manifest))
    model = load(copy)
    with pytest.raises(ArtifactError, match=r"^MONITOR_REFERENCE_PATH: .*unknown format"):
        load_reference(reference_path(copy), model.version, model.sha256)


def test_train_if_missing_adds_the_reference_and_keeps_the_model(
    tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = copied(model_path, tmp_path)
    reference_path(copy).unlink()  # a model trained before references existed
    monkeypatch.setenv("MODEL_PATH", str(copy))
    assert cli._train(if_missing=True) == 0
    assert copy.read_bytes() == model_path.read_bytes()
    assert reference_path(copy).read_bytes() == reference_path(model_path).read_bytes()
    before = reference_path(copy).stat().st_mtime_ns
    assert cli._train(if_missing=True) == 0
    assert reference_path(copy).stat().st_mtime_ns == before
