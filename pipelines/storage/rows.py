"""Pure conversions from domain objects to ClickHouse row tuples.

Storage rows are their own type: column order matches `schema.TABLE_COLUMNS`, and
times are timezone-aware UTC datetimes so that DateTime64(3, 'UTC') never shifts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pipelines.chain.enforcer import ActionResult
from pipelines.records import TxBatch
from pipelines.scoring import Alert, ScoredTx

Row = list[Any]


def ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def transaction_rows(batch: TxBatch, *, version: int, ingested_at: float) -> list[Row]:
    bt = ts(batch.block_time)
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
            int(batch.confirmed),
            ts(ingested_at),
            version,
            0,  # is_deleted: a reorg retraction writes 1 with a higher version
        ]
        for tx, idx in zip(batch.txs, batch.tx_index, strict=True)
    ]


def _features_template(feature_names: list[str]) -> str:
    """A %-template that renders finite feature values exactly as `json.dumps` would."""
    body = ", ".join(f"{json.dumps(n)}: %r" for n in feature_names)
    return "{" + body.replace("%", "%%").replace("%%r", "%r") + "}"


def score_rows(
    scored: Iterable[ScoredTx], *, model_version: str, feature_names: list[str], scored_at: float
) -> list[Row]:
    """`scores` rows; features as a JSON object (non-finite values as null)."""
    template = _features_template(feature_names)
    at = ts(scored_at)
    out = []
    for s in scored:
        values = s.features.tolist()
        if all(map(math.isfinite, values)):  # the hot path: one %-format per row
            feats = template % tuple(values)
        else:
            feats = json.dumps(
                {
                    n: (v if math.isfinite(v) else None)
                    for n, v in zip(feature_names, values, strict=True)
                }
            )
        out.append(
            [
                s.tx.tx_hash,
                s.tx.sender,
                s.tx.block_number,
                ts(s.tx.timestamp),
                s.score,
                s.threshold,
                model_version,
                feats,
                at,
            ]
        )
    return out


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
