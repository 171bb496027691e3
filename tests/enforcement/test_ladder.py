"""The graded action ladder: observe -> throttle -> slash proposal, and back down."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.evidence import evidence_hash
from detector.policy import (
    ActionKind,
    ActionLadder,
    ChainView,
    EnforcementState,
    Incident,
    Severity,
    is_hard_evidence,
)

BOT = "0x" + "b0" * 20
NODE = "0x" + "a1" * 20
ETH = 10**18
SOFT = ("tx_iforest",)
SPOT = ("rule:spot_check",)


def incident(
    at: float,
    severity: Severity = Severity.HIGH,
    detectors: tuple[str, ...] = SOFT,
    entity: str = BOT,
    n: int = 0,
    category: str = "bot",
) -> Incident:
    h = evidence_hash({"entity": entity, "at": at, "n": n, "detectors": list(detectors)})
    return Incident(f"inc-{entity[:6]}-{n}", entity, category, severity, h, at, detectors)


def account(head: int = 100, level: int = 0, until: int = 0) -> ChainView:
    return ChainView(head_block=head, throttle_level=level, throttle_until=until)


def node(head: int = 100, stake: int = 10 * ETH, level: int = 0, until: int = 0) -> ChainView:
    return ChainView(head, level, until, is_node=True, stake_available_wei=stake)


def test_hard_evidence_is_proof_or_corroboration() -> None:
    hard = frozenset({"rule:spot_check", "rule:overclaim"})
    assert is_hard_evidence(("rule:spot_check",), hard)
    assert is_hard_evidence(("rule:overclaim", "x"), hard)
    assert is_hard_evidence(("rule:latency_sla", "telemetry_lstm"), hard)  # rule + model
    assert not is_hard_evidence(("rule:latency_sla",), hard)  # a soft rule alone
    assert not is_hard_evidence(("tx_iforest", "telemetry_lstm"), hard)  # models only
    assert not is_hard_evidence((), hard)


def test_low_and_single_medium_are_observed() -> None:
    ladder = ActionLadder()
    st0 = EnforcementState()
    s1, d = ladder.decide(st0, incident(1000, Severity.LOW), account())
    assert d.kind is ActionKind.OBSERVE and not d.onchain and d.evidence_doc is None
    s2, d = ladder.decide(s1, incident(1010, Severity.MEDIUM, n=1), account())
    assert d.kind is ActionKind.OBSERVE
    assert "below the throttle bar" in d.reason
    assert s2.strikes == pytest.approx(1.0, abs=0.01)


def test_repeat_medium_escalates_to_throttle_and_level_grows_on_repeat() -> None:
    ladder = ActionLadder(cooldown_s=300, base_level=1, base_blocks=100, blocks_factor=2)
    s, d = ladder.decide(EnforcementState(), incident(0, Severity.MEDIUM), account())
    assert d.kind is ActionKind.OBSERVE
    s, d = ladder.decide(s, incident(60, Severity.MEDIUM, n=1), account(head=110))
    assert d.kind is ActionKind.THROTTLE
    assert (d.level, d.until_block) == (1, 210)
    assert d.evidence_doc is not None and evidence_hash(d.evidence_doc) == d.evidence_hash
    assert d.evidence_doc["incident"]["incident_evidence"] == incident(60, n=1).evidence_hash
    assert s.throttles == 1 and s.throttle_evidence == d.evidence_hash

    # inside the cooldown: observed, even though still misbehaving
    s, d = ladder.decide(s, incident(200, n=2), account(head=120, level=1, until=210))
    assert d.kind is ActionKind.OBSERVE and "cooldown" in d.reason

    # after the cooldown: throttle #2 is harsher (level 2, 200 blocks)
    s, d = ladder.decide(s, incident(400, n=3), account(head=130, level=1, until=210))
    assert d.kind is ActionKind.THROTTLE and (d.level, d.until_block) == (2, 330)
    s, d = ladder.decide(s, incident(800, n=4), account(head=140, level=2, until=330))
    assert d.kind is ActionKind.THROTTLE and (d.level, d.until_block) == (3, 540)
    assert s.throttles == 3


def test_escalation_is_capped() -> None:
    ladder = ActionLadder(max_level=2, base_blocks=100, max_blocks=250, cooldown_s=0)
    assert [ladder.throttle_step(n) for n in range(4)] == [(1, 100), (2, 200), (2, 250), (2, 250)]
    s = EnforcementState(throttles=5)
    s, d = ladder.decide(s, incident(0, Severity.CRITICAL), account(level=2, until=10_000))
    assert d.kind is ActionKind.OBSERVE and "already throttled" in d.reason


def test_honest_node_never_gets_an_action_from_soft_evidence() -> None:
    ladder = ActionLadder()
    s = EnforcementState()
    for i in range(50):  # even a long run of model-only CRITICALs
        s, d = ladder.decide(s, incident(i * 10, Severity.CRITICAL, SOFT, NODE, i), node())
        assert d.kind is ActionKind.OBSERVE
        assert "soft evidence" in d.reason


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.floats(0, 86400 * 30),
            st.sampled_from(list(Severity)),
            st.sampled_from(
                [("tx_iforest",), ("telemetry_lstm",), ("rule:latency_sla",), ("a", "b"), ()]
            ),
        ),
        max_size=30,
    ),
    is_node=st.booleans(),
)
def test_soft_evidence_never_slashes(
    events: list[tuple[float, Severity, tuple[str, ...]]], is_node: bool
) -> None:
    ladder = ActionLadder()
    s = EnforcementState()
    view = node() if is_node else account()
    for i, (at, sev, dets) in enumerate(sorted(events)):
        s, d = ladder.decide(s, incident(at, sev, dets, NODE, i), view)
        assert d.kind is not ActionKind.SLASH_PROPOSAL
        if is_node:
            assert d.kind is ActionKind.OBSERVE


def test_slash_proposal_only_for_hard_evidence_on_nodes() -> None:
    ladder = ActionLadder(slash_bps=1000, slash_cooldown_s=3600)
    s, d = ladder.decide(
        EnforcementState(), incident(0, Severity.HIGH, SPOT, NODE, category="lazy"), node()
    )
    assert d.kind is ActionKind.SLASH_PROPOSAL and d.hard_evidence
    assert d.amount_wei == ETH  # 10% of 10 ETH available
    assert d.evidence_doc is not None and d.evidence_doc["action"] == "slash_proposal"
    assert evidence_hash(d.evidence_doc) == d.evidence_hash

    # more hard evidence inside the slash cooldown: the throttle ladder instead
    s2, d2 = ladder.decide(s, incident(60, Severity.HIGH, SPOT, NODE, 1), node(stake=9 * ETH))
    assert d2.kind is ActionKind.THROTTLE and d2.hard_evidence

    # after the cooldown the second proposal asks for twice the share
    s3, d3 = ladder.decide(
        s2, incident(4000, Severity.CRITICAL, SPOT, NODE, 2), node(stake=9 * ETH)
    )
    assert d3.kind is ActionKind.SLASH_PROPOSAL and d3.amount_wei == 9 * ETH * 2000 // 10_000

    # a hard MEDIUM is below the slash bar; an account (no stake) is never slashed
    _, d4 = ladder.decide(EnforcementState(), incident(0, Severity.MEDIUM, SPOT, NODE), node())
    assert d4.kind is ActionKind.OBSERVE
    _, d5 = ladder.decide(EnforcementState(), incident(0, Severity.CRITICAL, SPOT), account())
    assert d5.kind is ActionKind.THROTTLE
    # corroborated rule + model evidence is hard too
    _, d6 = ladder.decide(
        EnforcementState(),
        incident(0, Severity.HIGH, ("rule:overclaim_ratio", "telemetry_lstm"), NODE),
        node(),
    )
    assert d6.kind is ActionKind.SLASH_PROPOSAL
    # no stake left: nothing to propose, so the throttle ladder
    _, d7 = ladder.decide(EnforcementState(), incident(0, Severity.HIGH, SPOT, NODE), node(stake=0))
    assert d7.kind is ActionKind.THROTTLE


def test_decisions_replay_to_the_same_evidence_hash() -> None:
    """A crash between deciding and recording replays the same decision from the same
    state; the on-chain hash must not depend on head block or stake."""
    ladder = ActionLadder()
    inc = incident(100, Severity.CRITICAL, SPOT, NODE)
    _, a = ladder.decide(EnforcementState(), inc, node(head=100, stake=10 * ETH))
    _, b = ladder.decide(EnforcementState(), inc, node(head=105, stake=9 * ETH))
    assert a.kind is b.kind is ActionKind.SLASH_PROPOSAL
    assert a.evidence_hash == b.evidence_hash and a.amount_wei != b.amount_wei
    inc2 = incident(100, Severity.CRITICAL)
    _, c = ladder.decide(EnforcementState(), inc2, account(head=100))
    _, e = ladder.decide(EnforcementState(), inc2, account(head=107))
    assert c.evidence_hash == e.evidence_hash and c.until_block != e.until_block
    assert c.evidence_hash != a.evidence_hash


def test_de_escalation_after_quiet_period() -> None:
    ladder = ActionLadder(recovery_s=1800)
    s, d = ladder.decide(EnforcementState(), incident(0, Severity.HIGH), account())
    assert d.kind is ActionKind.THROTTLE
    throttled = account(head=150, level=d.level, until=d.until_block)
    s1, none = ladder.recover(s, BOT, 1000, throttled)
    assert none is None and s1 == s  # not quiet long enough
    s2, up = ladder.recover(s, BOT, 1900, throttled)
    assert up is not None and up.kind is ActionKind.UNTHROTTLE
    assert up.evidence_doc is not None and up.evidence_doc["lifts"] == d.evidence_hash
    assert up.evidence_hash not in (d.evidence_hash, "")
    assert s2.throttle_evidence == "" and s2.strikes == 0.0
    # once lifted, nothing more to do
    assert ladder.recover(s2, BOT, 5000, throttled)[1] is None
    # a throttle that expired or was pardoned is forgotten without a transaction
    s3, none = ladder.recover(s, BOT, 1900, account(head=150))
    assert none is None and s3.throttle_evidence == ""
    # a throttle we did not send is not ours to lift
    assert ladder.recover(EnforcementState(), BOT, 1900, throttled)[1] is None


def test_strikes_decay_and_escalation_is_forgotten() -> None:
    ladder = ActionLadder(strike_half_life_s=100, forget_s=1000, cooldown_s=0)
    s, d = ladder.decide(EnforcementState(), incident(0, Severity.MEDIUM), account())
    # two half-lives later the first strike is worth 0.25: 1.25 < 1.5, still observed
    s, d = ladder.decide(s, incident(200, Severity.MEDIUM, n=1), account())
    assert d.kind is ActionKind.OBSERVE and s.strikes == pytest.approx(1.25)
    s, d = ladder.decide(s, incident(201, Severity.MEDIUM, n=2), account())
    assert d.kind is ActionKind.THROTTLE and d.level == 1
    # after forget_s without incidents the ladder starts again at level 1
    s = replace(s, throttle_evidence="")
    s, d = ladder.decide(s, incident(5000, Severity.HIGH, n=3), account(head=5000))
    assert d.kind is ActionKind.THROTTLE and d.level == 1


def test_state_round_trips_through_a_table() -> None:
    s = EnforcementState(2.5, 10.0, 11.0, 3, 12.0, "0x" + "ab" * 32, 1, 13.0)
    assert EnforcementState.from_dict(s.to_dict()) == s
    assert EnforcementState.from_dict(None) == EnforcementState()


def test_ladder_config_is_validated() -> None:
    with pytest.raises(ValueError):
        ActionLadder(slash_bps=0)
    with pytest.raises(ValueError):
        ActionLadder(base_level=0)
    with pytest.raises(ValueError):
        ActionLadder(max_blocks=1, base_blocks=10)
