"""Load a trained sequence-model artifact and score batches: what a Faust worker (CPU) or an
inference node (GPU) calls.

Needs only torch and the plain net (no Lightning): the artifact's `model.joblib` holds the
net config, a numpy state dict (normalisation statistics included), class and feature
names and the vectoriser version, which must match this code's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.features import N_COLUMNS, SenderWindow
from detector.types import Tx
from models import registry
from models.data.events import (
    N_TELEMETRY_STEP_FEATURES,
    N_TX_EVENT_FEATURES,
    TELEMETRY_VECTOR_VERSION,
    TX_VECTOR_VERSION,
    pad_sequences,
    telemetry_step_vectors,
    tx_event_vectors,
    tx_windows,
)
from models.nets import NetConfig, SequenceClassifier

log = logging.getLogger(__name__)

TX_ARTIFACT = "tx_sequence"
TELEMETRY_ARTIFACT = "telemetry_sequence"
_VECTOR_VERSIONS = {"tx": TX_VECTOR_VERSION, "telemetry": TELEMETRY_VECTOR_VERSION}
#: Scores of the dev split's normal entities at these quantiles, stored in an artifact's
#: metrics by training: a worker's alert threshold at that dev false-positive rate.
DEV_THRESHOLD_QUANTILES = {"dev_normal_q99": 0.99, "dev_normal_q999": 0.999}
#: When an artifact has no dev quantiles (older artifacts): P(not normal) >= this.
FALLBACK_THRESHOLD = 0.5


def calibrated_threshold(meta: registry.ArtifactMeta | None, key: str = "dev_normal_q999") -> float:
    """The artifact's stored dev-normal quantile `key` (0.1 % dev FPR by default), else
    `dev_normal_q99`, else FALLBACK_THRESHOLD. Calibrated on the training generator's dev
    normals, not on the traffic the worker sees: a setting can override it."""
    metrics = meta.metrics if meta is not None else {}
    for k in (key, "dev_normal_q99"):
        v = metrics.get(k)
        if v is not None and np.isfinite(v):
            return float(v)
    return FALLBACK_THRESHOLD


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when present, else cpu; 'gpu' is an alias of 'cuda'."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda" if device == "gpu" else device)


def make_bundle(
    kind: str,
    net: SequenceClassifier,
    *,
    class_names: Sequence[str],
    feature_names: Sequence[str],
    max_len: int,
) -> dict[str, Any]:
    """The serving payload stored as the artifact's object (plain numpy, no Lightning)."""
    return {
        "kind": kind,
        "vector_version": _VECTOR_VERSIONS[kind],
        "net_config": net.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()},
        "class_names": list(class_names),
        "feature_names": list(feature_names),
        "max_len": int(max_len),
    }


class SequenceScorer:
    """Batched scoring of padded sequences; `score` is the anomaly score 1 - P(normal)."""

    def __init__(
        self,
        bundle: Mapping[str, Any],
        meta: registry.ArtifactMeta | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 1024,
    ) -> None:
        kind = str(bundle["kind"])
        if bundle["vector_version"] != _VECTOR_VERSIONS.get(kind):
            raise ValueError(
                f"artifact vectoriser v{bundle['vector_version']} != this code's "
                f"v{_VECTOR_VERSIONS.get(kind)} for {kind!r}: retrain"
            )
        self.kind = kind
        self.meta = meta
        self.class_names: tuple[str, ...] = tuple(bundle["class_names"])
        self.feature_names: tuple[str, ...] = tuple(bundle["feature_names"])
        self.max_len = int(bundle["max_len"])
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.net = SequenceClassifier(NetConfig(**bundle["net_config"]))
        self.net.load_state_dict(
            {k: torch.from_numpy(np.asarray(v)) for k, v in bundle["state_dict"].items()}
        )
        self.net.to(self.device).eval()

    @classmethod
    def load(
        cls,
        root: Path,
        name: str,
        version: str | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 1024,
    ) -> SequenceScorer:
        bundle, meta = registry.load(Path(root), name, version)
        log.info("loaded %s %s (%s) on %s", name, meta.version, bundle["kind"], device)
        return cls(bundle, meta, device=device, batch_size=batch_size)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @torch.inference_mode()
    def predict_proba(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """(N, n_classes) class probabilities of padded sequences; empty rows give NaN."""
        x = np.asarray(x, dtype=np.float32)
        lengths = np.asarray(lengths, dtype=np.int64)
        if x.ndim != 3 or x.shape[2] != self.n_features or len(lengths) != len(x):
            raise ValueError(
                f"expected x (N, T, {self.n_features}) and lengths (N,), got "
                f"{x.shape} and {lengths.shape}"
            )
        out = np.full((len(x), len(self.class_names)), np.nan, dtype=np.float64)
        for i in range(0, len(x), self.batch_size):
            xb = torch.from_numpy(x[i : i + self.batch_size]).to(self.device)
            lb = torch.from_numpy(lengths[i : i + self.batch_size]).to(self.device)
            p = torch.softmax(self.net(xb, lb).float(), dim=-1)
            out[i : i + len(xb)] = p.cpu().numpy()
        out[lengths <= 0] = np.nan
        return out

    def score(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """(N,) anomaly scores in [0, 1]: 1 - P(normal); NaN for empty sequences."""
        p = self.predict_proba(x, lengths)
        s: np.ndarray = p[:, 1:].sum(axis=1)
        return s

    def explain(self, x: np.ndarray, lengths: np.ndarray) -> list[str]:
        """Most likely family per sequence (an alert's 'looks like' line)."""
        p = self.predict_proba(x, lengths)
        return [
            self.class_names[int(i)] if np.isfinite(r).all() else ""
            for i, r in zip(np.nan_to_num(p, nan=-1).argmax(1), p, strict=True)
        ]


class TxSequenceScorer(SequenceScorer):
    """Scores senders from the windows the streaming worker keeps (or from plain Tx lists)."""

    def vectorise_windows(
        self, windows: Sequence[SenderWindow | np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Newest `max_len` events of each window (the span the model was trained on), then
        the per-tx vectors; a worker's window may hold more events than that."""
        seqs = [
            tx_event_vectors((w.events if isinstance(w, SenderWindow) else w)[-self.max_len :])
            for w in windows
        ]
        return pad_sequences(seqs, self.max_len, N_TX_EVENT_FEATURES)

    def score_windows(self, windows: Sequence[SenderWindow | np.ndarray]) -> np.ndarray:
        """One score per window (newest `max_len` events are used)."""
        if not windows:
            return np.empty(0)
        return self.score(*self.vectorise_windows(windows))

    def score_txs(self, sequences: Sequence[Sequence[Tx]]) -> np.ndarray:
        """One score per sender's tx list (each list: one sender, any order)."""
        windows = []
        for txs in sequences:
            states = tx_windows(list(txs), max_events=self.max_len) if txs else {}
            if len(states) > 1:
                raise ValueError(f"a sequence must hold one sender's txs, got {len(states)}")
            empty = np.empty((0, N_COLUMNS))
            windows.append(next(iter(states.values())).events if states else empty)
        return self.score_windows(windows)


class TelemetrySequenceScorer(SequenceScorer):
    """Scores nodes from their bucketed telemetry steps (see `bucket_telemetry`)."""

    def score_steps(self, steps: Sequence[np.ndarray]) -> np.ndarray:
        if not steps:
            return np.empty(0)
        x, lengths = pad_sequences(
            [telemetry_step_vectors(s) for s in steps], self.max_len, N_TELEMETRY_STEP_FEATURES
        )
        return self.score(x, lengths)


def load_scorer(
    root: Path,
    name: str,
    version: str | None = None,
    *,
    device: str = "cpu",
    batch_size: int = 1024,
) -> SequenceScorer:
    """The right scorer class for the artifact's kind."""
    bundle, meta = registry.load(Path(root), name, version)
    cls: type[SequenceScorer] = (
        TxSequenceScorer if bundle["kind"] == "tx" else TelemetrySequenceScorer
    )
    return cls(bundle, meta, device=device, batch_size=batch_size)
