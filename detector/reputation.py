"""Node reputation: a 0-100 score made of named components, each explainable.

Why components and not one model score: an operator must be able to see *what*
lowered the score and contest it, and governance must be able to audit the weights.

Score = 100 * sum(weight[c] * component[c]); every component is in [0, 1] (1 = good)
and the weights sum to 1, so the score is always in [0, 100].

| component   | weight | value                                                            |
| ----------- | ------ | ---------------------------------------------------------------- |
| uptime      | 0.20   | share of heartbeat intervals in which the node was seen          |
| spot_checks | 0.25   | share of spot checks (challenges) passed                         |
| latency     | 0.10   | share of served batches within the latency SLA                   |
| errors      | 0.10   | 1 - error rate / `error_rate_floor` (0 at or above that rate)    |
| incidents   | 0.15   | exp(-incident points / `incident_scale`), points by severity     |
| throttles   | 0.10   | exp(-throttles / `throttle_scale`)                               |
| slashes     | 0.10   | exp(-slash proposals / `slash_scale`) (vetoed ones are retracted) |

Decay (exponential, by half-life, in event time): the counts behind the rate
components decay with `observation_half_life_s` (3 days), so a rate is a
recency-weighted rate and a node that recovers regains its score; penalties decay
with their own half-lives: incidents 7 days, throttles 14 days, slashes 90 days.
A rate with no observations is 1 (benefit of the doubt): each rate is smoothed
with `prior_weight` pseudo-observations of good behaviour, so a few observations
move it gradually instead of flipping it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

#: Documented weights (see the module docstring); they sum to 1.
COMPONENT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        "uptime": 0.20,
        "spot_checks": 0.25,
        "latency": 0.10,
        "errors": 0.10,
        "incidents": 0.15,
        "throttles": 0.10,
        "slashes": 0.10,
    }
)
COMPONENTS: tuple[str, ...] = tuple(COMPONENT_WEIGHTS)
#: Incident points by severity label.
INCIDENT_POINTS: Mapping[str, float] = MappingProxyType(
    {"low": 0.25, "medium": 1.0, "high": 2.0, "critical": 4.0}
)

# Decayed counters behind the components (names are stable: they are stored).
_RATES: dict[str, tuple[str, str]] = {  # component -> (good count, total count)
    "uptime": ("intervals_up", "intervals"),
    "spot_checks": ("checks_passed", "checks"),
    "latency": ("batches_in_sla", "batches"),
}
_PENALTIES: dict[str, str] = {  # component -> counter
    "incidents": "incident_points",
    "throttles": "throttles",
    "slashes": "slashes",
}


@dataclass(frozen=True, slots=True)
class Decayed:
    """A count that halves every half-life: value as of time `at`."""

    value: float = 0.0
    at: float | None = None

    def value_at(self, now: float, half_life_s: float) -> float:
        if self.at is None or self.value == 0.0:
            return self.value
        return self.value * math.pow(0.5, max(0.0, now - self.at) / half_life_s)

    def add(self, amount: float, now: float, half_life_s: float) -> Decayed:
        """Add `amount` at `now` (an event older than `at` is added at `at`)."""
        base = self.value_at(now, half_life_s)
        if self.at is not None and now < self.at:  # late event: count it, do not rewind time
            return Decayed(self.value + amount, self.at)
        return Decayed(base + amount, now)


@dataclass(frozen=True, slots=True)
class ReputationConfig:
    """Weights and decay of the score (defaults are the documented ones)."""

    weights: Mapping[str, float] = field(default_factory=lambda: dict(COMPONENT_WEIGHTS))
    observation_half_life_s: float = 3 * 86400.0
    incident_half_life_s: float = 7 * 86400.0
    throttle_half_life_s: float = 14 * 86400.0
    slash_half_life_s: float = 90 * 86400.0
    prior_weight: float = 2.0
    latency_sla_ms: float = 2000.0
    error_rate_floor: float = 0.2
    incident_scale: float = 4.0
    throttle_scale: float = 2.0
    slash_scale: float = 0.75

    def __post_init__(self) -> None:
        if set(self.weights) != set(COMPONENTS):
            raise ValueError(f"weights must name exactly {sorted(COMPONENTS)}")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("weights must be non-negative")
        if not math.isclose(sum(self.weights.values()), 1.0, abs_tol=1e-9):
            raise ValueError(f"weights must sum to 1, got {sum(self.weights.values())}")
        positive = (
            self.observation_half_life_s,
            self.incident_half_life_s,
            self.throttle_half_life_s,
            self.slash_half_life_s,
            self.latency_sla_ms,
            self.error_rate_floor,
            self.incident_scale,
            self.throttle_scale,
            self.slash_scale,
        )
        if any(v <= 0 for v in positive) or self.prior_weight < 0:
            raise ValueError("half-lives, SLA and scales must be positive")

    def half_life(self, counter: str) -> float:
        return {
            "incident_points": self.incident_half_life_s,
            "throttles": self.throttle_half_life_s,
            "slashes": self.slash_half_life_s,
        }.get(counter, self.observation_half_life_s)


@dataclass(frozen=True, slots=True)
class ComponentScore:
    """One component's share of the score, and what it cost."""

    name: str
    value: float  # 0..1, 1 = good
    weight: float
    points: float  # weight * value * 100
    lost: float  # weight * (1 - value) * 100
    detail: str


@dataclass(frozen=True, slots=True)
class Reputation:
    """A node's score at one time, with its components (largest loss first)."""

    score: float
    components: tuple[ComponentScore, ...]

    def values(self) -> dict[str, float]:
        """Component name -> value (what the `reputation.components` map stores)."""
        return {c.name: c.value for c in self.components}

    def explain(self, k: int = 3) -> str:
        """One line an operator can read: the score and the components that cost most."""
        costly = [c for c in self.components if c.lost >= 0.05][:k]
        if not costly:
            return f"score {self.score:.1f}/100: no component below its best"
        parts = ", ".join(f"{c.name} -{c.lost:.1f} ({c.detail})" for c in costly)
        return f"score {self.score:.1f}/100; lost to {parts}"


def explain_components(
    values: Mapping[str, float], config: ReputationConfig | None = None
) -> Reputation:
    """Rebuild the score and its breakdown from stored component values.

    Missing components count as 1 (unknown is not penalised); values are clamped.
    """
    cfg = config or ReputationConfig()
    comps = []
    for name in COMPONENTS:
        v = min(1.0, max(0.0, float(values.get(name, 1.0))))
        if not math.isfinite(v):
            v = 1.0
        w = cfg.weights[name]
        comps.append(ComponentScore(name, v, w, 100.0 * w * v, 100.0 * w * (1.0 - v), f"{v:.0%}"))
    return _reputation(comps)


def _reputation(comps: list[ComponentScore]) -> Reputation:
    score = min(100.0, max(0.0, sum(c.points for c in comps)))
    ordered = tuple(sorted(comps, key=lambda c: (-c.lost, COMPONENTS.index(c.name))))
    return Reputation(round(score, 6), ordered)


@dataclass(frozen=True, slots=True)
class NodeReputation:
    """Decayed evidence about one node; pure updates return a new value.

    Keep one per node (e.g. in a Faust table via `to_dict`) and feed it events in
    event time; `score(now)` gives the current `Reputation`.
    """

    counters: Mapping[str, Decayed] = field(default_factory=dict)

    def _add(self, cfg: ReputationConfig, now: float, **amounts: float) -> NodeReputation:
        new = dict(self.counters)
        for name, amount in amounts.items():
            new[name] = new.get(name, Decayed()).add(amount, now, cfg.half_life(name))
        return NodeReputation(new)

    def count(self, name: str, now: float, cfg: ReputationConfig | None = None) -> float:
        c = cfg or ReputationConfig()
        return self.counters.get(name, Decayed()).value_at(now, c.half_life(name))

    # ------------------------------------------------------------ observations

    def observe_interval(
        self, now: float, up: bool, cfg: ReputationConfig | None = None
    ) -> NodeReputation:
        """One heartbeat interval ended; `up` when the node was seen in it."""
        return self._add(cfg or ReputationConfig(), now, intervals=1.0, intervals_up=float(up))

    def observe_spot_check(
        self, now: float, passed: bool, cfg: ReputationConfig | None = None
    ) -> NodeReputation:
        return self._add(cfg or ReputationConfig(), now, checks=1.0, checks_passed=float(passed))

    def observe_batch(
        self,
        now: float,
        latency_ms: float,
        requests: int,
        errors: int,
        cfg: ReputationConfig | None = None,
    ) -> NodeReputation:
        """One served batch: its latency against the SLA, requests and errors."""
        c = cfg or ReputationConfig()
        in_sla = float(math.isfinite(latency_ms) and latency_ms <= c.latency_sla_ms)
        return self._add(
            c,
            now,
            batches=1.0,
            batches_in_sla=in_sla,
            requests=float(max(requests, 0)),
            errors=float(max(errors, 0)),
        )

    def observe_incident(
        self, now: float, severity: str, cfg: ReputationConfig | None = None
    ) -> NodeReputation:
        points = INCIDENT_POINTS.get(severity.lower())
        if points is None:
            raise ValueError(f"unknown severity {severity!r}")
        return self._add(cfg or ReputationConfig(), now, incident_points=points)

    def observe_throttle(self, now: float, cfg: ReputationConfig | None = None) -> NodeReputation:
        return self._add(cfg or ReputationConfig(), now, throttles=1.0)

    def observe_slash(
        self, now: float, cfg: ReputationConfig | None = None, *, vetoed: bool = False
    ) -> NodeReputation:
        """A slash proposal against the node (`vetoed=True` retracts one)."""
        return self._add(cfg or ReputationConfig(), now, slashes=-1.0 if vetoed else 1.0)

    # ------------------------------------------------------------ score

    def score(self, now: float, cfg: ReputationConfig | None = None) -> Reputation:
        """The node's reputation at `now`."""
        c = cfg or ReputationConfig()

        def n(name: str) -> float:
            return max(0.0, self.count(name, now, c))

        comps: list[ComponentScore] = []
        for comp, (good_name, total_name) in _RATES.items():
            good, total = n(good_name), n(total_name)
            value = (min(good, total) + c.prior_weight) / (total + c.prior_weight)
            if total == 0 and c.prior_weight == 0:
                value = 1.0
            detail = f"{good:.1f}/{total:.1f} recent"
            comps.append(_component(c, comp, value, detail))
        requests, errors = n("requests"), n("errors")
        rate = errors / (requests + c.prior_weight) if requests + c.prior_weight > 0 else 0.0
        comps.append(
            _component(
                c, "errors", 1.0 - rate / c.error_rate_floor, f"{rate:.1%} recent error rate"
            )
        )
        scales = {
            "incidents": c.incident_scale,
            "throttles": c.throttle_scale,
            "slashes": c.slash_scale,
        }
        for comp, counter in _PENALTIES.items():
            amount = n(counter)
            comps.append(
                _component(c, comp, math.exp(-amount / scales[comp]), f"{amount:.2f} decayed")
            )
        return _reputation(comps)

    # ------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, list[float | None]]:
        return {k: [v.value, v.at] for k, v in self.counters.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> NodeReputation:
        if not d:
            return cls()
        out = {}
        for k, pair in d.items():
            value, at = pair
            out[str(k)] = Decayed(float(value), None if at is None else float(at))
        return cls(out)


def _component(cfg: ReputationConfig, name: str, value: float, detail: str) -> ComponentScore:
    v = min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0
    w = cfg.weights[name]
    return ComponentScore(name, v, w, 100.0 * w * v, 100.0 * w * (1.0 - v), detail)
