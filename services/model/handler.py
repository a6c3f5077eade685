"""Consumes `features` (v1 or v2), produces `y_pred`: one prediction per row, under the row's id.

v1 carries the features as an array in the data set's order, v2 as named fields, which are put in
the order the model was trained with, so a row predicts the same in either version. The y_pred
carries the model's version and the features' emit time, so the metric service can tell which
model made each prediction and how long the row took end to end. A prediction that is not a finite
number (features far outside anything seen in training) is rejected: it could not be recorded.
"""

from __future__ import annotations

import math

import numpy as np

from services.common.messages import Message, Outgoing, Rejected, utc_now
from services.model.artifact import LoadedModel


def handle(message: Message, model: LoadedModel) -> list[Outgoing]:
    features = message.payload["features"]
    if message.version >= 2:
        features = [features[name] for name in model.feature_names]
    with np.errstate(over="ignore", invalid="ignore"):
        y_pred = model.predict_row(features)
    if not math.isfinite(y_pred):
        raise Rejected(f"the prediction for these features is not a finite number ({y_pred})")
    return [
        Outgoing(
            "y_pred",
            {
                "id": message.id,
                "emitted_at": message.payload["emitted_at"],
                "predicted_at": utc_now(),
                "y_pred": y_pred,
                "model_version": model.version,
            },
        )
    ]
