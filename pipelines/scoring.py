"""The transaction path's processing core: features -> forest -> alerts.

Kept free of Kafka and ClickHouse so that the Faust agent stays thin (decode, call
this, send) and so that the same code runs in tests, benchmarks and backfills.
The model is fitted once on a warm-up window of feature rows, then stored as a
versioned artifact and reloaded after a restart.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.evidence import canonical_json, evidence_hash
from detector.explain import RobustProfile
from detector.features import FEATURE_NAMES, SenderWindow, featurize
from detector.iforest import IsolationForestDetector
from detector.policy import AlertPolicy, EntityAlertState, Severity
from detector.thresholds import QuantileThreshold
from detector.types import Tx
from models import registry
from pipelines.settings import Settings

log = logging.getLogger(__name__)

MODEL_NAME = "tx-iforest"
DETECTOR_NAME = "tx_iforest"
CATEGORY_BOT = "bot"
_RATE = FEATURE_NAMES.index("rate_per_min")


@dataclass
class TxModel:
    """Everything fitted on the warm-up window, stored as one artifact."""

    forest: IsolationForestDetector
    threshold: QuantileThreshold
    profile: RobustProfile
    version: str = ""
    data_fingerprint: str = ""
    warmup_rows: int = 0


@dataclass(frozen=True, slots=True)
class ScoredTx:
    tx: Tx
    score: float
    threshold: float
    features: np.ndarray


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    entity: str
    category: str
    severity: str
    detector: str
    score: float
    threshold: float
    evidence_hash: str
    evidence: str  # canonical JSON of the evidence document
    explanation: str  # JSON: top features
    tx_hash: str
    block_number: int
    created_at: float


@dataclass
class BatchResult:
    states: dict[str, SenderWindow]
    scored: list[ScoredTx] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    alert_states: dict[str, EntityAlertState] = field(default_factory=dict)
    fitted: TxModel | None = None


@dataclass(frozen=True)
class ScoringConfig:
    window_s: float = 30.0
    max_events: int = 64
    warmup_rows: int = 300
    threshold_quantile: float = 0.999
    seed: int = 7
    policy: AlertPolicy = AlertPolicy()

    @classmethod
    def from_settings(cls, s: Settings) -> ScoringConfig:
        return cls(
            window_s=s.window_s,
            warmup_rows=s.warmup_rows,
            threshold_quantile=s.threshold_quantile,
            seed=s.seed,
            policy=AlertPolicy(min_window_txs=s.min_window_txs, min_consecutive=s.min_consecutive),
        )


def fit_model(rows: np.ndarray, cfg: ScoringConfig) -> TxModel:
    """Fit forest, threshold and explanation profile on warm-up feature rows."""
    forest = IsolationForestDetector(n_estimators=100, max_samples=256, seed=cfg.seed)
    forest.fit(rows)
    threshold = QuantileThreshold(q=cfg.threshold_quantile)
    threshold.fit(forest.score(rows))
    profile = RobustProfile(names=FEATURE_NAMES)
    profile.fit(rows)
    return TxModel(forest, threshold, profile, "", registry.fingerprint(rows), len(rows))


class TxScoringCore:
    """Stateful only in its model and warm-up buffer; per-sender state is passed in."""

    def __init__(
        self,
        cfg: ScoringConfig,
        model: TxModel | None = None,
        on_fit: Callable[[TxModel], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.on_fit = on_fit  # persists a freshly fitted model (and sets its version)
        self._warm_rows: list[np.ndarray] = []
        self._warm_txs: list[Tx] = []
        self._stream_start: float | None = None
        self._alert_from: float = float("-inf")

    @property
    def warming_up(self) -> bool:
        return self.model is None

    def process(
        self,
        txs: list[Tx],
        states: Mapping[str, SenderWindow | None],
        alert_states: Mapping[str, EntityAlertState],
    ) -> BatchResult:
        """Update sender windows with `txs`, score them, and raise due alerts."""
        new_states, rows = featurize(
            dict(states), txs, window_s=self.cfg.window_s, max_events=self.cfg.max_events
        )
        result = BatchResult(states=new_states)
        if self.model is None:
            if not self._collect_warmup(txs, rows):
                return result
            warm_all = np.vstack(self._warm_rows)
            ts = np.array([t.timestamp for t in self._warm_txs])
            steady = ts >= self._alert_from
            self.model = fit_model(warm_all[steady], self.cfg)
            if self.on_fit is not None:
                self.on_fit(self.model)
            result.fitted = self.model
            txs, rows = self._warm_txs, warm_all
            self._warm_rows, self._warm_txs = [], []
            log.info(
                "fitted %s on %d warm-up rows, threshold %.4f",
                MODEL_NAME,
                int(steady.sum()),
                self.model.threshold.threshold_,
            )
        if len(txs) == 0:
            return result
        model = self.model
        scores = model.forest.score(np.asarray(rows))
        thr = float(model.threshold.threshold_)
        entity = result.alert_states
        per_min = 60.0 / self.cfg.window_s
        refs: dict[str, list[str]] = {}
        for tx in txs:
            refs.setdefault(tx.sender, []).append(tx.tx_hash)
        for tx, row, score in zip(txs, rows, scores, strict=True):
            result.scored.append(ScoredTx(tx, float(score), thr, row))
            if tx.timestamp < self._alert_from:
                continue  # rows from before the windows filled are scored, never alerted
            prev = entity.get(tx.sender) or alert_states.get(tx.sender) or EntityAlertState()
            state, severity = self.cfg.policy.step(
                prev,
                score=float(score),
                threshold=thr,
                window_txs=int(round(row[_RATE] / per_min)) if np.isfinite(row[_RATE]) else 0,
                now=tx.timestamp,
            )
            entity[tx.sender] = state
            if severity is not None:
                result.alerts.append(
                    self._alert(tx, row, float(score), thr, severity, refs[tx.sender][-20:])
                )
        return result

    def _collect_warmup(self, txs: list[Tx], rows: np.ndarray) -> bool:
        """Buffer rows until `warmup_rows` steady-state rows are in; True when ready.

        Rows from the first `window_s` of the stream come from windows that are still
        filling (every sender looks slow and sparse), so they are buffered (and scored
        once the model exists) but not used for fitting or alerting.
        """
        if txs and self._stream_start is None:
            self._stream_start = min(t.timestamp for t in txs)
            self._alert_from = self._stream_start + self.cfg.window_s
        self._warm_rows.extend(rows)
        self._warm_txs.extend(txs)
        steady = sum(1 for t in self._warm_txs if t.timestamp >= self._alert_from)
        return steady >= self.cfg.warmup_rows

    def _alert(
        self,
        tx: Tx,
        row: np.ndarray,
        score: float,
        thr: float,
        severity: Severity,
        recent: list[str],
    ) -> Alert:
        assert self.model is not None
        top = self.model.profile.explain(row, k=3)
        doc: dict[str, Any] = {
            "entity": tx.sender,
            "category": CATEGORY_BOT,
            "detector": DETECTOR_NAME,
            "model_version": self.model.version,
            "score": score,
            "threshold": thr,
            "features": {n: float(v) for n, v in zip(FEATURE_NAMES, row, strict=True)},
            "tx_refs": recent,
            "block_number": tx.block_number,
        }
        h = evidence_hash(doc)
        return Alert(
            alert_id=h[2:34],
            entity=tx.sender,
            category=CATEGORY_BOT,
            severity=severity.label,
            detector=DETECTOR_NAME,
            score=score,
            threshold=thr,
            evidence_hash=h,
            evidence=canonical_json(doc),
            explanation=json.dumps(
                {
                    "top_features": [{"name": n, "value": v, "robust_z": z} for n, v, z in top],
                    "model_version": self.model.version,
                }
            ),
            tx_hash=tx.tx_hash,
            block_number=tx.block_number,
            created_at=tx.timestamp,
        )


def save_model(model: TxModel, root: Path, cfg: ScoringConfig) -> TxModel:
    """Store `model` as a versioned artifact and stamp its version on it."""
    meta = registry.save(
        root,
        MODEL_NAME,
        model,
        config={
            "n_estimators": 100,
            "max_samples": 256,
            "seed": cfg.seed,
            "threshold_quantile": cfg.threshold_quantile,
            "window_s": cfg.window_s,
            "features": list(FEATURE_NAMES),
        },
        metrics={
            "threshold": float(model.threshold.threshold_),
            "warmup_rows": float(model.warmup_rows),
        },
        data_fingerprint=model.data_fingerprint,
    )
    model.version = meta.version
    return model


def load_model(root: Path) -> TxModel | None:
    try:
        obj, meta = registry.load(root, MODEL_NAME)
    except registry.ArtifactNotFound:
        return None
    model: TxModel = obj
    model.version = meta.version
    return model
