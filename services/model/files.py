"""What the artifact and the monitor's reference share: their error and atomic writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class ArtifactError(RuntimeError):
    """The artifact is missing, altered or not in a format this version reads."""


def write_atomic(target: Path, body: bytes) -> None:
    """Replace `target` with `body` so that a reader sees the old file or the new, never half."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(body)
        os.fchmod(handle.fileno(), 0o644)  # mkstemp's 0600 would hide it from other users
    os.replace(tmp, target)
