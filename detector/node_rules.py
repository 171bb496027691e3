"""Deterministic rules over node telemetry, spot checks and on-chain claims.

These are the hard evidence of the enforcement ladder: a node that fails re-execution
spot checks, or claims more units on chain than its telemetry shows it served, is
proven misbehaving, not merely unusual. Pure state + functions; the stream feeds them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from detector.policy import Severity

RULE_SPOT_CHECK = "rule:spot_check"
RULE_OVERCLAIM = "rule:overclaim"
RULE_HEARTBEAT = "rule:heartbeat"


@dataclass(frozen=True, slots=True)
class RuleConfig:
    verdict_window: int = 20  # most recent spot-check verdicts considered
    min_failures: int = 3  # a single failure can be noise (GPU numerics, restarts)
    max_fail_ratio: float = 0.2
    overclaim_ratio: float = 1.5  # claimed units above observed work by this factor ...
    overclaim_slack_units: int = 2_000  # ... and by at least this many units
    heartbeat_timeout_s: float = 30.0


@dataclass
class NodeState:
    """What the monitor knows about one node (JSON round-trip for a stream table)."""

    observed_units: int = 0  # tokens served, from batch telemetry
    claimed_units: int = 0  # units settled on chain
    claims: int = 0
    last_period: int = 0  # highest settlement period counted (replays are ignored)
    last_heartbeat: float | None = None
    verdicts: deque[int] = field(default_factory=lambda: deque(maxlen=64))  # 1 pass, 0 fail
    failed_request_ids: deque[str] = field(default_factory=lambda: deque(maxlen=16))
    batches: int = 0
    errors: int = 0
    latency_ms_ewma: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "observed_units": self.observed_units,
            "claimed_units": self.claimed_units,
            "claims": self.claims,
            "last_heartbeat": self.last_heartbeat,
            "verdicts": list(self.verdicts),
            "failed": list(self.failed_request_ids),
            "batches": self.batches,
            "errors": self.errors,
            "latency_ms_ewma": self.latency_ms_ewma,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> NodeState:
        if not d:
            return cls()
        s = cls(
            observed_units=int(d["observed_units"]),
            claimed_units=int(d["claimed_units"]),
            claims=int(d["claims"]),
            last_heartbeat=d.get("last_heartbeat"),
            batches=int(d.get("batches", 0)),
            errors=int(d.get("errors", 0)),
            latency_ms_ewma=d.get("latency_ms_ewma"),
        )
        s.verdicts.extend(int(v) for v in d.get("verdicts", []))
        s.failed_request_ids.extend(str(r) for r in d.get("failed", []))
        return s


def observe_telemetry(
    s: NodeState, *, kind: str, ts: float, tokens: int, errors: int, latency_ms: float
) -> None:
    s.last_heartbeat = ts if s.last_heartbeat is None else max(s.last_heartbeat, ts)
    if kind == "batch":
        s.batches += 1
        s.observed_units += max(tokens, 0)
        s.errors += max(errors, 0)
        a = 0.1
        s.latency_ms_ewma = (
            latency_ms
            if s.latency_ms_ewma is None
            else ((1 - a) * s.latency_ms_ewma + a * latency_ms)
        )


def observe_verdict(s: NodeState, *, passed: bool, request_id: str) -> None:
    s.verdicts.append(1 if passed else 0)
    if not passed:
        s.failed_request_ids.append(request_id)


def observe_claim(s: NodeState, *, units: int, period: int) -> bool:
    """Count one settlement; False (ignored) when its period was already counted."""
    if period <= s.last_period:
        return False
    s.last_period = period
    s.claims += 1
    s.claimed_units += max(units, 0)
    return True


@dataclass(frozen=True, slots=True)
class RuleHit:
    rule: str
    severity: Severity
    facts: dict[str, Any]


def spot_check_rule(s: NodeState, cfg: RuleConfig) -> RuleHit | None:
    recent = list(s.verdicts)[-cfg.verdict_window :]
    fails = recent.count(0)
    if fails < cfg.min_failures or fails / len(recent) < cfg.max_fail_ratio:
        return None
    return RuleHit(
        RULE_SPOT_CHECK,
        Severity.CRITICAL,
        {
            "checked": len(recent),
            "failed": fails,
            "failed_request_ids": list(s.failed_request_ids)[-cfg.min_failures :],
        },
    )


def overclaim_rule(s: NodeState, cfg: RuleConfig) -> RuleHit | None:
    if s.claims == 0:
        return None
    bound = cfg.overclaim_ratio * s.observed_units + cfg.overclaim_slack_units
    if s.claimed_units <= bound:
        return None
    return RuleHit(
        RULE_OVERCLAIM,
        Severity.CRITICAL,
        {
            "claimed_units": s.claimed_units,
            "observed_units": s.observed_units,
            "claims": s.claims,
            "ratio": s.claimed_units / max(s.observed_units, 1),
        },
    )


def heartbeat_rule(s: NodeState, cfg: RuleConfig, now: float) -> RuleHit | None:
    if s.last_heartbeat is None or now - s.last_heartbeat <= cfg.heartbeat_timeout_s:
        return None
    return RuleHit(
        RULE_HEARTBEAT,
        Severity.HIGH,
        {"last_heartbeat": s.last_heartbeat, "silent_s": now - s.last_heartbeat},
    )
