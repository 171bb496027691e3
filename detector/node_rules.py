"""Deterministic rules over node telemetry, spot checks and on-chain claims.

These are the hard evidence of the enforcement ladder: a node that fails re-execution
spot checks, or claims more units on chain than its telemetry shows it served, is
proven misbehaving, not merely unusual. Pure state + functions; the stream feeds them.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from detector.node_perf import NodePerfScore
from detector.policy import Severity

RULE_SPOT_CHECK = "rule:spot_check"
RULE_OVERCLAIM = "rule:overclaim"
RULE_HEARTBEAT = "rule:heartbeat"
# Soft evidence from `detector.node_perf` scores (named as rules: thresholds over a score,
# never in HARD_RULES, and not a "model" that would turn a rule into proof).
RULE_LATENCY = "rule:node_latency"
RULE_ERRORS = "rule:node_errors"


@dataclass(frozen=True, slots=True)
class RuleConfig:
    verdict_window: int = 20  # most recent spot-check verdicts considered
    min_failures: int = 3  # a single failure can be noise (GPU numerics, restarts)
    max_fail_ratio: float = 0.2
    # Overclaim: units claimed on chain above `overclaim_ratio` x the units telemetry showed,
    # by more than the slack. Honest telemetry loses up to ~5 % of batch records, so an honest
    # claim ratio is 1.00-1.05; the slack covers small counts (a few lost batches, rounding).
    overclaim_ratio: float = 1.1
    overclaim_slack_units: int = 500  # fixed slack ...
    overclaim_slack_batches: float = 4.0  # ... plus this many batches' worth of units ...
    overclaim_slack_sd: float = 1.5  # ... plus this many sd of the count of lost batches
    telemetry_loss: float = 0.05  # share of batch records honest telemetry may lose
    overclaim_windows: int = 24  # claim-to-claim windows checked (recent onsets, not diluted)
    # A claim may lead its telemetry (telemetry requeued, a broker hiccup): the excess must
    # still be there this long after it first appeared.
    overclaim_grace_s: float = 10.0
    heartbeat_timeout_s: float = 30.0
    # Slow node: the lower bound of its fixed per-batch latency is this far above its own
    # baseline, or this many times the fleet median and this far above it.
    latency_self_excess_ms: float = 25.0
    latency_fleet_ratio: float = 2.5
    latency_fleet_excess_ms: float = 25.0
    # Flaky node: failed batches this surprising (nats, largest burst left out) at this ratio.
    error_surprise_nats: float = 3.0
    error_min_ratio: float = 0.05
    # ... or two buckets of the window, each this surprising on its own (see node_perf).
    error_burst_nats: float = 4.0


@dataclass
class NodeState:
    """What the monitor knows about one node (JSON round-trip for a stream table)."""

    observed_units: int = 0  # tokens served, from batch telemetry
    claimed_units: int = 0  # units settled on chain
    claims: int = 0
    last_period: int = 0  # highest settlement period counted (replays are ignored)
    last_heartbeat: float | None = None  # set by heartbeat messages only
    first_seen: float | None = None  # registration or first event of any kind
    deregistered_at: float | None = None  # taken out of service on chain (final)
    verdicts: deque[int] = field(default_factory=lambda: deque(maxlen=64))  # 1 pass, 0 fail
    failed_request_ids: deque[str] = field(default_factory=lambda: deque(maxlen=16))
    batches: int = 0
    errors: int = 0
    latency_ms_ewma: float | None = None
    observed_batches: int = 0  # batches behind `observed_units`
    # (claimed_units, observed_units, observed_batches) right after each counted claim
    claim_marks: deque[tuple[int, int, int]] = field(default_factory=lambda: deque(maxlen=32))
    overclaim_since: float | None = None  # when the current claim excess first appeared

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
            "first_seen": self.first_seen,
            "deregistered_at": self.deregistered_at,
            "observed_batches": self.observed_batches,
            "claim_marks": [list(m) for m in self.claim_marks],
            "overclaim_since": self.overclaim_since,
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
            first_seen=d.get("first_seen"),
            deregistered_at=d.get("deregistered_at"),
            observed_batches=int(d.get("observed_batches", 0)),
            overclaim_since=d.get("overclaim_since"),
        )
        s.claim_marks.extend((int(a), int(b), int(c)) for a, b, c in d.get("claim_marks", []))
        s.verdicts.extend(int(v) for v in d.get("verdicts", []))
        s.failed_request_ids.extend(str(r) for r in d.get("failed", []))
        return s


def observe_seen(s: NodeState, ts: float) -> None:
    """The node exists from `ts` on (registration, or its first event of any kind): a node
    that never sends a heartbeat is timed out from here."""
    s.first_seen = ts if s.first_seen is None else min(s.first_seen, ts)


def observe_telemetry(
    s: NodeState,
    *,
    kind: str,
    ts: float,
    tokens: int,
    errors: int,
    latency_ms: float,
    batches: int = 1,
) -> None:
    """One telemetry record. Only a heartbeat is a sign of life for the heartbeat rule: a node
    that stopped heartbeating is offline for the network even while it still serves.
    `batches` is how many serving batches a "batch" record covers (1 for the node's own)."""
    observe_seen(s, ts)
    if kind == "heartbeat":
        s.last_heartbeat = ts if s.last_heartbeat is None else max(s.last_heartbeat, ts)
    elif kind == "batch":
        s.batches += 1
        s.observed_units += max(tokens, 0)
        s.observed_batches += max(batches, 0)
        s.errors += max(errors, 0)
        a = 0.1
        s.latency_ms_ewma = (
            latency_ms
            if s.latency_ms_ewma is None
            else ((1 - a) * s.latency_ms_ewma + a * latency_ms)
        )


def observe_verdict(
    s: NodeState, *, passed: bool, request_id: str, ts: float | None = None
) -> None:
    if ts is not None:
        observe_seen(s, ts)
    s.verdicts.append(1 if passed else 0)
    if not passed:
        s.failed_request_ids.append(request_id)


def observe_claim(s: NodeState, *, units: int, period: int, ts: float | None = None) -> bool:
    """Count one settlement; False (ignored) when its period was already counted."""
    if ts is not None:
        observe_seen(s, ts)
    if period <= s.last_period:
        return False
    s.last_period = period
    s.claims += 1
    s.claimed_units += max(units, 0)
    s.claim_marks.append((s.claimed_units, s.observed_units, s.observed_batches))
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


def _claim_excess(s: NodeState, cfg: RuleConfig) -> tuple[int, int, int, float, int] | None:
    """The worst window of claims vs telemetry, if any claims more than the bound allows:
    (claimed, observed, batches, bound, claims in the window).

    Windows run from an earlier claim (or the start) to now, so an overclaim that starts late
    is not diluted by the honest history before it. The bound is `overclaim_ratio` x observed
    plus slack for small counts: lost telemetry records are a binomial count of batches, so
    the slack is a few batches' worth of units plus a few sd of that count, and fixed units.
    """
    if s.claims == 0:
        return None
    marks = list(s.claim_marks)
    n = len(marks)  # counted claims still marked (the newest last)
    # (claimed, observed, batches) at each window start, with the claims in the window
    starts = [((0, 0, 0), s.claims)]
    starts += [(marks[i], n - 1 - i) for i in range(max(0, n - 1 - cfg.overclaim_windows), n - 1)]
    worst: tuple[int, int, int, float, int] | None = None
    worst_margin = 0.0
    for (c0, o0, b0), in_window in starts:
        claimed = s.claimed_units - c0
        observed = s.observed_units - o0
        batches = s.observed_batches - b0
        per_batch = (observed if batches > 0 else s.observed_units) / max(
            batches if batches > 0 else s.observed_batches, 1
        )
        slack = cfg.overclaim_slack_units + per_batch * (
            cfg.overclaim_slack_batches
            + cfg.overclaim_slack_sd * math.sqrt(cfg.telemetry_loss * max(batches, 1))
        )
        bound = cfg.overclaim_ratio * observed + slack
        if claimed - bound > worst_margin:
            worst_margin = claimed - bound
            worst = (claimed, observed, batches, bound, in_window)
    return worst


def overclaim_rule(s: NodeState, cfg: RuleConfig, now: float | None = None) -> RuleHit | None:
    """Claims above what telemetry shows, for `overclaim_grace_s` (checked at `now`; without
    a time the excess counts at once). Updates `s.overclaim_since`."""
    excess = _claim_excess(s, cfg)
    if excess is None:
        s.overclaim_since = None
        return None
    if now is not None:
        if s.overclaim_since is None:
            s.overclaim_since = now
        if now - s.overclaim_since < cfg.overclaim_grace_s:
            return None
    claimed, observed, batches, bound, claims = excess
    return RuleHit(
        RULE_OVERCLAIM,
        Severity.CRITICAL,
        {
            "claimed_units": s.claimed_units,
            "observed_units": s.observed_units,
            "claims": s.claims,
            "ratio": s.claimed_units / max(s.observed_units, 1),
            "window_claims": claims,
            "window_claimed_units": claimed,
            "window_observed_units": observed,
            "window_observed_batches": batches,
            "window_bound_units": round(bound),
        },
    )


def heartbeat_rule(s: NodeState, cfg: RuleConfig, now: float) -> RuleHit | None:
    """No heartbeat for `heartbeat_timeout_s`: since the last one, or, for a node that never
    sent one, since it was first seen (registration or its first event). A node its operator
    took out of service on chain owes no heartbeats (its claims and spot checks still count:
    its stake stays slashable while it unbonds)."""
    since = s.last_heartbeat if s.last_heartbeat is not None else s.first_seen
    if since is None or s.deregistered_at is not None or now - since <= cfg.heartbeat_timeout_s:
        return None
    return RuleHit(
        RULE_HEARTBEAT,
        Severity.HIGH,
        {
            "last_heartbeat": s.last_heartbeat,
            "first_seen": s.first_seen,
            "silent_s": now - since,
        },
    )


def perf_rules(score: NodePerfScore, cfg: RuleConfig) -> list[RuleHit]:
    """Soft alerts from a node's serving-health score: slow batches, failure bursts."""
    hits = []
    lo = score.overhead_lo_ms
    fleet = score.fleet_overhead_ms
    by_self = score.self_excess_ms >= cfg.latency_self_excess_ms
    by_fleet = (
        lo is not None
        and fleet is not None
        and score.fleet_ratio >= cfg.latency_fleet_ratio
        and lo - fleet >= cfg.latency_fleet_excess_ms
    )
    if by_self or by_fleet:
        hits.append(
            RuleHit(
                RULE_LATENCY,
                Severity.MEDIUM,
                {
                    "overhead_ms": score.overhead_ms,
                    "overhead_lo_ms": lo,
                    "baseline_ms": score.baseline_ms,
                    "fleet_overhead_ms": fleet,
                    "vs": "self" if by_self else "fleet",
                },
            )
        )
    pooled = (
        score.error_surprise >= cfg.error_surprise_nats and score.error_ratio >= cfg.error_min_ratio
    )
    if pooled or score.burst_surprise >= cfg.error_burst_nats:
        hits.append(
            RuleHit(
                RULE_ERRORS,
                Severity.MEDIUM,
                {
                    "error_ratio": score.error_ratio,
                    "reference": score.error_reference,
                    "surprise_nats": score.error_surprise,
                    "burst_nats": score.burst_surprise,
                    "batches": score.batches,
                },
            )
        )
    return hits
