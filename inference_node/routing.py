"""Which node serves the next request: a pure, seeded weighted choice.

The gateway keeps live state per node (health, on-chain throttle, reputation,
latency, load) and hands this module immutable snapshots; nothing here does
I/O or reads a clock, so routing decisions are reproducible in tests and
drills given the same RNG seed.

A node's weight is

    reputation^power * spot_penalty
        / (latency_ms * (1 + queue_penalty * (inflight + queue_depth)))

so a trusted, fast, idle node gets most traffic, but every eligible node keeps
a share (a random choice, not the arg-max: a node whose latency estimate went
stale still gets requests that refresh it). Unhealthy and throttled nodes get
weight 0 and are never chosen.

Scales: `reputation` is always a fraction in [0, 1] here (1.0 = fully trusted),
and so is `RoutingPolicy.min_reputation`. The reputation API serves scores on
0-100 (`pipelines/api.py`); the gateway divides them by its `reputation_scale`
(100) when it reads them, so nothing in routing ever sees a 0-100 number.

`spot_penalty` is the gateway's own, faster evidence: each spot check of its own
that the node failed within the last `spot_fail_decay_s` multiplies its weight
by `spot_fail_factor` (0.5: one failure halves it), down to `spot_fail_floor`
(so a failing node still gets a share of traffic, and with it further spot
checks). The reputation API catches up with the same verdicts later.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """A node as routing sees it at one instant."""

    node_id: str
    healthy: bool = True
    throttled: bool = False
    reputation: float = 1.0  # [0, 1] (not the API's 0-100); 1.0 when no source is configured
    latency_ms: float | None = None  # EWMA of served requests; None until one was served
    inflight: int = 0  # requests this gateway has outstanding at the node
    queue_depth: int = 0  # the node's own queue, from its last health probe
    spot_failures: int = 0  # spot checks it failed within the policy's `spot_fail_decay_s`

    @property
    def eligible(self) -> bool:
        return self.healthy and not self.throttled


@dataclass(frozen=True)
class RoutingPolicy:
    """Knobs of the weight formula (see the module doc)."""

    reputation_power: float = 2.0
    reputation_floor: float = 0.01  # a zero score still gets a trickle, unless excluded
    min_reputation: float = 0.0  # strictly below this: never routed to
    latency_floor_ms: float = 1.0  # keeps one lucky fast sample from taking all traffic
    default_latency_ms: float = 50.0  # when no node has a latency estimate yet
    queue_penalty: float = 1.0
    spot_fail_factor: float = 0.5  # weight multiplier per recent failed spot check
    spot_fail_floor: float = 0.125  # the multiplier never goes below this
    spot_fail_decay_s: float = 300.0  # a failed spot check counts this long

    def __post_init__(self) -> None:
        if self.reputation_power < 0 or self.queue_penalty < 0:
            raise ValueError("reputation_power and queue_penalty must be >= 0")
        if not 0 <= self.min_reputation <= 1:
            raise ValueError("min_reputation is a fraction in [0, 1] (not the API's 0-100)")
        if not 0 < self.spot_fail_floor <= self.spot_fail_factor <= 1:
            raise ValueError("need 0 < spot_fail_floor <= spot_fail_factor <= 1")
        if self.spot_fail_decay_s <= 0:
            raise ValueError("spot_fail_decay_s must be > 0")
        if self.latency_floor_ms <= 0 or self.default_latency_ms <= 0:
            raise ValueError("latency floors must be > 0")
        if self.reputation_floor <= 0:
            raise ValueError("reputation_floor must be > 0")


DEFAULT_POLICY = RoutingPolicy()


def ewma(previous: float | None, sample: float, alpha: float) -> float:
    """Exponentially weighted moving average; the first sample starts it."""
    if not 0 < alpha <= 1:
        raise ValueError("alpha must be in (0, 1]")
    return sample if previous is None else previous + alpha * (sample - previous)


def spot_penalty(failures: int, policy: RoutingPolicy = DEFAULT_POLICY) -> float:
    """Weight multiplier for `failures` recent failed spot checks: factor^n, floored."""
    if failures <= 0:
        return 1.0
    return max(policy.spot_fail_factor**failures, policy.spot_fail_floor)


def recent_failures(
    times: Iterable[float], now: float, policy: RoutingPolicy = DEFAULT_POLICY
) -> int:
    """How many of the failure times `times` are still within `spot_fail_decay_s` of `now`."""
    return sum(1 for t in times if 0 <= now - t < policy.spot_fail_decay_s)


def weights(candidates: Sequence[Candidate], policy: RoutingPolicy = DEFAULT_POLICY) -> list[float]:
    """Routing weight of each candidate (0 for nodes that must not be used).

    A node without a latency estimate is assumed to be as fast as the average
    known node, so a newly added node is neither starved nor flooded.
    """
    known = [c.latency_ms for c in candidates if c.latency_ms is not None and c.eligible]
    default = sum(known) / len(known) if known else policy.default_latency_ms
    out: list[float] = []
    for c in candidates:
        if not c.eligible or c.reputation < policy.min_reputation:
            out.append(0.0)
            continue
        rep = max(c.reputation, policy.reputation_floor) ** policy.reputation_power
        latency = max(
            c.latency_ms if c.latency_ms is not None else default, policy.latency_floor_ms
        )
        load = 1.0 + policy.queue_penalty * (max(c.inflight, 0) + max(c.queue_depth, 0))
        out.append(rep * spot_penalty(c.spot_failures, policy) / (latency * load))
    return out


def choose(
    candidates: Sequence[Candidate],
    rng: random.Random,
    policy: RoutingPolicy = DEFAULT_POLICY,
    *,
    exclude: Collection[str] = (),
) -> Candidate | None:
    """Draw one node by weight, skipping `exclude` (nodes already tried); None if none fits."""
    pool = [c for c in candidates if c.node_id not in exclude]
    w = weights(pool, policy)
    total = sum(w)
    if total <= 0:
        return None
    x = rng.random() * total
    for c, wi in zip(pool, w, strict=True):
        if wi <= 0:
            continue
        x -= wi
        if x < 0:
            return c
    return next(c for c, wi in zip(reversed(pool), reversed(w), strict=True) if wi > 0)
