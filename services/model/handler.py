"""Consumes `features`, produces `y_pred`: one prediction per row, under the row's id.

The y_pred carries the model's version and the features' emit time, so the metric service can
tell which model made each prediction and how long the row took end to end.
"""

from __future__ import annotations

import numpy as np

from services.common.messages import Message, Outgoing, utc_now
from services.model.artifact import LoadedModel


def handle(message: Message, model: LoadedModel) -> list[Outgoing]:
    row = np.asarray([message.payload["features"]], dtype=float)
    y_pred = float(model.estimator.predict(row)[0])
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
