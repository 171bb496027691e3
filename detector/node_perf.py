"""Streaming serving-health scorer for one inference node: slow batches and failure bursts.

`NodePerfDetector.learn_one(x, t=...)` takes one telemetry record (a batch, or a bucket of
batches) and `score_one(...)` says how unusual the node's recent serving is, against its own
past AND against the fleet. It scores; it decides nothing: thresholds live in
`detector.node_rules` (`perf_rules`), and whatever they say is soft evidence (alerts,
never a slash proposal on its own).

Two signals:

* fixed per-batch latency ("overhead"). A batch's latency is a fixed cost plus a cost per
  token, so raw latency differs between a CPU node serving long batches and a GPU node
  serving short ones by orders of magnitude, and is no basis for comparing nodes. The
  intercept of latency against tokens per batch is: a node that adds a fixed delay to
  every batch (a slow node) shows it there, whatever its hardware or traffic.
  - against its own baseline: a latency-vs-tokens line fitted on the node's first
    `baseline_records` records is frozen; later latencies minus that line's prediction
    (exponentially time-weighted, half-life `half_life_s`) give the excess latency at the
    same batch size, scored as its lower bound (mean - z x standard error), in ms;
  - against the fleet: the intercept of a time-weighted least-squares fit (same
    half-life) with its standard error; its lower bound over the fleet's median intercept
    (passed in by the caller). A node whose batches all have the same size (no leverage on
    the intercept) or whose latency is noisy gets a wide interval and no score.
* failed batches, against a reference rate (the larger of `error_floor` and
  `fleet_error_mult` x the fleet's median ratio), as a Chernoff surprise: batches x
  KL(observed ratio || reference), in nats, over the last `window_s` (buckets of
  `bucket_s`) and over all history, whichever is larger. The bucket with the most failures
  is left out of each, so one honest blip (a restart, a bad request) is not a burst; a
  flaky node fails in bucket after bucket.
* failure bursts, bucket by bucket: each bucket of the window has its own surprise at the
  same reference, and the score is the second largest (again the worst bucket is left
  out). A busy node that fails a fifth of its batches in a few short bursts and is clean
  in between has a pooled ratio near the reference, but two buckets that are each
  unlikely under it.

Pure logic: no I/O, clock, logging or randomness (nothing is sampled; `seed` is kept for
the detector contract); learned state ends in `_` and appears on the first `learn_one`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class NodePerfScore:
    """What `NodePerfDetector.score_one` says about one node (None: not enough data)."""

    overhead_ms: float | None  # fitted fixed latency per batch
    overhead_lo_ms: float | None  # its lower bound (estimate - z x standard error)
    baseline_ms: float | None  # intercept of the frozen own-baseline line
    fleet_overhead_ms: float | None  # the fleet median used
    self_excess_ms: float  # lower bound of latency above the own baseline's prediction
    fleet_ratio: float  # lower bound / fleet median (0 without either)
    error_ratio: float  # failed / all batches in the window
    error_reference: float  # the failure rate the window is compared with
    error_surprise: float  # nats; largest bucket left out
    batches: int  # batches in the error window
    burst_surprise: float = 0.0  # nats; the window's second most surprising bucket on its own


def _kl_bernoulli(q: float, p: float) -> float:
    """KL(q || p) of two Bernoulli rates, for q > p (0 otherwise)."""
    if q <= p:
        return 0.0
    q = min(q, 1.0)
    p = min(max(p, 1e-12), 1.0 - 1e-12)
    a = q * math.log(q / p)
    b = (1.0 - q) * math.log((1.0 - q) / (1.0 - p)) if q < 1.0 else 0.0
    return a + b


class NodePerfDetector:
    """One node's serving health: fixed per-batch latency and failed-batch bursts."""

    def __init__(
        self,
        *,
        half_life_s: float = 120.0,
        window_s: float = 300.0,
        bucket_s: float = 10.0,
        min_records: int = 8,
        baseline_records: int = 12,
        z: float = 3.0,
        overhead_floor_ms: float = 5.0,
        error_floor: float = 0.02,
        fleet_error_mult: float = 2.0,
        seed: int = 0,
    ) -> None:
        self.half_life_s = half_life_s
        self.window_s = window_s
        self.bucket_s = bucket_s
        self.min_records = min_records
        self.baseline_records = baseline_records
        self.z = z
        self.overhead_floor_ms = overhead_floor_ms
        self.error_floor = error_floor
        self.fleet_error_mult = fleet_error_mult
        self.seed = seed

    # ------------------------------------------------------------------ learning
    def _start(self) -> None:
        # weighted sums of 1, x, y, x^2, xy, y^2 and w^2 (x: ktokens per batch, y: latency ms)
        self.sums_ = [0.0] * 7
        self.records_ = 0
        self.t_ = -math.inf
        self.base_sums_ = [0.0] * 5  # unweighted sums of 1, x, y, x^2, xy (baseline records)
        self.base_fit_: tuple[float, float] | None = None  # frozen (intercept, slope)
        self.resid_ = [0.0] * 4  # weighted sums of 1, r, r^2 and w^2 (r: latency - baseline)
        self.buckets_: deque[list[float]] = deque()  # [bucket start, ok batches, failed]
        self.totals_ = [0.0, 0.0]  # ok and failed batches since the first record
        self.worst_old_ = [0.0, 0.0]  # (ok, failed) of the worst bucket out of the window

    def learn_one(self, x: Mapping[str, float], *, t: float) -> NodePerfDetector:
        """One record at time `t` (s): `latency_ms`, `tokens`, `batches` (served, ok) and
        `failed` (failed batches); missing keys count as 0."""
        if not hasattr(self, "sums_"):
            self._start()
        ok = max(float(x.get("batches", 0.0)), 0.0)
        failed = max(float(x.get("failed", 0.0)), 0.0)
        latency = float(x.get("latency_ms", 0.0))
        tokens = max(float(x.get("tokens", 0.0)), 0.0)
        if ok > 0 or failed > 0:
            start = math.floor(t / self.bucket_s) * self.bucket_s
            if self.buckets_ and self.buckets_[-1][0] == start:
                self.buckets_[-1][1] += ok
                self.buckets_[-1][2] += failed
            elif not self.buckets_ or start > self.buckets_[-1][0]:
                self.buckets_.append([start, ok, failed])
            else:  # late record: count it in the newest bucket
                self.buckets_[-1][1] += ok
                self.buckets_[-1][2] += failed
            self.totals_[0] += ok
            self.totals_[1] += failed
            while self.buckets_ and self.buckets_[0][0] <= self.buckets_[-1][0] - self.window_s:
                _, b_ok, b_failed = self.buckets_.popleft()
                if b_failed > self.worst_old_[1]:
                    self.worst_old_ = [b_ok, b_failed]
        if ok > 0 and latency > 0 and math.isfinite(latency) and math.isfinite(tokens):
            if t > self.t_:
                decay = 0.5 ** ((t - self.t_) / self.half_life_s) if self.records_ else 1.0
                self.sums_ = [v * decay for v in self.sums_[:6]] + [self.sums_[6] * decay**2]
                r = self.resid_
                self.resid_ = [r[0] * decay, r[1] * decay, r[2] * decay, r[3] * decay**2]
                self.t_ = t
            k = tokens / ok / 1000.0
            s = self.sums_
            for i, v in enumerate((1.0, k, latency, k * k, k * latency, latency * latency, 1.0)):
                s[i] += v
            self.records_ += 1
            if self.base_fit_ is None:
                b = self.base_sums_
                for i, v in enumerate((1.0, k, latency, k * k, k * latency)):
                    b[i] += v
                if self.records_ >= self.baseline_records:
                    n, sx, sy, sxx, sxy = b
                    vx = sxx / n - (sx / n) ** 2
                    slope = max((sxy / n - sx * sy / n**2) / vx, 0.0) if vx > 1e-12 else 0.0
                    self.base_fit_ = (sy / n - slope * sx / n, slope)
            else:
                res = latency - (self.base_fit_[0] + self.base_fit_[1] * k)
                for i, v in enumerate((1.0, res, res * res, 1.0)):
                    self.resid_[i] += v
        return self

    def _fit(self) -> tuple[float, float] | None:
        """(intercept, its standard error) of the weighted fit, None while unidentified."""
        if self.records_ < self.min_records:
            return None
        w, sx, sy, sxx, sxy, syy, w2 = self.sums_
        if w <= 0 or w2 <= 0:
            return None
        mx, my = sx / w, sy / w
        vx = sxx / w - mx * mx
        if vx <= 1e-12 * max(sxx / w, 1e-12):
            return None
        slope = (sxy / w - mx * my) / vx
        a = my - slope * mx
        n_eff = w * w / w2
        if n_eff <= 3:
            return None
        resid = max(syy / w - my * my - slope * slope * vx, 0.0) * n_eff / (n_eff - 2)
        se = math.sqrt(resid * (sxx / w) / (vx * n_eff))
        return a, se

    # ------------------------------------------------------------------ scoring
    @staticmethod
    def _surprise(n: float, failed: float, ref: float) -> float:
        """Chernoff surprise (nats) of `failed` out of `n` batches at reference rate `ref`."""
        return n * _kl_bernoulli(failed / n, ref) if n > 0 else 0.0

    def overhead_ms(self) -> float | None:
        """The current fixed-latency estimate (what a fleet median is made of)."""
        if not hasattr(self, "sums_"):
            return None
        fit = self._fit()
        return None if fit is None else fit[0]

    def error_ratio(self) -> float | None:
        """Failed / all batches in the window (None before any batch)."""
        if not hasattr(self, "buckets_"):
            return None
        ok = sum(b[1] for b in self.buckets_)
        failed = sum(b[2] for b in self.buckets_)
        return failed / (ok + failed) if ok + failed > 0 else None

    def score_one(
        self,
        *,
        fleet_overhead_ms: float | None = None,
        fleet_error_ratio: float | None = None,
    ) -> NodePerfScore:
        """How unusual the node's recent serving is (see the module doc)."""
        fit = self._fit() if hasattr(self, "sums_") else None
        base = getattr(self, "base_fit_", None)
        baseline = None if base is None else base[0]
        a = lo = None
        self_excess = fleet_ratio = 0.0
        if base is not None:
            w, sr, srr, w2 = self.resid_
            n_eff = w * w / w2 if w2 > 0 else 0.0
            if n_eff >= 3:
                mean = sr / w
                sd = math.sqrt(max(srr / w - mean * mean, 0.0) * n_eff / (n_eff - 1))
                self_excess = max(0.0, mean - self.z * sd / math.sqrt(n_eff))
        if fit is not None:
            a, se = fit
            lo = a - self.z * se
            if fleet_overhead_ms is not None:
                fleet_ratio = max(0.0, lo) / max(fleet_overhead_ms, self.overhead_floor_ms)
        ref = self.error_floor
        if fleet_error_ratio is not None:
            ref = max(ref, self.fleet_error_mult * fleet_error_ratio)
        buckets = list(getattr(self, "buckets_", ()))
        ok = sum(b[1] for b in buckets)
        failed = sum(b[2] for b in buckets)
        total = ok + failed
        surprise = 0.0
        if buckets:  # the window, and all history: the largest burst left out of each
            worst = max(buckets, key=lambda b: b[2])
            surprise = self._surprise(total - worst[1] - worst[2], failed - worst[2], ref)
            w_ok, w_failed = worst[1:] if worst[2] >= self.worst_old_[1] else self.worst_old_
            all_ok, all_failed = self.totals_
            surprise = max(
                surprise,
                self._surprise(all_ok + all_failed - w_ok - w_failed, all_failed - w_failed, ref),
            )
        bursts = sorted(
            (self._surprise(b[1] + b[2], b[2], ref) for b in buckets if b[2] > 0), reverse=True
        )
        return NodePerfScore(
            overhead_ms=a,
            overhead_lo_ms=lo,
            baseline_ms=baseline,
            fleet_overhead_ms=fleet_overhead_ms,
            self_excess_ms=self_excess,
            fleet_ratio=fleet_ratio,
            error_ratio=failed / total if total else 0.0,
            error_reference=ref,
            error_surprise=surprise,
            batches=int(total),
            burst_surprise=bursts[1] if len(bursts) > 1 else 0.0,
        )


def fleet_median(values: Iterable[float | None]) -> float | None:
    """Median of the known values (None when there are fewer than 3: no fleet to compare)."""
    xs = sorted(v for v in values if v is not None and math.isfinite(v))
    if len(xs) < 3:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else 0.5 * (xs[m - 1] + xs[m])


class NodeFleet:
    """Every node's `NodePerfDetector` and the fleet medians each node is compared with.

    `learn` feeds one node's record; `refresh` recomputes the fleet medians (a timer's job:
    the medians move slowly, and recomputing them per record would cost O(nodes) each);
    `score` scores one node against the medians of the last refresh.
    """

    def __init__(self, **params: Any) -> None:
        self.params = dict(params)
        self.nodes: dict[str, NodePerfDetector] = {}
        self.overhead_ms: float | None = None
        self.error_ratio: float | None = None

    def learn(self, node: str, x: Mapping[str, float], *, t: float) -> NodePerfDetector:
        det = self.nodes.get(node)
        if det is None:
            det = self.nodes[node] = NodePerfDetector(**self.params)
        return det.learn_one(x, t=t)

    def refresh(self) -> None:
        self.overhead_ms = fleet_median(d.overhead_ms() for d in self.nodes.values())
        self.error_ratio = fleet_median(d.error_ratio() for d in self.nodes.values())

    def score(self, node: str) -> NodePerfScore | None:
        det = self.nodes.get(node)
        if det is None:
            return None
        return det.score_one(fleet_overhead_ms=self.overhead_ms, fleet_error_ratio=self.error_ratio)

    def forget(self, node: str) -> None:
        self.nodes.pop(node, None)
