"""Isolation forest on window features (Liu et al. 2008), wrapped for the detector contract."""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.ensemble import IsolationForest


def _as_matrix(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D feature matrix, got shape {X.shape}")
    return X


class IsolationForestDetector:
    """Batch isolation forest; `score` is higher for more anomalous rows.

    Missing or non-finite features (a sender's first tx has no inter-arrival time) are
    imputed with the training medians, so a sparse history looks typical rather than
    extreme. `contamination` only matters for sklearn's own `predict`; alert decisions
    come from a calibrated threshold (detector.thresholds), not from here.
    """

    def __init__(
        self,
        *,
        n_estimators: int = 100,
        max_samples: int | float | Literal["auto"] = 256,
        contamination: float | Literal["auto"] = "auto",
        seed: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.contamination = contamination
        self.seed = seed

    def _impute(self, X: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(X), X, self.medians_)

    def fit(self, X: np.ndarray) -> IsolationForestDetector:
        """Learn imputation medians and grow the forest; X is never modified."""
        X = _as_matrix(X)
        if X.shape[0] < 2:
            raise ValueError("need at least 2 rows to fit an isolation forest")
        finite = np.where(np.isfinite(X), X, np.nan)
        with np.errstate(all="ignore"):
            all_missing = np.isnan(finite).all(axis=0)
            medians = np.nanmedian(np.where(all_missing, 0.0, finite), axis=0)
        self.medians_: np.ndarray = np.where(all_missing, 0.0, medians)
        max_samples = self.max_samples
        if isinstance(max_samples, int):  # sklearn warns when asked for more than it has
            max_samples = min(max_samples, X.shape[0])
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=max_samples,
            contamination=self.contamination,
            random_state=self.seed,
        ).fit(self._impute(X))
        self.n_features_in_: int = X.shape[1]
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score in (0, 1]: 2**(-mean path length / c(n)); ~0.5 is ordinary."""
        X = _as_matrix(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} features, got {X.shape[1]}")
        scores: np.ndarray = -self.forest_.score_samples(self._impute(X))
        return scores
