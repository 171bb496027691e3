"""Pure conversions from domain objects to ClickHouse row tuples.

Storage rows are their own type: column order matches `schema.TABLE_COLUMNS`, and
times are timezone-aware UTC datetimes so that DateTime64(3, 'UTC') never shifts. The
two tables written once per tx (`transactions`, `scores`) carry their times as
DateTime64(3) ticks instead (`ms`, integer milliseconds since the epoch): the client
then writes the column as it is instead of converting each datetime, which was about
a sixth of the writer threads' time. Every row of one of those tables uses ticks, so
a batch never mixes the two (the client picks the conversion from the first value).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from pipelines.chain.enforcer import ActionResult
from pipelines.records import TxBatch
from pipelines.scoring import Alert, ScoredTx, SequenceScore

Row = list[Any]


def ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def ms(seconds: float) -> int:
    """DateTime64(3) ticks of a unix time: the millisecond `ts(seconds)` is stored as
    (the datetime rounds to the microsecond, the column keeps whole milliseconds)."""
    return round(seconds * 1_000_000) // 1000


def transaction_rows(batch: TxBatch, *, version: int, ingested_at: float) -> list[Row]:
    bt = ms(batch.block_time)
    at = ms(ingested_at)
    confirmed = int(batch.confirmed)
    return [
        [
            tx.tx_hash,
            batch.block_number,
            batch.block_hash,
            bt,
            idx,
            tx.sender,
            tx.to,
            tx.value_wei,
            tx.gas_price_wei,
            tx.gas,
            tx.nonce,
            tx.selector,
            tx.status,
            confirmed,
            at,
            version,
            0,  # is_deleted: a reorg retraction writes 1 with a higher version
        ]
        for tx, idx in zip(batch.txs, batch.tx_index, strict=True)
    ]


def score_rows(
    scored: Sequence[ScoredTx], *, model_version: str, feature_names: list[str], scored_at: float
) -> list[Row]:
    """`scores` rows; features as a JSON object (non-finite values as null: orjson writes
    NaN and infinities as null, and a float as its shortest round-trip text)."""
    at = ms(scored_at)
    block_times: dict[float, int] = {}
    out = []
    for s in scored:
        t = s.tx.timestamp
        bt = block_times.get(t)
        if bt is None:
            bt = block_times[t] = ms(t)
        out.append(
            [
                s.tx.tx_hash,
                s.tx.sender,
                s.tx.block_number,
                bt,
                s.score,
                s.threshold,
                model_version,
                orjson.dumps(dict(zip(feature_names, s.features.tolist(), strict=True))).decode(),
                at,
            ]
        )
    return out


def sequence_score_rows(scored: Iterable[SequenceScore], *, scored_at: float) -> list[Row]:
    """`scores` rows of the tx sequence model: one per scored sender and batch, on the
    sender's newest tx of the batch, `model_version` "tx_sequence:<version>"; `features`
    holds the window length the model read and the family it looks most like."""
    at = ms(scored_at)
    return [
        [
            s.tx.tx_hash,
            s.tx.sender,
            s.tx.block_number,
            ms(s.tx.timestamp),
            s.score,
            s.threshold,
            s.model_version,
            json.dumps({"window_events": s.events, "looks_like": s.looks_like}),
            at,
        ]
        for s in scored
    ]


def alert_rows(alerts: Iterable[Alert]) -> list[Row]:
    return [
        [
            a.alert_id,
            a.entity,
            a.category,
            a.severity,
            a.detector,
            a.score,
            a.threshold,
            a.evidence_hash,
            a.explanation,
            a.tx_hash,
            ts(a.created_at),
        ]
        for a in alerts
    ]


def action_rows(results: Iterable[ActionResult], *, created_at: float) -> list[Row]:
    return [
        [r.evidence_hash, r.kind, r.target, r.tx_hash, r.block_number, r.status, ts(created_at)]
        for r in results
    ]


def dlq_row(
    topic: str, partition: int, offset: int, reason: str, raw: bytes | None, received_at: float
) -> Row:
    text = (raw or b"")[:65536].decode("latin-1")
    return [topic, partition, offset, reason, text, ts(received_at)]


def evidence_rows(alerts: Iterable[Alert]) -> list[Row]:
    """Evidence documents, retrievable by the keccak hash that goes on chain."""
    return [[a.evidence_hash, a.entity, a.evidence, ts(a.created_at)] for a in alerts]
