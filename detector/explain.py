"""Why did a row alert? Robust z-scores of its features against the training population."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# IQR / 1.349 and 1.2533 * mean absolute deviation both estimate sigma for a normal.
_IQR_TO_SIGMA = 1.349
_MEANAD_TO_SIGMA = 1.2533


def top_features(
    x_row: np.ndarray,
    *,
    median: np.ndarray,
    scale: np.ndarray,
    names: Sequence[str],
    k: int = 3,
) -> list[tuple[str, float, float]]:
    """The k features furthest from typical, as (name, value, robust_z), largest |z| first.

    Missing (non-finite) values are skipped: absence of evidence explains nothing.
    Ties keep feature order, so the answer is deterministic.
    """
    x = np.asarray(x_row, dtype=np.float64).ravel()
    if not (x.shape == median.shape == scale.shape and len(names) == x.size):
        raise ValueError("x_row, median, scale and names must have the same length")
    with np.errstate(invalid="ignore"):
        z = (x - median) / scale
    ok = np.flatnonzero(np.isfinite(z))
    ranked = ok[np.argsort(-np.abs(z[ok]), kind="stable")][:k]
    return [(names[i], float(x[i]), float(z[i])) for i in ranked]


class RobustProfile:
    """Per-feature median and robust scale of the training rows, used to explain alerts.

    Scale is IQR / 1.349; where the IQR is 0 (a feature that is almost always the same,
    e.g. failure_ratio) it falls back to the mean absolute deviation, then to `min_scale`,
    so a departure from a constant feature ranks very high instead of dividing by zero.
    """

    def __init__(self, *, names: Sequence[str] | None = None, min_scale: float = 1e-6) -> None:
        if not min_scale > 0:
            raise ValueError(f"min_scale must be > 0, got {min_scale!r}")
        self.names = names
        self.min_scale = min_scale

    def fit(self, X: np.ndarray) -> RobustProfile:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"expected a 2-D feature matrix, got shape {X.shape}")
        if self.names is not None and len(self.names) != X.shape[1]:
            raise ValueError(f"{len(self.names)} names for {X.shape[1]} features")
        Xf = np.where(np.isfinite(X), X, np.nan)
        with np.errstate(all="ignore"):
            empty = np.isnan(Xf).all(axis=0)
            Xf[:, empty] = 0.0  # placeholder so the percentiles stay quiet; masked below
            q25, med, q75 = np.nanpercentile(Xf, [25, 50, 75], axis=0)
            mean_ad = np.nanmean(np.abs(Xf - med), axis=0)
        scale = (q75 - q25) / _IQR_TO_SIGMA
        scale = np.where(scale > 0, scale, _MEANAD_TO_SIGMA * mean_ad)
        # A feature never seen in training has no reference: its z is NaN, so it is never blamed.
        self.median_: np.ndarray = np.where(empty, np.nan, med)
        self.scale_: np.ndarray = np.where(
            empty, np.nan, np.where(scale > self.min_scale, scale, self.min_scale)
        )
        self.names_: tuple[str, ...] = (
            tuple(self.names)
            if self.names is not None
            else tuple(f"f{i}" for i in range(X.shape[1]))
        )
        return self

    def robust_z(self, X: np.ndarray) -> np.ndarray:
        """(x - median) / scale for every cell; NaN stays NaN. Vectorised over rows."""
        with np.errstate(invalid="ignore"):
            z: np.ndarray = (np.asarray(X, dtype=np.float64) - self.median_) / self.scale_
        return z

    def explain(self, x_row: np.ndarray, *, k: int = 3) -> list[tuple[str, float, float]]:
        """Top-k (name, value, robust_z) of one row; see `top_features`."""
        return top_features(x_row, median=self.median_, scale=self.scale_, names=self.names_, k=k)
