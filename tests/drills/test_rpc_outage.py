"""Drill: the only JSON-RPC endpoint is down for 30 s while the chain keeps producing.

End to end on the real parts: anvil -> a cuttable TCP proxy (the "RPC provider") ->
`vigil follow` -> Tansu -> `vigil worker` -> ClickHouse. Blocks of value transfers are
mined on anvil directly, before, during and after the outage. While the proxy is cut
(connections reset, new ones refused) the follower keeps retrying with backoff and
publishes nothing; once the endpoint is back it catches up. Afterwards:

- `chain.tx.v1` holds every canonical tx exactly once and every mined block, with no
  gap (nothing was lost or published twice across the outage);
- ClickHouse stores and scores every canonical tx exactly once.

The rotation case (a second endpoint takes over) is
`tests/chain/test_follower_resilience.py`. `VIGIL_DRILL_RPC_OUTAGE_S` sets the outage
(default 30 s).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from pipelines.chain.anvil import start_anvil
from pipelines.procs import ManagedProcess, free_port
from pipelines.records import decode_tx_batch
from tests.chain.conftest import TcpProxy, canonical_txs, checkpoint_block, mine_blocks, rpc
from tests.drills.conftest import DrillStack, wait_for

pytestmark = pytest.mark.integration

OUTAGE_S = float(os.environ.get("VIGIL_DRILL_RPC_OUTAGE_S", "30"))
TXS_PER_BLOCK = 4
BLOCK_EVERY_S = 0.5


def test_rpc_endpoint_down_30s_ingestion_resumes_without_gap(drill_stack: DrillStack) -> None:
    st = drill_stack
    anvil_port = free_port()
    anvil = start_anvil(anvil_port, log_path=st.logs / "anvil.log")
    st.others.append(anvil)
    chain = f"http://127.0.0.1:{anvil_port}"
    proxy = TcpProxy(anvil_port).start()
    try:
        _run(st, chain, proxy)
    finally:
        proxy.close()


def _head(chain: str) -> int:
    return int(rpc(chain, "eth_blockNumber"), 16)


def _mine_for(
    chain: str, seconds: float, follower: ManagedProcess, tick: Callable[[], None] = lambda: None
) -> int:
    """Mine a block of TXS_PER_BLOCK transfers every BLOCK_EVERY_S for `seconds`."""
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        mine_blocks(chain, 1, TXS_PER_BLOCK)
        n += 1
        assert follower.alive(), "the follower died"
        tick()
        time.sleep(BLOCK_EVERY_S)
    return n


def _run(st: DrillStack, chain: str, proxy: TcpProxy) -> None:
    worker = st.start_worker()
    follower = st.start_follower(
        rpc_url=proxy.url, confirmations=0, poll_interval_s=0.2, rpc_timeout_s=2.0
    )
    mirror = st.settings("follower").data_dir / "follower" / "checkpoint.json"
    mine_blocks(chain, 1, TXS_PER_BLOCK)
    wait_for(lambda: checkpoint_block(mirror) >= 1, 60, "the follower to publish block 1")

    _mine_for(chain, 4, follower)  # steady state through the endpoint
    wait_for(lambda: checkpoint_block(mirror) >= _head(chain), 30, "the follower at the head")

    proxy.cut()
    cut_at = time.monotonic()
    at_cut = checkpoint_block(mirror)
    during = _mine_for(chain, OUTAGE_S, follower)
    head_before_restore = _head(chain)
    stalled_at = checkpoint_block(mirror)
    assert stalled_at <= at_cut + 1, "the follower published although its endpoint was down"
    proxy.restore()
    down_s = time.monotonic() - cut_at

    restored_at = time.monotonic()
    resumed: list[float] = []

    def note_resume() -> None:
        if not resumed and checkpoint_block(mirror) > stalled_at:
            resumed.append(time.monotonic() - restored_at)

    _mine_for(chain, 3, follower, note_resume)  # the chain goes on after the outage too
    head = _head(chain)
    wait_for(lambda: checkpoint_block(mirror) > stalled_at, 60, "the follower to resume")
    note_resume()
    wait_for(lambda: checkpoint_block(mirror) >= head, 60, "the follower to catch up")
    caught_up_s = time.monotonic() - restored_at

    canonical = canonical_txs(chain)
    assert len(canonical) == head * TXS_PER_BLOCK
    # Kafka: every canonical tx exactly once, every block present (no gap).
    msgs = st.consume_all("chain.tx.v1", expect=10**9, timeout=10)
    batches = [decode_tx_batch(m.value) for m in msgs]
    published = [tx.tx_hash.lower() for b in batches for tx in b.txs]
    assert len(published) == len(set(published)), "a tx was published more than once"
    assert set(published) == set(canonical)
    assert sorted({b.block_number for b in batches}) == list(range(1, head + 1))

    # ClickHouse, through the worker: every tx stored and scored exactly once.
    t0 = time.monotonic()
    st.wait_stored(len(canonical), timeout=120)
    store_s = time.monotonic() - t0
    st.assert_exactly_once(list(canonical))
    assert worker.alive() and follower.alive()
    log = (st.logs / "follower.log").read_text(errors="replace")
    print(
        f"\nRPC outage drill: endpoint down {down_s:.1f}s while {during} blocks "
        f"({during * TXS_PER_BLOCK} txs) were mined; follower stalled at block "
        f"{stalled_at} (head {head_before_restore} at restore), resumed {resumed[0]:.1f}s "
        f"and reached the head (block {head}) {caught_up_s:.1f}s after the restore; "
        f"{len(canonical)} txs in Kafka once each, stored and scored once "
        f"(+{store_s:.1f}s); {log.count('WARNING  pipelines.chain.rpc')} endpoint "
        "failures logged"
    )
