"""Policy decisions and evidence hashing are pure and reproducible."""

from __future__ import annotations

from detector.evidence import canonical_json, evidence_hash
from detector.policy import ActionPolicy, AlertPolicy, EntityAlertState, Severity


def test_alert_needs_score_pattern_persistence_and_cooldown() -> None:
    p = AlertPolicy(min_window_txs=5, min_consecutive=3, cooldown_s=300, high_margin=0.05)
    st = EntityAlertState()

    def step(score: float, window_txs: int = 20, now: float = 1000.0):  # type: ignore[no-untyped-def]
        nonlocal st
        st, sev = p.step(st, score=score, threshold=0.6, window_txs=window_txs, now=now)
        return sev

    assert step(0.59) is None and st.streak == 0  # below threshold
    assert step(0.9, window_txs=4) is None and st.streak == 0  # too little evidence
    assert step(0.9) is None and step(0.61) is None  # streak 1, 2: not yet
    assert step(0.9) is Severity.HIGH and st.last_alert_at == 1000.0  # third in a row
    assert step(0.9, now=1100.0) is None  # cooling down
    assert step(0.5, now=1200.0) is None and st.streak == 0  # a normal event breaks it
    for t in (1310.0, 1320.0):
        assert step(0.61, now=t) is None
    assert step(0.61, now=1330.0) is Severity.MEDIUM  # cooldown over, small margin


def test_alert_state_round_trips_through_a_table() -> None:
    s = EntityAlertState(last_alert_at=12.5, streak=4)
    assert EntityAlertState.from_dict(s.to_dict()) == s
    assert EntityAlertState.from_dict(None) == EntityAlertState()


def test_throttle_is_not_repeated_while_one_is_active() -> None:
    p = ActionPolicy(throttle_level=2, throttle_blocks=100)
    d = p.throttle(severity=Severity.HIGH, current_level=0, current_until=0, head_block=10)
    assert d is not None and d.level == 2 and d.until_block == 110
    assert (
        p.throttle(severity=Severity.HIGH, current_level=2, current_until=110, head_block=50)
        is None
    )
    assert (
        p.throttle(severity=Severity.LOW, current_level=0, current_until=0, head_block=50) is None
    )
    assert (
        p.throttle(severity=Severity.HIGH, current_level=2, current_until=110, head_block=111)
        is not None
    )  # expired: throttle again


def test_evidence_hash_is_canonical() -> None:
    a = {"b": 1.0, "a": [1, 2], "nested": {"y": 0.1 + 0.2, "x": float("nan")}}
    b = {"nested": {"x": float("nan"), "y": 0.30000000000000004}, "a": [1, 2], "b": 1.0}
    assert canonical_json(a) == canonical_json(b)
    assert evidence_hash(a) == evidence_hash(b)
    h = evidence_hash(a)
    assert h.startswith("0x") and len(h) == 66
    assert evidence_hash({**a, "b": 2.0}) != h
