"""Pure glue for the node side of the stream: rule hits -> alerts, rows for storage.

Kept apart from the Faust agents so the mapping from what nodes do to what the
monitor says about them is testable without a broker.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from detector.evidence import canonical_json, evidence_hash
from detector.incidents import IncidentState
from detector.node_rules import NodeState, RuleHit, observe_seen
from pipelines.records import (
    DEREGISTERED,
    REGISTERED,
    SCHEMA_VERSION,
    RegistrationRecord,
    TelemetryView,
    VerdictView,
)
from pipelines.scoring import Alert

CATEGORY_NODE = "node"


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def node_alert(node: str, hit: RuleHit, at: float) -> Alert:
    """An alert about `node` from a deterministic rule, with its evidence document."""
    doc: dict[str, Any] = {
        "entity": node,
        "category": CATEGORY_NODE,
        "detector": hit.rule,
        "facts": hit.facts,
        "at": at,
    }
    h = evidence_hash(doc)
    return Alert(
        alert_id=h[2:34],
        entity=node,
        category=CATEGORY_NODE,
        severity=hit.severity.label,
        detector=hit.rule,
        score=1.0,
        threshold=1.0,
        evidence_hash=h,
        evidence=canonical_json(doc),
        explanation=json.dumps({"rule": hit.rule, "facts": hit.facts}),
        tx_hash="",
        block_number=0,
        created_at=at,
    )


def registration_record(e: Any, block_time: float) -> RegistrationRecord:
    """A decoded `NodeRegistered` or `NodeDeregistered` log (web3) -> its `node.registry.v1`
    record. The node id is the lower-cased identity address, the id its telemetry and
    verdicts carry."""
    a = e["args"]
    tx = e["transactionHash"]
    return RegistrationRecord(
        schema_version=SCHEMA_VERSION,
        node=str(a["node"]).lower(),
        operator=str(a["operator"]).lower(),
        block_number=int(e["blockNumber"]),
        block_time=float(block_time),
        tx_hash=tx if isinstance(tx, str) else "0x" + bytes(tx).hex(),
        kind=DEREGISTERED if e.get("event") == "NodeDeregistered" else REGISTERED,
    )


def observe_registration(state: NodeState, rec: RegistrationRecord, now: float) -> bool:
    """A registered node exists from its registration block on, so the heartbeat rule times
    it out even if it never sends anything. Never later than `now` (a chain clock ahead of
    ours must not postpone the timeout). A deregistered node is out of service for good
    (an address registers once), so it owes no heartbeats from then on. False when nothing
    changed (a replayed event, or a node already seen earlier): idempotent."""
    at = min(rec.block_time, now)
    if rec.kind == DEREGISTERED:
        if state.deregistered_at is not None and state.deregistered_at <= at:
            return False
        state.deregistered_at = at
        return True
    before = state.first_seen
    observe_seen(state, at)
    return state.first_seen != before


def telemetry_row(t: TelemetryView) -> list[Any]:
    return [
        t.node_id,
        t.kind,
        _ts(t.ts),
        t.latency_ms,
        t.batch_size,
        t.tokens,
        t.queue_depth,
        t.errors,
        t.device,
        t.gpu_util,
        t.gpu_mem_mb,
    ]


def challenge_row(v: VerdictView) -> list[Any]:
    cos = v.cosine if math.isfinite(v.cosine) else 0.0
    return [v.node_id, v.request_id, _ts(v.ts), int(v.passed), cos]


def incident_row(i: IncidentState, *, status: str, updated_at: float) -> list[Any]:
    return [
        i.incident_id,
        i.entity,
        i.category,
        i.severity.label,
        status,
        _ts(i.first_seen),
        _ts(i.last_seen),
        i.alert_count,
        list(i.detectors),
        i.evidence_hash,
        0,
        _ts(updated_at),
    ]
