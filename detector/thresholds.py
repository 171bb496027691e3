"""Score -> alert decisions. A detector's score is not a decision; a calibrated threshold is."""

from __future__ import annotations

from typing import Any

import numpy as np


def _check_q(q: float) -> None:
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q!r}")


def _finite(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    return s[np.isfinite(s)]


class QuantileThreshold:
    """Alert on scores above the q-quantile of calibration scores (expected alert rate 1 - q
    on data like the calibration set, whatever the detector's score scale)."""

    def __init__(self, *, q: float) -> None:
        _check_q(q)
        self.q = q

    def fit(self, scores: np.ndarray) -> QuantileThreshold:
        """Learn `threshold_` from calibration scores; non-finite scores are ignored."""
        s = _finite(scores)
        if s.size == 0:
            raise ValueError("no finite calibration scores")
        self.threshold_: float = float(np.quantile(s, self.q))
        return self

    def is_alert(self, scores: np.ndarray) -> np.ndarray:
        """Boolean array: score strictly above the threshold (NaN never alerts)."""
        return np.asarray(scores, dtype=np.float64) > self.threshold_


class StreamingQuantile:
    """Exact q-quantile of the last `capacity` scores, for re-calibrating a live threshold.

    A ring buffer rather than a sketch: memory is small at the capacities used here, the
    answer is exact over a clear horizon (old regimes age out), and it serialises as a list.
    """

    def __init__(self, *, q: float, capacity: int = 100_000) -> None:
        _check_q(q)
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        self.q = q
        self.capacity = capacity
        # Streaming state starts empty here, as in river's learn_one estimators.
        self.buffer_ = np.empty(capacity, dtype=np.float64)
        self.n_seen_ = 0  # scores written so far (the ring's write position)

    def learn(self, scores: np.ndarray) -> StreamingQuantile:
        """Add a batch of scores (non-finite ones are ignored); vectorised."""
        s = _finite(scores)[-self.capacity :]
        if s.size:
            at = (self.n_seen_ + np.arange(s.size)) % self.capacity
            self.buffer_[at] = s
            self.n_seen_ += int(s.size)
        return self

    def learn_one(self, score: float) -> StreamingQuantile:
        return self.learn(np.array([score]))

    def __len__(self) -> int:
        return min(self.n_seen_, self.capacity)

    @property
    def threshold(self) -> float:
        """Current q-quantile of the retained scores; NaN before any score."""
        n = len(self)
        return float(np.quantile(self.buffer_[:n], self.q)) if n else float("nan")

    def is_alert(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores, dtype=np.float64) > self.threshold

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state, oldest score first."""
        n = len(self)
        if self.n_seen_ <= self.capacity:
            kept = self.buffer_[:n]
        else:
            head = self.n_seen_ % self.capacity
            kept = np.concatenate((self.buffer_[head:], self.buffer_[:head]))
        return {"q": self.q, "capacity": self.capacity, "scores": kept.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamingQuantile:
        sq = cls(q=float(data["q"]), capacity=int(data["capacity"]))
        return sq.learn(np.asarray(data["scores"], dtype=np.float64))
