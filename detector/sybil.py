"""Sybil farms seen from the funder: one sender fanning out equal value to many wallets.

Each wallet of a farm sends a handful of ordinary-looking transactions and is unremarkable
on its own; the farm shows as a group. Transactions are sharded by sender, so the part of
the group a single worker can see is the funder's side: many plain value transfers
(no calldata) of (nearly) the same amount to distinct recipients within a short time.
Humans pay varied amounts to a few contacts; dust spammers send tiny, varied amounts.

`FanoutRule` is a pure step function over a small per-sender `FanoutState` (JSON-able via
`to_dict`, kept with the sender's alert state): O(1) work per plain transfer, and the state
holds only the last unmatched transfer unless a cluster of equal amounts is forming.
When `min_recipients` distinct recipients got equal amounts within `horizon_s`, the rule
fires: the funder and every funded wallet are named (each wallet once, and wallets funded
later in the same episode as they are funded).

The many-wallets-to-one-collector side (consolidation) crosses shards: it would need the
transfers keyed by receiver (a topic of (receiver, sender, amount, ts) records, e.g. token
`transfer` recipients decoded from calldata) and a receiver-side counterpart of this rule.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

#: One remembered plain transfer: (timestamp, recipient, value in wei).
Transfer = tuple[float, str, int]


@dataclass(frozen=True, slots=True)
class FanoutState:
    """What the rule remembers about one sender between its transactions."""

    pending: Transfer | None = None  # the latest transfer that matched no cluster
    ref_value: int = 0  # amount of the forming cluster (0: none)
    cluster: tuple[Transfer, ...] = ()  # equal-amount transfers, oldest first
    named: tuple[str, ...] = ()  # recipients already named in this episode
    fired_at: float | None = None  # when the episode's funder alert was raised

    @property
    def empty(self) -> bool:
        return self.pending is None and not self.cluster and not self.named

    def to_dict(self) -> dict[str, Any]:
        return {
            "pending": None if self.pending is None else list(self.pending),
            "ref_value": str(self.ref_value),  # wei exceed JSON-safe integers
            "cluster": [[t, to, str(v)] for t, to, v in self.cluster],
            "named": list(self.named),
            "fired_at": self.fired_at,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> FanoutState:
        if not d:
            return cls()

        def transfer(x: Any) -> Transfer:
            return float(x[0]), str(x[1]), int(x[2])

        p = d.get("pending")
        at = d.get("fired_at")
        return cls(
            pending=None if p is None else transfer(p),
            ref_value=int(d.get("ref_value") or 0),
            cluster=tuple(transfer(x) for x in d.get("cluster") or ()),
            named=tuple(str(x) for x in d.get("named") or ()),
            fired_at=None if at is None else float(at),
        )


@dataclass(frozen=True, slots=True)
class FanoutHit:
    """The rule fired or named more wallets: `funder` is set on the episode's first hit."""

    funder: str | None
    wallets: tuple[str, ...]
    recipients: int  # distinct recipients in the cluster so far
    ref_value: int


@dataclass(frozen=True, slots=True)
class FanoutRule:
    """Equal-amount fan-out: `min_recipients` distinct recipients of plain transfers whose
    amounts differ by at most `rel_tol` (relative), all within `horizon_s`; transfers below
    `min_value_wei` (dust) are ignored."""

    min_recipients: int = 5
    rel_tol: float = 1e-3
    horizon_s: float = 60.0
    min_value_wei: int = 10**12
    max_cluster: int = 256

    def __post_init__(self) -> None:
        if self.min_recipients < 2 or not self.horizon_s > 0 or not 0 <= self.rel_tol < 1:
            raise ValueError("need min_recipients >= 2, horizon_s > 0, 0 <= rel_tol < 1")

    def _close(self, a: int, b: int) -> bool:
        return abs(a - b) <= self.rel_tol * max(a, b)

    def step(
        self, state: FanoutState, *, sender: str, to: str, value: int, ts: float
    ) -> tuple[FanoutState, FanoutHit | None]:
        """Apply one plain value transfer (no calldata) by `sender`; returns the new state
        and a hit when the rule fires or names new wallets."""
        if value < self.min_value_wei or not to or to == sender:
            return state, None
        since = ts - self.horizon_s
        cluster = tuple(c for c in state.cluster if c[0] >= since)
        pending = state.pending if state.pending and state.pending[0] >= since else None
        ref = state.ref_value if cluster else 0
        fired_at = state.fired_at if cluster else None
        named = state.named if cluster else ()
        new: Transfer = (ts, to, value)
        if ref and self._close(ref, value):
            cluster = (*cluster, new)[-self.max_cluster :]
        elif pending is not None and self._close(pending[2], value) and pending[1] != to:
            cluster, ref, fired_at, named = (pending, new), pending[2], None, ()
            pending = None
        else:
            return FanoutState(new, ref, cluster, named, fired_at), None
        recipients = list(dict.fromkeys(c[1] for c in cluster))
        out = FanoutState(None if ref else pending, ref, cluster, named, fired_at)
        if len(recipients) < self.min_recipients:
            return out, None
        fresh = tuple(r for r in recipients if r not in named)
        funder = sender if fired_at is None else None
        if not fresh and funder is None:
            return out, None
        out = replace(out, named=(*named, *fresh), fired_at=ts if fired_at is None else fired_at)
        return out, FanoutHit(funder, fresh, len(recipients), ref)
