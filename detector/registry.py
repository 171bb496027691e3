"""Every batch detector in `detector/`, so contract tests and benchmarks cover new ones
automatically: add a `DetectorFactory` here when you add a detector class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from detector.iforest import IsolationForestDetector


class BatchDetector(Protocol):
    """The contract: fit on a feature matrix, score rows (higher = more anomalous)."""

    def fit(self, X: np.ndarray) -> BatchDetector: ...

    def score(self, X: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class DetectorFactory:
    """A named way to build a detector with a given seed."""

    name: str
    make: Callable[[int], BatchDetector]

    def __call__(self, seed: int = 0) -> BatchDetector:
        return self.make(seed)


def _iforest(seed: int) -> BatchDetector:
    return IsolationForestDetector(n_estimators=100, max_samples=256, seed=seed)


DETECTORS: list[DetectorFactory] = [
    DetectorFactory(name="iforest", make=_iforest),
]
