"""NodePerfDetector (serving health) and the node rules it feeds: slow, flaky, offline,
overclaim. Synthetic nodes only (no generator seeds, so nothing here tunes the eval)."""

from __future__ import annotations

import inspect
import pickle

import numpy as np
import pytest

from detector.node_perf import NodeFleet, NodePerfDetector, fleet_median
from detector.node_rules import (
    RULE_ERRORS,
    RULE_HEARTBEAT,
    RULE_LATENCY,
    RULE_OVERCLAIM,
    NodeState,
    RuleConfig,
    heartbeat_rule,
    observe_claim,
    observe_seen,
    observe_telemetry,
    overclaim_rule,
    perf_rules,
)
from detector.policy import HARD_RULES, is_hard_evidence

CFG = RuleConfig()


def _records(
    rng: np.random.Generator,
    n: int,
    *,
    overhead: float,
    per_k: float = 20.0,
    tokens: float = 800.0,
    extra_from: int | None = None,
    extra_ms: float = 0.0,
    fail: float = 0.0,
) -> list[tuple[float, dict[str, float]]]:
    """One node's per-10 s records: latency = overhead + per-ktoken cost, 15 % noise."""
    out = []
    for i in range(n):
        tok = tokens * float(np.exp(0.3 * rng.standard_normal()))
        lat = (overhead + per_k * tok / 1000.0) * float(np.exp(0.15 * rng.standard_normal()))
        if extra_from is not None and i >= extra_from:
            lat += extra_ms
        batches = 10.0
        failed = float(rng.binomial(10, fail)) if fail else 0.0
        out.append(
            (
                (i + 1) * 10.0,
                {"latency_ms": lat, "tokens": tok * batches, "batches": batches, "failed": failed},
            )
        )
    return out


def _stream(
    det: NodePerfDetector, recs: list[tuple[float, dict[str, float]]], fleet_ms: float = 20.0
) -> list[list[str]]:
    hits = []
    for t, x in recs:
        det.learn_one(x, t=t)
        hits.append([h.rule for h in perf_rules(det.score_one(fleet_overhead_ms=fleet_ms), CFG)])
    return hits


# ------------------------------------------------------------------ detector contract


def test_constructor_is_keyword_only_and_stores_parameters_only() -> None:
    det = NodePerfDetector()
    params = list(inspect.signature(NodePerfDetector.__init__).parameters.values())[1:]
    assert params and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    assert not [a for a in vars(det) if a.endswith("_")]
    det.learn_one({"latency_ms": 10.0, "tokens": 100.0, "batches": 1.0}, t=0.0)
    assert [a for a in vars(det) if a.endswith("_")]


def test_scores_before_any_data_are_neutral() -> None:
    s = NodePerfDetector().score_one(fleet_overhead_ms=10.0, fleet_error_ratio=0.0)
    assert s.overhead_ms is None and s.self_excess_ms == 0.0 and s.error_surprise == 0.0
    assert perf_rules(s, CFG) == []


def test_deterministic_and_pickles_mid_stream() -> None:
    recs = _records(np.random.default_rng(1), 40, overhead=10.0, extra_from=20, extra_ms=80.0)
    a, b = NodePerfDetector(), NodePerfDetector()
    for t, x in recs[:25]:
        a.learn_one(x, t=t)
        b.learn_one(x, t=t)
    clone = pickle.loads(pickle.dumps(a))
    for t, x in recs[25:]:
        for d in (a, b, clone):
            d.learn_one(x, t=t)
    assert a.score_one(fleet_overhead_ms=12.0) == b.score_one(fleet_overhead_ms=12.0)
    assert a.score_one(fleet_overhead_ms=12.0) == clone.score_one(fleet_overhead_ms=12.0)


def test_garbage_inputs_do_not_break_the_scores() -> None:
    det = NodePerfDetector(min_records=2, baseline_records=2)
    for i, x in enumerate(
        [
            {"latency_ms": float("nan"), "tokens": 10.0, "batches": 1.0},
            {"latency_ms": float("inf"), "tokens": 10.0, "batches": 1.0},
            {"latency_ms": 5.0, "tokens": -3.0, "batches": 1.0},
            {},
            {"latency_ms": 5.0, "tokens": 10.0, "batches": 1.0},
            {"latency_ms": 6.0, "tokens": 10.0, "batches": 1.0},
        ]
    ):
        det.learn_one(x, t=float(i))
    s = det.score_one(fleet_overhead_ms=5.0, fleet_error_ratio=0.01)
    assert np.isfinite([s.self_excess_ms, s.fleet_ratio, s.error_surprise]).all()


# ------------------------------------------------------------------ slow nodes


@pytest.mark.parametrize("seed", range(5))
def test_honest_node_raises_no_latency_alert(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hits = _stream(NodePerfDetector(), _records(rng, 60, overhead=25.0, per_k=60.0))
    assert not any(hits)


def test_node_that_turns_slow_is_caught_against_its_own_baseline() -> None:
    recs = _records(np.random.default_rng(3), 60, overhead=8.0, extra_from=25, extra_ms=60.0)
    hits = _stream(NodePerfDetector(), recs, fleet_ms=200.0)  # no help from the fleet
    first = next(i for i, h in enumerate(hits) if RULE_LATENCY in h)
    assert 25 <= first <= 40


def test_node_slow_from_the_start_is_caught_against_the_fleet() -> None:
    recs = _records(np.random.default_rng(4), 40, overhead=10.0, extra_from=0, extra_ms=150.0)
    assert any(RULE_LATENCY in h for h in _stream(NodePerfDetector(), recs, fleet_ms=15.0))
    # the same node in a fleet of equally slow nodes is not unusual
    recs = _records(np.random.default_rng(4), 40, overhead=10.0, extra_from=0, extra_ms=150.0)
    assert not any(RULE_LATENCY in h for h in _stream(NodePerfDetector(), recs, fleet_ms=150.0))


# ------------------------------------------------------------------ flaky nodes


def test_one_error_blip_is_not_a_burst_but_repeated_bursts_are() -> None:
    rng = np.random.default_rng(5)
    recs = _records(rng, 60, overhead=10.0)
    recs[30][1]["failed"] = 6.0  # one bad bucket
    assert not any(RULE_ERRORS in h for h in _stream(NodePerfDetector(), recs))
    recs = _records(rng, 60, overhead=10.0)
    for i in range(20, 60, 4):  # a burst every 40 s
        recs[i][1]["failed"] = 5.0
    assert any(RULE_ERRORS in h for h in _stream(NodePerfDetector(), recs))


def _busy(rng: np.random.Generator, fail: float) -> list[tuple[float, dict[str, float]]]:
    """A node serving 60 batches per 10 s, failing each at rate `fail`."""
    recs = _records(rng, 60, overhead=10.0)
    for _, x in recs:
        x["batches"], x["failed"] = 60.0, float(rng.binomial(60, fail))
    return recs


def test_short_bursts_on_a_busy_node_are_caught_bucket_by_bucket() -> None:
    recs = _busy(np.random.default_rng(7), 0.005)
    for i in range(10, 60, 9):  # a 10 s burst every 90 s: 12 of 60 batches fail
        recs[i][1]["failed"] = 12.0
    det = NodePerfDetector()
    hits = _stream(det, recs)
    # pooled over the window it is ~3 % failed, under the ratio the pooled test asks for
    assert det.score_one().error_ratio < CFG.error_min_ratio
    first = next(i for i, h in enumerate(hits) if RULE_ERRORS in h)
    assert first == 19  # the second burst
    # an honest busy node with one bad bucket (a restart) raises nothing
    recs = _busy(np.random.default_rng(8), 0.005)
    recs[30][1]["failed"] = 20.0
    assert not any(RULE_ERRORS in h for h in _stream(NodePerfDetector(), recs))


def test_fleet_wide_failures_raise_the_reference() -> None:
    det = NodePerfDetector()
    for t, x in _records(np.random.default_rng(6), 60, overhead=10.0, fail=0.1):
        det.learn_one(x, t=t)
    assert det.score_one().error_surprise > CFG.error_surprise_nats
    assert det.score_one(fleet_error_ratio=0.1).error_surprise < CFG.error_surprise_nats


def test_fleet_medians_need_a_fleet() -> None:
    assert fleet_median([1.0, None, 3.0]) is None
    assert fleet_median([1.0, 2.0, 10.0, None, float("nan")]) == 2.0
    fleet = NodeFleet(min_records=2)
    assert fleet.score("n0") is None
    for i in range(4):
        for t in range(5):
            x = {"latency_ms": 10.0 + i + t, "tokens": 100.0 * (t + 1), "batches": 1.0}
            fleet.learn(f"n{i}", x, t=float(t))
    fleet.refresh()
    assert fleet.overhead_ms is not None and fleet.error_ratio == 0.0
    assert fleet.score("n0") is not None


# ------------------------------------------------------------------ soft evidence only


def test_perf_and_heartbeat_evidence_is_never_proof() -> None:
    assert RULE_LATENCY not in HARD_RULES and RULE_ERRORS not in HARD_RULES
    assert not is_hard_evidence([RULE_LATENCY, RULE_ERRORS, RULE_HEARTBEAT], HARD_RULES)
    assert is_hard_evidence([RULE_LATENCY, RULE_OVERCLAIM], HARD_RULES)


# ------------------------------------------------------------------ offline nodes


def test_only_heartbeats_are_signs_of_life() -> None:
    s = NodeState()
    observe_telemetry(s, kind="heartbeat", ts=0.0, tokens=0, errors=0, latency_ms=0.0)
    for t in range(10, 100, 10):  # still serving, no heartbeats
        observe_telemetry(s, kind="batch", ts=float(t), tokens=100, errors=0, latency_ms=5.0)
    assert s.last_heartbeat == 0.0
    hit = heartbeat_rule(s, CFG, 95.0)
    assert hit is not None and hit.facts["silent_s"] == 95.0


def test_node_silent_from_the_start_times_out_from_first_sighting() -> None:
    s = NodeState()
    assert heartbeat_rule(s, CFG, 1e6) is None  # never seen: nothing to time out
    observe_seen(s, 100.0)  # registered
    assert heartbeat_rule(s, CFG, 100.0 + CFG.heartbeat_timeout_s) is None
    assert heartbeat_rule(s, CFG, 101.0 + CFG.heartbeat_timeout_s) is not None
    observe_telemetry(s, kind="heartbeat", ts=125.0, tokens=0, errors=0, latency_ms=0.0)
    assert heartbeat_rule(s, CFG, 140.0) is None


# ------------------------------------------------------------------ overclaim


def _serve(s: NodeState, t: float, tokens: int, batches: int) -> None:
    observe_telemetry(
        s, kind="batch", ts=t, tokens=tokens, errors=0, latency_ms=5.0, batches=batches
    )


def test_honest_claims_with_lost_telemetry_pass() -> None:
    s = NodeState()
    for p in range(1, 31):
        served = 20 * 300
        _serve(s, p * 60.0, int(served * 0.95), 19)  # 5 % of batch records lost
        observe_claim(s, units=served, period=p)
        assert overclaim_rule(s, CFG, p * 60.0) is None
        assert overclaim_rule(s, CFG, p * 60.0 + 30.0) is None


def test_late_mild_overclaim_is_caught_in_a_window() -> None:
    s = NodeState()
    hit = None
    for p in range(1, 41):
        served = 40 * 300
        _serve(s, p * 60.0, served, 40)
        observe_claim(s, units=int(served * (1.2 if p > 30 else 1.0)), period=p)
        hit = overclaim_rule(s, CFG, p * 60.0) or overclaim_rule(s, CFG, p * 60.0 + 30.0)
        if hit:
            break
    assert hit is not None and p > 30
    assert s.claimed_units / s.observed_units < CFG.overclaim_ratio  # cumulatively hidden
    assert hit.facts["window_claims"] < s.claims


def test_claim_leading_its_telemetry_is_forgiven_within_the_grace() -> None:
    s = NodeState()
    _serve(s, 0.0, 10_000, 30)
    observe_claim(s, units=10_000, period=1)
    observe_claim(s, units=10_000, period=2)  # settled before its telemetry arrived
    assert overclaim_rule(s, CFG, 61.0) is None  # grace starts
    _serve(s, 65.0, 10_000, 30)  # telemetry catches up
    assert overclaim_rule(s, CFG, 61.0 + CFG.overclaim_grace_s + 1) is None
    assert s.overclaim_since is None


def test_node_state_round_trips_the_new_fields() -> None:
    s = NodeState()
    observe_seen(s, 5.0)
    _serve(s, 10.0, 1000, 3)
    observe_claim(s, units=5000, period=1)
    overclaim_rule(s, CFG, 10.0)
    d = s.to_dict()
    back = NodeState.from_dict(d)
    assert back.to_dict() == d
    assert back.first_seen == 5.0 and back.overclaim_since == 10.0
    assert list(back.claim_marks) == [(5000, 1000, 3)]
    assert NodeState.from_dict({"observed_units": 1, "claimed_units": 0, "claims": 0}).claims == 0
