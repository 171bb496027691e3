"""Block follower: chain -> `chain.tx.v1`, at least once, resumable, reorg-aware.

Each poll publishes every block from the checkpoint up to `head - confirmations`.
A block's transactions (with receipt status) are grouped by sender shard and sent
as one message per shard, keyed by shard. The checkpoint (a small JSON file,
written atomically) advances only after Kafka acknowledged every message of the
block, so a crash re-publishes at most one block; downstream sinks are idempotent
by transaction hash, so a replay never double counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from web3 import AsyncWeb3

from detector.types import Tx
from pipelines.records import SCHEMA_VERSION, TOPIC_CHAIN_TX, TxBatchRecord, encode_tx
from pipelines.settings import Settings

log = logging.getLogger(__name__)

REORG_MEMORY = 128  # block hashes kept to find the common ancestor after a reorg


class RpcUnavailable(RuntimeError):
    """The JSON-RPC endpoint cannot be reached."""


def shard_of(sender: str, n_shards: int) -> int:
    """Stable shard of an address: its last 8 hex digits are keccak-uniform already."""
    return int(sender[-8:], 16) % n_shards


@dataclass
class Checkpoint:
    """Last published block and the hashes of recent blocks (for reorg walk-back)."""

    block_number: int = -1
    hashes: dict[int, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        if not path.exists():
            return cls()
        d = json.loads(path.read_text())
        return cls(int(d["block_number"]), {int(k): v for k, v in d["hashes"].items()})

    def save(self, path: Path) -> None:
        keep = {n: h for n, h in self.hashes.items() if n > self.block_number - REORG_MEMORY}
        data = json.dumps({"block_number": self.block_number, "hashes": keep}).encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".checkpoint.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.hashes = keep


def _hex(v: Any) -> str:
    if isinstance(v, bytes | bytearray):
        return "0x" + bytes(v).hex()
    s = str(v.hex() if hasattr(v, "hex") and not isinstance(v, str) else v)
    return s if s.startswith("0x") else "0x" + s


def block_to_txs(block: Any, receipts: Sequence[Any]) -> tuple[list[Tx], list[int]]:
    """Pure: a web3 block (full transactions) and its receipts -> domain txs."""
    status = {_hex(r["transactionHash"]): int(r["status"]) for r in receipts}
    gas_used_price = {
        _hex(r["transactionHash"]): int(r.get("effectiveGasPrice", 0) or 0) for r in receipts
    }
    txs: list[Tx] = []
    index: list[int] = []
    ts = float(block["timestamp"])
    for t in block["transactions"]:
        h = _hex(t["hash"])
        data = _hex(t.get("input", b""))
        gp = int(t.get("gasPrice") or gas_used_price.get(h, 0) or 0)
        txs.append(
            Tx(
                tx_hash=h.lower(),
                sender=str(t["from"]).lower(),
                to=str(t["to"]).lower() if t.get("to") else "",
                value_wei=int(t["value"]),
                gas_price_wei=gp,
                gas=int(t["gas"]),
                nonce=int(t["nonce"]),
                selector=data[:10].lower() if len(data) >= 10 else "",
                status=status.get(h, 1),
                block_number=int(block["number"]),
                timestamp=ts,
            )
        )
        index.append(int(t["transactionIndex"]))
    return txs, index


def build_batches(
    block: Any,
    txs: Sequence[Tx],
    index: Sequence[int],
    *,
    chain_id: int,
    confirmed: bool,
    n_shards: int,
) -> list[tuple[int, TxBatchRecord]]:
    """Pure: group a block's txs by sender shard into `chain.tx.v1` records."""
    groups: dict[int, list[tuple[Tx, int]]] = {}
    for tx, i in zip(txs, index, strict=True):
        groups.setdefault(shard_of(tx.sender, n_shards), []).append((tx, i))
    out = []
    for shard, items in sorted(groups.items()):
        out.append(
            (
                shard,
                TxBatchRecord(
                    schema_version=SCHEMA_VERSION,
                    chain_id=chain_id,
                    block_number=int(block["number"]),
                    block_hash=_hex(block["hash"]).lower(),
                    parent_hash=_hex(block["parentHash"]).lower(),
                    block_time=float(block["timestamp"]),
                    confirmed=confirmed,
                    shard=shard,
                    txs=[encode_tx(tx, i) for tx, i in items],
                ),
            )
        )
    return out


class Follower:
    """Follows one chain and publishes its transactions to Kafka."""

    def __init__(self, settings: Settings, *, n_shards: int = 16) -> None:
        self.settings = settings
        self.n_shards = n_shards
        self.checkpoint_path = settings.data_dir / "follower" / "checkpoint.json"
        self.w3 = AsyncWeb3(AsyncWeb3.AsyncHTTPProvider(settings.rpc_url))
        self.producer: AIOKafkaProducer | None = None
        self.stats = {"blocks": 0, "txs": 0, "reorgs": 0, "rpc_errors": 0}
        self._stop = asyncio.Event()

    async def start(self) -> None:
        try:
            self.chain_id = int(await self.w3.eth.chain_id)
        except Exception as e:
            raise RpcUnavailable(
                f"cannot reach JSON-RPC endpoint {self.settings.rpc_url}: {e}. "
                "Check VIGIL_RPC_URL and that the node is running."
            ) from e
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            acks="all",
            linger_ms=5,
            max_request_size=8 * 1024 * 1024,
        )
        await self.producer.start()

    async def stop(self) -> None:
        self._stop.set()
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Poll until stopped; publish each new block once it has enough confirmations."""
        cp = Checkpoint.load(self.checkpoint_path)
        if cp.block_number < 0 and self.settings.start_block is not None:
            cp.block_number = self.settings.start_block - 1
        log.info("follower starting after block %d (chain %d)", cp.block_number, self.chain_id)
        while not self._stop.is_set():
            try:
                head = int(await self.w3.eth.block_number)
                target = head - self.settings.confirmations
                while cp.block_number < target and not self._stop.is_set():
                    await self.publish_block(cp, cp.block_number + 1, head)
            except (TimeoutError, OSError, ValueError) as e:
                self.stats["rpc_errors"] += 1
                log.warning("RPC error, retrying: %s", e)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.settings.poll_interval_s)

    async def publish_block(self, cp: Checkpoint, number: int, head: int) -> None:
        block = await self.w3.eth.get_block(number, full_transactions=True)
        parent = _hex(block["parentHash"]).lower()
        known_parent = cp.hashes.get(number - 1)
        if known_parent is not None and known_parent != parent:
            await self._walk_back(cp)
            return
        receipts = await self.w3.eth.get_block_receipts(number) if block["transactions"] else []
        txs, index = block_to_txs(block, receipts)
        batches = build_batches(
            block, txs, index, chain_id=self.chain_id, confirmed=True, n_shards=self.n_shards
        )
        assert self.producer is not None
        futures = [
            await self.producer.send(TOPIC_CHAIN_TX, key=str(shard).encode(), value=rec.dumps())
            for shard, rec in batches
        ]
        for f in futures:
            await f  # delivery acknowledged by the broker before the checkpoint moves
        cp.block_number = number
        cp.hashes[number] = _hex(block["hash"]).lower()
        cp.save(self.checkpoint_path)
        self.stats["blocks"] += 1
        self.stats["txs"] += len(txs)
        if txs:
            log.debug(
                "block %d: %d txs in %d shards (head %d)", number, len(txs), len(batches), head
            )

    async def _walk_back(self, cp: Checkpoint) -> None:
        """Reorg: rewind the checkpoint to the newest block still on the canonical chain."""
        self.stats["reorgs"] += 1
        n = cp.block_number
        while n >= 0 and n in cp.hashes:
            canonical = await self.w3.eth.get_block(n)
            if _hex(canonical["hash"]).lower() == cp.hashes[n]:
                break
            del cp.hashes[n]
            n -= 1
        log.warning("reorg detected: rewinding from block %d to %d", cp.block_number, n)
        cp.block_number = n
        cp.save(self.checkpoint_path)


async def run_follower(settings: Settings, *, duration_s: float | None = None) -> dict[str, int]:
    f = Follower(settings)
    await f.start()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, f.request_stop)
    if duration_s is not None:
        loop.call_later(duration_s, f.request_stop)
    t0 = time.monotonic()
    try:
        await f.run()
    finally:
        await f.stop()
    log.info("follower stopped after %.1fs: %s", time.monotonic() - t0, f.stats)
    return f.stats
