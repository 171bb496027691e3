"""The follower's pure parts: block -> txs, sharding, checkpoint files."""

from __future__ import annotations

from pathlib import Path

from pipelines.chain.follower import Checkpoint, block_to_txs, build_batches, shard_of
from pipelines.records import TxBatch, decode_tx_batch
from pipelines.stack import detection_metrics


def _block() -> dict:  # type: ignore[type-arg]
    senders = ["0x" + f"{i:040x}" for i in range(1, 6)]
    txs = [
        {
            "hash": bytes([i]) * 32,
            "from": s,
            "to": senders[0],
            "value": 10**18 * i,
            "gas": 21000,
            "gasPrice": 2 * 10**9,
            "nonce": i,
            "input": b"\x38\xed\x17\x39\x00",
            "transactionIndex": i,
        }
        for i, s in enumerate(senders)
    ]
    return {
        "number": 9,
        "hash": b"\x01" * 32,
        "parentHash": b"\x02" * 32,
        "timestamp": 1_700_000_000,
        "transactions": txs,
    }


def test_block_becomes_shard_batches_that_decode_back() -> None:
    block = _block()
    receipts = [{"transactionHash": block["transactions"][1]["hash"], "status": 0}]
    txs, index = block_to_txs(block, receipts)
    assert [t.status for t in txs] == [1, 0, 1, 1, 1]
    assert txs[0].selector == "0x38ed1739"
    batches = build_batches(block, txs, index, chain_id=1, confirmed=True, n_shards=4)
    decoded = [decode_tx_batch(rec.dumps()) for _, rec in batches]
    assert sorted(t.tx_hash for b in decoded for t in b.txs) == sorted(t.tx_hash for t in txs)
    for shard, rec in batches:
        assert all(shard_of(t.sender, 4) == shard for t in rec.txs)


def test_checkpoint_survives_reload_and_keeps_recent_blocks(tmp_path: Path) -> None:
    p = tmp_path / "state.sqlite"
    cp = Checkpoint.open(p, memory=128, chain_id=1)
    for n in range(300):
        b = TxBatch(
            n,
            f"0x{n:064x}",
            1_700_000_000.0 + n,
            True,
            [],
            [],
            parent_hash=f"0x{n - 1:064x}" if n else "0x" + "00" * 32,
        )
        cp.commit([b], confirmed_tip=n, fast_tip=n)
    cp.close()
    back = Checkpoint.open(p, chain_id=1)
    assert back.block_number == 299 and back.fast_tip == 299 and back.epoch() == 0
    assert back.oldest() == 300 - 128 and back.hash_at(299) == f"0x{299:064x}"
    assert back.tip() == (299, f"0x{299:064x}")


def test_detection_metrics_per_label() -> None:
    labels = {"a": "normal", "b": "normal", "c": "hf_bot", "d": "hf_bot"}
    m = detection_metrics(labels, {"b", "c"})
    assert m == {"hf_bot": {"precision": 0.5, "recall": 0.5, "entities": 2.0}}
