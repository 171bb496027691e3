"""Versioned model artifacts: the object, its config, metrics and data fingerprint.

Layout: `<root>/<name>/<version>/{model.joblib, meta.json}` plus `<root>/<name>/LATEST`.
A version is derived from the config and data fingerprint, so refitting the same
model on the same data gives the same version; writes are atomic (temp + rename)
so a crash never leaves a half-written artifact behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np


class ArtifactNotFound(FileNotFoundError):
    """No artifact of that name (or version) exists yet."""


@dataclass(frozen=True)
class ArtifactMeta:
    name: str
    version: str
    created_at: float
    config: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    data_fingerprint: str = ""


def fingerprint(array: np.ndarray) -> str:
    """Stable short hash of training data (shape, dtype and bytes)."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def _version(name: str, config: dict[str, Any], data_fingerprint: str) -> str:
    blob = json.dumps({"n": name, "c": config, "d": data_fingerprint}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(
    root: Path,
    name: str,
    obj: Any,
    *,
    config: dict[str, Any],
    metrics: dict[str, float] | None = None,
    data_fingerprint: str = "",
    now: float | None = None,
) -> ArtifactMeta:
    """Store `obj` as a new version of `name` and point LATEST at it."""
    version = _version(name, config, data_fingerprint)
    meta = ArtifactMeta(
        name=name,
        version=version,
        created_at=time.time() if now is None else now,
        config=config,
        metrics=metrics or {},
        data_fingerprint=data_fingerprint,
    )
    vdir = root / name / version
    vdir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=vdir, prefix=".model.")
    os.close(fd)
    joblib.dump(obj, tmp)
    os.replace(tmp, vdir / "model.joblib")
    _atomic_write(vdir / "meta.json", json.dumps(asdict(meta), indent=2, default=str).encode())
    _atomic_write(root / name / "LATEST", version.encode())
    return meta


def load(root: Path, name: str, version: str | None = None) -> tuple[Any, ArtifactMeta]:
    """Load a version of `name` (LATEST when not given)."""
    ndir = root / name
    if version is None:
        latest = ndir / "LATEST"
        if not latest.exists():
            raise ArtifactNotFound(f"no artifact named {name!r} under {root}")
        version = latest.read_text().strip()
    vdir = ndir / version
    if not (vdir / "model.joblib").exists():
        raise ArtifactNotFound(f"artifact {name!r} version {version} not found under {root}")
    meta = ArtifactMeta(**json.loads((vdir / "meta.json").read_text()))
    return joblib.load(vdir / "model.joblib"), meta
