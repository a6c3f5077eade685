"""The monitor's reference: what live features and predictions are compared against.

`modelwatch train` writes it beside the model as `<MODEL_PATH>.reference.json`, in the same call
that writes the model, and records its SHA-256 in the model's manifest. It holds the distribution
(`services.monitor.stats.distribution`) of each feature and of the predictions on the training
rows, and the absolute error on the 20 % holdout. `load_reference` refuses a reference that is
missing, altered, in an unknown format, or made for another model than the one the monitor sees.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from services.model.files import ArtifactError
from services.monitor.stats import distribution
from services.monitor.stats import error_summary as stats_error_summary

if TYPE_CHECKING:  # the monitor loads references without importing scikit-learn
    from sklearn.linear_model import LinearRegression

FORMAT = "modelwatch-reference/1"
SETTING = "MONITOR_REFERENCE_PATH"
SUFFIX = ".reference.json"


def reference_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + SUFFIX)


def build(
    estimator: LinearRegression,
    feature_names: Sequence[str],
    x_train: np.ndarray,
    holdout: tuple[np.ndarray, np.ndarray],
    model_version: str,
    model_sha256: str,
) -> dict:
    """The reference of a model fitted on `x_train`; `holdout` is its (x_test, y_test)."""
    x_test, y_test = holdout
    return {
        "format": FORMAT,
        "model_version": model_version,
        "model_sha256": model_sha256,
        "features": {name: distribution(x_train[:, i]) for i, name in enumerate(feature_names)},
        "prediction": distribution(estimator.predict(x_train)),
        "holdout_error": error_summary(y_test, estimator.predict(x_test)),
    }


def error_summary(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Count, then the monitor's summary of |y - ŷ| (MAE, RMSE, 50/90/99th percentiles): the
    holdout is described exactly as each window will be."""
    error = np.abs(np.asarray(y_true, dtype=float) - np.asarray(y_pred, dtype=float))
    return {"n": int(error.size), **stats_error_summary(error)}


def encode(reference: dict) -> bytes:
    return (json.dumps(reference, indent=2) + "\n").encode()


def load_reference(path: Path, model_version: str, model_sha256: str) -> dict:
    """The reference at `path`, verified against the manifest beside it and the model the monitor
    sees; raises `ArtifactError` naming MONITOR_REFERENCE_PATH and what is wrong."""
    try:
        body = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(
            f"{SETTING}: {path} does not exist; run `modelwatch train`, which writes it beside "
            "the model"
        ) from None
    expected = _recorded_sha256(path)
    sha = hashlib.sha256(body).hexdigest()
    if sha != expected:
        raise ArtifactError(
            f"{SETTING}: {path} has SHA-256 {sha}, but its model's manifest says {expected}; "
            "the reference was altered: run `modelwatch train` again"
        )
    reference = json.loads(body)
    if reference.get("format") != FORMAT:
        raise ArtifactError(
            f"{SETTING}: {path} has unknown format {reference.get('format')!r}, not {FORMAT!r}"
        )
    made_for = (reference.get("model_version"), reference.get("model_sha256"))
    if made_for != (model_version, model_sha256):
        raise ArtifactError(
            f"{SETTING}: {path} belongs to model {made_for[0]} (SHA-256 {made_for[1]}), but the "
            f"monitor sees {model_version} (SHA-256 {model_sha256}); the monitor refuses a "
            "reference that does not belong to the model version it sees"
        )
    return reference


def _recorded_sha256(path: Path) -> str:
    """The reference's SHA-256 as the manifest of its model (`<model>.manifest.json`) records it."""
    if not path.name.endswith(SUFFIX):
        raise ArtifactError(
            f"{SETTING}: {path} is not named <model>{SUFFIX}, so the manifest that vouches for "
            "it cannot be found; point it at the file `modelwatch train` wrote beside the model"
        )
    manifest = path.with_name(path.name.removesuffix(SUFFIX) + ".manifest.json")
    try:
        recorded = json.loads(manifest.read_text()).get("reference_sha256", "")
    except FileNotFoundError:
        recorded = None
    if not recorded:
        raise ArtifactError(
            f"{SETTING}: {manifest} does not record this reference's SHA-256 "
            f"({'missing' if recorded is None else 'written before references existed'}); "
            "run `modelwatch train`"
        )
    return recorded
