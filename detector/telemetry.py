"""Streaming anomaly detector for one node-telemetry series (latency, throughput, GPU load...).

`TelemetryDetector.update(x)` takes the next value and returns a score in [0, 1] for it,
using only the values seen so far (no look-ahead). Three kinds of evidence, each asked the
same question -- "is this the most extreme thing seen in a while?":

* level: the value, or its mean over the last 16 rows, leaves the range of everything seen
  before by more than `level_tol` of that range (a new all-time high or low). Score 1.
* shape: at several time scales (blocks of 2, 8, 32 rows; 8 blocks each), the recent
  window summarised as block means and block spreads is compared with every stored past
  window (a nearest-neighbour "discord" distance, as in KNN-CAD or matrix-profile methods).
* local spike: the value's robust z-score against the previous 100 rows (median/MAD).

A shape or spike distance is not judged on an absolute scale but against its own recent
history: its score is 0.5 + log(distance / max of the same distance over the last
`horizon` evaluations), so 0.5 means "as novel as the most novel moment of the recent past"
and every series calibrates itself (records of the recent past, an extreme-value view; the
spike signal must beat its record by `local_offset` in log units). The final score is the
largest of the signals. After a score reaches `alarm`, the next `refractory` rows score 0:
one event, one alert.

Scores >= `alarm` (0.55) are alerts; on the NAB development subset (models.evaluation.nab)
the optimised threshold is ~0.56 and this configuration scores 74.6 (standard profile),
above Numenta HTM (69.5) and close to ARTime (73.6). See reports/nab.md.

`MultiTelemetryDetector` runs one detector per named metric and reports the largest score.
Pure logic: no I/O, clock or logging; deterministic; instances pickle mid-stream.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np


class _Record:
    """Log-margin of each new value over the maximum of the previous `horizon` values."""

    def __init__(self, horizon: int, min_count: int) -> None:
        self.horizon = horizon
        self.min_count = min_count
        self.window: deque[tuple[int, float]] = deque()  # (index, value), values decreasing
        self.t = 0

    def push(self, value: float) -> float | None:
        """Margin of `value` over the recent maximum (None until `min_count` values)."""
        margin = value - self.window[0][1] if self.t >= self.min_count else None
        while self.window and self.window[-1][1] <= value:
            self.window.pop()
        self.window.append((self.t, value))
        self.t += 1
        if self.window[0][0] <= self.t - 1 - self.horizon:
            self.window.popleft()
        return margin


class _Shape:
    """Nearest-neighbour novelty of the last `m` blocks of `d` rows (means and spreads)."""

    def __init__(self, d: int, m: int, capacity: int, horizon: int, min_count: int) -> None:
        self.d, self.m, self.capacity = d, m, capacity
        self.hop = max(1, d // 4)  # evaluate four times per block
        self.span = d * m
        self.buf = np.zeros(self.span)  # ring of the last `span` values
        self.t = 0
        self.hist = np.zeros((capacity, 2 * m))  # ring of past summary vectors
        self.sq = np.full(capacity, np.inf)  # their squared norms (inf = empty slot)
        self.n_hist = 0
        self.excl = math.ceil(self.span / self.hop)  # newest vectors overlap the current one
        self.rec = _Record(horizon, min_count)

    def push(self, x: float, floor: float) -> float | None:
        self.buf[self.t % self.span] = x
        self.t += 1
        if self.t < self.span or self.t % self.hop:
            return None
        i = self.t % self.span
        blocks = np.concatenate((self.buf[i:], self.buf[:i])).reshape(self.m, self.d)
        mean = np.add.reduce(blocks, axis=1) / self.d
        var = np.add.reduce(blocks * blocks, axis=1) / self.d - mean * mean
        vec = np.concatenate((mean, np.sqrt(np.maximum(var, 0.0))))
        vec_sq = float(vec @ vec)
        margin = None
        if self.n_hist > self.excl:
            dist2 = self.sq - 2.0 * (self.hist @ vec) + vec_sq
            if self.n_hist <= self.capacity:
                d2 = float(dist2[: self.n_hist - self.excl].min())
            else:
                dist2[(self.n_hist - 1 - np.arange(self.excl)) % self.capacity] = np.inf
                d2 = float(dist2.min())
            dist = math.sqrt(max(d2, 0.0))
            margin = self.rec.push(math.log(dist + floor))
            if not dist > 0.0:  # an exact repeat of a past window is never novel
                margin = None
        k = self.n_hist % self.capacity
        self.hist[k] = vec
        self.sq[k] = vec_sq
        self.n_hist += 1
        return margin


def _median(a: np.ndarray, k: int) -> float:
    """Median of an even-length array with k = len // 2 (a partition, not a sort)."""
    p = np.partition(a, (k - 1, k))
    return 0.5 * float(p[k - 1] + p[k])


class _Local:
    """Robust z-score of a value against the previous `length` rows, as a record margin."""

    def __init__(self, length: int, horizon: int, min_count: int) -> None:
        self.length = length + length % 2  # even, for _median
        self.k = self.length // 2
        self.buf = np.zeros(self.length)
        self.s = 0.0  # running sum and sum of squares of the buffer
        self.s2 = 0.0
        self.t = 0
        self.rec = _Record(horizon, min_count)

    def push(self, x: float, floor: float) -> float | None:
        n = self.length
        margin = None
        if self.t >= n:
            med = _median(self.buf, self.k)
            mad = _median(np.abs(self.buf - med), self.k)
            mu = self.s / n
            sd = math.sqrt(max(self.s2 / n - mu * mu, 0.0))
            # the std term keeps mostly-constant (MAD = 0) windows finite; floor: constant ones
            z = abs(x - med) / (1.4826 * mad + 0.1 * sd + floor)
            margin = self.rec.push(math.log(z + 0.1))
            if not z > 0.0:  # the median itself: no spike at all
                margin = None
        i = self.t % n
        old = float(self.buf[i]) if self.t >= n else 0.0
        self.buf[i] = x
        self.s += x - old
        self.s2 += x * x - old * old
        self.t += 1
        return margin


class _Level:
    """Mean of the last `w` rows vs. the range of all earlier such means."""

    def __init__(self, w: int) -> None:
        self.w = w
        self.buf = np.zeros(w)
        self.s = 0.0
        self.t = 0
        self.lo = math.inf
        self.hi = -math.inf

    def push(self, x: float) -> float:
        """Excess beyond the earlier range as a fraction of that range (0 inside it)."""
        i = self.t % self.w
        self.s += x - float(self.buf[i])
        self.buf[i] = x
        self.t += 1
        if self.t < self.w:
            return 0.0
        m = self.s / self.w if self.w > 1 else x
        excess = 0.0
        if self.hi > self.lo:
            excess = max(m - self.hi, self.lo - m, 0.0) / (self.hi - self.lo)
        self.lo = min(self.lo, m)
        self.hi = max(self.hi, m)
        return excess


class TelemetryDetector:
    """Streaming univariate detector: `update(x) -> score in [0, 1]` (see the module doc).

    Parameters (one fixed configuration for every series; the defaults are the NAB run):
    shape_scales: rows per block of each shape scale; embed: blocks per window;
    capacity: past windows kept per scale for the nearest-neighbour search;
    horizon: evaluations whose maximum a new distance is compared with;
    min_count: evaluations before a signal may score; local_length: rows of the spike
    baseline; local_offset: log-margin the spike signal must add to its record;
    level_windows / level_tol: rolling-mean lengths and range tolerance of the level check;
    refractory: rows scored 0 after an alert; alarm: alert level (for the refractory
    period); eps: distance floor as a fraction of the series' standard deviation.
    """

    def __init__(
        self,
        *,
        shape_scales: tuple[int, ...] = (2, 8, 32),
        embed: int = 8,
        capacity: int = 2000,
        horizon: int = 1000,
        min_count: int = 50,
        local_length: int = 100,
        local_offset: float = 0.3,
        level_windows: tuple[int, ...] = (1, 16),
        level_tol: float = 0.02,
        refractory: int = 20,
        alarm: float = 0.55,
        eps: float = 1e-3,
    ) -> None:
        self.shape_scales = shape_scales
        self.embed = embed
        self.capacity = capacity
        self.horizon = horizon
        self.min_count = min_count
        self.local_length = local_length
        self.local_offset = local_offset
        self.level_windows = level_windows
        self.level_tol = level_tol
        self.refractory = refractory
        self.alarm = alarm
        self.eps = eps

    def _start(self) -> None:
        self.shapes_ = [
            _Shape(d, self.embed, self.capacity, self.horizon, self.min_count)
            for d in self.shape_scales
        ]
        self.local_ = (
            _Local(self.local_length, self.horizon, self.min_count)
            if self.local_length > 0
            else None
        )
        self.levels_ = [_Level(w) for w in self.level_windows]
        self.n_seen_ = 0  # finite values learned
        self.mean_ = 0.0  # running mean and sum of squared deviations (Welford)
        self.m2_ = 0.0
        self.since_alert_ = math.inf  # rows since the last alert
        self.last_source_: str | None = None  # which signal gave the last score

    def update(self, x: float) -> float:
        """Score the next value, then learn it. Non-finite values score 0 and are skipped."""
        if not hasattr(self, "shapes_"):
            self._start()
        x = float(x)
        if not math.isfinite(x):
            self.last_source_ = None
            return 0.0
        self.n_seen_ += 1
        delta = x - self.mean_
        self.mean_ += delta / self.n_seen_
        self.m2_ += delta * (x - self.mean_)
        floor = self.eps * math.sqrt(self.m2_ / self.n_seen_) + 1e-12 * (abs(self.mean_) + 1.0)

        score, source = 0.0, None
        for shape in self.shapes_:
            margin = shape.push(x, floor)
            if margin is not None and 0.5 + margin > score:
                score, source = min(0.99, 0.5 + margin), f"shape:{shape.d}"
        if self.local_ is not None:
            margin = self.local_.push(x, floor)
            if margin is not None and 0.5 + margin - self.local_offset > score:
                score, source = min(0.99, 0.5 + margin - self.local_offset), "spike"
        for level in self.levels_:
            if level.push(x) > self.level_tol:
                score, source = 1.0, f"level:{level.w}"

        self.since_alert_ += 1
        if self.since_alert_ <= self.refractory:
            self.last_source_ = None
            return 0.0
        if score >= self.alarm:
            self.since_alert_ = 0
        self.last_source_ = source
        return max(score, 0.0)


class MultiTelemetryDetector:
    """One TelemetryDetector per metric; `update({metric: value}) -> max score`.

    Missing or non-finite metrics score 0 for that row; `last_scores_` keeps the per-metric
    scores of the last update (for explanations). The max over k metrics raises the alert
    rate roughly k-fold on normal data: calibrate the alert threshold on the combined score.
    """

    def __init__(
        self, *, metrics: tuple[str, ...], params: Mapping[str, Any] | None = None
    ) -> None:
        self.metrics = metrics
        self.params = params

    def update(self, values: Mapping[str, float]) -> float:
        if not hasattr(self, "detectors_"):
            self.detectors_ = {
                m: TelemetryDetector(**dict(self.params or {})) for m in self.metrics
            }
        self.last_scores_ = {
            m: det.update(values.get(m, math.nan)) for m, det in self.detectors_.items()
        }
        return max(self.last_scores_.values(), default=0.0)
