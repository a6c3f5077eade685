"""Reading the CSV and replacing the PNG atomically, so a viewer never sees half a file."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from services.plot.handler import COLUMNS, draw

log = logging.getLogger("modelwatch.plot")


def read_rows(csv_path: Path) -> pd.DataFrame:
    """The CSV's rows; a missing or empty file is an empty frame, not an error."""
    try:
        frame = pd.read_csv(csv_path, usecols=COLUMNS)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame(columns=COLUMNS)
    frame["recorded_at"] = pd.to_datetime(frame["recorded_at"], utc=True, format="ISO8601")
    return frame


def render(csv_path: Path, png_path: Path) -> int:
    """Redraw `png_path` from `csv_path`; returns the number of rows drawn."""
    frame = read_rows(csv_path)
    fig = draw(frame)
    fd, tmp = tempfile.mkstemp(dir=png_path.parent, prefix=f".{png_path.stem}.", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png", dpi=90)
            os.fchmod(handle.fileno(), 0o644)  # mkstemp's 0600 would hide it from viewers
        os.replace(tmp, png_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return len(frame)


def signature(path: Path) -> tuple[int, int] | None:
    """What changes when the CSV does: its size and modification time."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns
