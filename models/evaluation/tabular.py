"""Isolation forest on the classic ADBench/ODDS tabular sets, in the published setup.

Liu et al. (2008) and the scikit-learn reproductions fit 100 trees on 256-row subsamples of
the whole (unlabelled) set and rank the same rows; labels are used only for the metrics.
This checks that our wrapper reproduces those figures before we trust it on chain data.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from detector.iforest import IsolationForestDetector

ADBENCH_SETS: tuple[str, ...] = ("16_http", "34_smtp", "32_shuttle")

#: Published isolation-forest ROC-AUC (scikit-learn reproduction; see shared/data/README.md).
PUBLISHED_ROC_AUC: dict[str, float] = {"16_http": 0.9995, "34_smtp": 0.90, "32_shuttle": 0.997}


@dataclass(frozen=True)
class TabularResult:
    name: str
    n: int
    anomalies: int
    roc_auc: float
    average_precision: float
    fit_s: float
    score_rows_per_s: float


def load_adbench(data_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """X (float64) and y (1 = anomaly) of one ADBench `.npz` set, read in place."""
    with np.load(Path(data_dir) / f"{name}.npz") as d:
        return np.asarray(d["X"], dtype=np.float64), np.asarray(d["y"]).astype(np.int64)


def evaluate_adbench(
    data_dir: Path, names: Sequence[str] = ADBENCH_SETS, seed: int = 0
) -> list[TabularResult]:
    """Fit on all rows of each set (unsupervised) and score the same rows."""
    results = []
    for name in names:
        X, y = load_adbench(data_dir, name)
        det = IsolationForestDetector(n_estimators=100, max_samples=256, seed=seed)
        t0 = time.perf_counter()
        det.fit(X)
        t1 = time.perf_counter()
        scores = det.score(X)
        t2 = time.perf_counter()
        results.append(
            TabularResult(
                name=name,
                n=int(X.shape[0]),
                anomalies=int(y.sum()),
                roc_auc=float(roc_auc_score(y, scores)),
                average_precision=float(average_precision_score(y, scores)),
                fit_s=t1 - t0,
                score_rows_per_s=X.shape[0] / max(t2 - t1, 1e-9),
            )
        )
    return results
