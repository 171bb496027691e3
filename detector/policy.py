"""Policy: turns scores into alerts and alerts into graded actions.

A score is not a decision. Scorers only rank; this module holds the thresholds,
minimum evidence, cooldowns and the mapping from alert severity to action.
Pure functions and small frozen configs, so the policy is easy to test and audit.

Two layers:
- `AlertPolicy` / `ActionPolicy`: scored events -> alerts, alert -> one throttle
  (the thin path).
- `ActionLadder`: incidents -> graded actions, observe -> throttle (escalating level
  and duration on repeat) -> slash proposal (hard evidence only), and back down
  (unthrottle) once the entity stays quiet. Time is always event time (block or
  telemetry time), never the wall clock, so a replay decides the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from typing import Any

from detector.evidence import evidence_hash
from detector.sybil import FanoutState


class Severity(IntEnum):
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown severity {text!r}") from None


@dataclass(frozen=True, slots=True)
class EntityAlertState:
    """What the alert policy remembers per entity between events.

    `recent` holds the entity's latest hits as bits (bit 0: the latest event), for
    `AlertPolicy.evidence_window`; `fanout` is the sybil fan-out rule's memory of the
    entity's plain value transfers (empty for almost every sender). `to_dict` leaves out
    the fields still at their defaults, so an older dict reads back unchanged.
    """

    last_alert_at: float | None = None
    streak: int = 0  # consecutive scored events at or above the threshold
    recent: int = 0
    fanout: FanoutState = FanoutState()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"last_alert_at": self.last_alert_at, "streak": self.streak}
        if self.recent:
            d["recent"] = self.recent
        if not self.fanout.empty:
            d["fanout"] = self.fanout.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> EntityAlertState:
        if not d:
            return cls()
        at = d.get("last_alert_at")
        return cls(
            None if at is None else float(at),
            int(d.get("streak") or 0),
            int(d.get("recent") or 0),
            FanoutState.from_dict(d.get("fanout")),
        )


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """When scored events become an alert about their entity.

    - `min_window_txs`: a single odd transaction is not a bot; require a pattern.
    - `min_consecutive`: bots are anomalous persistently, humans only now and then;
      requiring several anomalous events cuts false alerts per entity. With
      `evidence_window` n > `min_consecutive`, it takes `min_consecutive` hits among the
      entity's last n events (evidence accumulates across a short dip under the bar);
      0 (or <= `min_consecutive`) keeps the strict run of consecutive hits.
    - A hit is an event that a deterministic rule flagged (`evidence`, see
      detector.bot_rules; rules carry their own minimum evidence), or one with at least
      `min_window_txs` in its window whose score reaches the threshold plus
      `model_margin` (a share of the threshold: a quantile calibrated on a short warm-up
      is close to its largest score, so a model hit needs a clear excess).
    - `cooldown_s`: one alert per entity per cooldown, so one bot does not raise
      a thousand alerts (time is block time, never the wall clock).
    - `high_margin`: score above threshold by this share of the threshold is HIGH.
    """

    min_window_txs: int = 5
    min_consecutive: int = 3
    cooldown_s: float = 300.0
    high_margin: float = 0.02
    evidence_window: int = 0
    model_margin: float = 0.0

    def step(
        self,
        state: EntityAlertState,
        *,
        score: float,
        threshold: float,
        window_txs: int,
        now: float,
        evidence: bool = False,
    ) -> tuple[EntityAlertState, Severity | None]:
        """The entity's next state and the severity of the alert to raise (or None)."""
        n = max(self.evidence_window, self.min_consecutive)
        bar = threshold + self.model_margin * abs(threshold)
        hit = evidence or (score >= bar and window_txs >= self.min_window_txs)
        recent = ((state.recent << 1) | int(hit)) & ((1 << n) - 1)
        # (the constructor, not dataclasses.replace: this runs once per scored tx)
        last, fanout = state.last_alert_at, state.fanout
        if not hit:
            return EntityAlertState(last, 0, recent, fanout), None
        streak = state.streak + 1
        cooling = last is not None and now - last < self.cooldown_s
        if recent.bit_count() < self.min_consecutive or cooling:
            return EntityAlertState(last, streak, recent, fanout), None
        high = score >= threshold + self.high_margin * abs(threshold)
        return EntityAlertState(now, streak, recent, fanout), (
            Severity.HIGH if high else Severity.MEDIUM
        )


@dataclass(frozen=True, slots=True)
class ThrottleDecision:
    level: int
    until_block: int


@dataclass(frozen=True, slots=True)
class ActionPolicy:
    """Which alerts lead to an on-chain throttle, at what level and for how long."""

    throttle_min_severity: Severity = Severity.MEDIUM
    throttle_level: int = 2
    throttle_blocks: int = 300

    def throttle(
        self, *, severity: Severity, current_level: int, current_until: int, head_block: int
    ) -> ThrottleDecision | None:
        """A throttle to send, or None (below the bar, or already throttled as hard)."""
        if severity < self.throttle_min_severity:
            return None
        if current_level >= self.throttle_level and current_until > head_block:
            return None
        return ThrottleDecision(self.throttle_level, head_block + self.throttle_blocks)


# --------------------------------------------------------------------------- ladder


class ActionKind(StrEnum):
    """Rungs of the enforcement ladder (the value is what `actions.kind` stores)."""

    OBSERVE = "observe"  # record only; nothing is sent
    THROTTLE = "throttle"
    SLASH_PROPOSAL = "slash_proposal"
    UNTHROTTLE = "unthrottle"


#: Detector names starting with this prefix are deterministic rules; any other name
#: is a statistical model. Rules prove, models suspect.
RULE_PREFIX = "rule:"
#: Rules whose finding is proof on its own: a failed spot check (the node returned
#: outputs that do not match a reference computation) and a proven overclaim (units
#: settled on chain exceed the work seen in telemetry beyond tolerance).
HARD_RULES: frozenset[str] = frozenset({"rule:spot_check", "rule:overclaim"})
#: Version of the action evidence document (part of the hashed document).
ACTION_EVIDENCE_VERSION = "vigil.action-evidence.v1"


@dataclass(frozen=True, slots=True)
class Incident:
    """What the ladder needs to know about one incident (or its latest update).

    `evidence_hash` names the incident's evidence document (entity, detectors,
    scores, features, raw event references, model versions); `at` is the event time
    of its latest alert.
    """

    incident_id: str
    entity: str
    category: str
    severity: Severity
    evidence_hash: str
    at: float
    detectors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ChainView:
    """On-chain facts about the entity, read just before deciding."""

    head_block: int
    throttle_level: int = 0  # throttle in force (0: none or expired)
    throttle_until: int = 0
    is_node: bool = False  # a registered node (has stake that can be slashed)
    stake_available_wei: int = 0  # stake not already under a pending slash

    @property
    def throttled(self) -> bool:
        return self.throttle_level > 0 and self.throttle_until >= self.head_block


@dataclass(frozen=True, slots=True)
class EnforcementState:
    """What the ladder remembers per entity (a Faust table value via to_dict)."""

    strikes: float = 0.0  # severity points, decayed to `strikes_at`
    strikes_at: float | None = None
    last_incident_at: float | None = None
    throttles: int = 0  # throttles since the entity was last forgotten (escalation step)
    last_throttle_at: float | None = None
    throttle_evidence: str = ""  # evidence of our throttle believed in force ("" none)
    slashes: int = 0  # slash proposals made (escalates the proposed share)
    last_slash_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "strikes": self.strikes,
            "strikes_at": self.strikes_at,
            "last_incident_at": self.last_incident_at,
            "throttles": self.throttles,
            "last_throttle_at": self.last_throttle_at,
            "throttle_evidence": self.throttle_evidence,
            "slashes": self.slashes,
            "last_slash_at": self.last_slash_at,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> EnforcementState:
        if not d:
            return cls()

        def opt(key: str) -> float | None:
            v = d.get(key)
            return None if v is None else float(v)

        return cls(
            strikes=float(d.get("strikes") or 0.0),
            strikes_at=opt("strikes_at"),
            last_incident_at=opt("last_incident_at"),
            throttles=int(d.get("throttles") or 0),
            last_throttle_at=opt("last_throttle_at"),
            throttle_evidence=str(d.get("throttle_evidence") or ""),
            slashes=int(d.get("slashes") or 0),
            last_slash_at=opt("last_slash_at"),
        )


@dataclass(frozen=True, slots=True)
class ActionDecision:
    """One rung chosen for one entity, with the reason an auditor reads.

    For on-chain kinds, `evidence_doc` is the action's evidence document: store it
    (evidence table) before sending; `evidence_hash` is its keccak, the value that
    goes on chain. It is built only from the incident and the ladder step, never from
    the head block or the stake, so replaying the same incident from the same state
    yields the same hash and the contract refuses a second action.
    """

    kind: ActionKind
    entity: str
    reason: str
    evidence_hash: str
    evidence_doc: dict[str, Any] | None = None
    level: int = 0
    until_block: int = 0
    amount_wei: int = 0
    hard_evidence: bool = False
    incident_id: str = ""

    @property
    def onchain(self) -> bool:
        return self.kind is not ActionKind.OBSERVE


def is_hard_evidence(detectors: tuple[str, ...] | list[str], hard_rules: frozenset[str]) -> bool:
    """Proof, not suspicion: a proving rule, or a rule corroborated by a model."""
    names = set(detectors)
    if names & hard_rules:
        return True
    rules = {d for d in names if d.startswith(RULE_PREFIX)}
    return bool(rules) and bool(names - rules)


def _decay(value: float, since: float | None, now: float, half_life_s: float) -> float:
    if since is None or value == 0.0:
        return value
    age = max(0.0, now - since)
    return value * math.pow(0.5, age / half_life_s)


@dataclass(frozen=True, slots=True)
class ActionLadder:
    """Incident -> graded action, with cooldowns, escalation and de-escalation.

    - Strike points per incident by severity (`severity_points`, LOW..CRITICAL) decay
      with half-life `strike_half_life_s`; a throttle needs `throttle_points`.
      LOW never acts on its own; one HIGH does, and so do two MEDIUMs within one
      half-life.
    - A registered node is throttled on soft (model-only) evidence only when
      `throttle_nodes_on_soft_evidence`: throttling a node costs the network capacity,
      and nodes can be proven wrong by spot checks instead.
    - Throttle `n` (0-based, since the entity was last forgotten) has level
      `base_level + n * level_step` (<= `max_level`) and lasts
      `base_blocks * blocks_factor ** n` blocks (<= `max_blocks`): escalation on repeat.
      A new throttle waits `cooldown_s` after the previous one.
    - A slash proposal needs hard evidence (see `is_hard_evidence`), a registered
      node, severity >= `slash_min_severity`, and no proposal within
      `slash_cooldown_s`; it proposes `slash_bps` of the available stake, doubled per
      earlier proposal (<= `slash_bps_max`). Hard evidence during the slash cooldown
      climbs the throttle ladder instead.
    - De-escalation: after `recovery_s` without incidents, our throttle still in force
      is lifted (`recover`). After `forget_s` quiet, the escalation step resets.
    """

    severity_points: tuple[float, float, float, float] = (0.0, 1.0, 2.0, 3.0)
    strike_half_life_s: float = 3600.0
    throttle_points: float = 1.5
    throttle_nodes_on_soft_evidence: bool = False
    cooldown_s: float = 300.0
    base_level: int = 1
    level_step: int = 1
    max_level: int = 5
    base_blocks: int = 300
    blocks_factor: float = 2.0
    max_blocks: int = 7200
    hard_rules: frozenset[str] = field(default=HARD_RULES)
    slash_min_severity: Severity = Severity.HIGH
    slash_bps: int = 1000
    slash_bps_max: int = 5000
    slash_cooldown_s: float = 3600.0
    recovery_s: float = 1800.0
    forget_s: float = 7 * 86400.0

    def __post_init__(self) -> None:
        if self.throttle_points <= 0 or self.strike_half_life_s <= 0:
            raise ValueError("throttle_points and strike_half_life_s must be positive")
        if not 1 <= self.base_level <= self.max_level <= 255:
            raise ValueError("need 1 <= base_level <= max_level <= 255")
        if not 0 < self.slash_bps <= self.slash_bps_max <= 10_000:
            raise ValueError("need 0 < slash_bps <= slash_bps_max <= 10000")
        if self.base_blocks < 1 or self.max_blocks < self.base_blocks:
            raise ValueError("need 1 <= base_blocks <= max_blocks")

    # ------------------------------------------------------------------ helpers

    def throttle_step(self, n: int) -> tuple[int, int]:
        """(level, duration in blocks) of the entity's `n`-th throttle (0-based)."""
        level = min(self.base_level + n * self.level_step, self.max_level)
        blocks = min(int(self.base_blocks * self.blocks_factor**n), self.max_blocks)
        return level, max(blocks, 1)

    def slash_share_bps(self, n: int) -> int:
        """Share of available stake proposed by the entity's `n`-th slash (0-based)."""
        return min(self.slash_bps * 2**n, self.slash_bps_max)

    def strikes_at(self, state: EnforcementState, now: float) -> float:
        """The entity's strike points decayed to `now`."""
        return _decay(state.strikes, state.strikes_at, now, self.strike_half_life_s)

    @staticmethod
    def _doc(action: ActionKind, entity: str, **fields: Any) -> tuple[str, dict[str, Any]]:
        doc = {"v": ACTION_EVIDENCE_VERSION, "action": action.value, "entity": entity, **fields}
        return evidence_hash(doc), doc

    # ------------------------------------------------------------------ decide

    def decide(
        self, state: EnforcementState, incident: Incident, chain: ChainView
    ) -> tuple[EnforcementState, ActionDecision]:
        """The entity's next state and the rung to take for this incident."""
        now = incident.at
        if state.last_incident_at is not None and now - state.last_incident_at >= self.forget_s:
            state = replace(state, throttles=0)  # long good behaviour: start the ladder over
        points = self.strikes_at(state, now) + self.severity_points[int(incident.severity) - 1]
        state = replace(
            state,
            strikes=points,
            strikes_at=now,
            last_incident_at=max(now, state.last_incident_at or now),
        )
        hard = is_hard_evidence(incident.detectors, self.hard_rules)

        def observe(reason: str) -> tuple[EnforcementState, ActionDecision]:
            return state, ActionDecision(
                ActionKind.OBSERVE,
                incident.entity,
                reason,
                incident.evidence_hash,
                hard_evidence=hard,
                incident_id=incident.incident_id,
            )

        summary = {
            "incident_id": incident.incident_id,
            "incident_evidence": incident.evidence_hash,
            "category": incident.category,
            "severity": incident.severity.label,
            "detectors": sorted(set(incident.detectors)),
        }
        cooling_slash = (
            state.last_slash_at is not None and now - state.last_slash_at < self.slash_cooldown_s
        )
        if (
            hard
            and chain.is_node
            and incident.severity >= self.slash_min_severity
            and not cooling_slash
        ):
            bps = self.slash_share_bps(state.slashes)
            amount = chain.stake_available_wei * bps // 10_000
            if amount > 0:
                h, doc = self._doc(
                    ActionKind.SLASH_PROPOSAL,
                    incident.entity,
                    incident=summary,
                    step=state.slashes,
                    share_bps=bps,
                )
                new = replace(state, slashes=state.slashes + 1, last_slash_at=now)
                return new, ActionDecision(
                    ActionKind.SLASH_PROPOSAL,
                    incident.entity,
                    f"hard evidence ({', '.join(summary['detectors'])}) at "
                    f"{incident.severity.label}: propose slashing {bps / 100:g}% of available "
                    f"stake (proposal #{state.slashes + 1})",
                    h,
                    doc,
                    amount_wei=amount,
                    hard_evidence=True,
                    incident_id=incident.incident_id,
                )
        if chain.is_node and not hard and not self.throttle_nodes_on_soft_evidence:
            return observe("soft evidence on a registered node: observe only (no proof)")
        if points < self.throttle_points:
            return observe(f"{points:.2f} strike points, below the throttle bar")
        if state.last_throttle_at is not None and now - state.last_throttle_at < self.cooldown_s:
            return observe(
                f"throttle cooldown: last throttle {now - state.last_throttle_at:.0f}s ago"
            )
        level, blocks = self.throttle_step(state.throttles)
        if chain.throttled and chain.throttle_level >= level:
            return observe(f"already throttled at level {chain.throttle_level}")
        h, doc = self._doc(
            ActionKind.THROTTLE,
            incident.entity,
            incident=summary,
            step=state.throttles,
            level=level,
        )
        new = replace(
            state, throttles=state.throttles + 1, last_throttle_at=now, throttle_evidence=h
        )
        return new, ActionDecision(
            ActionKind.THROTTLE,
            incident.entity,
            f"{points:.2f} strike points ({'hard' if hard else 'soft'} evidence): throttle "
            f"#{state.throttles + 1} at level {level} for {blocks} blocks",
            h,
            doc,
            level=level,
            until_block=chain.head_block + blocks,
            hard_evidence=hard,
            incident_id=incident.incident_id,
        )

    # ------------------------------------------------------------------ recover

    def recover(
        self, state: EnforcementState, entity: str, now: float, chain: ChainView
    ) -> tuple[EnforcementState, ActionDecision | None]:
        """De-escalation: lift our throttle once the entity stayed quiet `recovery_s`.

        Called periodically (event time `now`). A throttle that expired or that
        governance pardoned is simply forgotten; one we did not send is left alone.
        """
        if not state.throttle_evidence:
            return state, None
        if not chain.throttled:
            return replace(state, throttle_evidence=""), None
        quiet_since = state.last_incident_at
        if quiet_since is not None and now - quiet_since < self.recovery_s:
            return state, None
        h, doc = self._doc(
            ActionKind.UNTHROTTLE,
            entity,
            lifts=state.throttle_evidence,
            quiet_since=quiet_since,
        )
        new = replace(state, throttle_evidence="", strikes=0.0, strikes_at=now)
        return new, ActionDecision(
            ActionKind.UNTHROTTLE,
            entity,
            f"no incident for {(now - quiet_since) if quiet_since is not None else 0:.0f}s: "
            f"lift throttle level {chain.throttle_level}",
            h,
            doc,
        )
