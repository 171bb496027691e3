"""Block follower: chain -> `chain.tx.v1` (+ `chain.reorg.v1`), no gap, no double count.

What it guarantees, and how:
- *No gap.* Blocks are published strictly in order; the durable checkpoint (SQLite,
  `Checkpoint`) advances only after Kafka acknowledged every message of the blocks
  it covers (acks=all). A crash re-publishes at most one chunk of blocks.
- *No double count.* Every message carries a row version (`pipelines.chain.reorg`)
  that depends only on the block, the lane and the reorg epoch, so a re-published
  block writes the same rows again and `ReplacingMergeTree` keeps one of them.
- *Reorgs.* Every published block is remembered (hash, parent, transactions) for
  `reorg_memory_blocks`. Each poll checks that the newest remembered block is still
  canonical, and each new block must link to it by parent hash. On a mismatch the
  follower walks back to the common ancestor, publishes retractions of every
  orphaned transaction on `chain.reorg.v1`, bumps the epoch, rewinds, and only then
  publishes the new branch. Re-included txs come back with a higher version.
- *Confirmations and the fast lane.* Blocks are published with `confirmed=true`
  once `confirmations` deep. With `fast_lane` they are also published as soon as
  they are seen with `confirmed=false` (detectors can act early), then again,
  confirmed, from memory when deep enough (a higher version replaces the row).
- *Backfill* (`backfill(settings, start, end)`) is the same loop on its own cursor,
  bounded to a range; cursors share one epoch counter so their versions compare.

Fetching is batched JSON-RPC through `RpcPool` (several endpoints, rotation,
backoff): one round trip gets a chunk of blocks with full transactions and their
receipts (logs included); calls and logs of known contracts are decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Counter

from detector.types import Tx
from pipelines.chain.decode import ChainDecoder, default_decoder
from pipelines.chain.metrics import FollowerMetrics
from pipelines.chain.reorg import retraction_version, row_version
from pipelines.chain.rpc import PoolClosed, RpcError, RpcPool, RpcUnavailable, hex_int
from pipelines.records import (
    MAX_MESSAGE_BYTES,
    SCHEMA_VERSION,
    TOPIC_CHAIN_REORG,
    TOPIC_CHAIN_TX,
    OrphanedBlockRecord,
    ReorgRecord,
    TxBatch,
    TxBatchRecord,
    TxDetail,
    decode_stored_block,
    encode_tx,
)
from pipelines.settings import Settings

__all__ = [
    "Checkpoint",
    "Follower",
    "FollowerError",
    "ReorgTooDeep",
    "RpcUnavailable",
    "backfill",
    "block_to_txs",
    "build_batches",
    "build_reorg_records",
    "parse_block",
    "run_follower",
    "shard_of",
]

log = logging.getLogger(__name__)

REORG_MEMORY = 128  # default; `Settings.reorg_memory_blocks` overrides
N_SHARDS = 16
LIVE_CURSOR = "live"
ZERO_HASH = "0x" + "00" * 32
#: A shard message above this many bytes is split (the decoder refuses > MAX_MESSAGE_BYTES).
SPLIT_BYTES = MAX_MESSAGE_BYTES // 2


class FollowerError(RuntimeError):
    """The follower cannot run as configured; the message says what to fix."""


class ReorgTooDeep(FollowerError):
    """No common ancestor among the remembered blocks: the reorg is deeper than memory."""


# ----------------------------------------------------------------------------- pure


def shard_of(sender: str, n_shards: int) -> int:
    """Stable shard of an address: its last 8 hex digits are keccak-uniform already."""
    return int(sender[-8:], 16) % n_shards


def _hex(v: Any) -> str:
    if isinstance(v, str):  # raw JSON-RPC: already hex
        return v if v.startswith("0x") else "0x" + v
    if isinstance(v, bytes | bytearray):
        return "0x" + bytes(v).hex()
    s = str(v.hex() if hasattr(v, "hex") else v)
    return s if s.startswith("0x") else "0x" + s


def _int(v: Any) -> int:
    """A web3 int or a raw JSON-RPC hex quantity."""
    if v is None:
        return 0
    if isinstance(v, str):
        return int(v, 16) if v.startswith(("0x", "0X")) else int(v)
    return int(v)


def block_to_txs(block: Any, receipts: Sequence[Any]) -> tuple[list[Tx], list[int]]:
    """Pure: a block with full transactions (web3 objects or raw JSON-RPC) and its
    receipts -> domain txs and their indexes in the block."""
    status = {_hex(r["transactionHash"]).lower(): _int(r["status"]) for r in receipts}
    paid = {
        _hex(r["transactionHash"]).lower(): _int(r.get("effectiveGasPrice", 0) or 0)
        for r in receipts
    }
    txs: list[Tx] = []
    index: list[int] = []
    ts = float(_int(block["timestamp"]))
    number = _int(block["number"])
    for t in block["transactions"]:
        h = _hex(t["hash"]).lower()
        data = _hex(t.get("input", b""))
        gp = _int(t.get("gasPrice")) or paid.get(h, 0)
        txs.append(
            Tx(
                tx_hash=h,
                sender=str(t["from"]).lower(),
                to=str(t["to"]).lower() if t.get("to") else "",
                value_wei=_int(t["value"]),
                gas_price_wei=gp,
                gas=_int(t["gas"]),
                nonce=_int(t["nonce"]),
                selector=data[:10].lower() if len(data) >= 10 else "",
                status=status.get(h, 1),
                block_number=number,
                timestamp=ts,
            )
        )
        index.append(_int(t["transactionIndex"]))
    return txs, index


def parse_block(
    block: Mapping[str, Any],
    receipts: Sequence[Mapping[str, Any]],
    decoder: ChainDecoder | None = None,
) -> TxBatch:
    """Pure: raw JSON-RPC block (full txs) + receipts -> one whole-block `TxBatch`
    with receipt extras and decoded calls/logs in `details`."""
    txs, index = block_to_txs(block, receipts)
    by_hash = {str(r["transactionHash"]).lower(): r for r in receipts}
    details: list[TxDetail] = []
    for t, tx in zip(block["transactions"], txs, strict=True):
        r = by_hash.get(tx.tx_hash, {})
        method, args = decoder.decode_call(_hex(t.get("input", "0x"))) if decoder else ("", {})
        details.append(
            TxDetail(
                gas_used=_int(r.get("gasUsed")),
                effective_gas_price_wei=_int(r.get("effectiveGasPrice")),
                contract_address=str(r.get("contractAddress") or "").lower(),
                method=method,
                call_args=args,
                events=[decoder.decode_log(lg) for lg in r.get("logs") or []] if decoder else [],
            )
        )
    return TxBatch(
        block_number=_int(block["number"]),
        block_hash=_hex(block["hash"]).lower(),
        block_time=float(_int(block["timestamp"])),
        confirmed=False,
        txs=txs,
        tx_index=index,
        details=details,
        parent_hash=_hex(block["parentHash"]).lower(),
    )


def build_batches(
    block: Any,
    txs: Sequence[Tx],
    index: Sequence[int],
    *,
    chain_id: int,
    confirmed: bool,
    n_shards: int,
    version: int = 0,
    details: Sequence[TxDetail] | None = None,
) -> list[tuple[int, TxBatchRecord]]:
    """Pure: group a block's txs by sender shard into `chain.tx.v1` records.

    `block` is a mapping with number/hash/parentHash/timestamp (web3 or raw). A shard
    whose record would exceed SPLIT_BYTES is split into several records (same key).
    """
    dets = list(details) if details is not None else [TxDetail() for _ in txs]
    groups: dict[int, list[tuple[Tx, int, TxDetail]]] = {}
    for tx, i, d in zip(txs, index, dets, strict=True):
        groups.setdefault(shard_of(tx.sender, n_shards), []).append((tx, i, d))
    out: list[tuple[int, TxBatchRecord]] = []

    def record(shard: int, items: Sequence[tuple[Tx, int, TxDetail]]) -> TxBatchRecord:
        return TxBatchRecord(
            schema_version=SCHEMA_VERSION,
            chain_id=chain_id,
            block_number=_int(block["number"]),
            block_hash=_hex(block["hash"]).lower(),
            parent_hash=_hex(block["parentHash"]).lower(),
            block_time=float(_int(block["timestamp"])),
            confirmed=confirmed,
            shard=shard,
            txs=[encode_tx(tx, i, d) for tx, i, d in items],
            version=version,
        )

    def emit(shard: int, items: Sequence[tuple[Tx, int, TxDetail]]) -> None:
        rec = record(shard, items)
        if len(items) > 1 and len(rec.dumps()) > SPLIT_BYTES:
            half = len(items) // 2
            emit(shard, items[:half])
            emit(shard, items[half:])
        else:
            out.append((shard, rec))

    for shard, items in sorted(groups.items()):
        emit(shard, items)
    return out


def _block_header(b: TxBatch) -> dict[str, Any]:
    return {
        "number": b.block_number,
        "hash": b.block_hash,
        "parentHash": b.parent_hash or ZERO_HASH,
        "timestamp": int(b.block_time),
    }


def batch_records(
    b: TxBatch, *, chain_id: int, confirmed: bool, n_shards: int, version: int
) -> list[tuple[int, TxBatchRecord]]:
    """`chain.tx.v1` records of one whole-block batch."""
    return build_batches(
        {**_block_header(b), "timestamp": b.block_time},
        b.txs,
        b.tx_index,
        chain_id=chain_id,
        confirmed=confirmed,
        n_shards=n_shards,
        version=version,
        details=b.details,
    )


def build_reorg_records(
    orphans: Sequence[TxBatch],
    *,
    chain_id: int,
    epoch: int,
    ancestor_number: int,
    ancestor_hash: str,
    new_head_number: int,
    n_shards: int,
    detected_at: float,
) -> list[tuple[int, ReorgRecord]]:
    """Pure: `chain.reorg.v1` records (one per sender shard with orphaned txs; one on
    shard 0 when the orphaned blocks held no tx, so the reorg is still on record)."""
    version = retraction_version(epoch)
    by_shard: dict[int, list[OrphanedBlockRecord]] = {}
    for b in orphans:
        groups: dict[int, list[int]] = {}
        for k, tx in enumerate(b.txs):
            groups.setdefault(shard_of(tx.sender, n_shards), []).append(k)
        for shard, ks in groups.items():
            by_shard.setdefault(shard, []).append(
                OrphanedBlockRecord(
                    block_number=b.block_number,
                    block_hash=b.block_hash,
                    parent_hash=b.parent_hash or ZERO_HASH,
                    block_time=b.block_time,
                    confirmed=b.confirmed,
                    txs=[encode_tx(b.txs[k], b.tx_index[k], b.details[k]) for k in ks],
                )
            )
    if not by_shard:
        by_shard[0] = [
            OrphanedBlockRecord(
                block_number=b.block_number,
                block_hash=b.block_hash,
                parent_hash=b.parent_hash or ZERO_HASH,
                block_time=b.block_time,
                confirmed=b.confirmed,
                txs=[],
            )
            for b in orphans
        ]
    old_tip = max((b.block_number for b in orphans), default=ancestor_number)
    return [
        (
            shard,
            ReorgRecord(
                schema_version=SCHEMA_VERSION,
                chain_id=chain_id,
                epoch=epoch,
                version=version,
                ancestor_number=ancestor_number,
                ancestor_hash=ancestor_hash,
                old_tip_number=old_tip,
                new_head_number=new_head_number,
                detected_at=detected_at,
                shard=shard,
                blocks=sorted(blocks, key=lambda r: r.block_number),
            ),
        )
        for shard, blocks in sorted(by_shard.items())
    ]


# ----------------------------------------------------------------------- checkpoint


def _whole_block_record(b: TxBatch, chain_id: int) -> bytes:
    """A remembered block, stored as one (shard-less, never split) `chain.tx.v1` record."""
    rec = TxBatchRecord(
        schema_version=SCHEMA_VERSION,
        chain_id=chain_id,
        block_number=b.block_number,
        block_hash=b.block_hash,
        parent_hash=b.parent_hash or ZERO_HASH,
        block_time=b.block_time,
        confirmed=b.confirmed,
        shard=0,
        txs=[encode_tx(tx, i, d) for tx, i, d in zip(b.txs, b.tx_index, b.details, strict=True)],
    )
    return bytes(rec.dumps())


def _decode_payload(payload: bytes) -> TxBatch:
    """A remembered block: one whole-block record, or its shard records one per line."""
    parts = [decode_stored_block(line) for line in payload.split(b"\n") if line]
    if len(parts) == 1:
        return parts[0]
    head = parts[0]
    rows = sorted(
        ((i, tx, d) for p in parts for i, tx, d in zip(p.tx_index, p.txs, p.details, strict=True)),
        key=lambda r: r[0],
    )
    head.tx_index = [r[0] for r in rows]
    head.txs = [r[1] for r in rows]
    head.details = [r[2] for r in rows]
    return head


@dataclass
class Checkpoint:
    """Durable follower state (SQLite): per cursor the newest confirmed and the newest
    published block, the remembered recent blocks, and the shared reorg epoch.

    One database per data dir serves every cursor (the live follower and backfills),
    so the epoch counter is global and versions of all cursors compare. Each commit is
    one SQLite transaction (WAL, synchronous=FULL): a crash leaves the previous
    state. A JSON mirror (`<cursor>.json`, `checkpoint.json` for the live cursor) is
    written after each commit for people and supervisors; it is not read back.
    """

    path: Path
    cursor: str = LIVE_CURSOR
    memory: int = REORG_MEMORY
    chain_id: int = 0
    block_number: int = -1  # newest block published as confirmed
    fast_tip: int = -1  # newest block published at all (>= block_number)
    start_number: int = 0  # first block this cursor publishes
    _db: sqlite3.Connection | None = field(default=None, repr=False)

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        cursor: str = LIVE_CURSOR,
        start: int = 0,
        memory: int = REORG_MEMORY,
        chain_id: int = 0,
    ) -> Checkpoint:
        """Open (or create) the state database; a new cursor starts before `start`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
            INSERT OR IGNORE INTO meta VALUES ('epoch', 0);
            CREATE TABLE IF NOT EXISTS cursors (
                name TEXT PRIMARY KEY, chain_id INTEGER NOT NULL, start INTEGER NOT NULL,
                confirmed_tip INTEGER NOT NULL, fast_tip INTEGER NOT NULL,
                updated_at REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS journal (
                cursor TEXT NOT NULL, number INTEGER NOT NULL, hash TEXT NOT NULL,
                parent_hash TEXT NOT NULL, confirmed INTEGER NOT NULL, payload BLOB NOT NULL,
                PRIMARY KEY (cursor, number));
            """
        )
        row = db.execute(
            "SELECT chain_id, start, confirmed_tip, fast_tip FROM cursors WHERE name = ?",
            (cursor,),
        ).fetchone()
        cp = cls(path=path, cursor=cursor, memory=memory, _db=db)
        if row is None:
            cp.chain_id, cp.start_number = chain_id, start
            cp.block_number = cp.fast_tip = start - 1
            db.execute(
                "INSERT INTO cursors VALUES (?, ?, ?, ?, ?, ?)",
                (cursor, chain_id, start, start - 1, start - 1, time.time()),
            )
        else:
            cp.chain_id, cp.start_number, cp.block_number, cp.fast_tip = (int(x) for x in row)
            if chain_id and cp.chain_id and chain_id != cp.chain_id:
                db.close()
                raise ValueError(
                    f"checkpoint {path} (cursor {cursor!r}) belongs to chain {cp.chain_id}, "
                    f"not {chain_id}; use another data dir or delete it to start over"
                )
        return cp

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("checkpoint is closed")
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def epoch(self) -> int:
        """The shared reorg epoch, read fresh (another cursor may have bumped it)."""
        return int(self.db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0])

    def tip(self) -> tuple[int, str] | None:
        """(number, hash) of the newest remembered block."""
        row = self.db.execute(
            "SELECT number, hash FROM journal WHERE cursor = ? ORDER BY number DESC LIMIT 1",
            (self.cursor,),
        ).fetchone()
        return (int(row[0]), str(row[1])) if row else None

    def oldest(self) -> int | None:
        row = self.db.execute(
            "SELECT min(number) FROM journal WHERE cursor = ?", (self.cursor,)
        ).fetchone()
        return None if row[0] is None else int(row[0])

    def hashes(self, lo: int, hi: int) -> dict[int, str]:
        rows = self.db.execute(
            "SELECT number, hash FROM journal WHERE cursor = ? AND number BETWEEN ? AND ?",
            (self.cursor, lo, hi),
        ).fetchall()
        return {int(n): str(h) for n, h in rows}

    def hash_at(self, number: int) -> str | None:
        return self.hashes(number, number).get(number)

    def blocks(self, lo: int, hi: int) -> list[TxBatch]:
        """Remembered blocks lo..hi, in order, as whole-block batches."""
        rows = self.db.execute(
            "SELECT confirmed, payload FROM journal WHERE cursor = ? AND number BETWEEN ? AND ? "
            "ORDER BY number",
            (self.cursor, lo, hi),
        ).fetchall()
        out = []
        for confirmed, payload in rows:
            b = _decode_payload(bytes(payload))
            b.confirmed = bool(confirmed)
            out.append(b)
        return out

    def commit(
        self,
        published: Sequence[TxBatch],
        *,
        confirmed_tip: int,
        fast_tip: int,
        payloads: Sequence[bytes | None] | None = None,
    ) -> None:
        """Remember `published` blocks and move the tips, atomically. `payloads[i]`, when
        given, is block i already encoded (its shard messages, one per line)."""
        db = self.db
        enc = list(payloads) if payloads is not None else [None] * len(published)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO journal VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        self.cursor,
                        b.block_number,
                        b.block_hash,
                        b.parent_hash or ZERO_HASH,
                        int(b.confirmed),
                        p if p else _whole_block_record(b, self.chain_id),
                    )
                    for b, p in zip(published, enc, strict=True)
                ],
            )
            db.execute(
                "DELETE FROM journal WHERE cursor = ? AND number <= ?",
                (self.cursor, fast_tip - self.memory),
            )
            db.execute(
                "UPDATE cursors SET confirmed_tip = ?, fast_tip = ?, updated_at = ? WHERE name = ?",
                (confirmed_tip, fast_tip, time.time(), self.cursor),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.block_number, self.fast_tip = confirmed_tip, fast_tip
        self._mirror()

    def rewind(self, ancestor: int) -> int:
        """After a reorg: forget blocks above `ancestor`, pull both tips back to it and
        bump the shared epoch, atomically. Returns the new epoch."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'epoch'")
            epoch = int(db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0])
            db.execute(
                "DELETE FROM journal WHERE cursor = ? AND number > ?", (self.cursor, ancestor)
            )
            confirmed = min(self.block_number, ancestor)
            db.execute(
                "UPDATE cursors SET confirmed_tip = ?, fast_tip = ?, updated_at = ? WHERE name = ?",
                (confirmed, ancestor, time.time(), self.cursor),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.block_number, self.fast_tip = confirmed, ancestor
        self._mirror()
        return epoch

    def mirror_path(self) -> Path:
        name = "checkpoint" if self.cursor == LIVE_CURSOR else self.cursor
        return self.path.parent / f"{name}.json"

    def _mirror(self) -> None:
        data = json.dumps(
            {
                "cursor": self.cursor,
                "block_number": self.block_number,
                "fast_tip": self.fast_tip,
                "epoch": self.epoch(),
                "updated_at": time.time(),
            }
        ).encode()
        target = self.mirror_path()
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".mirror.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)


def state_path(settings: Settings) -> Path:
    return settings.data_dir / "follower" / "state.sqlite"


# ------------------------------------------------------------------------- follower


ProgressFn = Callable[[int, int], None]  # (newest confirmed block, head)


def counter_total(counter: Counter) -> int:
    """A Prometheus counter's value summed over all its label sets."""
    return int(
        sum(x.value for m in counter.collect() for x in m.samples if x.name.endswith("_total"))
    )


class Follower:
    """Follows one chain (or backfills a range) and publishes its transactions."""

    def __init__(
        self,
        settings: Settings,
        *,
        n_shards: int = N_SHARDS,
        cursor: str = LIVE_CURSOR,
        start: int | None = None,
        end: int | None = None,
        fast_lane: bool | None = None,
        metrics: FollowerMetrics | None = None,
        decoder: ChainDecoder | None = None,
        on_progress: ProgressFn | None = None,
    ) -> None:
        self.settings = settings
        self.n_shards = n_shards
        self.cursor = cursor
        self.start_block = start if start is not None else (settings.start_block or 0)
        self.end_block = end
        self.fast_lane = settings.fast_lane if fast_lane is None else fast_lane
        self.metrics = metrics or FollowerMetrics()
        self.decoder = decoder
        self.on_progress = on_progress
        self.pool = RpcPool(
            settings.rpc_endpoints,
            timeout_s=settings.rpc_timeout_s,
            max_batch=settings.rpc_batch_size,
            hooks=self.metrics.hooks(),
        )
        self.producer: AIOKafkaProducer | None = None
        self.checkpoint: Checkpoint | None = None
        self.chain_id = 0
        self.head = -1
        self._counts = {
            "blocks": 0,
            "txs": 0,
            "unconfirmed_blocks": 0,
            "reorgs": 0,
            "orphaned_txs": 0,
        }
        # RPC errors have one count, `vigil_rpc_errors_total`; `stats` reads it (minus
        # what it held before this follower: the metrics may be shared).
        self._rpc_errors_before = counter_total(self.metrics.rpc_errors)
        self._block_receipts = True
        self._stop = asyncio.Event()
        self._metrics_server: Any = None

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Reach the chain (or raise `RpcUnavailable`), open the checkpoint, connect Kafka."""
        self.chain_id = await self.pool.start()
        if self.decoder is None:
            self.decoder = await asyncio.to_thread(default_decoder)
        self.checkpoint = Checkpoint.open(
            state_path(self.settings),
            cursor=self.cursor,
            start=self.start_block,
            memory=self.settings.reorg_memory_blocks,
            chain_id=self.chain_id,
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            acks="all",
            linger_ms=5,
            max_request_size=8 * 1024 * 1024,
            compression_type=self.settings.kafka_codec,
        )
        try:
            await self.producer.start()
            await self._check_topics()
        except Exception:
            await self.stop()
            raise
        if self.settings.metrics_port is not None and self.cursor == LIVE_CURSOR:
            try:
                self._metrics_server = self.metrics.serve(self.settings.metrics_port)
            except OSError as e:
                log.warning("metrics port %s unavailable: %s", self.settings.metrics_port, e)

    async def _check_topics(self) -> None:
        """Both topics must exist, with the same partition count (co-partitioned: the
        retraction of a sender's tx must reach the worker that holds that sender)."""
        counts = {}
        for topic in (TOPIC_CHAIN_TX, TOPIC_CHAIN_REORG):
            try:
                parts = await asyncio.wait_for(self._producer().partitions_for(topic), 20)
            except (KafkaError, TimeoutError) as e:
                raise FollowerError(
                    f"Kafka topic {topic} is not available on {self.settings.kafka_bootstrap} "
                    f"({e!r}); create {TOPIC_CHAIN_TX} and {TOPIC_CHAIN_REORG} with the same "
                    "partition count"
                ) from e
            counts[topic] = len(parts)
        if len(set(counts.values())) > 1:
            log.warning(
                "%s and %s have different partition counts %s: retractions may reach "
                "another worker than the transactions they retract",
                TOPIC_CHAIN_TX,
                TOPIC_CHAIN_REORG,
                counts,
            )

    async def stop(self) -> None:
        self._stop.set()
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
        await self.pool.close()
        if self.checkpoint is not None:
            self.checkpoint.close()
            self.checkpoint = None
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stats(self) -> dict[str, int]:
        """The run summary. `rpc_errors` is what `vigil_rpc_errors_total` counted while
        this follower ran: every endpoint failure (connection, timeout, rate limit, HTTP
        error, bad reply, health probe) and every JSON-RPC error answer (`rpc_error`)."""
        rpc_errors = counter_total(self.metrics.rpc_errors) - self._rpc_errors_before
        return {**self._counts, "rpc_errors": rpc_errors}

    @property
    def done(self) -> bool:
        """A bounded run (backfill) published its last block as confirmed."""
        cp = self.checkpoint
        return self.end_block is not None and cp is not None and cp.block_number >= self.end_block

    async def run(self) -> None:
        """Poll until stopped (or, for a range, until its last block is published)."""
        cp = self._cp()
        log.info(
            "follower %s starting after block %d (chain %d, epoch %d, fast lane %s)",
            self.cursor,
            cp.block_number,
            self.chain_id,
            cp.epoch(),
            self.fast_lane,
        )
        failures = 0
        while not self._stop.is_set() and not self.done:
            try:
                moved = await self._interruptible(self.poll_once())
            except PoolClosed:
                break
            except RpcError as e:  # an endpoint answered, but not usefully: retry later
                # The pool counts its endpoint failures in the metric; call errors it
                # passes up (the endpoint answered) are counted here, in the same place.
                self.metrics.rpc_errors.labels(self.pool.current.label, "rpc_error").inc()
                log.warning("JSON-RPC call failed, retrying: %s", e)
                moved = False
            except KafkaError as e:  # nothing was checkpointed: the step is retried whole
                failures += 1
                delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                log.warning("Kafka error, retrying in %.1fs: %r", delay, e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
                continue
            failures = 0
            if moved is None:  # stopped
                break
            if not moved and not self.done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=self.settings.poll_interval_s)

    async def _interruptible(self, coro: Any) -> Any:
        task = asyncio.ensure_future(coro)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    def _cp(self) -> Checkpoint:
        if self.checkpoint is None:
            raise RuntimeError("follower not started")
        return self.checkpoint

    # -------------------------------------------------------------- one step

    async def poll_once(self) -> bool:
        """Check for a reorg, then publish what is new. True when anything moved."""
        cp = self._cp()
        tip = cp.tip()
        calls: list[tuple[str, list[Any]]] = [("eth_blockNumber", [])]
        if tip is not None:
            calls.append(("eth_getBlockByNumber", [hex(tip[0]), False]))
        answers = await self.pool.batch(calls)
        head = hex_int(answers[0])
        self.head = head
        if tip is not None:
            canon = answers[1]
            if canon is None and tip[0] > head and await self._behind_on_our_chain(head):
                # an endpoint behind us (e.g. after a rotation), on the same chain: wait
                log.info("endpoint head %d is below our block %d; waiting", head, tip[0])
                return False
            if canon is None or str(canon["hash"]).lower() != tip[1]:
                await self._handle_reorg(head)
                return True
        target = head - self.settings.confirmations
        if self.end_block is not None:
            target = min(target, self.end_block)
        moved = False

        # Fast-lane blocks that are now deep enough: confirm them from memory (the tip
        # check above proved the remembered chain canonical).
        if cp.block_number < min(target, cp.fast_tip):
            hi = min(target, cp.fast_tip)
            while cp.block_number < hi:
                upto = min(hi, cp.block_number + self.settings.follow_chunk_blocks)
                blocks = cp.blocks(cp.block_number + 1, upto)
                if not blocks or blocks[0].block_number != cp.block_number + 1:
                    break  # memory does not hold them (should not happen): refetch below
                await self._publish(blocks, confirmed_upto=upto)
                moved = True

        # New blocks: the next chunk is fetched while the current one is published.
        newest = head if self.fast_lane and self.end_block is None else target
        chunk = self.settings.follow_chunk_blocks
        ahead: tuple[range, asyncio.Task[list[TxBatch]]] | None = None
        try:
            while cp.fast_tip < newest and not self._stop.is_set():
                lo = cp.fast_tip + 1
                want = range(lo, min(newest, lo + chunk - 1) + 1)
                if ahead is not None and ahead[0] == want:
                    blocks = await ahead[1]
                else:
                    if ahead is not None:
                        ahead[1].cancel()
                    blocks = await self.fetch_blocks(want)
                ahead = None
                if not blocks:
                    break  # not available yet on this endpoint
                parent = cp.hash_at(lo - 1)
                if parent is not None and blocks[0].parent_hash != parent:
                    await self._handle_reorg(head)
                    return True
                complete = blocks[-1].block_number == want[-1]
                if complete and want[-1] < newest:
                    nxt = range(want[-1] + 1, min(newest, want[-1] + chunk) + 1)
                    ahead = (nxt, asyncio.ensure_future(self.fetch_blocks(nxt)))
                await self._publish(blocks, confirmed_upto=target)
                moved = True
                if not complete:
                    break  # a gap or a fork inside the chunk: the next poll looks again
        finally:
            if ahead is not None:
                ahead[1].cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ahead[1]
        newest_published = cp.fast_tip
        self.metrics.observe_head(head, newest_published)
        self.metrics.checkpoint_block.set(cp.block_number)
        if self.on_progress:
            self.on_progress(cp.block_number, head)
        return moved

    async def _behind_on_our_chain(self, head: int) -> bool:
        """True when the endpoint's head block is one we published (it is only behind);
        False when it differs (the chain shrank onto another branch: a reorg)."""
        mine = self._cp().hash_at(head)
        if mine is None:
            return False
        block = await self.pool.call("eth_getBlockByNumber", hex(head), False)
        return block is not None and str(block["hash"]).lower() == mine

    async def fetch_blocks(self, numbers: range) -> list[TxBatch]:
        """Blocks with receipts, in order, linked by parent hash; stops at the first that
        is missing or inconsistent (the endpoint is behind, or a reorg is in flight)."""
        nums = list(numbers)
        calls: list[tuple[str, list[Any]]] = [
            ("eth_getBlockByNumber", [hex(n), True]) for n in nums
        ]
        if self._block_receipts:
            calls += [("eth_getBlockReceipts", [hex(n)]) for n in nums]
        try:
            answers = await self.pool.batch(calls)
        except RpcError as e:
            if e.code != -32601 or not self._block_receipts:
                raise
            log.warning("endpoint lacks eth_getBlockReceipts; fetching receipts one by one")
            self._block_receipts = False
            return await self.fetch_blocks(numbers)
        raw_blocks = answers[: len(nums)]
        if self._block_receipts:
            receipts: list[Any] = answers[len(nums) :]
        else:
            receipts = await self._receipts_one_by_one(raw_blocks)
        out: list[TxBatch] = []
        for n, blk, rcpts in zip(nums, raw_blocks, receipts, strict=True):
            if blk is None or rcpts is None or hex_int(blk["number"]) != n:
                break
            bhash = str(blk["hash"]).lower()
            if len(rcpts) != len(blk["transactions"]) or any(
                str(r.get("blockHash", bhash)).lower() != bhash for r in rcpts
            ):
                log.info("block %d: receipts do not match the block (reorg in flight?)", n)
                break
            b = parse_block(blk, rcpts, self.decoder)
            if out and b.parent_hash != out[-1].block_hash:
                break
            out.append(b)
        return out

    async def _receipts_one_by_one(self, raw_blocks: Sequence[Any]) -> list[Any]:
        calls = [
            ("eth_getTransactionReceipt", [t["hash"]])
            for blk in raw_blocks
            if blk is not None
            for t in blk["transactions"]
        ]
        flat = await self.pool.batch(calls)
        out: list[Any] = []
        k = 0
        for blk in raw_blocks:
            if blk is None:
                out.append(None)
                continue
            n = len(blk["transactions"])
            part = flat[k : k + n]
            k += n
            out.append(None if any(r is None for r in part) else part)
        return out

    async def _publish(self, blocks: Sequence[TxBatch], *, confirmed_upto: int) -> None:
        """Send every block's shard messages, wait for all acks, then commit."""
        cp = self._cp()
        producer = self._producer()
        epoch = cp.epoch()
        futures = []
        lanes: list[tuple[str, TxBatch]] = []
        payloads: list[bytes | None] = []
        for b in blocks:
            confirmed = b.block_number <= confirmed_upto
            b.confirmed = confirmed
            version = row_version(epoch, b.block_number, confirmed)
            encoded = []
            for shard, rec in batch_records(
                b,
                chain_id=self.chain_id,
                confirmed=confirmed,
                n_shards=self.n_shards,
                version=version,
            ):
                raw = rec.dumps()
                encoded.append(raw)
                futures.append(
                    await producer.send(TOPIC_CHAIN_TX, key=str(shard).encode(), value=raw)
                )
            payloads.append(b"\n".join(encoded) or None)
            lanes.append(("confirmed" if confirmed else "fast", b))
        await asyncio.gather(*futures)  # acknowledged by the broker before the checkpoint moves
        last = blocks[-1].block_number
        confirmed_tip = max(cp.block_number, min(last, confirmed_upto))
        fast_tip = max(cp.fast_tip, last)
        cp.commit(blocks, confirmed_tip=confirmed_tip, fast_tip=fast_tip, payloads=payloads)
        for lane, b in lanes:
            self.metrics.published(lane, b.block_number, b.block_time, len(b.txs))
            if lane == "confirmed":
                self._counts["blocks"] += 1
                self._counts["txs"] += len(b.txs)
            else:
                self._counts["unconfirmed_blocks"] += 1

    def _producer(self) -> AIOKafkaProducer:
        if self.producer is None:
            raise RuntimeError("follower not started")
        return self.producer

    async def _handle_reorg(self, head: int) -> None:
        """Find the common ancestor, retract the orphaned branch, rewind."""
        cp = self._cp()
        tip = cp.tip()
        if tip is None:
            return
        ancestor, ancestor_hash = await self._common_ancestor(min(tip[0], head))
        orphans = cp.blocks(ancestor + 1, tip[0])
        epoch = cp.epoch() + 1
        records = build_reorg_records(
            orphans,
            chain_id=self.chain_id,
            epoch=epoch,
            ancestor_number=ancestor,
            ancestor_hash=ancestor_hash,
            new_head_number=head,
            n_shards=self.n_shards,
            detected_at=time.time(),
        )
        producer = self._producer()
        futures = [
            await producer.send(TOPIC_CHAIN_REORG, key=str(shard).encode(), value=rec.dumps())
            for shard, rec in records
        ]
        await asyncio.gather(*futures)
        new_epoch = cp.rewind(ancestor)
        if new_epoch != epoch:  # another cursor bumped the epoch meanwhile: still valid,
            log.info("epoch moved to %d while retracting (another cursor)", new_epoch)
        n_txs = sum(len(b.txs) for b in orphans)
        depth = tip[0] - ancestor
        self._counts["reorgs"] += 1
        self._counts["orphaned_txs"] += n_txs
        self.metrics.reorg(depth, n_txs)
        log.warning(
            "reorg: blocks %d..%d orphaned (%d txs retracted), common ancestor %d, epoch %d",
            ancestor + 1,
            tip[0],
            n_txs,
            ancestor,
            new_epoch,
        )

    async def _common_ancestor(self, start: int) -> tuple[int, str]:
        """Newest remembered block that is still canonical, walking back from `start`."""
        cp = self._cp()
        oldest = cp.oldest()
        if oldest is None:
            return start, ZERO_HASH
        n = start
        step = 32
        while n >= oldest:
            lo = max(oldest, n - step + 1)
            mine = cp.hashes(lo, n)
            canon = await self.pool.batch(
                [("eth_getBlockByNumber", [hex(k), False]) for k in range(lo, n + 1)]
            )
            for k in range(n, lo - 1, -1):
                c = canon[k - lo]
                if c is not None and mine.get(k) == str(c["hash"]).lower():
                    return k, mine[k]
            n = lo - 1
        if oldest <= cp.start_number:  # we never published anything older: start over there
            return oldest - 1, ZERO_HASH
        raise ReorgTooDeep(
            f"no common ancestor among the {self.settings.reorg_memory_blocks} remembered "
            f"blocks ({oldest}..{start}). Raise VIGIL_REORG_MEMORY_BLOCKS, then re-ingest the "
            f"range with `vigil backfill --from {oldest} --to <head>`."
        )


# ----------------------------------------------------------------------- entrypoints


async def run_follower(settings: Settings, *, duration_s: float | None = None) -> dict[str, int]:
    """Run the live follower until SIGINT/SIGTERM (or `duration_s`); return its stats."""
    f = Follower(settings)
    await f.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
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


async def backfill(
    settings: Settings,
    start: int,
    end: int,
    *,
    progress: bool = True,
    n_shards: int = N_SHARDS,
) -> dict[str, int]:
    """Publish blocks `start..end` (inclusive, confirmed) with the follower's own code path.

    Resumable: its cursor (`backfill-<start>-<end>`) lives in the follower's state
    database, so re-running the same command after a crash continues where it stopped;
    re-published blocks carry the same versions (no double count downstream). Waits
    for blocks that are not yet `confirmations` deep. Raises `RpcUnavailable` when no
    endpoint answers at start. `progress` shows a rich progress bar on stderr.
    """
    if start < 0 or end < start:
        raise ValueError(f"invalid range {start}..{end}: need 0 <= from <= to")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bar = Progress(
        TextColumn("backfill {task.fields[range]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        console=Console(stderr=True),
        disable=not progress,
        transient=False,
    )
    task = bar.add_task("backfill", total=end - start + 1, range=f"{start}..{end}", rate="")
    t0 = time.monotonic()

    def on_progress(confirmed: int, head: int) -> None:
        done = max(0, confirmed - start + 1)
        el = max(time.monotonic() - t0, 1e-6)
        bar.update(task, completed=done, rate=f"{f.stats['blocks'] / el:.0f} blocks/s")

    f = Follower(
        settings,
        cursor=f"backfill-{start}-{end}",
        start=start,
        end=end,
        fast_lane=False,
        n_shards=n_shards,
        on_progress=on_progress,
    )
    await f.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, f.request_stop)
    try:
        with bar:
            await f.run()
    finally:
        await f.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    stats = dict(f.stats)
    stats["seconds"] = int(time.monotonic() - t0)
    log.info("backfill %d..%d: %s", start, end, stats)
    return stats
