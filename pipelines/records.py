"""Wire records for every Kafka topic, and strict decoding into domain types.

`faust.Record` types define what travels on each topic. Faust's own validation is
lenient, so decoding is done here, explicitly: a message either becomes a valid
domain object or raises `InvalidMessage` with a reason that the agent routes to
`<topic>.dlq` together with the raw bytes.
"""

from __future__ import annotations

import json
import re
from typing import Any

import faust

from detector.types import Tx

SCHEMA_VERSION = 1

# Topic names (versioned: a breaking schema change gets a new topic).
TOPIC_CHAIN_TX = "chain.tx.v1"
TOPIC_TELEMETRY = "node.telemetry.v1"
TOPIC_SCORES = "scores.v1"
TOPIC_ALERTS = "alerts.v1"
TOPIC_ACTIONS = "actions.v1"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_TXS_PER_BATCH = 50_000

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")
_SELECTOR = re.compile(r"^(0x[0-9a-fA-F]{8})?$")


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


class InvalidMessage(ValueError):
    """A message that cannot be processed; the text is the DLQ reason."""


# --------------------------------------------------------------------------- wire


class TxRecord(faust.Record, serializer="json", namespace="vigil.tx.v1"):
    """One transaction with its receipt outcome, as the follower saw it."""

    tx_hash: str
    sender: str
    to: str
    value_wei: str  # decimal string: uint256 does not fit JSON numbers safely
    gas_price_wei: int
    gas: int
    nonce: int
    selector: str
    status: int
    tx_index: int


class TxBatchRecord(faust.Record, serializer="json", namespace="vigil.txbatch.v1"):
    """`chain.tx.v1` value: one block's transactions for one sender shard.

    The key is the shard (a pure function of the sender), so every transaction of
    a sender lands on the same partition, in order, and per-sender state stays on
    one worker, while the stream handles a few messages per block, not one per tx.
    """

    schema_version: int
    chain_id: int
    block_number: int
    block_hash: str
    parent_hash: str
    block_time: float
    confirmed: bool
    shard: int
    txs: list[TxRecord]


class ScoreRecord(faust.Record, serializer="json", namespace="vigil.score.v1"):
    schema_version: int
    tx_hash: str
    sender: str
    block_number: int
    block_time: float
    score: float
    threshold: float
    model_version: str


class AlertRecord(faust.Record, serializer="json", namespace="vigil.alert.v1"):
    """A detector's finding about one entity; `evidence_hash` names the evidence."""

    schema_version: int
    alert_id: str
    entity: str
    category: str
    severity: str
    detector: str
    score: float
    threshold: float
    evidence_hash: str
    explanation: str  # JSON: top features and model version
    tx_hash: str
    block_number: int
    created_at: float


class ActionRecord(faust.Record, serializer="json", namespace="vigil.action.v1"):
    schema_version: int
    kind: str
    target: str
    evidence_hash: str
    tx_hash: str
    block_number: int
    status: str
    created_at: float


class TelemetryRecord(faust.Record, serializer="json", namespace="vigil.telemetry.v1"):
    """`node.telemetry.v1`: one serving batch or a heartbeat from an inference node."""

    schema_version: int
    node_id: str
    kind: str  # "batch" | "heartbeat"
    ts: float
    latency_ms: float
    batch_size: int
    tokens: int
    queue_depth: int
    errors: int
    device: str
    gpu_util: float
    gpu_mem_mb: float


class DeadLetter(faust.Record, serializer="json", namespace="vigil.dlq.v1"):
    """`<topic>.dlq` value: the original bytes (latin-1 text) and why they were refused."""

    topic: str
    partition: int
    offset: int
    reason: str
    raw: str
    received_at: float


# ----------------------------------------------------------------------- decoding


def _require(d: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in d:
        raise InvalidMessage(f"missing field {key!r}")
    v = d[key]
    if (
        isinstance(v, bool)
        and kind is not bool
        and bool not in (kind if isinstance(kind, tuple) else (kind,))
    ):
        raise InvalidMessage(f"field {key!r} must be {_kind_name(kind)}, got bool")
    if not isinstance(v, kind):
        raise InvalidMessage(f"field {key!r} must be {_kind_name(kind)}, got {type(v).__name__}")
    return v


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__


def _nonneg(d: dict[str, Any], key: str) -> int:
    v = _require(d, key, int)
    if v < 0 or v >= 2**256:
        raise InvalidMessage(f"field {key!r} out of range: {v}")
    return int(v)


def _match(d: dict[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str:
    v = _require(d, key, str)
    if not pattern.match(v):
        raise InvalidMessage(f"field {key!r} is not {what}: {v[:80]!r}")
    return v.lower()


def _parse_json(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"message too large: {len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidMessage(f"not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidMessage(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _decode_tx(d: Any, block_number: int, block_time: float) -> Tx:
    if not isinstance(d, dict):
        raise InvalidMessage("each tx must be a JSON object")
    to = _require(d, "to", str)
    if to and not _ADDRESS.match(to):
        raise InvalidMessage(f"field 'to' is not an address: {to[:80]!r}")
    value = _require(d, "value_wei", str)
    if not value.isdigit() or len(value) > 78:
        raise InvalidMessage(f"field 'value_wei' is not a uint256 decimal: {value[:80]!r}")
    status = _nonneg(d, "status")
    if status not in (0, 1):
        raise InvalidMessage(f"field 'status' must be 0 or 1, got {status}")
    return Tx(
        tx_hash=_match(d, "tx_hash", _HASH, "a 32-byte hex hash"),
        sender=_match(d, "sender", _ADDRESS, "an address"),
        to=to.lower(),
        value_wei=int(value),
        gas_price_wei=_nonneg(d, "gas_price_wei"),
        gas=_nonneg(d, "gas"),
        nonce=_nonneg(d, "nonce"),
        selector=_match(d, "selector", _SELECTOR, "a 4-byte selector"),
        status=status,
        block_number=block_number,
        timestamp=block_time,
    )


class TxBatch:
    """A decoded `chain.tx.v1` message (domain view)."""

    __slots__ = ("block_number", "block_hash", "block_time", "confirmed", "txs", "tx_index")

    def __init__(
        self,
        block_number: int,
        block_hash: str,
        block_time: float,
        confirmed: bool,
        txs: list[Tx],
        tx_index: list[int],
    ) -> None:
        self.block_number = block_number
        self.block_hash = block_hash
        self.block_time = block_time
        self.confirmed = confirmed
        self.txs = txs
        self.tx_index = tx_index


def decode_tx_batch(raw: bytes | None) -> TxBatch:
    """Strictly decode one `chain.tx.v1` message or raise `InvalidMessage`."""
    if raw is None:
        raise InvalidMessage("empty message (null value)")
    d = _parse_json(raw)
    version = _require(d, "schema_version", int)
    if version != SCHEMA_VERSION:
        raise InvalidMessage(f"unknown schema_version {version} (expected {SCHEMA_VERSION})")
    block_number = _nonneg(d, "block_number")
    block_time = _require(d, "block_time", (int, float))
    if not 0 <= block_time < 2**40:
        raise InvalidMessage(f"field 'block_time' out of range: {block_time}")
    confirmed = _require(d, "confirmed", bool)
    block_hash = _match(d, "block_hash", _HASH, "a 32-byte hex hash")
    txs_raw = _require(d, "txs", list)
    if len(txs_raw) > MAX_TXS_PER_BATCH:
        raise InvalidMessage(f"too many txs in one message: {len(txs_raw)}")
    txs = [_decode_tx(t, block_number, float(block_time)) for t in txs_raw]
    index = [
        int(t.get("tx_index", 0)) if isinstance(t.get("tx_index", 0), int) else 0 for t in txs_raw
    ]
    return TxBatch(block_number, block_hash, float(block_time), confirmed, txs, index)


def encode_tx(tx: Tx, tx_index: int) -> TxRecord:
    return TxRecord(
        tx_hash=tx.tx_hash,
        sender=tx.sender,
        to=tx.to,
        value_wei=str(tx.value_wei),
        gas_price_wei=tx.gas_price_wei,
        gas=tx.gas,
        nonce=tx.nonce,
        selector=tx.selector,
        status=tx.status,
        tx_index=tx_index,
    )


class AlertView:
    """A decoded `alerts.v1` message: what enforcement needs."""

    __slots__ = ("alert_id", "entity", "category", "severity", "evidence_hash", "score")

    def __init__(
        self,
        alert_id: str,
        entity: str,
        category: str,
        severity: str,
        evidence_hash: str,
        score: float,
    ) -> None:
        self.alert_id = alert_id
        self.entity = entity
        self.category = category
        self.severity = severity
        self.evidence_hash = evidence_hash
        self.score = score


_SEVERITIES = {"low", "medium", "high", "critical"}


def decode_alert(raw: bytes | None) -> AlertView:
    """Strictly decode one `alerts.v1` message or raise `InvalidMessage`."""
    if raw is None:
        raise InvalidMessage("empty message (null value)")
    d = _parse_json(raw)
    version = _require(d, "schema_version", int)
    if version != SCHEMA_VERSION:
        raise InvalidMessage(f"unknown schema_version {version} (expected {SCHEMA_VERSION})")
    severity = _require(d, "severity", str)
    if severity not in _SEVERITIES:
        raise InvalidMessage(f"unknown severity {severity[:40]!r}")
    return AlertView(
        alert_id=_require(d, "alert_id", str)[:128],
        entity=_match(d, "entity", _ADDRESS, "an address"),
        category=_require(d, "category", str)[:64],
        severity=severity,
        evidence_hash=_match(d, "evidence_hash", _HASH, "a 32-byte hex hash"),
        score=float(_require(d, "score", (int, float))),
    )
