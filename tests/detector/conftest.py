"""Shared fixtures for detector tests: a small labelled tabular set with planted anomalies."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def planted() -> tuple[np.ndarray, np.ndarray]:
    """1000 normal rows from two correlated Gaussian clusters, 30 scattered anomalies."""
    rng = np.random.default_rng(12345)
    d = 6
    cov = 0.5 * np.eye(d) + 0.5  # correlated features, as window features are
    normal = np.concatenate(
        [
            rng.multivariate_normal(np.zeros(d), cov, 600),
            rng.multivariate_normal(np.full(d, 4.0), cov, 400),
        ]
    )
    anomalies = rng.uniform(-6.0, 10.0, (30, d))
    X = np.concatenate([normal, anomalies])
    y = np.r_[np.zeros(len(normal), dtype=int), np.ones(len(anomalies), dtype=int)]
    perm = rng.permutation(len(X))
    return X[perm], y[perm]
