"""Routing as a pure function: weights, skips and determinism."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from inference_node.routing import (
    Candidate,
    RoutingPolicy,
    choose,
    ewma,
    recent_failures,
    spot_penalty,
    weights,
)


def _draws(cands: list[Candidate], n: int = 5000, seed: int = 1) -> Counter[str]:
    rng = random.Random(seed)
    out: Counter[str] = Counter()
    for _ in range(n):
        c = choose(cands, rng)
        out[c.node_id if c else "none"] += 1
    return out


def test_high_reputation_low_latency_node_gets_most_traffic() -> None:
    good = Candidate("good", reputation=1.0, latency_ms=20.0)
    poor = Candidate("poor", reputation=0.5, latency_ms=80.0)
    got = _draws([good, poor])
    assert got["good"] / 5000 > 0.9
    assert got["poor"] > 0  # a share remains, so its latency estimate can recover


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # reputation alone
        (
            Candidate("a", reputation=0.9, latency_ms=50),
            Candidate("b", reputation=0.3, latency_ms=50),
        ),
        # latency alone
        (Candidate("a", latency_ms=10), Candidate("b", latency_ms=100)),
        # load alone: queue depth and in-flight requests both count
        (Candidate("a", inflight=0), Candidate("b", inflight=3, queue_depth=6)),
    ],
)
def test_each_factor_shifts_traffic(a: Candidate, b: Candidate) -> None:
    got = _draws([a, b], n=3000)
    assert got["a"] > 3 * got["b"] > 0


def test_throttled_and_down_nodes_are_never_chosen() -> None:
    cands = [
        Candidate("up", latency_ms=500.0, reputation=0.2),
        Candidate("down", healthy=False, latency_ms=1.0),
        Candidate("throttled", throttled=True, latency_ms=1.0),
    ]
    assert _draws(cands) == Counter({"up": 5000})
    w = weights(cands)
    assert w[1] == w[2] == 0.0 and w[0] > 0


def test_nothing_eligible_means_none_and_exclude_skips_tried_nodes() -> None:
    rng = random.Random(0)
    assert choose([], rng) is None
    assert choose([Candidate("x", healthy=False)], rng) is None
    cands = [Candidate("a", latency_ms=1.0), Candidate("b", latency_ms=1000.0)]
    for _ in range(50):
        c = choose(cands, rng, exclude={"a"})
        assert c is not None and c.node_id == "b"
    assert choose(cands, rng, exclude={"a", "b"}) is None


def test_min_reputation_excludes_and_floor_keeps_a_trickle() -> None:
    cands = [Candidate("ok", reputation=0.8), Candidate("zero", reputation=0.0)]
    got = _draws(cands, n=20000)
    assert 0 < got["zero"] < 20  # floor 0.01 ** 2 vs 0.64
    strict = RoutingPolicy(min_reputation=0.1)
    assert weights(cands, strict)[1] == 0.0


def test_unknown_latency_is_assumed_average() -> None:
    cands = [Candidate("a", latency_ms=10.0), Candidate("b", latency_ms=30.0), Candidate("new")]
    w = weights(cands)
    assert w[2] == pytest.approx(1.0 / 20.0)  # as if 20 ms, the mean of the known ones
    assert weights([Candidate("x")], RoutingPolicy(default_latency_ms=40.0)) == [1.0 / 40.0]


def test_choice_is_deterministic_given_the_seed() -> None:
    cands = [Candidate(f"n{i}", latency_ms=10.0 + i, reputation=0.5 + i / 10) for i in range(5)]
    seq = [
        [c.node_id for c in (choose(cands, r) for _ in range(200)) if c]
        for r in (random.Random(7), random.Random(7), random.Random(8))
    ]
    assert seq[0] == seq[1] != seq[2]


def test_ewma_and_policy_validation() -> None:
    assert ewma(None, 100.0, 0.2) == 100.0
    assert ewma(100.0, 200.0, 0.25) == 125.0
    with pytest.raises(ValueError):
        ewma(1.0, 2.0, 0.0)
    with pytest.raises(ValueError):
        RoutingPolicy(latency_floor_ms=0)
    with pytest.raises(ValueError):
        RoutingPolicy(queue_penalty=-1)


def test_failed_spot_checks_halve_the_weight_down_to_a_floor() -> None:
    p = RoutingPolicy(spot_fail_factor=0.5, spot_fail_floor=0.125, spot_fail_decay_s=100.0)
    assert [spot_penalty(n, p) for n in (0, 1, 2, 3, 9)] == [1.0, 0.5, 0.25, 0.125, 0.125]
    base = Candidate("n", latency_ms=40.0)
    (w0, w1, w4) = weights(
        [base, replace(base, spot_failures=1), replace(base, spot_failures=4)], p
    )
    assert w1 == pytest.approx(w0 / 2) and w4 == pytest.approx(w0 * 0.125)
    # a failure counts for `spot_fail_decay_s`, then the weight is whole again
    assert recent_failures([10.0, 50.0, 109.0], now=110.0, policy=p) == 2
    assert recent_failures([10.0, 50.0], now=200.0, policy=p) == 0
    got = _draws([base, replace(base, node_id="bad", spot_failures=2)], n=4000)
    assert got["n"] > 3 * got["bad"] > 0  # less traffic, never none


def test_policy_rejects_reputation_on_the_api_scale() -> None:
    with pytest.raises(ValueError, match="fraction"):
        RoutingPolicy(min_reputation=50)
    with pytest.raises(ValueError):
        RoutingPolicy(spot_fail_factor=0.1, spot_fail_floor=0.5)
