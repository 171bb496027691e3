"""The transaction agent's per-sender state: one delta message per batch, verified recovery.

Why not a Faust table: a table sends one changelog message per key update, and the
transaction path updates a few thousand senders per batch, so the changelog was most of
the worker's CPU. Faust's table recovery also trusts the broker's end offsets, which the
embedded Tansu broker under-reports (the last batch of updates could be lost). Here:

- state is kept per source partition (`PartitionState`): sender windows, per-entity
  alert state, the forest's not-yet-scored warm-up txs, and `applied_offset`, the
  highest source offset whose rows, alerts and state are all written;
- after a batch is written, its changed keys go to the partition's state log as one
  delta (split into chunks under the broker's message size), the last chunk carrying
  `applied_offset`; chunks of a batch whose last chunk never arrived (a crash while
  writing) are discarded on replay;
- every so many deltas the whole state is written again as a snapshot, whose first
  offset is committed as a pointer (see `StateLog`);
- recovery first writes a marker to the partition's log, then reads the log from the
  latest snapshot (or the start) up to its own marker: every acknowledged delta
  precedes it, so the broker's end offsets are never consulted;
- source events at or below `applied_offset` are skipped by the agent: after a crash
  their effects are already stored, so a redelivery is not applied twice.

The encode/replay functions are pure; `StateLog` does the Kafka I/O.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from detector.types import Tx

log = logging.getLogger(__name__)

STATE_VERSION = 1
MAX_CHUNK_BYTES = 512 * 1024


class StateLogError(RuntimeError):
    """The state log could not be read or written (the worker cannot go on safely)."""


@dataclass
class PartitionState:
    """What the transaction agent keeps for one source partition."""

    windows: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)  # newest tx time per window
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    applied_offset: int = -1
    evicted_at: float = float("-inf")
    #: Warm-up entries (`warm_entry`): txs buffered, unscored, until the forest is fitted.
    warm: list[list[Any]] = field(default_factory=list)
    deltas_since_snapshot: int = 0

    def expired(self, now: float, horizon_s: float) -> list[str]:
        """Windows whose newest tx is older than `horizon_s`: featurize would trim all of
        their events anyway, so dropping them changes no feature and bounds memory."""
        if now - self.evicted_at < horizon_s:
            return []
        self.evicted_at = now
        return [s for s, t in self.seen.items() if t < now - horizon_s]

    def apply(
        self,
        windows: Mapping[str, list[Any]],
        alerts: Mapping[str, dict[str, Any]],
        evicted: Iterable[str],
        warm: Iterable[list[Any]] = (),
        warm_done: bool = False,
    ) -> None:
        if warm_done:
            self.warm.clear()
        self.warm.extend(warm)
        for sender, (t, w) in windows.items():
            self.windows[sender] = w
            self.seen[sender] = t
        self.alerts.update(alerts)
        for sender in evicted:
            self.windows.pop(sender, None)
            self.seen.pop(sender, None)


def encode_delta(
    batch_id: str,
    windows: Mapping[str, list[Any]],
    alerts: Mapping[str, dict[str, Any]],
    evicted: list[str],
    applied_offset: int,
    max_bytes: int = MAX_CHUNK_BYTES,
    *,
    warm: Iterable[list[Any]] = (),
    warm_done: bool = False,
    kind: str = "delta",
) -> list[bytes]:
    """One batch's changes as chunks of at most ~`max_bytes`; the last is marked.

    `windows` maps sender -> [newest tx time, window dict]; `evicted` lists dropped
    windows and `warm_done` clears the warm-up entries (both ride on the last chunk);
    `warm` holds the batch's warm-up entries.
    """
    items: list[tuple[str, str, Any]] = [("w", k, v) for k, v in windows.items()]
    items += [("a", k, v) for k, v in alerts.items()]
    items += [("m", "", e) for e in warm]
    chunks: list[bytes] = []
    part: dict[str, Any] = {"w": {}, "a": {}, "m": []}
    size = 0
    for slot, key, value in items:
        n = len(orjson.dumps(value)) + len(key) + 8
        if size and size + n > max_bytes:
            chunks.append(_chunk(batch_id, len(chunks), part, [], False, None, kind))
            part, size = {"w": {}, "a": {}, "m": []}, 0
        if slot == "m":
            part["m"].append(value)
        else:
            part[slot][key] = value
        size += n
    chunks.append(_chunk(batch_id, len(chunks), part, evicted, warm_done, applied_offset, kind))
    return chunks


def _chunk(
    batch_id: str,
    seq: int,
    part: dict[str, Any],
    evicted: list[str],
    warm_done: bool,
    applied: int | None,
    kind: str = "delta",
) -> bytes:
    return orjson.dumps(
        {
            "v": STATE_VERSION,
            "kind": kind,
            "batch": batch_id,
            "seq": seq,
            "last": applied is not None,
            "applied_offset": applied,
            "windows": part["w"],
            "alerts": part["a"],
            "warm": part["m"],
            "warm_done": warm_done,
            "evicted": evicted,
        }
    )


def warm_entry(tx: Tx, row: np.ndarray | Sequence[float]) -> list[Any]:
    """A warm-up tx and its feature row as JSON (NaN becomes null; wei as strings)."""
    values = row.tolist() if isinstance(row, np.ndarray) else list(row)
    return [
        tx.tx_hash,
        tx.sender,
        tx.to,
        str(tx.value_wei),
        str(tx.gas_price_wei),
        tx.gas,
        tx.nonce,
        tx.selector,
        tx.status,
        tx.block_number,
        tx.timestamp,
        [v if math.isfinite(v) else None for v in values],
    ]


def from_warm_entries(entries: Sequence[list[Any]]) -> tuple[list[Tx], np.ndarray]:
    """Inverse of `warm_entry` over a list: the txs and their (n, features) rows."""
    txs = [
        Tx(
            tx_hash=e[0],
            sender=e[1],
            to=e[2],
            value_wei=int(e[3]),
            gas_price_wei=int(e[4]),
            gas=e[5],
            nonce=e[6],
            selector=e[7],
            status=e[8],
            block_number=e[9],
            timestamp=float(e[10]),
        )
        for e in entries
    ]
    rows = np.array([[np.nan if v is None else v for v in e[11]] for e in entries], dtype=float)
    return txs, rows


def encode_snapshot(
    batch_id: str, st: PartitionState, max_bytes: int = MAX_CHUNK_BYTES
) -> list[bytes]:
    """The whole partition state as chunks: a replay that starts at the first chunk
    (recovery seeks there) needs nothing older."""
    windows = {s: [st.seen.get(s, 0.0), w] for s, w in st.windows.items()}
    return encode_delta(
        batch_id,
        windows,
        st.alerts,
        [],
        st.applied_offset,
        max_bytes,
        warm=st.warm,
        kind="snapshot",
    )


def encode_marker(marker_id: str) -> bytes:
    return orjson.dumps({"v": STATE_VERSION, "kind": "marker", "id": marker_id})


@dataclass
class Replay:
    """Folds a partition's state log, in order, into its `PartitionState`."""

    marker_id: str
    state: PartitionState = field(default_factory=PartitionState)
    found_marker: bool = False
    deltas: int = 0
    snapshots: int = 0
    discarded_chunks: int = 0
    _open: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def feed(self, raw: bytes | None) -> bool:
        """Apply one log message; True once this replay's own marker was read."""
        if raw is None:
            return self.found_marker
        msg = orjson.loads(raw)
        if msg.get("v") != STATE_VERSION:
            raise StateLogError(f"state log message of unknown version {msg.get('v')!r}")
        if msg["kind"] == "marker":
            if msg["id"] == self.marker_id:
                self.found_marker = True
            return self.found_marker
        pending = self._open.setdefault(msg["batch"], [])
        pending.append(msg)
        if msg["last"]:
            chunks = self._open.pop(msg["batch"])
            if msg["kind"] == "snapshot":  # the whole state: what came before is moot
                self.state = PartitionState()
                self.snapshots += 1
            for chunk in chunks:
                self.state.apply(
                    chunk["windows"],
                    chunk["alerts"],
                    chunk["evicted"],
                    chunk.get("warm", ()),
                    chunk.get("warm_done", False),
                )
            self.state.applied_offset = max(self.state.applied_offset, msg["applied_offset"])
            if msg["kind"] == "delta":
                self.deltas += 1
                self.state.deltas_since_snapshot += 1
        return False

    def finish(self) -> PartitionState:
        """The folded state; chunks of batches cut short by a crash are dropped."""
        self.discarded_chunks = sum(len(v) for v in self._open.values())
        self._open.clear()
        return self.state


def replay(messages: Iterable[bytes], marker_id: str) -> Replay:
    """Pure replay of a whole log (tests, tools)."""
    r = Replay(marker_id)
    for raw in messages:
        if r.feed(raw):
            break
    r.finish()
    return r


class StateLog:
    """The state log topic of the transaction agent (one partition per source partition).

    `send(partition, value)` must send to that partition and return an awaitable ack
    (resolving to the record's metadata, with its offset); `bootstrap` is for the
    short-lived consumers that read a partition back and keep the snapshot index.

    Every `snapshot_every` deltas the whole partition state is written again as a
    snapshot, and its first offset committed for the consumer group `index_group`
    (the broker keeps it like any committed offset): recovery starts reading there, so
    its time is bounded by the state's size plus `snapshot_every` deltas, not by the
    log's age.
    """

    def __init__(
        self,
        topic: str,
        bootstrap: str,
        send: Any,
        *,
        evict_after_s: float,
        declare: Any = None,
        read_timeout_s: float = 120.0,
        snapshot_every: int = 1000,
        index_group: str | None = None,
    ) -> None:
        self.topic = topic
        self.snapshot_every = snapshot_every
        self.index_group = index_group or f"{topic}-snapshots"
        self.evict_after_s = evict_after_s
        self.bootstrap = bootstrap
        self._send = send
        self._declare = declare  # coroutine function creating the topic, if needed
        #: Called once per partition right after its recovery (warm-up entries are
        #: handed back to the scoring core there).
        self.on_recover: Callable[[int, PartitionState], Awaitable[None]] | None = None
        self.read_timeout_s = read_timeout_s
        self.partitions: dict[int, PartitionState] = {}
        self.locks: dict[int, asyncio.Lock] = {}

    def lock(self, partition: int) -> asyncio.Lock:
        """Held while a batch or a reorg of this partition reads and writes its state."""
        return self.locks.setdefault(partition, asyncio.Lock())

    async def state(self, partition: int) -> PartitionState:
        """This partition's state, recovered from the log on first use after assignment."""
        st = self.partitions.get(partition)
        if st is None:
            st = self.partitions[partition] = await self.recover(partition)
            if self.on_recover is not None:
                await self.on_recover(partition, st)
        return st

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop revoked partitions: whoever owns them next recovers them from the log."""
        for p in partitions:
            self.partitions.pop(p, None)

    async def save(
        self,
        partition: int,
        windows: Mapping[str, list[Any]],
        alerts: Mapping[str, dict[str, Any]],
        *,
        applied_offset: int | None,
        now: float,
        warm: Sequence[list[Any]] = (),
        warm_done: bool = False,
    ) -> None:
        """Write one batch's changes (acknowledged by the broker), then apply them here.

        `windows`: sender -> [newest tx time, window dict]; `now` (block time) lets
        windows idle for longer than `evict_after_s` go, in the same delta.
        """
        st = await self.state(partition)
        applied = st.applied_offset if applied_offset is None else applied_offset
        evicted = [s for s in st.expired(now, self.evict_after_s) if s not in windows]
        chunks = encode_delta(
            uuid.uuid4().hex, windows, alerts, evicted, applied, warm=warm, warm_done=warm_done
        )
        acks = [await self._send(partition, chunk) for chunk in chunks]
        await asyncio.gather(*acks)
        st.apply(windows, alerts, evicted, warm, warm_done)
        st.applied_offset = applied
        st.deltas_since_snapshot += 1
        if st.deltas_since_snapshot >= self.snapshot_every:
            await self.snapshot(partition, st)

    async def snapshot(self, partition: int, st: PartitionState) -> int:
        """Write `st` whole, then point the index at its first chunk; returns that offset.
        A crash in between leaves the index at the previous snapshot: still correct."""
        from aiokafka.structs import OffsetAndMetadata

        chunks = encode_snapshot(uuid.uuid4().hex, st)
        acks = [await self._send(partition, chunk) for chunk in chunks]
        metas = await asyncio.gather(*acks)
        first = int(metas[0].offset)
        consumer = self._index_consumer()
        await consumer.start()
        try:
            tp = self._tp(partition)
            consumer.assign([tp])
            await consumer.commit({tp: OffsetAndMetadata(first, "snapshot")})
        finally:
            await consumer.stop()
        st.deltas_since_snapshot = 0
        log.info(
            "%s[%d]: snapshot of %d windows at offset %d",
            self.topic,
            partition,
            len(st.windows),
            first,
        )
        return first

    def _tp(self, partition: int) -> Any:
        from aiokafka import TopicPartition

        return TopicPartition(self.topic, partition)

    def _index_consumer(self) -> Any:
        from aiokafka import AIOKafkaConsumer

        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            group_id=self.index_group,
            auto_offset_reset="earliest",
        )

    async def recover(self, partition: int) -> PartitionState:
        t0 = time.monotonic()
        marker = uuid.uuid4().hex
        if self._declare is not None:
            await self._declare()
            self._declare = None
        await (await self._send(partition, encode_marker(marker)))
        tp = self._tp(partition)
        consumer = self._index_consumer()  # assigned, never joins the group
        await consumer.start()
        r = Replay(marker)
        try:
            consumer.assign([tp])
            start = await consumer.committed(tp)  # the latest snapshot, if any
            if start is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start)
            while not r.found_marker:
                if time.monotonic() - t0 > self.read_timeout_s:
                    raise StateLogError(
                        f"{self.topic}[{partition}]: own marker not read back within "
                        f"{self.read_timeout_s:.0f} s; is the broker reachable?"
                    )
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=10_000)
                for msg in batch.get(tp, []):
                    if r.feed(msg.value):
                        break
        finally:
            await consumer.stop()
        st = r.finish()
        log.info(
            "%s[%d] recovered from offset %s: %d windows, %d alert states, applied offset %d "
            "(%d snapshots, %d deltas, %d chunks of unfinished batches dropped) in %.2f s",
            self.topic,
            partition,
            "start" if start is None else start,
            len(st.windows),
            len(st.alerts),
            st.applied_offset,
            r.snapshots,
            r.deltas,
            r.discarded_chunks,
            time.monotonic() - t0,
        )
        return st
