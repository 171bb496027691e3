"""Held-out comparison: sequence model vs isolation forest on the same entities.

The held-out entities come from the generators' `heldout` seed branch, which no training
or dev code path draws from. Every detector sees the same windows: the sequence model
their events, the isolation forest (and a supervised gradient-boosting reference) the
window's feature row. Alert thresholds are set on the dev split at a fixed false-positive
rate on normal entities, then applied unchanged to the held-out split.

Detectors compared:
- `sequence`: the trained artifact (supervised on the families in its training config).
- `iforest`: `detector.iforest.IsolationForestDetector` fitted on the training split's
  normal entities only (a clean reference: its best case; in production it is fitted on
  unlabelled, slightly contaminated traffic).
- `features_gbm`: scikit-learn HistGradientBoosting on the same window features and the
  same training labels (normal vs any anomaly): tells whether the sequence model's edge
  comes from seeing sequences or only from supervision.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score, roc_auc_score

from detector.iforest import IsolationForestDetector
from models.data.common import SequenceArrays, Split
from models.data.modules import (
    TelemetryDataConfig,
    TxDataConfig,
    build_telemetry_split,
    build_tx_split,
)
from models.data.telemetry import NODE_FAMILIES
from models.data.tx import TX_FAMILIES
from models.scorers import TELEMETRY_ARTIFACT, TX_ARTIFACT, SequenceScorer, load_scorer

Kind = Literal["tx", "telemetry"]
DETECTORS: tuple[str, ...] = ("sequence", "iforest", "features_gbm")


@dataclass(frozen=True)
class Scores:
    """One detector's numbers on one subset (a family vs normal, or everything)."""

    roc_auc: float
    average_precision: float
    precision: float  # at the dev-calibrated threshold
    recall: float
    false_positive_rate: float
    n_anomalous: int
    n_normal: int


@dataclass
class SequenceComparison:
    """Per-family and overall scores of each detector on one held-out split."""

    kind: str
    artifact: str
    artifact_version: str
    trained_families: list[str]
    heldout_seed: int
    target_fpr: float
    n_heldout: int
    per_family: dict[str, dict[str, Scores]] = field(default_factory=dict)
    overall: dict[str, Scores] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    sequence_scoring_per_s: float = float("nan")
    seconds: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scores(y: np.ndarray, s: np.ndarray, thr: float) -> Scores:
    flagged = s >= thr
    tp = int((flagged & (y == 1)).sum())
    fp = int((flagged & (y == 0)).sum())
    pos, neg = int(y.sum()), int((y == 0).sum())
    both = 0 < pos < len(y)
    return Scores(
        roc_auc=float(roc_auc_score(y, s)) if both else float("nan"),
        average_precision=float(average_precision_score(y, s)) if both else float("nan"),
        precision=tp / (tp + fp) if tp + fp else float("nan"),
        recall=tp / pos if pos else float("nan"),
        false_positive_rate=fp / neg if neg else float("nan"),
        n_anomalous=pos,
        n_normal=neg,
    )


def _threshold(dev_scores: np.ndarray, dev: SequenceArrays, fpr: float) -> float:
    """Score above which `fpr` of the dev normals fall (higher = more anomalous)."""
    normal = dev_scores[dev.labels == 0]
    return float(np.quantile(normal, 1.0 - fpr, method="higher")) + 1e-12


def _feature_detectors(
    train: SequenceArrays, trained_families: set[str], seed: int
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    normal = train.labels == 0
    forest = IsolationForestDetector(n_estimators=200, max_samples=256, seed=seed)
    forest.fit(train.window_features[normal])
    keep = np.isin(np.asarray(train.families), sorted(trained_families))
    gbm = HistGradientBoostingClassifier(max_iter=200, random_state=seed)
    Xw = np.where(np.isfinite(train.window_features), train.window_features, np.nan)
    gbm.fit(Xw[keep], train.is_anomaly[keep])

    def gbm_score(X: np.ndarray) -> np.ndarray:
        p: np.ndarray = gbm.predict_proba(np.where(np.isfinite(X), X, np.nan))[:, 1]
        return p

    return {"iforest": forest.score, "features_gbm": gbm_score}


def compare(
    kind: Kind,
    artifacts: Path,
    *,
    heldout_seed: int = 1,
    n_normal: int | None = None,
    n_per_family: int | None = None,
    target_fpr: float = 0.01,
    version: str | None = None,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> SequenceComparison:
    """Score the held-out split with the artifact, the forest and the GBM reference.

    The held-out split holds every family of the generator, also those left out of
    training (so a leave-one-family-out artifact is measured on a family it never saw).
    Sizes default to the training config's.
    """
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    artifact = name or (TX_ARTIFACT if kind == "tx" else TELEMETRY_ARTIFACT)
    scorer: SequenceScorer = load_scorer(Path(artifacts), artifact, version)
    assert scorer.meta is not None
    cfg = scorer.meta.config
    if cfg["kind"] != kind:
        raise ValueError(f"artifact {artifact} is a {cfg['kind']} model, not {kind}")
    seed = int(cfg["train"]["seed"])
    tcfg: TxDataConfig | TelemetryDataConfig
    if kind == "tx":
        tcfg = TxDataConfig.from_dict(cfg["data"])
        normal_name, all_families = "normal", TX_FAMILIES
    else:
        tcfg = TelemetryDataConfig.from_dict(cfg["data"])
        normal_name, all_families = "honest", NODE_FAMILIES

    def build(
        split: Split, counts: dict[str, int] | None = None, seed: int | None = None
    ) -> SequenceArrays:
        if isinstance(tcfg, TxDataConfig):
            return build_tx_split(tcfg, split, counts, seed)
        return build_telemetry_split(tcfg, split, counts, seed)

    nn_ = n_normal if n_normal is not None else tcfg.n_normal
    nf = n_per_family if n_per_family is not None else tcfg.n_per_family
    heldout_counts = {f: (nn_ if f == normal_name else nf) for f in all_families}

    say("generating train/dev splits (as trained) and the held-out split")
    train = build("train")
    dev = build("dev")
    held = build("heldout", heldout_counts, heldout_seed)

    say("fitting isolation forest and GBM reference on the training split")
    detectors: dict[str, Callable[[SequenceArrays], np.ndarray]] = {
        "sequence": lambda a: scorer.score(a.x, a.lengths)
    }
    for dname, fn in _feature_detectors(train, set(tcfg.families), seed).items():
        detectors[dname] = lambda a, fn=fn: fn(a.window_features)  # type: ignore[misc]

    result = SequenceComparison(
        kind=kind,
        artifact=artifact,
        artifact_version=scorer.meta.version,
        trained_families=list(tcfg.families),
        heldout_seed=heldout_seed,
        target_fpr=target_fpr,
        n_heldout=len(held),
    )
    fam = np.asarray(held.families)
    for dname, det in detectors.items():
        say(f"scoring with {dname}")
        t_s = time.perf_counter()
        held_s = det(held)
        if dname == "sequence":
            result.sequence_scoring_per_s = len(held) / max(time.perf_counter() - t_s, 1e-9)
        thr = _threshold(det(dev), dev, target_fpr)
        result.thresholds[dname] = thr
        result.overall[dname] = _scores(held.is_anomaly, held_s, thr)
        for f in all_families:
            if f == normal_name:
                continue
            sel = (fam == normal_name) | (fam == f)
            result.per_family.setdefault(f, {})[dname] = _scores(
                (fam[sel] == f).astype(np.int64), held_s[sel], thr
            )
    result.seconds = time.perf_counter() - t0
    return result


def to_markdown(c: SequenceComparison) -> str:
    """Tables for the report: per family ROC-AUC / AP / recall, then overall."""
    dets = list(c.overall)
    lines = [
        f"**{c.kind}** artifact `{c.artifact}` {c.artifact_version}, held-out seed "
        f"{c.heldout_seed}, {c.n_heldout} entities; thresholds at {c.target_fpr:.0%} FPR on "
        f"dev normals. Trained on: {', '.join(c.trained_families)}.",
        "",
        "| family | " + " | ".join(f"{d} AUC | {d} AP | {d} recall" for d in dets) + " |",
        "| --- | " + " | ".join("---: | ---: | ---:" for _ in dets) + " |",
    ]
    for f, per in c.per_family.items():
        unseen = "" if f in c.trained_families else " (unseen)"
        cells = " | ".join(
            f"{per[d].roc_auc:.3f} | {per[d].average_precision:.3f} | {per[d].recall:.2f}"
            for d in dets
        )
        lines.append(f"| {f}{unseen} | {cells} |")
    cells = " | ".join(
        f"{c.overall[d].roc_auc:.3f} | {c.overall[d].average_precision:.3f} | "
        f"{c.overall[d].recall:.2f}"
        for d in dets
    )
    lines.append(f"| **all** | {cells} |")
    lines += [
        "",
        "| detector | precision | recall | FPR (held-out) | threshold |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for d in dets:
        o = c.overall[d]
        lines.append(
            f"| {d} | {o.precision:.3f} | {o.recall:.3f} | {o.false_positive_rate:.3f} | "
            f"{c.thresholds[d]:.4g} |"
        )
    return "\n".join(lines) + "\n"
