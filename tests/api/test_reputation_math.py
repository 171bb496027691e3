"""Reputation arithmetic: weights, bounds, decay and explanations."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.reputation import (
    COMPONENT_WEIGHTS,
    COMPONENTS,
    Decayed,
    NodeReputation,
    ReputationConfig,
    explain_components,
)

DAY = 86400.0


def honest(now: float = 0.0, n: int = 200) -> NodeReputation:
    r = NodeReputation()
    for i in range(n):
        t = now + i * 60
        r = r.observe_interval(t, up=True)
        r = r.observe_batch(t, latency_ms=300, requests=8, errors=0)
        if i % 10 == 0:
            r = r.observe_spot_check(t, passed=True)
    return r


def test_weights_sum_to_one_and_cover_every_component() -> None:
    assert math.isclose(sum(COMPONENT_WEIGHTS.values()), 1.0)
    assert (
        set(COMPONENT_WEIGHTS)
        == set(COMPONENTS)
        == {
            "uptime",
            "spot_checks",
            "latency",
            "errors",
            "incidents",
            "throttles",
            "slashes",
        }
    )
    with pytest.raises(ValueError, match="sum to 1"):
        ReputationConfig(weights={**COMPONENT_WEIGHTS, "uptime": 0.5})
    with pytest.raises(ValueError, match="exactly"):
        ReputationConfig(weights={"uptime": 1.0})


def test_new_and_honest_nodes_score_high() -> None:
    assert NodeReputation().score(0).score == pytest.approx(100.0)
    rep = honest().score(200 * 60)
    assert rep.score > 99
    assert "no component below its best" in rep.explain() or rep.score > 99


def test_decayed_counter_halves_every_half_life() -> None:
    c = Decayed().add(8.0, 0.0, 10.0)
    assert c.value_at(10.0, 10.0) == pytest.approx(4.0)
    assert c.value_at(30.0, 10.0) == pytest.approx(1.0)
    c2 = c.add(1.0, 10.0, 10.0)
    assert c2.value_at(10.0, 10.0) == pytest.approx(5.0)
    late = c2.add(1.0, 5.0, 10.0)  # a late event is counted, time does not rewind
    assert late.at == 10.0 and late.value == pytest.approx(6.0)


def test_low_score_is_explained_by_its_components() -> None:
    r = honest()
    t = 200 * 60.0
    for i in range(60):  # a lazy node: fails most spot checks
        r = r.observe_spot_check(t + i, passed=i % 5 == 0)
    r = r.observe_incident(t + 30, "high").observe_incident(t + 40, "critical")
    r = r.observe_slash(t + 50)
    rep = r.score(t + 60)
    assert rep.score < 70
    worst = rep.components[0]
    assert worst.name == "spot_checks" and worst.lost > 10
    assert [c.name for c in rep.components[:3]] == ["spot_checks", "incidents", "slashes"]
    text = rep.explain()
    assert text.startswith(f"score {rep.score:.1f}/100") and "spot_checks" in text
    assert sum(c.points for c in rep.components) == pytest.approx(rep.score)
    assert sum(c.points + c.lost for c in rep.components) == pytest.approx(100.0)

    # the stored component values rebuild the same score and order
    again = explain_components(rep.values())
    assert again.score == pytest.approx(rep.score)
    assert [c.name for c in again.components] == [c.name for c in rep.components]


def test_penalties_decay_so_a_node_recovers() -> None:
    r = NodeReputation().observe_incident(0, "critical").observe_throttle(0)
    low = r.score(0).score
    week = r.score(7 * DAY).score
    later = r.score(60 * DAY).score
    assert low < week < later < 100
    assert r.count("incident_points", 7 * DAY) == pytest.approx(2.0)  # one half-life
    assert r.count("throttles", 14 * DAY) == pytest.approx(0.5)


def test_vetoed_slash_is_retracted() -> None:
    r = NodeReputation().observe_slash(0)
    assert r.score(0).values()["slashes"] < 0.5
    r = r.observe_slash(1, vetoed=True)
    assert r.score(1).values()["slashes"] == pytest.approx(1.0, abs=1e-4)


def test_state_round_trips_through_a_table() -> None:
    r = honest(n=5).observe_incident(10, "medium")
    back = NodeReputation.from_dict(r.to_dict())
    assert back.score(500).score == pytest.approx(r.score(500).score)
    assert NodeReputation.from_dict(None).score(0).score == 100


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["up", "down", "pass", "fail", "batch", "inc", "thr", "slash"]),
            st.floats(0, 30 * DAY),
            st.one_of(st.floats(0, 1e6), st.sampled_from([math.nan, math.inf])),
            st.integers(-5, 1000),
        ),
        max_size=60,
    ),
    now=st.floats(0, 60 * DAY),
)
def test_score_is_always_between_0_and_100(
    ops: list[tuple[str, float, float, int]], now: float
) -> None:
    r = NodeReputation()
    for op, t, latency, n in ops:
        if op in ("up", "down"):
            r = r.observe_interval(t, up=op == "up")
        elif op in ("pass", "fail"):
            r = r.observe_spot_check(t, passed=op == "pass")
        elif op == "batch":
            r = r.observe_batch(t, latency, n, abs(n) // 3)
        elif op == "inc":
            r = r.observe_incident(t, "critical")
        elif op == "thr":
            r = r.observe_throttle(t)
        else:
            r = r.observe_slash(t, vetoed=n % 2 == 0)
    rep = r.score(now)
    assert 0.0 <= rep.score <= 100.0
    assert all(0.0 <= c.value <= 1.0 for c in rep.components)


def test_explain_components_clamps_and_defaults() -> None:
    rep = explain_components({"uptime": 2.0, "errors": -1.0, "bogus": 0.0})
    vals = rep.values()
    assert vals["uptime"] == 1.0 and vals["errors"] == 0.0 and vals["slashes"] == 1.0
    assert rep.score == pytest.approx(90.0)
    assert rep.components[0].name == "errors"
