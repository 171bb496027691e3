"""Honouring on-chain throttles: a cache of `throttleOf` kept fresh by registry events.

Vigil throttles abusive accounts on chain; a well-behaved node refuses their
requests. Reading the chain on every request would tie serving latency to the
RPC endpoint, so states are cached: an account is read once, re-read after
`ttl_s`, and re-read at once when a Throttled/Unthrottled/Pardoned event names
it. Expiry is judged locally against the latest block seen. If the chain cannot
be read the node fails open (serves) and warns: an RPC outage must not become a
denial of service for every user.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


def is_address(value: str) -> bool:
    return bool(_ADDRESS.match(value))


class ThrottleReader(Protocol):
    """The registry reads the cache needs (RegistryClient provides them)."""

    def block_number(self) -> int: ...

    def throttle_of(self, account: str) -> tuple[int, int]: ...

    def throttle_event_accounts(self, from_block: int, to_block: int) -> set[str]: ...


@dataclass(frozen=True)
class ThrottleState:
    level: int
    until_block: int
    read_at: float


@dataclass(frozen=True)
class Throttled:
    """Why a request is refused."""

    account: str
    level: int
    until_block: int

    @property
    def reason(self) -> str:
        return (
            f"account {self.account} is throttled on chain (level {self.level}) "
            f"until block {self.until_block}"
        )


class ThrottleCache:
    """Per-account throttle states, refreshed from registry events by `run()`."""

    def __init__(
        self,
        reader: ThrottleReader,
        *,
        ttl_s: float = 30.0,
        max_entries: int = 100_000,
        max_scan_blocks: int = 2_000,
    ) -> None:
        self.reader = reader
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_scan_blocks = max_scan_blocks
        self._states: dict[str, ThrottleState] = {}
        self._inflight: dict[str, asyncio.Future[ThrottleState | None]] = {}
        self.head = 0
        self._last_scanned: int | None = None
        self._last_warning = 0.0

    def _warn(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10.0:
            self._last_warning = now
            log.warning(
                "throttle %s failed (%s: %s); serving without it", what, type(exc).__name__, exc
            )

    async def _read(self, account: str) -> ThrottleState | None:
        try:
            level, until = await asyncio.to_thread(self.reader.throttle_of, account)
        except Exception as exc:  # noqa: BLE001 - fail open, see module doc
            self._warn("read", exc)
            return None
        state = ThrottleState(level, until, time.monotonic())
        if len(self._states) >= self.max_entries:
            self._states.pop(next(iter(self._states)))
        self._states[account] = state
        return state

    async def _state(self, account: str) -> ThrottleState | None:
        state = self._states.get(account)
        if state is not None and time.monotonic() - state.read_at < self.ttl_s:
            return state
        fut = self._inflight.get(account)
        if fut is not None:  # one read per account at a time
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[account] = fut
        try:
            state = await self._read(account)
            fut.set_result(state)
            return state
        finally:
            self._inflight.pop(account, None)
            if not fut.done():  # cancelled mid-read: let waiters read for themselves
                fut.cancel()

    async def check(self, account: str) -> Throttled | None:
        """The throttle in force on `account`, or None (also when the chain is unreadable)."""
        key = account.lower()
        state = await self._state(key)
        if state is None or state.level == 0:
            return None
        if self.head and self.head > state.until_block:
            return None  # expired since it was read
        return Throttled(account, state.level, state.until_block)

    async def refresh(self) -> None:
        """One poll: follow the head and re-read accounts named by new throttle events."""
        head = await asyncio.to_thread(self.reader.block_number)
        start = head if self._last_scanned is None else self._last_scanned + 1
        if head - start >= self.max_scan_blocks:
            # Too far behind (long RPC outage): providers cap log ranges, so forget
            # every cached state instead; accounts are re-read on their next request.
            log.warning("throttle events %d blocks behind; re-reading all accounts", head - start)
            self._states.clear()
            self.head = self._last_scanned = head
            return
        accounts = await asyncio.to_thread(self.reader.throttle_event_accounts, start, head)
        self.head = head
        self._last_scanned = head
        for account in accounts:
            if account in self._states:
                await self._read(account)

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - keep polling
                self._warn("refresh", exc)
            await asyncio.sleep(interval_s)
