"""Registrations read from the chain: a registered node that never sends anything is timed
out by the heartbeat rule (the pure part of the worker's `registry-watch` path)."""

from __future__ import annotations

import json

import pytest
from hexbytes import HexBytes

from detector.node_rules import RULE_HEARTBEAT, NodeState, RuleConfig, heartbeat_rule
from detector.node_rules import observe_telemetry as observe
from pipelines.node_side import observe_registration, registration_record
from pipelines.nodes import plan_nodes
from pipelines.records import (
    DLQ_TOPICS,
    TOPIC_NODE_REGISTRY,
    InvalidMessage,
    decode_registration,
)

NODE = "0x" + "Ab" * 20  # checksum-ish casing, as web3 decodes it
OPERATOR = "0x" + "Cd" * 20
TX = "0x" + "12" * 32
CFG = RuleConfig(heartbeat_timeout_s=30.0)


def _log(node: str = NODE, block: int = 7, event: str = "NodeRegistered") -> dict[str, object]:
    """What web3's `NodeRegistered` / `NodeDeregistered` `get_logs` yield (the fields the
    worker reads)."""
    return {
        "args": {"node": node, "operator": OPERATOR, "stake": 10**19, "url": "http://n:1"},
        "event": event,
        "blockNumber": block,
        "transactionHash": HexBytes(TX),
    }


def test_record_names_the_node_by_its_lowercase_identity_and_round_trips() -> None:
    rec = registration_record(_log(), 1000.0)
    assert rec.node == NODE.lower() and rec.operator == OPERATOR.lower()
    assert (rec.block_number, rec.block_time, rec.tx_hash) == (7, 1000.0, TX)
    back = decode_registration(rec.dumps())
    assert back.to_representation() == rec.to_representation()
    assert TOPIC_NODE_REGISTRY in DLQ_TOPICS  # bad messages are dead-lettered


def test_registry_node_id_is_the_id_the_node_sends_telemetry_with() -> None:
    (spec,) = plan_nodes(1, {})
    # the stack gives the node VIGIL_NODE_NODE_ID=spec.id and registers spec.address
    assert registration_record(_log(node=spec.address), 1.0).node == spec.id


@pytest.mark.parametrize(
    "bad",
    [
        {"node": "nope"},
        {"operator": 3},
        {"block_number": -1},
        {"block_time": "soon"},
        {"tx_hash": "0x12"},
        {"kind": "paused"},
    ],
)
def test_bad_registration_messages_are_refused(bad: dict[str, object]) -> None:
    good = json.loads(registration_record(_log(), 1000.0).dumps())
    with pytest.raises(InvalidMessage):
        decode_registration(json.dumps({**good, **bad}).encode())


def test_registered_silent_node_times_out_from_its_registration() -> None:
    s = NodeState()
    rec = registration_record(_log(), 100.0)
    assert observe_registration(s, rec, now=105.0)
    assert s.first_seen == 100.0
    assert not observe_registration(s, rec, now=140.0)  # a replay changes nothing
    assert heartbeat_rule(s, CFG, now=129.0) is None
    hit = heartbeat_rule(s, CFG, now=131.0)
    assert hit is not None and hit.rule == RULE_HEARTBEAT
    assert hit.facts["first_seen"] == 100.0 and hit.facts["last_heartbeat"] is None
    # the same node heartbeating after its registration is not silent
    observe(s, kind="heartbeat", ts=120.0, tokens=0, errors=0, latency_ms=0.0)
    assert heartbeat_rule(s, CFG, now=131.0) is None


def test_chain_clock_ahead_does_not_postpone_the_timeout() -> None:
    s = NodeState()
    assert observe_registration(s, registration_record(_log(), 500.0), now=200.0)
    assert s.first_seen == 200.0
    assert heartbeat_rule(s, CFG, now=231.0) is not None


def test_node_seen_before_its_registration_keeps_the_earlier_time() -> None:
    s = NodeState()
    observe(s, kind="batch", ts=50.0, tokens=5, errors=0, latency_ms=3.0)
    assert not observe_registration(s, registration_record(_log(), 80.0), now=90.0)
    assert s.first_seen == 50.0
    assert NodeState.from_dict(s.to_dict()).first_seen == 50.0


def test_a_deregistered_node_owes_no_heartbeats() -> None:
    s = NodeState()
    assert observe_registration(s, registration_record(_log(), 100.0), now=100.0)
    observe(s, kind="heartbeat", ts=110.0, tokens=0, errors=0, latency_ms=0.0)
    rec = registration_record(_log(block=9, event="NodeDeregistered"), 200.0)
    assert rec.kind == "deregistered"
    assert decode_registration(rec.dumps()).kind == "deregistered"
    assert heartbeat_rule(s, CFG, now=300.0) is not None  # silent, not yet known to be out
    assert observe_registration(s, rec, now=300.0)
    assert not observe_registration(s, rec, now=310.0)  # a replay changes nothing
    assert heartbeat_rule(s, CFG, now=400.0) is None
    assert NodeState.from_dict(s.to_dict()).deregistered_at == 200.0


def test_messages_without_a_kind_are_registrations() -> None:
    old = json.loads(registration_record(_log(), 1000.0).dumps())
    del old["kind"]
    assert decode_registration(json.dumps(old).encode()).kind == "registered"
