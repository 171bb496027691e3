"""Which node serves the next request: a pure, seeded weighted choice.

The gateway keeps live state per node (health, on-chain throttle, reputation,
latency, load) and hands this module immutable snapshots; nothing here does
I/O or reads a clock, so routing decisions are reproducible in tests and
drills given the same RNG seed.

A node's weight is

    reputation^power / (latency_ms * (1 + queue_penalty * (inflight + queue_depth)))

so a trusted, fast, idle node gets most traffic, but every eligible node keeps
a share (a random choice, not the arg-max: a node whose latency estimate went
stale still gets requests that refresh it). Unhealthy and throttled nodes get
weight 0 and are never chosen.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """A node as routing sees it at one instant."""

    node_id: str
    healthy: bool = True
    throttled: bool = False
    reputation: float = 1.0  # [0, 1]; 1.0 when no reputation source is configured
    latency_ms: float | None = None  # EWMA of served requests; None until one was served
    inflight: int = 0  # requests this gateway has outstanding at the node
    queue_depth: int = 0  # the node's own queue, from its last health probe

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

    def __post_init__(self) -> None:
        if self.reputation_power < 0 or self.queue_penalty < 0:
            raise ValueError("reputation_power and queue_penalty must be >= 0")
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
        out.append(rep / (latency * load))
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
