"""Reorg bookkeeping shared by the follower and every consumer: row versions,
retraction rows, and which transactions are currently orphaned.

Why versions come from the follower: `transactions` is a
`ReplacingMergeTree(version, is_deleted)` keyed by tx hash, so the row with the
highest version wins and `is_deleted = 1` hides the tx. Inclusions, confirmations
and retractions travel on two topics (`chain.tx.v1`, `chain.reorg.v1`) whose
relative order a consumer does not control; versions derived from chain position
and the follower's reorg *epoch* (how many reorgs it has processed) make the
outcome independent of arrival order and of replays:

    inclusion of block n in epoch e:  e * 2**42 + 2 * n + confirmed + 1
    retraction in epoch e:            e * 2**42

A reorg bumps the epoch before anything of the new branch is published, so a
retraction outranks every earlier inclusion of its txs, a re-inclusion on the new
branch outranks the retraction, and a confirmed row outranks the fast-lane row of
the same block. Replaying a message yields the same version (idempotent).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from pipelines.records import (
    TOPIC_CHAIN_REORG,
    TOPIC_CHAIN_TX,
    Reorg,
    TxBatch,
    decode_reorg,
    decode_tx_batch,
)
from pipelines.storage.rows import Row, transaction_rows

EPOCH_SHIFT = 42
MAX_BLOCK_NUMBER = 2 ** (EPOCH_SHIFT - 1) - 2
MAX_EPOCH = 2 ** (64 - EPOCH_SHIFT) - 1
IS_DELETED_COLUMN = -1  # position of `is_deleted` in a `transactions` row


def row_version(epoch: int, block_number: int, confirmed: bool) -> int:
    """Version of a `transactions` row for a tx of block `block_number` seen in `epoch`."""
    if not 0 <= block_number <= MAX_BLOCK_NUMBER:
        raise ValueError(f"block number {block_number} out of range")
    if not 0 <= epoch <= MAX_EPOCH:
        raise ValueError(f"reorg epoch {epoch} out of range")
    return (epoch << EPOCH_SHIFT) + 2 * block_number + int(confirmed) + 1


def retraction_version(epoch: int) -> int:
    """Version of the retraction rows written for the reorg that opened `epoch`."""
    if not 1 <= epoch <= MAX_EPOCH:
        raise ValueError(f"reorg epoch {epoch} out of range (a reorg opens epoch >= 1)")
    return epoch << EPOCH_SHIFT


def epoch_of(version: int) -> int:
    return version >> EPOCH_SHIFT


def retraction_rows(reorg: Reorg, *, ingested_at: float) -> list[Row]:
    """`transactions` rows that hide every orphaned tx of `reorg` (is_deleted = 1).

    Each row copies the original (same key, same block time, so the same partition:
    ReplacingMergeTree only collapses rows within a partition) with the reorg's
    version, which outranks every inclusion published before the reorg.
    """
    out: list[Row] = []
    for block in reorg.blocks:
        for row in transaction_rows(block, version=reorg.version, ingested_at=ingested_at):
            row[IS_DELETED_COLUMN] = 1
            out.append(row)
    return out


def inclusion_rows(batch: TxBatch, *, ingested_at: float) -> list[Row]:
    """`transactions` rows of a `chain.tx.v1` batch with its follower-assigned version
    (falls back to wall-clock milliseconds for producers that sent no version)."""
    version = batch.version or int(ingested_at * 1000)
    return transaction_rows(batch, version=version, ingested_at=ingested_at)


def chain_message_rows(topic: str, raw: bytes | None, *, ingested_at: float) -> list[Row]:
    """Decode one message of `chain.tx.v1` or `chain.reorg.v1` into `transactions` rows.

    The one function a sink needs: inclusions and retractions resolve by version in
    ClickHouse, so messages may be applied in any order and any number of times.
    Raises `InvalidMessage` for a bad message (route it to the DLQ).
    """
    if topic == TOPIC_CHAIN_TX:
        return inclusion_rows(decode_tx_batch(raw), ingested_at=ingested_at)
    if topic == TOPIC_CHAIN_REORG:
        return retraction_rows(decode_reorg(raw), ingested_at=ingested_at)
    raise ValueError(f"not a chain topic: {topic!r}")


class OrphanLedger:
    """Recently retracted tx hashes (bounded), to keep actions off orphaned evidence.

    Pure bookkeeping: feed it every reorg and every batch; `only_orphaned(refs)` tells
    whether an alert's evidence consists solely of transactions that are no longer on
    the canonical chain (then its action must not be sent). A tx included again on the
    new branch (a batch with a higher version) leaves the ledger.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._retracted: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._retracted)

    def __contains__(self, tx_hash: object) -> bool:
        return isinstance(tx_hash, str) and tx_hash.lower() in self._retracted

    def note_reorg(self, reorg: Reorg) -> None:
        for h in reorg.tx_hashes():
            self._retracted[h] = max(reorg.version, self._retracted.get(h, 0))
            self._retracted.move_to_end(h)
        while len(self._retracted) > self.capacity:
            self._retracted.popitem(last=False)

    def note_batch(self, batch: TxBatch) -> None:
        for tx in batch.txs:
            v = self._retracted.get(tx.tx_hash)
            if v is not None and batch.version > v:
                del self._retracted[tx.tx_hash]

    def only_orphaned(self, tx_hashes: Iterable[str]) -> bool:
        """True when there is evidence and every referenced tx is retracted."""
        refs = [h.lower() for h in tx_hashes]
        return bool(refs) and all(h in self._retracted for h in refs)


def canonical_tx_hashes(client: Any, database: str, tx_hashes: Iterable[str]) -> set[str]:
    """Which of `tx_hashes` are canonical in ClickHouse now (present, not retracted).

    For enforcement: an alert whose evidence txs are all absent here rests only on
    orphaned (or not yet ingested) transactions.
    """
    from pipelines.storage.schema import quote_database

    refs = sorted({h.lower() for h in tx_hashes})
    if not refs:
        return set()
    rows = client.query(
        f"SELECT tx_hash FROM {quote_database(database)}.transactions FINAL "
        "WHERE tx_hash IN {refs:Array(String)}",
        parameters={"refs": refs},
    ).result_rows
    return {str(r[0]) for r in rows}
