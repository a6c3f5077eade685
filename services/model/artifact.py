"""The model artifact: plain parameters in JSON, a manifest with its SHA-256 and version.

Loading a JSON file cannot run code, unlike a pickle. The manifest beside it
(`<MODEL_PATH>.manifest.json`) holds the artifact's SHA-256 and version, and the name and SHA-256
of the monitor's reference that `train` writes with it (services/model/reference.py); `load`
refuses a file whose hash differs from the manifest, or from `MODEL_SHA256` when a deployment pins
one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sklearn
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split

from services.model import reference
from services.model.files import ArtifactError, manifest_path, verify, write_atomic

FORMAT = "modelwatch-linear-regression/1"


@dataclass(frozen=True)
class LoadedModel:
    estimator: LinearRegression
    version: str
    sha256: str
    feature_names: tuple[str, ...]

    def predict_row(self, features: list[float]) -> float:
        """The estimator's prediction for one row: its linear function of the fitted `coef_` and
        `intercept_`. predict() spends far longer validating a single row than this takes
        (docs/benchmark.md); tests check the two agree."""
        return float(np.asarray(features, dtype=float) @ self.estimator.coef_
                     + self.estimator.intercept_)  # fmt: skip


def train(model_path: Path) -> dict:
    """Fit LinearRegression on the diabetes data; write the artifact, the monitor's reference and
    the manifest (last, so that it only ever vouches for files already in place)."""
    data = load_diabetes()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.2, random_state=0
    )
    estimator = LinearRegression().fit(x_train, y_train)
    predicted = estimator.predict(x_test)
    params = {
        "format": FORMAT,
        "estimator": "sklearn.linear_model.LinearRegression",
        "feature_names": list(data.feature_names),
        "coef": estimator.coef_.tolist(),
        "intercept": float(estimator.intercept_),
        "training": {
            "data": "sklearn.datasets.load_diabetes (scaled features)",
            "split": "80/20, random_state=0",
            "holdout_mae": round(float(mean_absolute_error(y_test, predicted)), 4),
            "holdout_r2": round(float(r2_score(y_test, predicted)), 4),
            "sklearn_version": sklearn.__version__,
        },
    }
    body = (json.dumps(params, indent=2) + "\n").encode()
    sha = hashlib.sha256(body).hexdigest()
    version = f"linreg-{sha[:12]}"
    ref_path = reference.reference_path(model_path)
    ref_body = reference.encode(
        reference.build(estimator, data.feature_names, x_train, (x_test, y_test), version, sha)
    )
    manifest = {
        "artifact": model_path.name,
        "sha256": sha,
        "version": version,
        "reference": ref_path.name,
        "reference_sha256": hashlib.sha256(ref_body).hexdigest(),
    }
    model_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(model_path, body)
    write_atomic(ref_path, ref_body)
    write_atomic(manifest_path(model_path), (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest | {"training": params["training"]}


def load(model_path: Path, pinned_sha256: str = "") -> LoadedModel:
    """Read and verify the artifact; raises `ArtifactError` naming what is wrong."""
    artifact = verify(model_path, pinned_sha256)
    params = artifact.params
    if params.get("format") != FORMAT:
        raise ArtifactError(f"MODEL_PATH: unknown artifact format {params.get('format')!r}")
    estimator = LinearRegression()
    estimator.coef_ = np.asarray(params["coef"], dtype=float)
    estimator.intercept_ = float(params["intercept"])
    estimator.n_features_in_ = len(params["coef"])
    return LoadedModel(estimator, artifact.version, artifact.sha256, tuple(params["feature_names"]))
