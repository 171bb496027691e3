"""Per-request metering and the in-memory challenge window.

The meter keeps, for the current settlement period, only what the commitment
needs: request id, tokens, compute share and output hash (never content). The
challenge store keeps request inputs so that a verifier can spot-check a served
answer, but only in memory, only for `ttl_s`, and only up to `cap` requests:
content never reaches disk, logs, telemetry, Kafka or the chain.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from inference_node.commitments import merkle_root


@dataclass(frozen=True)
class UsageRecord:
    request_id: str
    tokens: int
    compute_ms: float
    output_hash: str
    ts: float


@dataclass(frozen=True)
class UsagePeriod:
    """A closed batch of usage records, ready to settle."""

    records: tuple[UsageRecord, ...]

    @property
    def units(self) -> int:
        return sum(r.tokens for r in self.records)

    @property
    def compute_ms(self) -> float:
        return sum(r.compute_ms for r in self.records)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(r.request_id, r.output_hash) for r in self.records]

    @property
    def commitment(self) -> str:
        return merkle_root(self.pairs)


class UsageMeter:
    """Accumulates served usage until a settlement drains it.

    With `keep_records=False` (no chain) only the running totals are kept, so an
    unsettled node does not grow without bound.
    """

    def __init__(self, *, keep_records: bool = True, soft_limit: int = 50_000) -> None:
        self.keep_records = keep_records
        self.soft_limit = soft_limit
        self._records: list[UsageRecord] = []
        self.total_requests = 0
        self.total_tokens = 0
        self.total_compute_ms = 0.0
        self._on_full: Callable[[], None] | None = None

    def on_full(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever the open period passes `soft_limit` records."""
        self._on_full = callback

    def record(self, request_id: str, tokens: int, compute_ms: float, out_hash: str) -> None:
        self.total_requests += 1
        self.total_tokens += tokens
        self.total_compute_ms += compute_ms
        if not self.keep_records:
            return
        self._records.append(UsageRecord(request_id, tokens, compute_ms, out_hash, time.time()))
        if len(self._records) >= self.soft_limit and self._on_full is not None:
            self._on_full()

    @property
    def pending(self) -> int:
        return len(self._records)

    def drain(self) -> UsagePeriod:
        """Close the open period and start a new one."""
        records, self._records = self._records, []
        return UsagePeriod(tuple(records))

    def restore(self, period: UsagePeriod) -> None:
        """Put back a period whose settlement failed (it is retried with the next one)."""
        self._records[:0] = period.records


@dataclass
class ChallengeEntry:
    texts: list[str]
    output_hash: str
    created: float = field(default_factory=time.monotonic)


class ChallengeStore:
    """Bounded, expiring, memory-only map request id -> (inputs, served output hash)."""

    def __init__(
        self, *, ttl_s: float, cap: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl_s <= 0 or cap < 1:
            raise ValueError("ttl_s must be > 0 and cap >= 1")
        self.ttl_s = ttl_s
        self.cap = cap
        self._clock = clock
        self._items: OrderedDict[str, ChallengeEntry] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, request_id: str, texts: list[str], out_hash: str) -> None:
        self.purge()
        self._items[request_id] = ChallengeEntry(list(texts), out_hash, self._clock())
        self._items.move_to_end(request_id)
        while len(self._items) > self.cap:
            self._items.popitem(last=False)
            self.evicted += 1

    def get(self, request_id: str) -> ChallengeEntry | None:
        self.purge()
        return self._items.get(request_id)

    def purge(self) -> int:
        """Forget entries older than the TTL (insertion order = age order)."""
        cutoff = self._clock() - self.ttl_s
        n = 0
        while self._items:
            first = next(iter(self._items.values()))
            if first.created > cutoff:
                break
            self._items.popitem(last=False)
            n += 1
        return n

    def clear(self) -> None:
        self._items.clear()
