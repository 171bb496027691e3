"""Forced reorgs on anvil: retractions are published and ClickHouse matches the canonical chain.

Two ways to fork anvil: `anvil_reorg` (replace the last N blocks, here re-including
one orphaned tx on the new branch) and `evm_snapshot`/`evm_revert` (the chain
shrinks below what was published, then grows a different branch).
"""

from __future__ import annotations

import asyncio

import pytest

from pipelines.chain.follower import Follower
from pipelines.records import TOPIC_CHAIN_REORG, TOPIC_CHAIN_TX, decode_reorg, decode_tx_batch
from tests.chain.conftest import Rig, canonical_txs, mine_blocks, rpc, wait_until

pytestmark = pytest.mark.integration


async def _start(rig: Rig, **overrides: object) -> tuple[Follower, asyncio.Task[None]]:
    f = Follower(rig.settings(**overrides))
    await f.start()
    return f, asyncio.create_task(f.run())


async def _stop(f: Follower, task: asyncio.Task[None]) -> None:
    f.request_stop()
    await asyncio.wait_for(task, 20)
    await f.stop()


def test_anvil_reorg_retracts_orphans_and_reincludes_a_moved_tx(rig: Rig) -> None:
    async def go() -> None:
        stop = asyncio.Event()
        sink = rig.sink()
        sink_task = asyncio.create_task(sink.run(stop))
        f, task = await _start(rig)
        try:
            mine_blocks(rig.rpc_url, 6, 3)  # blocks 1..6
            await wait_until(lambda: f.checkpoint and f.checkpoint.block_number >= 6, 30, "b6")
            old = {n: rpc(rig.rpc_url, "eth_getBlockByNumber", hex(n), True) for n in (4, 5, 6)}
            orphaned = {t["hash"].lower() for b in old.values() for t in b["transactions"]}
            moved = old[4]["transactions"][0]["hash"]  # valid at block 3's state: re-included
            raw = rpc(rig.rpc_url, "eth_getRawTransactionByHash", moved)
            new_tx = {"from": old[5]["transactions"][1]["from"], "to": moved[:42], "value": "0x309"}
            rpc(rig.rpc_url, "anvil_reorg", 3, [[raw, 0], [new_tx, 1]])
            mine_blocks(rig.rpc_url, 2, 2)  # the new branch grows: blocks 7, 8
            expected = canonical_txs(rig.rpc_url)
            assert moved.lower() in expected and len(orphaned - set(expected)) == 8
            await wait_until(lambda: sink.final() == expected, 30, "FINAL == canonical chain")
        finally:
            await _stop(f, task)
            stop.set()
            await sink_task
        assert f.stats["reorgs"] == 1 and f.stats["orphaned_txs"] == 9
        reorgs = [decode_reorg(v) for t, v in sink.messages if t == TOPIC_CHAIN_REORG]
        assert {h for r in reorgs for h in r.tx_hashes()} == orphaned
        assert {(r.ancestor_number, r.old_tip_number, r.epoch) for r in reorgs} == {(3, 6, 1)}
        # the moved tx: retracted at epoch 1, then re-included with a higher version
        versions = [
            (b.version, b.block_number)
            for t, v in sink.messages
            if t == TOPIC_CHAIN_TX
            for b in [decode_tx_batch(v)]
            if moved.lower() in {x.tx_hash for x in b.txs}
        ]
        assert [n for _, n in versions] == [4, 4] and versions[1][0] > reorgs[0].version
        assert sink.raw_count() > len(expected)  # retractions and originals are rows too

    asyncio.run(go())


def test_fast_lane_reorg_below_the_published_head_is_retracted(rig: Rig) -> None:
    """Unconfirmed blocks go out at once (confirmed=false); a snapshot revert shrinks the
    chain below them; the new branch replaces them; deep blocks end up confirmed."""

    async def go() -> None:
        stop = asyncio.Event()
        sink = rig.sink()
        sink_task = asyncio.create_task(sink.run(stop))
        f, task = await _start(rig, fast_lane=True, confirmations=3)
        try:
            mine_blocks(rig.rpc_url, 4, 2)  # 1..4
            snap = rpc(rig.rpc_url, "evm_snapshot")
            doomed = set(mine_blocks(rig.rpc_url, 3, 2))  # 5..7, unconfirmed when seen
            await wait_until(lambda: f.checkpoint and f.checkpoint.fast_tip >= 7, 30, "fast 7")
            assert f.checkpoint is not None and f.checkpoint.block_number == 4
            assert rpc(rig.rpc_url, "evm_revert", snap) is True  # head back to 4
            mine_blocks(rig.rpc_url, 6, 1)  # 5..10 on the new branch
            expected = canonical_txs(rig.rpc_url)
            assert not doomed & set(expected)
            await wait_until(lambda: sink.final() == expected, 30, "FINAL == canonical chain")
            await wait_until(lambda: f.checkpoint and f.checkpoint.block_number >= 7, 10, "conf")
            rows = rig.client.query(
                f"SELECT block_number, confirmed FROM `{rig.database}`.transactions FINAL"
            ).result_rows
        finally:
            await _stop(f, task)
            stop.set()
            await sink_task
        assert {int(n): int(c) for n, c in rows} == {n: int(n <= 7) for n in range(1, 11)}
        reorgs = [decode_reorg(v) for t, v in sink.messages if t == TOPIC_CHAIN_REORG]
        assert {h for r in reorgs for h in r.tx_hashes()} == doomed
        assert all(not b.confirmed for r in reorgs for b in r.blocks)  # only fast-lane rows
        fast = [decode_tx_batch(v) for t, v in sink.messages if t == TOPIC_CHAIN_TX]
        assert any(not b.confirmed for b in fast) and any(b.confirmed for b in fast)

    asyncio.run(go())
