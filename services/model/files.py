"""What the artifact and the monitor's reference share: their error, atomic writes, and the
artifact's verification against its manifest.

Nothing here imports scikit-learn: the monitor only needs to know which model version it is
watching, and importing scikit-learn took 1.4 s of its start-up (`python -X importtime`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
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


@dataclass(frozen=True)
class VerifiedArtifact:
    params: dict
    version: str
    sha256: str


def manifest_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".manifest.json")


def verify(model_path: Path, pinned_sha256: str = "") -> VerifiedArtifact:
    """The artifact's parameters, once its SHA-256 matches the manifest (or `MODEL_SHA256` when a
    deployment pins one); raises `ArtifactError` naming what is wrong."""
    try:
        body = model_path.read_bytes()
        manifest = json.loads(manifest_path(model_path).read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(
            f"MODEL_PATH: {exc.filename} does not exist; run `modelwatch train`"
        ) from None
    sha = hashlib.sha256(body).hexdigest()
    expected = pinned_sha256 or manifest.get("sha256", "")
    if sha != expected:
        source = "MODEL_SHA256" if pinned_sha256 else manifest_path(model_path).name
        raise ArtifactError(
            f"MODEL_PATH: {model_path} has SHA-256 {sha}, but {source} says {expected}"
        )
    return VerifiedArtifact(json.loads(body), manifest["version"], sha)
