"""Pure parts of ingestion: versions, retraction rows, reorg records, parsing, decoding."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from eth_abi import encode as abi_encode
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

import pipelines.chain.follower as follower_mod
from pipelines.chain.decode import ChainDecoder, default_decoder
from pipelines.chain.follower import build_batches, build_reorg_records, parse_block, shard_of
from pipelines.chain.reorg import (
    OrphanLedger,
    chain_message_rows,
    retraction_rows,
    retraction_version,
    row_version,
)
from pipelines.records import (
    TOPIC_CHAIN_REORG,
    TOPIC_CHAIN_TX,
    InvalidMessage,
    decode_reorg,
    decode_tx_batch,
)
from pipelines.storage.schema import TABLE_COLUMNS

A, B, C = ("0x" + c * 40 for c in "abc")
TOKEN, PAIR = "0x" + "71" * 20, "0x" + "72" * 20
TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()


def _topic(addr: str) -> str:
    return "0x" + "00" * 12 + addr[2:]


def raw_block(number: int = 7, n: int = 3, parent: str | None = None) -> dict[str, Any]:
    """A block as eth_getBlockByNumber(n, true) returns it: hex quantities."""
    senders = [A, B, C]
    txs = []
    for i in range(n):
        transfer = "0xa9059cbb" + abi_encode(["address", "uint256"], [C, 5 * 10**18 + i]).hex()
        txs.append(
            {
                "hash": "0x" + f"{number:02x}{i:02x}" * 16,
                "from": senders[i % 3],
                "to": TOKEN,
                "value": hex(i),
                "gas": hex(60_000),
                "gasPrice": hex(2_000_000_000 + i),
                "nonce": hex(i),
                "input": transfer,
                "transactionIndex": hex(i),
            }
        )
    return {
        "number": hex(number),
        "hash": "0x" + f"{number:064x}",
        "parentHash": parent or "0x" + f"{number - 1:064x}",
        "timestamp": hex(1_700_000_000 + number),
        "transactions": txs,
    }


def raw_receipts(block: dict[str, Any], status: int = 1) -> list[dict[str, Any]]:
    out = []
    for t in block["transactions"]:
        value = int(t["input"][-64:], 16)
        out.append(
            {
                "transactionHash": t["hash"],
                "blockHash": block["hash"],
                "status": hex(status),
                "gasUsed": hex(51_000),
                "effectiveGasPrice": t["gasPrice"],
                "contractAddress": None,
                "logs": [
                    {
                        "address": TOKEN,
                        "topics": [TRANSFER_TOPIC, _topic(t["from"]), _topic(C)],
                        "data": "0x" + abi_encode(["uint256"], [value]).hex(),
                        "logIndex": "0x0",
                    },
                    {
                        "address": PAIR,
                        "topics": ["0x" + "99" * 32],
                        "data": "0x",
                        "logIndex": "0x1",
                    },
                ],
            }
        )
    return out


@settings(max_examples=200)
@given(
    e=st.integers(0, 1000),
    n=st.integers(0, 10**9),
    m=st.integers(0, 10**9),
    c1=st.booleans(),
    c2=st.booleans(),
)
def test_versions_order_inclusions_retractions_and_confirmations(
    e: int, n: int, m: int, c1: bool, c2: bool
) -> None:
    # any inclusion before a reorg < its retraction < any inclusion after it
    assert row_version(e, n, c1) < retraction_version(e + 1) < row_version(e + 1, m, c2)
    assert row_version(e, n, False) < row_version(e, n, True)  # confirmation replaces fast lane


def test_version_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        row_version(0, -1, True)
    with pytest.raises(ValueError):
        retraction_version(0)  # epoch 0 has had no reorg


def test_raw_block_parses_with_receipts_and_decoded_transfers() -> None:
    block = raw_block()
    b = parse_block(block, raw_receipts(block), ChainDecoder([("ERC20", default_erc20())]))
    assert b.block_number == 7 and b.parent_hash == "0x" + f"{6:064x}"
    assert [t.sender for t in b.txs] == [A, B, C] and b.txs[1].gas_price_wei == 2_000_000_001
    d = b.details[2]
    assert d.gas_used == 51_000 and d.method == "ERC20.transfer"
    assert d.call_args == {"to": C, "value": str(5 * 10**18 + 2)}
    ev, unknown = d.events
    assert ev.name == "ERC20.Transfer" and ev.args == {
        "from": C,
        "to": C,
        "value": str(5 * 10**18 + 2),
    }
    assert unknown.name == "" and unknown.log_index == 1 and unknown.address == PAIR


def default_erc20() -> list[dict[str, Any]]:
    from pipelines.chain.decode import ERC20_ABI

    return ERC20_ABI


def test_shard_messages_carry_version_and_details_and_decode_back() -> None:
    block = raw_block(n=6)
    b = parse_block(block, raw_receipts(block), default_decoder(with_project=False))
    v = row_version(3, 7, True)
    recs = build_batches(
        {"number": 7, "hash": b.block_hash, "parentHash": b.parent_hash, "timestamp": 1},
        b.txs,
        b.tx_index,
        chain_id=1,
        confirmed=True,
        n_shards=4,
        version=v,
        details=b.details,
    )
    back = [decode_tx_batch(r.dumps()) for _, r in recs]
    assert all(x.version == v for x in back)
    assert sorted(t.tx_hash for x in back for t in x.txs) == sorted(t.tx_hash for t in b.txs)
    assert all(d.events[0].name == "ERC20.Transfer" for x in back for d in x.details)
    for shard, r in recs:
        assert all(shard_of(t.sender, 4) == shard for t in r.txs)


def test_an_oversized_shard_message_is_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follower_mod, "SPLIT_BYTES", 1500)
    block = raw_block(n=9)
    b = parse_block(block, raw_receipts(block))
    recs = build_batches(
        {"number": 7, "hash": b.block_hash, "parentHash": b.parent_hash, "timestamp": 1},
        b.txs,
        b.tx_index,
        chain_id=1,
        confirmed=True,
        n_shards=1,
    )
    assert len(recs) > 1 and sum(len(r.txs) for _, r in recs) == 9
    assert all(len(r.dumps()) <= 1500 or len(r.txs) == 1 for _, r in recs)


def _orphans() -> list[Any]:
    out = []
    for n in (8, 9):
        block = raw_block(n, n=3)
        b = parse_block(block, raw_receipts(block), default_decoder(with_project=False))
        b.confirmed = n == 8
        out.append(b)
    return out


def test_reorg_records_retract_every_orphan_once_per_shard() -> None:
    orphans = _orphans()
    recs = build_reorg_records(
        orphans,
        chain_id=31337,
        epoch=2,
        ancestor_number=7,
        ancestor_hash="0x" + f"{7:064x}",
        new_head_number=9,
        n_shards=2,
        detected_at=1.0,
    )
    decoded = [decode_reorg(r.dumps()) for _, r in recs]
    hashes = [h for r in decoded for h in r.tx_hashes()]
    assert sorted(hashes) == sorted(t.tx_hash for b in orphans for t in b.txs)
    assert len(set(hashes)) == len(hashes)
    for (shard, _), r in zip(recs, decoded, strict=True):
        assert r.shard == shard and r.version == retraction_version(2) and r.depth == 2
        assert all(shard_of(s, 2) == shard for s in r.tx_hashes_by_sender())
    rows = retraction_rows(decoded[0], ingested_at=2.0)
    cols = TABLE_COLUMNS["transactions"]
    assert all(len(row) == len(cols) for row in rows)
    assert {row[cols.index("is_deleted")] for row in rows} == {1}
    assert {row[cols.index("version")] for row in rows} == {retraction_version(2)}
    assert {row[cols.index("block_time")] for row in rows} <= {
        1_700_000_008_000,
        1_700_000_009_000,
    }  # the original rows' time: same partition, so FINAL collapses them


def test_a_reorg_of_empty_blocks_is_still_on_record() -> None:
    empty = parse_block(raw_block(8, n=0), [])
    ((shard, rec),) = build_reorg_records(
        [empty],
        chain_id=1,
        epoch=1,
        ancestor_number=7,
        ancestor_hash="0x" + "07" * 32,
        new_head_number=8,
        n_shards=16,
        detected_at=1.0,
    )
    r = decode_reorg(rec.dumps())
    assert shard == 0 and r.tx_hashes() == [] and [b.block_number for b in r.blocks] == [8]
    assert chain_message_rows(TOPIC_CHAIN_REORG, rec.dumps(), ingested_at=1.0) == []


def test_orphan_ledger_blocks_actions_on_orphaned_evidence_only() -> None:
    orphans = _orphans()
    (_, rec), *_ = build_reorg_records(
        orphans,
        chain_id=1,
        epoch=1,
        ancestor_number=7,
        ancestor_hash="0x" + "07" * 32,
        new_head_number=9,
        n_shards=1,
        detected_at=1.0,
    )
    reorg = decode_reorg(rec.dumps())
    ledger = OrphanLedger(capacity=100)
    ledger.note_reorg(reorg)
    gone = reorg.tx_hashes()
    assert ledger.only_orphaned(gone[:2])
    assert not ledger.only_orphaned([gone[0], "0x" + "ee" * 32])  # some evidence is canonical
    assert not ledger.only_orphaned([])
    # re-included on the new branch with a higher version: no longer orphaned
    again = orphans[0]
    again.version = row_version(1, 8, True)
    ledger.note_batch(again)
    assert not ledger.only_orphaned([again.txs[0].tx_hash]) and ledger.only_orphaned(gone[-1:])


GOOD_REORG = {
    "schema_version": 1,
    "chain_id": 1,
    "epoch": 1,
    "version": 1 << 42,
    "ancestor_number": 3,
    "ancestor_hash": "0x" + "33" * 32,
    "old_tip_number": 4,
    "new_head_number": 4,
    "detected_at": 1.0,
    "shard": 0,
    "blocks": [
        {
            "block_number": 4,
            "block_hash": "0x" + "44" * 32,
            "parent_hash": "0x" + "33" * 32,
            "block_time": 5.0,
            "confirmed": True,
            "txs": [],
        }
    ],
}


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.pop("version"), "missing field 'version'"),
        (lambda d: d.update(schema_version=9), "unknown schema_version"),
        (lambda d: d["blocks"][0].update(block_number=3), "is not above the ancestor"),
        (lambda d: d.update(blocks="x"), "field 'blocks' must be list"),
        (lambda d: d["blocks"].append(7), "must be a JSON object"),
        (lambda d: d.update(ancestor_hash="0x12"), "not a 32-byte"),
    ],
)
def test_bad_reorg_messages_are_refused_with_a_reason(mutate: Any, reason: str) -> None:
    d = json.loads(json.dumps(GOOD_REORG))
    mutate(d)
    with pytest.raises(InvalidMessage, match=reason):
        decode_reorg(json.dumps(d).encode())


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=5),
        max_leaves=20,
    ).map(lambda v: json.dumps(v).encode())
)
def test_arbitrary_json_either_decodes_or_raises_invalid_message(raw: bytes) -> None:
    for topic in (TOPIC_CHAIN_TX, TOPIC_CHAIN_REORG):
        with contextlib.suppress(InvalidMessage):
            chain_message_rows(topic, raw, ingested_at=1.0)


@settings(max_examples=150, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "gas_used": st.one_of(st.integers(-5, 10**6), st.text(max_size=3)),
            "method": st.one_of(st.text(max_size=5), st.integers()),
            "call_args": st.one_of(
                st.dictionaries(st.text(max_size=4), st.one_of(st.text(max_size=4), st.integers()))
            ),
            "events": st.lists(
                st.one_of(
                    st.integers(),
                    st.fixed_dictionaries(
                        {
                            "log_index": st.integers(-1, 3),
                            "address": st.sampled_from([A, "0x12", 5]),
                            "topic0": st.sampled_from(["", TRANSFER_TOPIC, "zz"]),
                        }
                    ),
                ),
                max_size=3,
            ),
        }
    )
)
def test_malformed_tx_details_raise_invalid_message(extra: dict[str, Any]) -> None:
    block = raw_block(n=1)
    b = parse_block(block, raw_receipts(block))
    ((_, rec),) = build_batches(
        {"number": 7, "hash": b.block_hash, "parentHash": b.parent_hash, "timestamp": 1},
        b.txs,
        b.tx_index,
        chain_id=1,
        confirmed=True,
        n_shards=1,
    )
    d = json.loads(rec.dumps())
    d["txs"][0].update(extra)
    with contextlib.suppress(InvalidMessage):
        decode_tx_batch(json.dumps(d).encode())


def test_project_contracts_decode_by_name() -> None:
    dec = default_decoder()
    node = "0x" + "12" * 20
    data = "0x" + keccak(text="settleUsage(address,uint64,bytes32)")[:4].hex()
    data += abi_encode(["address", "uint64", "bytes32"], [node, 42, b"\x01" * 32]).hex()
    method, args = dec.decode_call(data)
    assert method == "NodeRegistry.settleUsage"
    assert args == {"node": node, "units": "42", "commitment": "0x" + "01" * 32}
    swap = "0x" + keccak(text="Swap(address,address,bool,uint256,uint256)").hex()
    ev = dec.decode_log(
        {
            "address": PAIR,
            "topics": [swap, _topic(A), _topic(B)],
            "data": "0x" + abi_encode(["bool", "uint256", "uint256"], [True, 10, 9]).hex(),
            "logIndex": "0x2",
        }
    )
    assert ev.name == "SimPair.Swap"
    assert ev.args == {
        "sender": A,
        "to": B,
        "zeroForOne": "true",
        "amountIn": "10",
        "amountOut": "9",
    }
    assert dec.decode_call("0xdeadbeef") == ("", {})
    assert dec.decode_call("0xa9059cbb" + "00" * 3)[0] == "ERC20.transfer"  # malformed args
