"""Produces `features` and `y_true`: one row of the diabetes data and its true target.

Both messages share one new UUID id and one emit time; nothing is consumed. `features` goes out as
v1 (an array in the data set's column order) or v2 (named fields), as FEATURES_SCHEMA_VERSION says.
`emit` is pure: the caller picks the row, the id and the time, so tests can pin all three. `drift`
(FEATURES_DRIFT) shifts a row's values before `emit`, so the v1 and v2 shapes carry the same drift.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.common.messages import Outgoing
from services.features.settings import Drift


def emit(
    features: Sequence[float],
    target: float,
    id_: str,
    now: str,
    version: int = 1,
    names: Sequence[str] = (),
) -> list[Outgoing]:
    values = [float(v) for v in features]
    row = values if version == 1 else dict(zip(names, values, strict=True))
    return [
        Outgoing("features", {"id": id_, "emitted_at": now, "features": row}, version),
        Outgoing("y_true", {"id": id_, "emitted_at": now, "y_true": float(target)}),
    ]


def drift(
    values: Sequence[float],
    names: Sequence[str],
    drifts: Sequence[Drift],
    row_index: int,
    stds: Sequence[float],
) -> list[float]:
    """`values` (row `row_index`, counted from 0), each feature whose drift has started shifted by
    its `shift` times its standard deviation (`stds`, in the order of `names`)."""
    shifted = [float(v) for v in values]
    for d in drifts:
        if row_index >= d.after:
            i = names.index(d.feature)
            shifted[i] += d.shift * float(stds[i])
    return shifted
