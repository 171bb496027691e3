"""Ingestion benchmark: anvil -> follower -> Kafka (acks=all), on this machine.

Two measurements, both through the production code path (`pipelines.chain.follower`):

1. Throughput: anvil is pre-filled with `--blocks` blocks of `--txs-per-block`
   transfers, then `backfill` publishes them all; blocks/s and txs/s count only
   what Kafka acknowledged (the checkpoint moves after the acks).
2. Head lag: anvil mines a block every `--block-time` seconds while a load thread
   sends `--live-rate` tx/s; the live follower (confirmations 0) runs for
   `--live-seconds`; at every poll we sample head - newest published block
   (blocks) and now - that block's timestamp (seconds).

    .venv/bin/python bench/ingest_bench.py [--blocks 400 --txs-per-block 50] [--json out.json]

Embedded broker (Tansu, in memory) and anvil run on free loopback ports; nothing
else is needed. Figures depend on the machine: report them with its CPU count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from pipelines.chain.anvil import DEV_ACCOUNTS, start_anvil  # noqa: E402
from pipelines.chain.follower import Follower, backfill  # noqa: E402
from pipelines.procs import ManagedProcess, free_port, port_open  # noqa: E402
from pipelines.records import TOPIC_CHAIN_REORG, TOPIC_CHAIN_TX  # noqa: E402
from pipelines.settings import Settings  # noqa: E402
from pipelines.stack import tansu_argv  # noqa: E402

console = Console(stderr=True)


def rpc(url: str, calls: list[tuple[str, list[Any]]]) -> list[Any]:
    body = json.dumps(
        [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
    )
    req = urllib.request.Request(  # noqa: S310 - loopback anvil
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310
        out = sorted(json.loads(r.read()), key=lambda x: x["id"])
    errors = [x["error"] for x in out if "error" in x]
    if errors:
        raise RuntimeError(f"anvil refused: {errors[:3]}")
    return [x["result"] for x in out]


_nonces: dict[str, int] = {}


def transfers(n: int, offset: int) -> list[tuple[str, list[Any]]]:
    """`n` value transfers from the dev accounts, with explicit nonces (anvil assigns
    nonces per call, and calls of one batch may race for the same one)."""
    calls: list[tuple[str, list[Any]]] = []
    for k in range(n):
        sender = DEV_ACCOUNTS[(offset + k) % 10][0]
        nonce = _nonces.get(sender, 0)
        _nonces[sender] = nonce + 1
        tx = {
            "from": sender,
            "to": DEV_ACCOUNTS[(offset + k + 1) % 10][0],
            "value": hex(1 + offset + k),
            "nonce": hex(nonce),
        }
        calls.append(("eth_sendTransaction", [tx]))
    return calls


def prefill(url: str, blocks: int, per_block: int) -> None:
    rpc(url, [("evm_setAutomine", [False])])
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("filling anvil", total=blocks)
        for b in range(blocks):
            if per_block:
                rpc(url, transfers(per_block, b * per_block))
            rpc(url, [("evm_mine", [])])
            bar.advance(task)


async def create_topics(bootstrap: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, partitions, 1) for t in (TOPIC_CHAIN_TX, TOPIC_CHAIN_REORG)]
        )
    finally:
        await admin.close()


async def throughput(settings: Settings, head: int) -> dict[str, float]:
    t0 = time.perf_counter()
    stats = await backfill(settings, 1, head, progress=True)
    dt = time.perf_counter() - t0
    return {
        "blocks": stats["blocks"],
        "txs": stats["txs"],
        "seconds": round(dt, 2),
        "blocks_per_s": round(stats["blocks"] / dt, 1),
        "txs_per_s": round(stats["txs"] / dt, 1),
    }


async def head_lag(settings: Settings, url: str, seconds: float, rate: float) -> dict[str, Any]:
    stop = threading.Event()

    def load() -> None:
        k = 0
        while not stop.is_set():
            t = time.monotonic()
            n = max(1, int(rate / 10))
            rpc(url, transfers(n, 10**6 + k))
            k += n
            stop.wait(max(0.0, 0.1 - (time.monotonic() - t)))

    lag_blocks: list[int] = []
    lag_seconds: list[float] = []
    f = Follower(settings)

    def on_progress(confirmed: int, head: int) -> None:
        lag_blocks.append(head - confirmed)
        newest = f.metrics.newest_block_time
        if newest:
            lag_seconds.append(time.time() - newest)

    f.on_progress = on_progress
    await f.start()
    run = asyncio.create_task(f.run())
    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("live follower under load", total=seconds)
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            await asyncio.sleep(0.5)
            bar.update(task, completed=time.monotonic() - t0)
    stop.set()
    loader.join(timeout=10)
    f.request_stop()
    await run
    await f.stop()
    steady_b = lag_blocks[len(lag_blocks) // 5 :] or [0]
    steady_s = lag_seconds[len(lag_seconds) // 5 :] or [0.0]
    return {
        "seconds": seconds,
        "published_blocks": f.stats["blocks"],
        "published_txs": f.stats["txs"],
        "lag_blocks_p50": statistics.median(steady_b),
        "lag_blocks_max": max(steady_b),
        "lag_seconds_p50": round(statistics.median(steady_s), 2),
        "lag_seconds_p95": round(sorted(steady_s)[int(0.95 * (len(steady_s) - 1))], 2),
        "note": "lag seconds include up to one block time of timestamp granularity",
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    kport = free_port()
    broker = ManagedProcess(
        "tansu",
        tansu_argv(kport),
        log_path=tmp / "tansu.log",
    ).start()
    anvil = None
    try:
        broker.wait_healthy(lambda: port_open("127.0.0.1", kport), timeout=30)
        bootstrap = f"127.0.0.1:{kport}"
        await create_topics(bootstrap, args.partitions)
        aport = free_port()
        anvil = start_anvil(aport, log_path=tmp / "anvil.log")
        url = f"http://127.0.0.1:{aport}"
        prefill(url, args.blocks, args.txs_per_block)
        head = int(rpc(url, [("eth_blockNumber", [])])[0], 16)
        settings = Settings(
            kafka_bootstrap=bootstrap,
            rpc_url=url,
            data_dir=tmp / "vigil",
            confirmations=0,
            poll_interval_s=0.1,
            follow_chunk_blocks=args.chunk,
            rpc_batch_size=args.rpc_batch,
        )
        results: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count()},
            "config": {
                "blocks": args.blocks,
                "txs_per_block": args.txs_per_block,
                "chunk_blocks": args.chunk,
                "rpc_batch": args.rpc_batch,
                "partitions": args.partitions,
            },
        }
        results["throughput"] = await throughput(settings, head)
        if args.live_seconds > 0:
            rpc(url, [("evm_setIntervalMining", [max(1, round(args.block_time))])])
            live = settings.model_copy(update={"data_dir": tmp / "vigil-live"})
            # start the live follower at the current head: lag, not catch-up, is measured
            head_now = int(rpc(url, [("eth_blockNumber", [])])[0], 16)
            live = live.model_copy(update={"start_block": head_now + 1})
            results["head_lag"] = await head_lag(live, url, args.live_seconds, args.live_rate)
            results["head_lag"]["block_time_s"] = args.block_time
            results["head_lag"]["load_tx_per_s"] = args.live_rate
        return results
    finally:
        if anvil is not None:
            anvil.stop()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def report(results: dict[str, Any]) -> None:
    t = Table(title="Vigil ingestion benchmark (anvil -> follower -> Kafka)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    tp = results["throughput"]
    t.add_row("blocks published", str(tp["blocks"]))
    t.add_row("txs published", str(tp["txs"]))
    t.add_row("throughput, blocks/s", str(tp["blocks_per_s"]))
    t.add_row("throughput, txs/s", str(tp["txs_per_s"]))
    if "head_lag" in results:
        hl = results["head_lag"]
        t.add_row(
            "live: head lag p50 / max, blocks", f"{hl['lag_blocks_p50']} / {hl['lag_blocks_max']}"
        )
        t.add_row(
            "live: head lag p50 / p95, seconds",
            f"{hl['lag_seconds_p50']} / {hl['lag_seconds_p95']}",
        )
    t.add_row("cpus", str(results["machine"]["cpus"]))
    Console().print(t)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--blocks", type=int, default=400)
    p.add_argument("--txs-per-block", type=int, default=50)
    p.add_argument("--chunk", type=int, default=16, help="blocks per follower step")
    p.add_argument("--rpc-batch", type=int, default=50, help="calls per JSON-RPC batch")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--live-seconds", type=float, default=20.0)
    p.add_argument("--live-rate", type=float, default=50.0, help="tx/s sent during the lag run")
    p.add_argument("--block-time", type=int, default=1, help="seconds (anvil: whole seconds)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args()
    out = asyncio.run(main(a))
    report(out)
    if a.json is not None:
        a.json.write_text(json.dumps(out, indent=2))
