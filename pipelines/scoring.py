"""The transaction path's processing core: features -> forest -> alerts.

Kept free of Kafka and ClickHouse so that the Faust agent stays thin (decode, call
this, send) and so that the same code runs in tests, benchmarks and backfills.
The model is fitted once on a warm-up window of feature rows, then stored as a
versioned artifact and reloaded after a restart.

Optionally (`Settings.sequence_model_dir`), a trained tx sequence model
(`models.scorers.TxSequenceScorer`, artifact `tx_sequence` of `vigil train tx`) also scores
every sender of a batch once, on its window after the batch (the same `SenderWindow` events
the forest's features come from), in one batched call. Its score is recorded against the
sender's newest tx of the batch and, at or above its threshold, is soft evidence for the
alert policy on that tx (like a behaviour rule). Off, nothing of it runs (torch is not even
imported).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detector.bot_rules import GAS_RULES_MASK, BotRules, rule_names
from detector.evidence import canonical_json, evidence_hash
from detector.explain import RobustProfile
from detector.features import FEATURE_NAMES, SenderWindow, featurize
from detector.iforest import IsolationForestDetector
from detector.policy import AlertPolicy, EntityAlertState, Severity
from detector.sybil import FanoutHit, FanoutRule, FanoutState
from detector.thresholds import QuantileThreshold
from detector.types import Tx
from models import registry
from pipelines.settings import Settings

if TYPE_CHECKING:
    from models.scorers import TxSequenceScorer

log = logging.getLogger(__name__)

MODEL_NAME = "tx-iforest"
DETECTOR_NAME = "tx_iforest"
#: Alerts whose latest hit came from the deterministic rules alone (detector.bot_rules).
#: Not "rule:"-prefixed on purpose: behaviour rules are suspicion, not proof.
RULES_DETECTOR_NAME = "tx_rules"
FANOUT_DETECTOR_NAME = "sybil_fanout"
#: Alerts whose latest hit came from the tx sequence model alone (soft evidence).
SEQUENCE_DETECTOR_NAME = "tx_sequence"
#: `scores.model_version` of sequence rows: "tx_sequence:<artifact version>" (forest rows
#: carry the bare forest version), so the two never collide on (tx_hash, model_version).
SEQUENCE_VERSION_PREFIX = "tx_sequence:"
CATEGORY_BOT = "bot"
CATEGORY_SYBIL = "sybil"
_RATE = FEATURE_NAMES.index("rate_per_min")
#: Events over which the policy counts `min_consecutive` hits (see AlertPolicy).
EVIDENCE_WINDOW = 8
#: Excess over the forest's threshold (share of it) for a model hit (see AlertPolicy).
MODEL_MARGIN = 0.06


@dataclass
class TxModel:
    """Everything fitted on the warm-up window, stored as one artifact."""

    forest: IsolationForestDetector
    threshold: QuantileThreshold
    profile: RobustProfile
    version: str = ""
    data_fingerprint: str = ""
    warmup_rows: int = 0
    precise_gas_share: float = 0.0  # of warm-up contract calls (see detector.bot_rules)


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


@dataclass(frozen=True, slots=True)
class SequenceScore:
    """The tx sequence model on one sender's window after a batch; recorded (one `scores`
    row) against `tx`, the sender's newest tx of that batch."""

    tx: Tx
    score: float  # 1 - P(normal)
    threshold: float
    events: int  # window events the model read (newest `max_len` of them at most)
    looks_like: str  # most likely family
    model_version: str  # SEQUENCE_VERSION_PREFIX + artifact version

    @property
    def hit(self) -> bool:
        return self.score >= self.threshold


@dataclass
class BatchResult:
    states: dict[str, SenderWindow]
    scored: list[ScoredTx] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    alert_states: dict[str, EntityAlertState] = field(default_factory=dict)
    fitted: TxModel | None = None
    sequence: list[SequenceScore] = field(default_factory=list)  # empty when off
    #: Txs (with feature rows) this call buffered for the warm-up, unscored: the caller
    #: persists them so that a restart before the fit can put them back (`restore`).
    buffered: list[tuple[Tx, np.ndarray]] = field(default_factory=list)


@dataclass(frozen=True)
class ScoringConfig:
    window_s: float = 30.0
    max_events: int = 64
    warmup_rows: int = 300
    threshold_quantile: float = 0.999
    seed: int = 7
    policy: AlertPolicy = AlertPolicy()
    rules: BotRules | None = BotRules()  # None: the forest alone
    fanout: FanoutRule | None = FanoutRule()  # None: no sybil fan-out alerts
    fanout_severity: Severity = Severity.HIGH
    sequence_model_dir: Path | None = None  # None: no sequence model (see Settings)
    sequence_device: str = "auto"
    sequence_threshold: float | None = None  # None: the artifact's calibrated one
    sequence_min_events: int = 8

    @classmethod
    def from_settings(cls, s: Settings) -> ScoringConfig:
        return cls(
            window_s=s.window_s,
            warmup_rows=s.warmup_rows,
            threshold_quantile=s.threshold_quantile,
            seed=s.seed,
            policy=AlertPolicy(
                min_window_txs=s.min_window_txs,
                min_consecutive=s.min_consecutive,
                evidence_window=EVIDENCE_WINDOW,
                model_margin=MODEL_MARGIN,
            ),
            sequence_model_dir=s.sequence_model_dir,
            sequence_device=s.sequence_device,
            sequence_threshold=s.sequence_threshold,
            sequence_min_events=s.sequence_min_events,
        )


class SequenceModelMissing(ValueError):
    """`sequence_model_dir` is set but holds no usable tx sequence artifact."""


def load_sequence_scorer(cfg: ScoringConfig) -> TxSequenceScorer | None:
    """The tx sequence scorer `cfg` asks for (None when `sequence_model_dir` is unset)."""
    root = cfg.sequence_model_dir
    if root is None:
        return None
    from models.scorers import TX_ARTIFACT, TxSequenceScorer

    try:
        bundle, meta = registry.load(Path(root), TX_ARTIFACT)
    except registry.ArtifactNotFound as e:
        raise SequenceModelMissing(
            f"sequence_model_dir={root} holds no {TX_ARTIFACT!r} artifact ({e}); train one "
            f"with `vigil train tx --out {root}` or unset VIGIL_SEQUENCE_MODEL_DIR"
        ) from None
    if bundle.get("kind") != "tx":
        raise SequenceModelMissing(f"{root}/{TX_ARTIFACT} is a {bundle.get('kind')!r} model")
    scorer = TxSequenceScorer(bundle, meta, device=cfg.sequence_device)
    log.info("tx sequence model %s on %s", meta.version, scorer.device)
    return scorer


def fit_model(rows: np.ndarray, cfg: ScoringConfig, txs: Sequence[Tx] = ()) -> TxModel:
    """Fit forest, threshold and explanation profile on warm-up feature rows (and note
    how common machine-precision gas prices are among the warm-up `txs`)."""
    forest = IsolationForestDetector(n_estimators=100, max_samples=256, seed=cfg.seed)
    forest.fit(rows)
    threshold = QuantileThreshold(q=cfg.threshold_quantile)
    threshold.fit(forest.score(rows))
    profile = RobustProfile(names=FEATURE_NAMES)
    profile.fit(rows)
    share = cfg.rules.precise_gas_share(txs) if cfg.rules is not None else 0.0
    return TxModel(forest, threshold, profile, "", registry.fingerprint(rows), len(rows), share)


class TxScoringCore:
    """Stateful only in its model and warm-up buffer; per-sender state is passed in."""

    def __init__(
        self,
        cfg: ScoringConfig,
        model: TxModel | None = None,
        on_fit: Callable[[TxModel], None] | None = None,
        sequence: TxSequenceScorer | None = None,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.on_fit = on_fit  # persists a freshly fitted model (and sets its version)
        # the tx sequence model: given, or loaded from cfg.sequence_model_dir (or None)
        self.sequence = sequence if sequence is not None else load_sequence_scorer(cfg)
        self.sequence_threshold = 0.0
        self.sequence_version = ""
        if self.sequence is not None:
            from models.scorers import calibrated_threshold

            meta = self.sequence.meta
            self.sequence_threshold = (
                cfg.sequence_threshold
                if cfg.sequence_threshold is not None
                else calibrated_threshold(meta)
            )
            self.sequence_version = SEQUENCE_VERSION_PREFIX + (meta.version if meta else "")
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
        entity = result.alert_states
        seq = self._score_sequences(txs, new_states) if self.sequence is not None else {}
        result.sequence = list(seq.values())
        if self.cfg.fanout is not None:
            self._fanout(txs, alert_states, result)
        if self.model is None:
            if not self._collect_warmup(txs, rows):
                result.buffered = list(zip(txs, rows, strict=True))
                return result
            warm_all = np.vstack(self._warm_rows)
            ts = np.array([t.timestamp for t in self._warm_txs])
            # Steady rows up to the block time at which `warmup_rows` of them were in
            # (whole blocks), whatever the batch size: a backlog read in big batches must
            # not fit on traffic after the warm-up window.
            steady = np.flatnonzero(ts >= self._alert_from)
            cutoff = np.sort(ts[steady])[self.cfg.warmup_rows - 1]
            fit_idx = steady[ts[steady] <= cutoff]
            steady_txs = [self._warm_txs[i] for i in fit_idx]
            self.model = fit_model(warm_all[fit_idx], self.cfg, steady_txs)
            if self.on_fit is not None:
                self.on_fit(self.model)
            result.fitted = self.model
            txs, rows = self._warm_txs, warm_all
            self._warm_rows, self._warm_txs = [], []
            log.info(
                "fitted %s on %d warm-up rows, threshold %.4f; %.0f%% of warm-up calls have "
                "machine-precision gas prices, so the gas rules are %s",
                MODEL_NAME,
                len(fit_idx),
                self.model.threshold.threshold_,
                100 * self.model.precise_gas_share,
                "on"
                if self.cfg.rules and self.cfg.rules.gas_rules_apply(self.model.precise_gas_share)
                else "off",
            )
        if len(txs) == 0:
            return result
        model = self.model
        rows = np.asarray(rows)
        scores = model.forest.score(rows)
        rules = self.cfg.rules
        if rules is None:
            hits = [0] * len(txs)
        else:
            mask = rules.hits(rows) | rules.tx_hits(txs)
            if not rules.gas_rules_apply(model.precise_gas_share):
                mask &= ~GAS_RULES_MASK  # precise prices are normal here: not evidence
            hits = mask.tolist()
        thr = float(model.threshold.threshold_)
        # events in each tx's window, from its rate feature (round half to even, as round())
        rate = rows[:, _RATE] / (60.0 / self.cfg.window_s)
        window_txs = np.where(np.isfinite(rate), np.round(rate), 0.0).astype(np.int64).tolist()
        refs: dict[str, list[str]] = {}
        for tx in txs:
            refs.setdefault(tx.sender, []).append(tx.tx_hash)
        for tx, row, score, hit, n_window in zip(
            txs, rows, scores.tolist(), hits, window_txs, strict=True
        ):
            result.scored.append(ScoredTx(tx, score, thr, row))
            if tx.timestamp < self._alert_from:
                continue  # rows from before the windows filled are scored, never alerted
            sq = seq.get(tx.tx_hash) if seq else None
            prev = entity.get(tx.sender) or alert_states.get(tx.sender) or EntityAlertState()
            state, severity = self.cfg.policy.step(
                prev,
                score=score,
                threshold=thr,
                window_txs=n_window,
                now=tx.timestamp,
                evidence=bool(hit) or (sq is not None and sq.hit),
            )
            entity[tx.sender] = state
            if severity is not None:
                result.alerts.append(
                    self._alert(tx, row, score, thr, severity, refs[tx.sender][-20:], hit, sq)
                )
        return result

    def _score_sequences(
        self, txs: Sequence[Tx], states: Mapping[str, SenderWindow]
    ) -> dict[str, SequenceScore]:
        """Each sender of the batch once (window after the batch, at least
        `sequence_min_events` events), in one batched call; keyed by the tx hash of the
        sender's newest tx of the batch, which the score is recorded against."""
        scorer = self.sequence
        assert scorer is not None
        latest: dict[str, Tx] = {}
        for tx in txs:
            cur = latest.get(tx.sender)
            if cur is None or tx.timestamp >= cur.timestamp:
                latest[tx.sender] = tx
        picked = [
            (tx, w)
            for s, tx in latest.items()
            if (w := states.get(s)) is not None and len(w) >= self.cfg.sequence_min_events
        ]
        if not picked:
            return {}
        x, lengths = scorer.vectorise_windows([w for _, w in picked])
        proba = scorer.predict_proba(x, lengths)
        scores = proba[:, 1:].sum(axis=1).tolist()
        families = [scorer.class_names[i] for i in proba.argmax(axis=1).tolist()]
        thr = self.sequence_threshold
        return {
            tx.tx_hash: SequenceScore(tx, sc, thr, n, fam, self.sequence_version)
            for (tx, _), sc, n, fam in zip(picked, scores, lengths.tolist(), families, strict=True)
        }

    def _fanout(
        self, txs: list[Tx], alert_states: Mapping[str, EntityAlertState], result: BatchResult
    ) -> None:
        """Step the sybil fan-out rule over the batch's plain value transfers; alerts name
        the funder once per episode and each funded wallet once."""
        rule = self.cfg.fanout
        assert rule is not None
        entity = result.alert_states
        for tx in txs:
            if tx.selector or tx.value_wei <= 0 or not tx.status:
                continue  # only plain, successful value transfers fund wallets
            prev = entity.get(tx.sender) or alert_states.get(tx.sender) or EntityAlertState()
            fan, hit = rule.step(
                prev.fanout, sender=tx.sender, to=tx.to, value=tx.value_wei, ts=tx.timestamp
            )
            if fan != prev.fanout:
                entity[tx.sender] = replace(prev, fanout=fan)
            if hit is not None:
                if hit.funder is not None:
                    result.alerts.append(self._fanout_alert(tx, hit, hit.funder, "funder", fan))
                for w in hit.wallets:
                    result.alerts.append(self._fanout_alert(tx, hit, w, "funded_wallet", fan))

    def _fanout_alert(
        self, tx: Tx, hit: FanoutHit, entity: str, role: str, fan: FanoutState
    ) -> Alert:
        rule = self.cfg.fanout
        assert rule is not None
        doc: dict[str, Any] = {
            "entity": entity,
            "category": CATEGORY_SYBIL,
            "detector": FANOUT_DETECTOR_NAME,
            "role": role,
            "funder": tx.sender,
            "recipients": hit.recipients,
            "amount_wei": str(hit.ref_value),
            "rel_tol": rule.rel_tol,
            "horizon_s": rule.horizon_s,
            "funded": [[t, to] for t, to, _ in fan.cluster][-64:],
            "tx_refs": [tx.tx_hash],
            "block_number": tx.block_number,
        }
        h = evidence_hash(doc)
        return Alert(
            alert_id=h[2:34],
            entity=entity,
            category=CATEGORY_SYBIL,
            severity=self.cfg.fanout_severity.label,
            detector=FANOUT_DETECTOR_NAME,
            score=float(hit.recipients),
            threshold=float(rule.min_recipients),
            evidence_hash=h,
            evidence=canonical_json(doc),
            explanation=json.dumps(
                {
                    "summary": f"{role} of an equal-amount fan-out: {tx.sender} sent "
                    f"{hit.ref_value} wei (+-{rule.rel_tol:g}) to {hit.recipients} distinct "
                    f"recipients within {rule.horizon_s:g}s",
                }
            ),
            tx_hash=tx.tx_hash,
            block_number=tx.block_number,
            created_at=tx.timestamp,
        )

    def restore(self, txs: list[Tx], rows: np.ndarray) -> list[ScoredTx]:
        """Hand back warm-up txs that a restart took from the buffer (with their feature
        rows, computed before the restart). Without a model they are buffered again and
        scored at the fit; with one (the fit happened, but the restart came before their
        scores were recorded) they are scored now. Never alerted on: their senders'
        alert state has moved on since."""
        if not txs:
            return []
        if self.model is None:
            first = min(t.timestamp for t in txs)
            if self._stream_start is None or first < self._stream_start:
                self._stream_start = first
                self._alert_from = first + self.cfg.window_s
            self._warm_rows.extend(rows)
            self._warm_txs.extend(txs)
            return []
        scores = self.model.forest.score(np.asarray(rows))
        thr = float(self.model.threshold.threshold_)
        return [
            ScoredTx(tx, score, thr, row)
            for tx, row, score in zip(txs, rows, scores.tolist(), strict=True)
        ]

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
        rule_mask: int = 0,
        seq: SequenceScore | None = None,
    ) -> Alert:
        assert self.model is not None
        top = self.model.profile.explain(row, k=3)
        bar = thr + self.cfg.policy.model_margin * abs(thr)
        if score >= bar:
            detector = DETECTOR_NAME
        elif rule_mask:
            detector = RULES_DETECTOR_NAME
        elif seq is not None and seq.hit:
            detector = SEQUENCE_DETECTOR_NAME
        else:
            detector = DETECTOR_NAME
        doc: dict[str, Any] = {
            "entity": tx.sender,
            "category": CATEGORY_BOT,
            "detector": detector,
            "model_version": self.model.version,
            "score": score,
            "threshold": thr,
            "features": {n: float(v) for n, v in zip(FEATURE_NAMES, row, strict=True)},
            "tx_refs": recent,
            "block_number": tx.block_number,
        }
        if rule_mask:
            doc["rules"] = rule_names(rule_mask)
        if seq is not None:  # only with the sequence model on: hashes are unchanged without
            doc["sequence"] = {
                "model_version": seq.model_version,
                "score": seq.score,
                "threshold": seq.threshold,
                "events": seq.events,
                "looks_like": seq.looks_like,
            }
        h = evidence_hash(doc)
        return Alert(
            alert_id=h[2:34],
            entity=tx.sender,
            category=CATEGORY_BOT,
            severity=severity.label,
            detector=detector,
            score=score,
            threshold=thr,
            evidence_hash=h,
            evidence=canonical_json(doc),
            explanation=json.dumps(
                {
                    "top_features": [{"name": n, "value": v, "robust_z": z} for n, v, z in top],
                    "model_version": self.model.version,
                    **({"sequence": doc["sequence"]} if seq is not None else {}),
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
    n_in = getattr(model.forest, "n_features_in_", None)
    if n_in != len(FEATURE_NAMES):
        log.warning(
            "stored %s %s has %s features, this code %d: refitting on warm-up",
            MODEL_NAME,
            meta.version,
            n_in,
            len(FEATURE_NAMES),
        )
        return None
    model.version = meta.version
    return model
