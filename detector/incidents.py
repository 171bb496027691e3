"""Incidents: alerts from several detectors about one entity, merged into one story.

An incident stays open while alerts keep arriving within `gap_s` of each other; its
severity is the highest seen, its detectors the union. Pure and JSON-serialisable,
so it lives in a stream table and is replayed identically.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from detector.evidence import evidence_hash
from detector.policy import Severity


@dataclass(frozen=True, slots=True)
class IncidentState:
    incident_id: str
    entity: str
    category: str
    severity: Severity
    first_seen: float
    last_seen: float
    alert_count: int
    detectors: tuple[str, ...]
    evidence_hash: str  # evidence of the latest alert

    def to_dict(self) -> dict[str, Any]:
        return {
            "incident_id": self.incident_id,
            "entity": self.entity,
            "category": self.category,
            "severity": int(self.severity),
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "alert_count": self.alert_count,
            "detectors": list(self.detectors),
            "evidence_hash": self.evidence_hash,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> IncidentState | None:
        if not d:
            return None
        return cls(
            incident_id=str(d["incident_id"]),
            entity=str(d["entity"]),
            category=str(d["category"]),
            severity=Severity(int(d["severity"])),
            first_seen=float(d["first_seen"]),
            last_seen=float(d["last_seen"]),
            alert_count=int(d["alert_count"]),
            detectors=tuple(d["detectors"]),
            evidence_hash=str(d["evidence_hash"]),
        )


def merge_alert(
    current: IncidentState | None,
    *,
    entity: str,
    category: str,
    severity: Severity,
    detector: str,
    evidence: str,
    at: float,
    gap_s: float = 3600.0,
) -> IncidentState:
    """Fold one alert into the entity's open incident, or open a new one."""
    if current is None or at - current.last_seen > gap_s:
        iid = evidence_hash({"entity": entity, "opened_by": evidence, "at": at})[2:34]
        return IncidentState(iid, entity, category, severity, at, at, 1, (detector,), evidence)
    detectors = (
        current.detectors if detector in current.detectors else (*current.detectors, detector)
    )
    return replace(
        current,
        severity=max(current.severity, severity),
        last_seen=max(current.last_seen, at),
        alert_count=current.alert_count + 1,
        detectors=detectors,
        evidence_hash=evidence,
    )
