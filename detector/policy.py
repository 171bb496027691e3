"""Policy: turns scores into alerts and alerts into graded actions.

A score is not a decision. Scorers only rank; this module holds the thresholds,
minimum evidence, cooldowns and the mapping from alert severity to action.
Pure functions and small frozen configs, so the policy is easy to test and audit.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


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
    """What the alert policy remembers per entity between events."""

    last_alert_at: float | None = None
    streak: int = 0  # consecutive scored events at or above the threshold

    def to_dict(self) -> dict[str, float | int | None]:
        return {"last_alert_at": self.last_alert_at, "streak": self.streak}

    @classmethod
    def from_dict(cls, d: dict[str, float | int | None] | None) -> EntityAlertState:
        if not d:
            return cls()
        at = d.get("last_alert_at")
        return cls(None if at is None else float(at), int(d.get("streak") or 0))


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """When scored events become an alert about their entity.

    - `min_window_txs`: a single odd transaction is not a bot; require a pattern.
    - `min_consecutive`: bots are anomalous persistently, humans only now and then;
      requiring several consecutive anomalous events cuts false alerts per entity.
    - `cooldown_s`: one alert per entity per cooldown, so one bot does not raise
      a thousand alerts (time is block time, never the wall clock).
    - `high_margin`: score above threshold by this share of the threshold is HIGH.
    """

    min_window_txs: int = 5
    min_consecutive: int = 3
    cooldown_s: float = 300.0
    high_margin: float = 0.05

    def step(
        self,
        state: EntityAlertState,
        *,
        score: float,
        threshold: float,
        window_txs: int,
        now: float,
    ) -> tuple[EntityAlertState, Severity | None]:
        """The entity's next state and the severity of the alert to raise (or None)."""
        if score < threshold or window_txs < self.min_window_txs:
            return EntityAlertState(state.last_alert_at, 0), None
        streak = state.streak + 1
        cooling = state.last_alert_at is not None and now - state.last_alert_at < self.cooldown_s
        if streak < self.min_consecutive or cooling:
            return EntityAlertState(state.last_alert_at, streak), None
        high = score >= threshold + self.high_margin * abs(threshold)
        return EntityAlertState(now, streak), Severity.HIGH if high else Severity.MEDIUM


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
