"""Produces `features` and `y_true`: one row of the diabetes data and its true target.

Both messages share one new UUID id and one emit time; nothing is consumed. `emit` is pure: the
caller picks the row, the id and the time, so tests can pin all three.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.common.messages import Outgoing


def emit(features: Sequence[float], target: float, id_: str, now: str) -> list[Outgoing]:
    return [
        Outgoing(
            "features", {"id": id_, "emitted_at": now, "features": [float(v) for v in features]}
        ),
        Outgoing("y_true", {"id": id_, "emitted_at": now, "y_true": float(target)}),
    ]
