"""Wire records for every Kafka topic, and strict decoding into domain types.

`faust.Record` types define what travels on each topic. Faust's own validation is
lenient, so decoding is done here, explicitly: a message either becomes a valid
domain object or raises `InvalidMessage` with a reason that the agent routes to
`<topic>.dlq` together with the raw bytes.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Any

import faust
import orjson

from detector.types import Tx

SCHEMA_VERSION = 1

# Topic names (versioned: a breaking schema change gets a new topic).
TOPIC_CHAIN_TX = "chain.tx.v1"
TOPIC_TELEMETRY = "node.telemetry.v1"
TOPIC_SCORES = "scores.v1"
TOPIC_ALERTS = "alerts.v1"
TOPIC_ACTIONS = "actions.v1"
#: Slash proposals and HIGH/CRITICAL incidents for protocol governance (and webhooks).
TOPIC_GOVERNANCE_ALERTS = "governance.alerts.v1"
#: Retractions: the transactions of blocks a reorg orphaned (one message per sender shard,
#: keyed like `chain.tx.v1` so the same worker holds the senders' state).
TOPIC_CHAIN_REORG = "chain.reorg.v1"
_SAFE_RECURSION = 10_000
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


class EventRecord(faust.Record, serializer="json", namespace="vigil.event.v1"):
    """One log of a transaction; `name`/`args` are set when the follower could decode it."""

    log_index: int
    address: str
    topic0: str  # "" for anonymous logs
    name: str = ""  # e.g. "ERC20.Transfer", "SimPair.Swap"; "" when unknown
    args: dict[str, str] = {}  # decoded arguments as strings (ints in decimal, bytes in hex)


class TxRecord(faust.Record, serializer="json", namespace="vigil.tx.v1"):
    """One transaction with its receipt outcome, as the follower saw it.

    The fields after `tx_index` were added later, with defaults, so older messages
    still decode (to zero / empty values).
    """

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
    gas_used: int = 0  # receipt
    effective_gas_price_wei: int = 0  # receipt: what was actually paid per gas
    contract_address: str = ""  # receipt: the contract a creation deployed
    method: str = ""  # decoded call, e.g. "ERC20.transfer"; "" when unknown
    call_args: dict[str, str] = {}
    events: list[EventRecord] = []


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
    #: ClickHouse row version the follower assigns (`pipelines.chain.reorg.row_version`):
    #: grows with confirmation and with every reorg, so replays and retractions resolve
    #: by version, whatever order they arrive in. 0 from producers that predate it.
    version: int = 0


class OrphanedBlockRecord(faust.Record, serializer="json", namespace="vigil.orphan.v1"):
    """One block a reorg removed from the canonical chain, with one shard's transactions."""

    block_number: int
    block_hash: str
    parent_hash: str
    block_time: float
    confirmed: bool  # whether it had been published as confirmed (a reorg deeper than
    # the confirmation depth) or only on the fast lane
    txs: list[TxRecord]


class ReorgRecord(faust.Record, serializer="json", namespace="vigil.reorg.v1"):
    """`chain.reorg.v1` value: retract the orphaned transactions of one sender shard.

    Published (and acknowledged) before any block of the new canonical branch, keyed
    by shard like `chain.tx.v1`. Consumers write `version` rows with `is_deleted = 1`
    for every tx (`pipelines.chain.reorg.retraction_rows`), drop the txs from the
    senders' windows, and stop actions whose evidence is only these txs. A tx that the
    new branch includes again arrives on `chain.tx.v1` with a higher version.
    """

    schema_version: int
    chain_id: int
    epoch: int  # reorgs the follower has processed, this one included
    version: int  # row version of the retraction rows
    ancestor_number: int  # newest block both branches share
    ancestor_hash: str
    old_tip_number: int  # newest block published on the orphaned branch
    new_head_number: int
    detected_at: float
    shard: int
    blocks: list[OrphanedBlockRecord]


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


class GovernanceAlertRecord(faust.Record, serializer="json", namespace="vigil.govalert.v1"):
    """`governance.alerts.v1`: what governance must look at (also the webhook body).

    `kind` is "slash_proposal" or "incident"; `alert_id` is stable per event so that
    receivers can drop redeliveries; `evidence_hash` resolves at the reputation API's
    `/v1/evidence/{hash}`.
    """

    schema_version: int
    alert_id: str
    kind: str
    entity: str
    severity: str
    category: str
    summary: str
    evidence_hash: str
    created_at: float
    incident_id: str = ""
    tx_hash: str = ""
    proposal_id: int = -1  # -1: not a slash proposal
    amount_wei: str = ""  # decimal string (wei overflows JSON doubles)
    challenge_end_block: int = 0


class DeadLetter(faust.Record, serializer="json", namespace="vigil.dlq.v1"):
    """`<topic>.dlq` value: the original bytes (latin-1 text) and why they were refused.

    `raw` holds at most `DLQ_RAW_MAX` bytes so the record always fits a Kafka message
    (JSON escaping can grow latin-1 text six-fold); `raw_size` and `raw_sha256` name
    the whole original, which the ClickHouse `dlq` table and the source topic keep.
    """

    topic: str
    partition: int
    offset: int
    reason: str
    raw: str
    received_at: float
    raw_size: int = 0
    raw_sha256: str = ""


DLQ_RAW_MAX = 64 * 1024


def dead_letter_record(
    topic: str, partition: int, offset: int, reason: str, raw: bytes | None, received_at: float
) -> DeadLetter:
    """The DLQ record of one refused message, bounded in size whatever the input."""
    import hashlib

    data = raw or b""
    return DeadLetter(
        topic=topic,
        partition=partition,
        offset=offset,
        reason=reason[:1000],
        raw=data[:DLQ_RAW_MAX].decode("latin-1"),
        received_at=received_at,
        raw_size=len(data),
        raw_sha256=hashlib.sha256(data).hexdigest(),
    )


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
    if sys.getrecursionlimit() > _SAFE_RECURSION:
        # web3 imports py_ecc, which raises the limit to 100,000: deeply nested hostile
        # JSON would then overflow the C stack (a segfault, replayed after each restart)
        # instead of raising RecursionError, which is refused below like any bad JSON.
        sys.setrecursionlimit(_SAFE_RECURSION)
    try:
        obj = orjson.loads(raw)  # fast, strict (UTF-8, 64-bit ints, depth <= 1024)
    except orjson.JSONDecodeError:
        try:  # what orjson refuses, the standard library decides (and words the error)
            obj = json.loads(raw)
        except (ValueError, RecursionError) as e:  # bad JSON/UTF-8, huge ints, deep nesting
            raise InvalidMessage(f"not valid JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise InvalidMessage(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _message(raw: bytes | None) -> dict[str, Any]:
    """A message's JSON object, checked for presence and schema version (every topic)."""
    if raw is None:
        raise InvalidMessage("empty message (null value)")
    d = _parse_json(raw)
    version = _require(d, "schema_version", int)
    if version != SCHEMA_VERSION:
        raise InvalidMessage(f"unknown schema_version {version} (expected {SCHEMA_VERSION})")
    return d


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


_U256 = 2**256


def _fast_tx(d: Any, block_number: int, block_time: float) -> Tx | None:
    """`_decode_tx` for the common, valid case in a few checks (the decoder is on the
    hot path); None sends anything unusual to `_decode_tx`, which names the problem.
    It accepts nothing `_decode_tx` would refuse and builds the same `Tx`."""
    try:
        to, value, status = d["to"], d["value_wei"], d["status"]
        tx_hash, sender, selector = d["tx_hash"], d["sender"], d["selector"]
        gas_price, gas, nonce = d["gas_price_wei"], d["gas"], d["nonce"]
    except (KeyError, TypeError):
        return None
    if not (
        type(to) is str
        and (not to or _ADDRESS.match(to))
        and type(value) is str
        and len(value) <= 78
        and value.isdigit()
        and (status == 0 or status == 1)
        and type(status) is int
        and type(tx_hash) is str
        and _HASH.match(tx_hash)
        and type(sender) is str
        and _ADDRESS.match(sender)
        and type(selector) is str
        and _SELECTOR.match(selector)
        and type(gas_price) is int
        and 0 <= gas_price < _U256
        and type(gas) is int
        and 0 <= gas < _U256
        and type(nonce) is int
        and 0 <= nonce < _U256
    ):
        return None
    return Tx(
        tx_hash=tx_hash.lower(),
        sender=sender.lower(),
        to=to.lower(),
        value_wei=int(value),
        gas_price_wei=gas_price,
        gas=gas,
        nonce=nonce,
        selector=selector.lower(),
        status=status,
        block_number=block_number,
        timestamp=block_time,
    )


def _fast_detail(d: dict[str, Any]) -> TxDetail | None:
    """`_decode_detail` for the common case (receipt numbers, no decoded events)."""
    gas_used = d.get("gas_used", 0)
    price = d.get("effective_gas_price_wei", 0)
    contract = d.get("contract_address", "")
    method = d.get("method", "")
    events = d.get("events", [])
    if not (
        type(gas_used) is int
        and 0 <= gas_used < _U256
        and type(price) is int
        and 0 <= price < _U256
        and type(contract) is str
        and (not contract or _ADDRESS.match(contract))
        and type(method) is str
        and len(method) <= 256
        and type(events) is list
        and not events
    ):
        return None
    return TxDetail(
        gas_used=gas_used,
        effective_gas_price_wei=price,
        contract_address=contract.lower(),
        method=method,
        call_args=_str_map(d, "call_args"),
    )


class TxEvent:
    """A decoded log (domain view of `EventRecord`)."""

    __slots__ = ("log_index", "address", "topic0", "name", "args")

    def __init__(
        self, log_index: int, address: str, topic0: str, name: str, args: dict[str, str]
    ) -> None:
        self.log_index = log_index
        self.address = address
        self.topic0 = topic0
        self.name = name
        self.args = args


class TxDetail:
    """Receipt and decoding extras of one transaction (zero/empty when not sent)."""

    __slots__ = (
        "gas_used",
        "effective_gas_price_wei",
        "contract_address",
        "method",
        "call_args",
        "events",
    )

    def __init__(
        self,
        gas_used: int = 0,
        effective_gas_price_wei: int = 0,
        contract_address: str = "",
        method: str = "",
        call_args: dict[str, str] | None = None,
        events: list[TxEvent] | None = None,
    ) -> None:
        self.gas_used = gas_used
        self.effective_gas_price_wei = effective_gas_price_wei
        self.contract_address = contract_address
        self.method = method
        self.call_args = call_args or {}
        self.events = events or []


class TxBatch:
    """A decoded `chain.tx.v1` message (domain view).

    `version` is the follower-assigned row version (0 when the producer sent none);
    `details[i]` holds receipt extras and decoded call/events of `txs[i]`.
    """

    __slots__ = (
        "block_number",
        "block_hash",
        "block_time",
        "confirmed",
        "txs",
        "tx_index",
        "version",
        "details",
        "parent_hash",
    )

    def __init__(
        self,
        block_number: int,
        block_hash: str,
        block_time: float,
        confirmed: bool,
        txs: list[Tx],
        tx_index: list[int],
        version: int = 0,
        details: list[TxDetail] | None = None,
        parent_hash: str = "",
    ) -> None:
        self.block_number = block_number
        self.block_hash = block_hash
        self.block_time = block_time
        self.confirmed = confirmed
        self.txs = txs
        self.tx_index = tx_index
        self.version = version
        self.details = details if details is not None else [TxDetail() for _ in txs]
        self.parent_hash = parent_hash


_MAX_ARGS = 64
_MAX_EVENTS = 1024
_MAX_TEXT = 4096


def _str_map(d: dict[str, Any], key: str) -> dict[str, str]:
    if key not in d:
        return {}
    v = d[key]
    if not isinstance(v, dict) or len(v) > _MAX_ARGS:
        raise InvalidMessage(f"field {key!r} must be an object of at most {_MAX_ARGS} strings")
    for k, x in v.items():
        if not isinstance(x, str) or len(x) > _MAX_TEXT or len(k) > 128:
            raise InvalidMessage(f"field {key!r} must map names to strings")
    return dict(v)


def _opt_str(d: dict[str, Any], key: str, limit: int = 256) -> str:
    if key not in d:
        return ""
    v = d[key]
    if not isinstance(v, str) or len(v) > limit:
        raise InvalidMessage(f"field {key!r} must be a string of at most {limit} chars")
    return v


def _opt_nonneg(d: dict[str, Any], key: str) -> int:
    return _nonneg(d, key) if key in d else 0


def _decode_event(e: Any) -> TxEvent:
    if not isinstance(e, dict):
        raise InvalidMessage("each event must be a JSON object")
    address = _match(e, "address", _ADDRESS, "an address")
    topic0 = _require(e, "topic0", str)
    if topic0 and not _HASH.match(topic0):
        raise InvalidMessage(f"field 'topic0' is not a 32-byte hex hash: {topic0[:80]!r}")
    return TxEvent(
        log_index=_nonneg(e, "log_index"),
        address=address,
        topic0=topic0.lower(),
        name=_opt_str(e, "name"),
        args=_str_map(e, "args"),
    )


def _decode_detail(d: dict[str, Any]) -> TxDetail:
    contract = _opt_str(d, "contract_address")
    if contract and not _ADDRESS.match(contract):
        raise InvalidMessage(f"field 'contract_address' is not an address: {contract[:80]!r}")
    events_raw = d.get("events", [])
    if not isinstance(events_raw, list) or len(events_raw) > _MAX_EVENTS:
        raise InvalidMessage(f"field 'events' must be a list of at most {_MAX_EVENTS} events")
    return TxDetail(
        gas_used=_opt_nonneg(d, "gas_used"),
        effective_gas_price_wei=_opt_nonneg(d, "effective_gas_price_wei"),
        contract_address=contract.lower(),
        method=_opt_str(d, "method"),
        call_args=_str_map(d, "call_args"),
        events=[_decode_event(e) for e in events_raw],
    )


def _decode_block(d: dict[str, Any]) -> TxBatch:
    """The block part shared by `chain.tx.v1` and the orphaned blocks of `chain.reorg.v1`."""
    block_number = _nonneg(d, "block_number")
    block_time = _require(d, "block_time", (int, float))
    if not 0 <= block_time < 2**40:
        raise InvalidMessage(f"field 'block_time' out of range: {block_time}")
    confirmed = _require(d, "confirmed", bool)
    block_hash = _match(d, "block_hash", _HASH, "a 32-byte hex hash")
    parent_hash = ""
    if "parent_hash" in d:
        parent_hash = _match(d, "parent_hash", _HASH, "a 32-byte hex hash")
    txs_raw = _require(d, "txs", list)
    if len(txs_raw) > MAX_TXS_PER_BATCH:
        raise InvalidMessage(f"too many txs in one message: {len(txs_raw)}")
    bt = float(block_time)
    txs = [_fast_tx(t, block_number, bt) or _decode_tx(t, block_number, bt) for t in txs_raw]
    index = [
        int(t.get("tx_index", 0)) if isinstance(t.get("tx_index", 0), int) else 0 for t in txs_raw
    ]
    details = [_fast_detail(t) or _decode_detail(t) for t in txs_raw]
    return TxBatch(
        block_number,
        block_hash,
        float(block_time),
        confirmed,
        txs,
        index,
        details=details,
        parent_hash=parent_hash,
    )


def decode_tx_batch(raw: bytes | None) -> TxBatch:
    """Strictly decode one `chain.tx.v1` message or raise `InvalidMessage`."""
    d = _message(raw)
    batch = _decode_block(d)
    batch.version = _opt_nonneg(d, "version")
    return batch


def decode_stored_block(raw: bytes) -> TxBatch:
    """Decode a whole block the follower stored itself (trusted local state, so no
    message size limit; still strictly validated)."""
    try:
        d = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidMessage(f"not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise InvalidMessage(f"expected a JSON object, got {type(d).__name__}")
    return _decode_block(d)


class Reorg:
    """A decoded `chain.reorg.v1` message: one shard's orphaned blocks and their txs."""

    __slots__ = (
        "chain_id",
        "epoch",
        "version",
        "ancestor_number",
        "ancestor_hash",
        "old_tip_number",
        "new_head_number",
        "detected_at",
        "shard",
        "blocks",
    )

    def __init__(
        self,
        chain_id: int,
        epoch: int,
        version: int,
        ancestor_number: int,
        ancestor_hash: str,
        old_tip_number: int,
        new_head_number: int,
        detected_at: float,
        shard: int,
        blocks: list[TxBatch],
    ) -> None:
        self.chain_id = chain_id
        self.epoch = epoch
        self.version = version
        self.ancestor_number = ancestor_number
        self.ancestor_hash = ancestor_hash
        self.old_tip_number = old_tip_number
        self.new_head_number = new_head_number
        self.detected_at = detected_at
        self.shard = shard
        self.blocks = blocks

    @property
    def depth(self) -> int:
        """Blocks removed from the published chain."""
        return self.old_tip_number - self.ancestor_number

    def tx_hashes(self) -> list[str]:
        return [tx.tx_hash for b in self.blocks for tx in b.txs]

    def tx_hashes_by_sender(self) -> dict[str, list[str]]:
        """Orphaned tx hashes per sender: what each sender's window must forget."""
        out: dict[str, list[str]] = {}
        for b in self.blocks:
            for tx in b.txs:
                out.setdefault(tx.sender, []).append(tx.tx_hash)
        return out


MAX_ORPHANED_BLOCKS = 4096


def decode_reorg(raw: bytes | None) -> Reorg:
    """Strictly decode one `chain.reorg.v1` message or raise `InvalidMessage`."""
    d = _message(raw)
    blocks_raw = _require(d, "blocks", list)
    if len(blocks_raw) > MAX_ORPHANED_BLOCKS:
        raise InvalidMessage(f"too many orphaned blocks in one message: {len(blocks_raw)}")
    blocks = []
    for b in blocks_raw:
        if not isinstance(b, dict):
            raise InvalidMessage("each orphaned block must be a JSON object")
        blocks.append(_decode_block(b))
    detected_at = _require(d, "detected_at", (int, float))
    if not 0 <= detected_at < 2**40:
        raise InvalidMessage(f"field 'detected_at' out of range: {detected_at}")
    reorg = Reorg(
        chain_id=_nonneg(d, "chain_id"),
        epoch=_nonneg(d, "epoch"),
        version=_nonneg(d, "version"),
        ancestor_number=_require(d, "ancestor_number", int),
        ancestor_hash=_match(d, "ancestor_hash", _HASH, "a 32-byte hex hash"),
        old_tip_number=_nonneg(d, "old_tip_number"),
        new_head_number=_nonneg(d, "new_head_number"),
        detected_at=float(detected_at),
        shard=_nonneg(d, "shard"),
        blocks=blocks,
    )
    if reorg.ancestor_number < -1:
        raise InvalidMessage(f"field 'ancestor_number' out of range: {reorg.ancestor_number}")
    for b in blocks:
        b.version = reorg.version
        if b.block_number <= reorg.ancestor_number:
            raise InvalidMessage(
                f"orphaned block {b.block_number} is not above the ancestor {reorg.ancestor_number}"
            )
    return reorg


def encode_tx(tx: Tx, tx_index: int, detail: TxDetail | None = None) -> TxRecord:
    d = detail or TxDetail()
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
        gas_used=d.gas_used,
        effective_gas_price_wei=d.effective_gas_price_wei,
        contract_address=d.contract_address,
        method=d.method,
        call_args=dict(d.call_args),
        events=[
            EventRecord(
                log_index=e.log_index,
                address=e.address,
                topic0=e.topic0,
                name=e.name,
                args=dict(e.args),
            )
            for e in d.events
        ],
    )


@dataclass(frozen=True, slots=True)
class AlertView:
    """A decoded `alerts.v1` message: what enforcement needs."""

    alert_id: str
    entity: str
    category: str
    severity: str
    evidence_hash: str
    score: float
    detector: str
    created_at: float


_SEVERITIES = {"low", "medium", "high", "critical"}


def decode_alert(raw: bytes | None) -> AlertView:
    """Strictly decode one `alerts.v1` message or raise `InvalidMessage`."""
    d = _message(raw)
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
        detector=_require(d, "detector", str)[:64],
        created_at=_num(d, "created_at", 0, 2**40),
    )


# ------------------------------------------------------------------ node side

TOPIC_CHALLENGES = "node.challenges.v1"
TOPIC_NODE_CLAIMS = "node.claims.v1"
TOPIC_NODE_REGISTRY = "node.registry.v1"
_KINDS = {"batch", "heartbeat"}


class ClaimRecord(faust.Record, serializer="json", namespace="vigil.claim.v1"):
    """`node.claims.v1`: one on-chain usage settlement, keyed by node address."""

    schema_version: int
    node: str
    operator: str
    period: int
    units: int
    commitment: str
    block_number: int
    tx_hash: str


@dataclass(frozen=True, slots=True)
class TelemetryView:
    node_id: str
    kind: str
    ts: float
    latency_ms: float
    batch_size: int
    tokens: int
    queue_depth: int
    errors: int
    device: str
    gpu_util: float
    gpu_mem_mb: float


def _num(d: dict[str, Any], key: str, lo: float = 0.0, hi: float = 1e12) -> float:
    v = float(_require(d, key, (int, float)))
    if not lo <= v <= hi or v != v:
        raise InvalidMessage(f"field {key!r} out of range: {v}")
    return v


def _node_id(d: dict[str, Any]) -> str:
    v = _require(d, "node_id", str)
    if not 0 < len(v) <= 128 or not v.isprintable():
        raise InvalidMessage("field 'node_id' must be 1-128 printable characters")
    return v.lower()


def decode_telemetry(raw: bytes | None) -> TelemetryView:
    """Strictly decode one `node.telemetry.v1` message or raise `InvalidMessage`."""
    d = _message(raw)
    kind = _require(d, "kind", str)
    if kind not in _KINDS:
        raise InvalidMessage(f"unknown telemetry kind {kind[:40]!r}")
    return TelemetryView(
        node_id=_node_id(d),
        kind=kind,
        ts=_num(d, "ts", 0, 2**40),
        latency_ms=_num(d, "latency_ms"),
        batch_size=int(_num(d, "batch_size", 0, 2**31)),
        tokens=int(_num(d, "tokens", 0, 2**40)),
        queue_depth=int(_num(d, "queue_depth", 0, 2**31)),
        errors=int(_num(d, "errors", 0, 2**31)),
        device=str(_require(d, "device", str))[:64],
        gpu_util=_num(d, "gpu_util", 0, 100),
        gpu_mem_mb=_num(d, "gpu_mem_mb", 0, 1e9),
    )


@dataclass(frozen=True, slots=True)
class VerdictView:
    node_id: str
    request_id: str
    passed: bool
    cosine: float
    ts: float
    reason: str


def decode_verdict(raw: bytes | None) -> VerdictView:
    """Strictly decode one `node.challenges.v1` verdict or raise `InvalidMessage`."""
    d = _message(raw)
    cosine = d.get("cosine")
    if cosine is not None and not isinstance(cosine, int | float):
        raise InvalidMessage("field 'cosine' must be a number or null")
    return VerdictView(
        node_id=_node_id(d),
        request_id=str(_require(d, "request_id", str))[:128],
        passed=_require(d, "passed", bool),
        cosine=float(cosine) if cosine is not None else float("nan"),
        ts=_num(d, "ts", 0, 2**40),
        reason=str(d.get("reason") or "")[:256],
    )


def decode_claim(raw: bytes | None) -> ClaimRecord:
    """Strictly decode one `node.claims.v1` message or raise `InvalidMessage`."""
    d = _message(raw)
    return ClaimRecord(
        schema_version=SCHEMA_VERSION,
        node=_match(d, "node", _ADDRESS, "an address"),
        operator=_match(d, "operator", _ADDRESS, "an address"),
        period=_nonneg(d, "period"),
        units=_nonneg(d, "units"),
        commitment=_match(d, "commitment", _HASH, "a 32-byte hash"),
        block_number=_nonneg(d, "block_number"),
        tx_hash=_match(d, "tx_hash", _HASH, "a hash"),
    )


REGISTERED = "registered"
DEREGISTERED = "deregistered"
_REGISTRY_KINDS = (REGISTERED, DEREGISTERED)


class RegistrationRecord(faust.Record, serializer="json", namespace="vigil.registration.v1"):
    """`node.registry.v1`: one `NodeRegistered` or `NodeDeregistered` event, keyed by node
    address (lower case, the node id telemetry, verdicts and claims use)."""

    schema_version: int
    node: str
    operator: str
    block_number: int
    block_time: float  # the event block's timestamp (unix seconds)
    tx_hash: str
    kind: str = REGISTERED  # absent in messages written before deregistrations were read


def decode_registration(raw: bytes | None) -> RegistrationRecord:
    """Strictly decode one `node.registry.v1` message or raise `InvalidMessage`."""
    d = _message(raw)
    kind = d.get("kind", REGISTERED)
    if kind not in _REGISTRY_KINDS:
        raise InvalidMessage(f"field 'kind' must be one of {_REGISTRY_KINDS}")
    return RegistrationRecord(
        schema_version=SCHEMA_VERSION,
        node=_match(d, "node", _ADDRESS, "an address"),  # lower-cased, like every address
        operator=_match(d, "operator", _ADDRESS, "an address"),
        block_number=_nonneg(d, "block_number"),
        block_time=_num(d, "block_time", 0, 2**40),
        tx_hash=_match(d, "tx_hash", _HASH, "a hash"),
        kind=kind,
    )


#: Topics whose bad messages go to `<topic>.dlq`.
DLQ_TOPICS = (
    TOPIC_CHAIN_TX,
    TOPIC_CHAIN_REORG,
    TOPIC_ALERTS,
    TOPIC_TELEMETRY,
    TOPIC_CHALLENGES,
    TOPIC_NODE_CLAIMS,
    TOPIC_NODE_REGISTRY,
)
