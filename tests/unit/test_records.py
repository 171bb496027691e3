"""Strict decoding of wire messages: good ones decode, bad ones say why."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.records import (
    InvalidMessage,
    TxBatchRecord,
    TxRecord,
    decode_alert,
    decode_tx_batch,
)

SENDER = "0x" + "ab" * 20
GOOD_TX = {
    "tx_hash": "0x" + "11" * 32,
    "sender": SENDER,
    "to": "0x" + "cd" * 20,
    "value_wei": str(10**30),
    "gas_price_wei": 2_000_000_000,
    "gas": 21000,
    "nonce": 3,
    "selector": "",
    "status": 1,
    "tx_index": 0,
}
GOOD = {
    "schema_version": 1,
    "chain_id": 31337,
    "block_number": 7,
    "block_hash": "0x" + "22" * 32,
    "parent_hash": "0x" + "33" * 32,
    "block_time": 1_700_000_000.0,
    "confirmed": True,
    "shard": 3,
    "txs": [GOOD_TX],
}


def test_a_record_round_trips_through_the_decoder() -> None:
    rec = TxBatchRecord(**{**GOOD, "txs": [TxRecord(**GOOD_TX)]})
    batch = decode_tx_batch(rec.dumps())
    assert batch.block_number == 7
    (tx,) = batch.txs
    assert tx.value_wei == 10**30 and tx.sender == SENDER and tx.timestamp == 1_700_000_000.0


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.pop("block_hash"), "missing field 'block_hash'"),
        (lambda d: d.update(schema_version=2), "unknown schema_version 2"),
        (lambda d: d.update(block_number="7"), "field 'block_number' must be int"),
        (lambda d: d.update(confirmed=1), "field 'confirmed' must be bool"),
        (lambda d: d["txs"][0].update(sender="0xzz"), "field 'sender' is not an address"),
        (lambda d: d["txs"][0].update(value_wei="-1"), "field 'value_wei' is not a uint256"),
        (lambda d: d["txs"][0].update(status=True), "field 'status' must be int, got bool"),
        (lambda d: d["txs"][0].update(tx_hash="0x12"), "field 'tx_hash' is not a 32-byte"),
    ],
)
def test_bad_fields_are_refused_with_a_reason(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    d = json.loads(json.dumps(GOOD))
    mutate(d)
    with pytest.raises(InvalidMessage, match=reason):
        decode_tx_batch(json.dumps(d).encode())


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty message"),
        (b'{"schema_version": 1, "txs": [', "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_garbage_is_refused_with_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        decode_tx_batch(raw)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=5),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_arbitrary_bytes_either_decode_or_raise_invalid_message(raw: bytes) -> None:
    try:
        decode_tx_batch(raw)
        decode_alert(raw)
    except InvalidMessage:
        pass


def test_alert_decoding_checks_entity_and_evidence() -> None:
    good = {
        "schema_version": 1,
        "alert_id": "a",
        "entity": SENDER,
        "category": "bot",
        "severity": "high",
        "evidence_hash": "0x" + "44" * 32,
        "score": 0.7,
        "detector": "tx_iforest",
        "created_at": 1_700_000_000.0,
    }
    assert decode_alert(json.dumps(good).encode()).severity == "high"
    with pytest.raises(InvalidMessage, match="unknown severity"):
        decode_alert(json.dumps({**good, "severity": "urgent"}).encode())
