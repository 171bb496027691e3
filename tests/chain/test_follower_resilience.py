"""Crash, restart and endpoint failure: every canonical tx lands in ClickHouse exactly once.

The whole-outage case (the only endpoint down for 30 s, end to end through the worker)
is the drill `tests/drills/test_rpc_outage.py`; here the follower rotates to a second
endpoint.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipelines.chain.follower import Follower, backfill
from pipelines.procs import ManagedProcess, free_port
from pipelines.records import TOPIC_CHAIN_TX, decode_tx_batch
from pipelines.stack import settings_env
from tests.chain.conftest import (
    REPO_ROOT,
    Rig,
    TcpProxy,
    canonical_txs,
    checkpoint_block,
    mine_blocks,
    wait_until,
)

pytestmark = pytest.mark.integration


async def _sink_until_final(rig: Rig, expected: dict[str, int], timeout: float = 60) -> int:
    """Run the sink until FINAL equals `expected`; returns how many tx rows it consumed."""
    stop = asyncio.Event()
    sink = rig.sink()
    task = asyncio.create_task(sink.run(stop))
    try:
        await wait_until(lambda: sink.final() == expected, timeout, "FINAL == canonical chain")
    finally:
        stop.set()
        await task
    return sum(len(decode_tx_batch(v).txs) for t, v in sink.messages if t == TOPIC_CHAIN_TX)


def test_follower_killed_mid_range_resumes_without_gap_or_double_count(rig: Rig) -> None:
    mine_blocks(rig.rpc_url, 300, 4)
    expected = canonical_txs(rig.rpc_url)
    assert len(expected) == 1200
    settings = rig.settings(follow_chunk_blocks=2)
    mirror = settings.data_dir / "follower" / "checkpoint.json"
    argv = [sys.executable, "-m", "pipelines.cli", "follow", "--log-level", "warning"]

    def follower(n: int) -> ManagedProcess:
        log_path = rig.data_dir / f"follower{n}.log"
        return ManagedProcess(
            "follower", argv, env=settings_env(settings), log_path=log_path, cwd=REPO_ROOT
        ).start()

    first = follower(1)
    try:
        first.wait_healthy(lambda: checkpoint_block(mirror) >= 20, timeout=60)
    finally:
        first.kill()  # SIGKILL: no shutdown path runs
    killed_at = checkpoint_block(mirror)
    assert 20 <= killed_at < 300, f"not killed mid-range ({killed_at})"

    second = follower(2)
    try:
        second.wait_healthy(lambda: checkpoint_block(mirror) >= 300, timeout=90)
    finally:
        second.stop()
    published = asyncio.run(_sink_until_final(rig, expected))
    assert published >= 1200  # a re-published chunk may repeat a few; FINAL counts each once


def test_backfill_is_resumable_and_matches_the_chain(rig: Rig) -> None:
    mine_blocks(rig.rpc_url, 40, 3)
    expected = canonical_txs(rig.rpc_url)
    settings = rig.settings(follow_chunk_blocks=5)

    async def go() -> None:
        first = await backfill(settings, 1, 20, progress=False)
        assert first["blocks"] == 20 and first["txs"] == 60
        again = await backfill(settings, 1, 20, progress=False)  # done already: no-op
        assert again["blocks"] == 0
        rest = await backfill(settings, 21, 40, progress=False)
        assert rest["txs"] == 60
        await _sink_until_final(rig, expected)

    asyncio.run(go())


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback
        return str(r.read().decode())


def test_endpoint_going_down_mid_run_rotates_without_gap(rig: Rig) -> None:
    anvil_port = int(rig.rpc_url.rsplit(":", 1)[1])

    async def go() -> None:
        proxy = TcpProxy(anvil_port).start()
        metrics_port = free_port()
        settings = rig.settings(
            rpc_url=proxy.url,
            rpc_urls=[rig.rpc_url],
            rpc_timeout_s=2.0,
            metrics_port=metrics_port,
        )
        f = Follower(settings)
        await f.start()
        task = asyncio.create_task(f.run())
        try:
            for i in range(30):
                await asyncio.to_thread(mine_blocks, rig.rpc_url, 1, 2)
                if i == 12:
                    await wait_until(
                        lambda: f.checkpoint and f.checkpoint.block_number >= 10,
                        20,
                        "progress through the first endpoint",
                    )
                    await asyncio.to_thread(proxy.cut)
                await asyncio.sleep(0.03)
            await wait_until(lambda: f.checkpoint and f.checkpoint.block_number >= 30, 30, "b30")
            metrics = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}/metrics")
        finally:
            f.request_stop()
            await asyncio.wait_for(task, 20)
            errors = f.pool.endpoints[0].errors
            current = f.pool.current.url
            await f.stop()
            proxy.close()
        assert errors >= 1 and current == rig.rpc_url
        down = proxy.url
        for line in (
            f'vigil_rpc_endpoint_up{{endpoint="{down}"}} 0.0',
            f'vigil_rpc_errors_total{{endpoint="{down}",kind="connection"}}',
            'vigil_follower_blocks_total{lane="confirmed"} 31.0',  # genesis too
            "vigil_follower_head_lag_blocks 0.0",
            "vigil_follower_head_lag_seconds",
            "vigil_follower_blocks_per_second",
            "vigil_follower_txs_per_second",
            "vigil_follower_reorgs_total 0.0",
        ):
            assert line in metrics, line
        expected = canonical_txs(rig.rpc_url)
        await _sink_until_final(rig, expected)
        rows = rig.client.query(
            f"SELECT DISTINCT block_number FROM `{rig.database}`.transactions FINAL"
        ).result_rows
        assert sorted(int(r[0]) for r in rows) == list(range(1, 31))  # no gap

    asyncio.run(go())


def test_no_reachable_endpoint_at_start_exits_non_zero_with_a_clear_error(tmp_path: Path) -> None:
    env = {
        "VIGIL_RPC_URL": f"http://127.0.0.1:{free_port()}",
        "VIGIL_DATA_DIR": str(tmp_path),
        "VIGIL_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
    }
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "follow"],
        env={**__import__("os").environ, **env},
        capture_output=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )
    out = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 1, out
    assert "none of the 1 JSON-RPC endpoint" in out and "VIGIL_RPC_URL" in out
    assert time.monotonic() - t0 < 30
