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
from detector.node_rules import RuleHit
from pipelines.records import TelemetryView, VerdictView
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
