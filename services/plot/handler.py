"""Consumes the metrics CSV (metric_record rows), produces the monitoring figure.

Four panels: the demo's histogram of absolute errors with mean and median; the error over time
with a rolling mean and 90th percentile (drift shows here first); predictions against true values;
and emit-to-record latency over time. A frame with no rows gives a figure that says so.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display: the service only writes files

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

COLUMNS = ["recorded_at", "y_true", "y_pred", "absolute_error", "latency_ms", "model_version"]


def draw(frame: pd.DataFrame) -> Figure:
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), layout="constrained")
    if frame.empty:
        fig.suptitle("modelwatch: no rows recorded yet")
        for ax in axes.flat:
            ax.set_axis_off()
        return fig
    frame = frame.sort_values("recorded_at")
    errors = frame["absolute_error"]
    window = max(5, min(200, len(frame) // 10))
    _histogram(axes[0, 0], errors)
    _over_time(axes[0, 1], frame["recorded_at"], errors, window)
    _pred_vs_true(axes[1, 0], frame)
    _latency(axes[1, 1], frame["recorded_at"], frame["latency_ms"], window)
    versions = ", ".join(sorted(frame["model_version"].astype(str).unique())[:3])
    fig.suptitle(
        f"modelwatch: {len(frame)} rows, MAE {errors.mean():.1f}, model {versions}, "
        f"last row {frame['recorded_at'].iloc[-1]:%Y-%m-%d %H:%M:%S} UTC"
    )
    return fig


def _histogram(ax, errors: pd.Series) -> None:
    ax.hist(errors, bins=30, color="steelblue", edgecolor="white")
    ax.axvline(errors.mean(), color="red", linestyle="--", label=f"mean {errors.mean():.1f}")
    ax.axvline(errors.median(), color="green", linestyle="-", label=f"median {errors.median():.1f}")
    ax.set(title="Distribution of absolute errors", xlabel="absolute error", ylabel="rows")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()


def _over_time(ax, when: pd.Series, errors: pd.Series, window: int) -> None:
    ax.scatter(when, errors, s=4, alpha=0.3, color="steelblue", label="row", rasterized=True)
    rolling = errors.rolling(window, min_periods=1)
    ax.plot(when, rolling.mean(), color="red", label=f"rolling mean ({window} rows)")
    ax.plot(when, rolling.quantile(0.9), color="orange", label="rolling 90th percentile")
    ax.set(title="Absolute error over time", ylabel="absolute error")
    ax.legend(loc="upper left")
    _time_axis(ax)


def _pred_vs_true(ax, frame: pd.DataFrame) -> None:
    ax.scatter(frame["y_true"], frame["y_pred"], s=6, alpha=0.4, rasterized=True)
    low = min(frame["y_true"].min(), frame["y_pred"].min())
    high = max(frame["y_true"].max(), frame["y_pred"].max())
    ax.plot([low, high], [low, high], color="gray", linestyle="--", label="perfect prediction")
    ax.set(title="Predicted vs true", xlabel="y_true", ylabel="y_pred")
    ax.legend(loc="upper left")


def _latency(ax, when: pd.Series, latency: pd.Series, window: int) -> None:
    ax.scatter(when, latency, s=4, alpha=0.3, color="purple", rasterized=True)
    ax.plot(
        when,
        latency.rolling(window, min_periods=1).median(),
        color="black",
        label=f"rolling median ({window} rows)",
    )
    ax.set(title="Emit-to-record latency", ylabel="ms")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left")
    _time_axis(ax)


def _time_axis(ax) -> None:
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel("recorded at (UTC)")
