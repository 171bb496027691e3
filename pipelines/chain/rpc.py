"""A pool of JSON-RPC endpoints: batched calls, health checks, rotation and backoff.

Why not web3's provider: the follower needs a block's transactions, receipts and
logs for many blocks at once, so it sends JSON-RPC *batches* (one HTTP round trip
for dozens of calls) and reads the raw hex results without web3's per-field
formatting. And a production follower must survive a provider that rate-limits
(HTTP 429, JSON-RPC -32005), times out or dies: the pool then moves to the next
endpoint, keeps the failed one in exponential backoff (with jitter) and tries it
again once its backoff expires or the periodic health check sees it answer.

Errors a caller sees:
- `RpcUnavailable` from `start()` when no endpoint answers (or they serve
  different chains): a configuration problem, reported with every endpoint's error;
- `RpcError` when an endpoint *answered* a call with a JSON-RPC error that is not
  about the endpoint itself (e.g. method not found): retrying elsewhere won't help;
- `PoolClosed` when the pool was closed while a call waited for an endpoint.
While at least one endpoint was reachable at start, calls never fail for
transport reasons: they wait (with backoff) until some endpoint answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

Call = tuple[str, Sequence[Any]]

#: JSON-RPC error codes that mean "this endpoint can't serve you now", not "bad call".
ENDPOINT_ERROR_CODES = frozenset({-32005, -32603, 429})
#: Substrings of JSON-RPC error messages with the same meaning (providers vary).
ENDPOINT_ERROR_HINTS = ("rate limit", "too many requests", "limit exceeded", "capacity")


class RpcUnavailable(RuntimeError):
    """No JSON-RPC endpoint can be used; the message names each one and why."""


class RpcError(RuntimeError):
    """An endpoint answered a call with a JSON-RPC error about the call itself."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: JSON-RPC error {code}: {message}")
        self.method = method
        self.code = code
        self.message = message


class PoolClosed(RuntimeError):
    """The pool was closed while a call was waiting for an endpoint."""


class EndpointError(Exception):
    """Transport-level failure of one endpoint (timeout, refused, 5xx, 429, bad JSON)."""

    def __init__(self, kind: str, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.retry_after_s = retry_after_s


@dataclass
class Endpoint:
    """Health bookkeeping of one endpoint."""

    url: str
    up: bool = True
    failures: int = 0  # consecutive
    retry_at: float = 0.0  # monotonic time from which it may be tried again
    head: int | None = None
    last_error: str = ""
    requests: int = 0
    errors: int = 0

    @property
    def label(self) -> str:
        """The URL without credentials or path secrets (provider keys live in paths)."""
        from urllib.parse import urlsplit

        p = urlsplit(self.url)
        return f"{p.scheme}://{p.hostname}:{p.port}" if p.port else f"{p.scheme}://{p.hostname}"


@dataclass
class PoolHooks:
    """Callbacks for metrics; all optional."""

    on_request: Callable[[str, int, float], None] | None = None  # endpoint, calls, seconds
    on_error: Callable[[str, str], None] | None = None  # endpoint, kind
    on_health: Callable[[str, bool], None] | None = None  # endpoint, up


@dataclass
class RpcPool:
    """Endpoints tried in order; the current one is kept until it fails."""

    urls: Sequence[str]
    timeout_s: float = 10.0
    max_batch: int = 50
    max_concurrency: int = 4
    backoff_base_s: float = 0.2
    backoff_max_s: float = 15.0
    health_interval_s: float = 5.0
    stale_blocks: int = 64  # an endpoint this far behind the best head counts as down
    hooks: PoolHooks = field(default_factory=PoolHooks)
    seed: int | None = None
    endpoints: list[Endpoint] = field(init=False)
    chain_id: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not self.urls:
            raise RpcUnavailable("no JSON-RPC endpoint configured (set VIGIL_RPC_URL)")
        self.endpoints = [Endpoint(u) for u in dict.fromkeys(self.urls)]
        self._index = 0
        self._ids = itertools.count(1)
        self._rng = random.Random(self.seed)
        self._session: aiohttp.ClientSession | None = None
        self._closed = asyncio.Event()
        self._health_task: asyncio.Task[None] | None = None
        self._sem = asyncio.Semaphore(self.max_concurrency)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, *, health_loop: bool = True) -> int:
        """Check every endpoint; return the chain id. Raises `RpcUnavailable` when none
        answers or when they disagree on the chain (a misconfiguration)."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            connector=aiohttp.TCPConnector(limit=self.max_concurrency * 2),
        )
        ids = await asyncio.gather(*(self._probe_chain_id(e) for e in self.endpoints))
        found = {e.url: cid for e, cid in zip(self.endpoints, ids, strict=True) if cid is not None}
        if not found:
            await self.close()
            detail = "; ".join(f"{e.label}: {e.last_error}" for e in self.endpoints)
            raise RpcUnavailable(
                f"none of the {len(self.endpoints)} JSON-RPC endpoint(s) answered ({detail}). "
                "Check VIGIL_RPC_URL / VIGIL_RPC_URLS and that the node is running."
            )
        if len(set(found.values())) > 1:
            await self.close()
            raise RpcUnavailable(
                f"the JSON-RPC endpoints serve different chains: {found}; "
                "configure endpoints of one chain only"
            )
        self.chain_id = next(iter(found.values()))
        for e in self.endpoints:
            if e.url not in found:
                log.warning("JSON-RPC endpoint %s is down at start: %s", e.label, e.last_error)
        self._index = next(i for i, e in enumerate(self.endpoints) if e.up)
        if health_loop:
            self._health_task = asyncio.create_task(self._health_loop(), name="rpc-health")
        return self.chain_id

    async def close(self) -> None:
        self._closed.set()
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._health_task
            self._health_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> RpcPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def current(self) -> Endpoint:
        return self.endpoints[self._index]

    # ------------------------------------------------------------------ calls

    async def call(self, method: str, *params: Any) -> Any:
        """One call (sent as a batch of one)."""
        return (await self.batch([(method, list(params))]))[0]

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        """Results of `calls`, in order (a JSON-RPC `null` result stays None).

        Split into batches of at most `max_batch`, sent concurrently; each batch is
        retried on the next endpoint when its endpoint fails, so a result always comes
        from one consistent answer of one endpoint per batch.
        """
        if not calls:
            return []
        chunks = [calls[i : i + self.max_batch] for i in range(0, len(calls), self.max_batch)]
        parts = await asyncio.gather(*(self._send_chunk(c) for c in chunks))
        return [r for part in parts for r in part]

    async def _send_chunk(self, calls: Sequence[Call]) -> list[Any]:
        while True:
            ep = await self._pick()
            try:
                async with self._sem:
                    return await self._post(ep, calls)
            except EndpointError as e:
                self._failed(ep, e)
            except _BatchTooLarge:
                if len(calls) <= 1:
                    self._failed(ep, EndpointError("bad_reply", "refused a single call"))
                    continue
                half = len(calls) // 2
                if half < self.max_batch:
                    log.warning(
                        "%s refused a batch of %d calls; batches now %d", ep.label, len(calls), half
                    )
                    self.max_batch = half
                first, second = await asyncio.gather(
                    self._send_chunk(calls[:half]), self._send_chunk(calls[half:])
                )
                return first + second

    async def _pick(self) -> Endpoint:
        """The current endpoint if usable, else the next usable one in order; when all
        are backing off, wait for the first to become usable again."""
        while True:
            if self._closed.is_set():
                raise PoolClosed("JSON-RPC pool closed")
            now = time.monotonic()
            n = len(self.endpoints)
            for k in range(n):
                i = (self._index + k) % n
                if self.endpoints[i].retry_at <= now:
                    if i != self._index:
                        log.warning(
                            "JSON-RPC: switching from %s to %s",
                            self.endpoints[self._index].label,
                            self.endpoints[i].label,
                        )
                        self._index = i
                    return self.endpoints[i]
            wait = min(e.retry_at for e in self.endpoints) - now
            log.debug("all JSON-RPC endpoints backing off; waiting %.2fs", wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), timeout=max(wait, 0.01))

    def _backoff(self, failures: int) -> float:
        base = min(self.backoff_max_s, self.backoff_base_s * 2 ** max(failures - 1, 0))
        return base * (0.5 + 0.5 * self._rng.random())

    def _failed(self, ep: Endpoint, e: EndpointError) -> None:
        ep.failures += 1
        ep.errors += 1
        ep.up = False
        ep.last_error = str(e)
        delay = self._backoff(ep.failures)
        if e.retry_after_s is not None:
            delay = max(delay, min(e.retry_after_s, self.backoff_max_s))
        ep.retry_at = time.monotonic() + delay
        log.warning("JSON-RPC endpoint %s failed (%s); backing off %.2fs", ep.label, e, delay)
        if self.hooks.on_error:
            self.hooks.on_error(ep.label, e.kind)
        if self.hooks.on_health:
            self.hooks.on_health(ep.label, False)
        if len(self.endpoints) > 1 and self.endpoints[self._index] is ep:
            self._index = (self._index + 1) % len(self.endpoints)

    def _succeeded(self, ep: Endpoint) -> None:
        if not ep.up:
            log.info("JSON-RPC endpoint %s answers again", ep.label)
            if self.hooks.on_health:
                self.hooks.on_health(ep.label, True)
        ep.up = True
        ep.failures = 0
        ep.retry_at = 0.0

    async def _post(self, ep: Endpoint, calls: Sequence[Call]) -> list[Any]:
        if self._session is None:
            raise PoolClosed("JSON-RPC pool not started")
        ids = [next(self._ids) for _ in calls]
        body = json.dumps(
            [
                {"jsonrpc": "2.0", "id": i, "method": m, "params": list(p)}
                for i, (m, p) in zip(ids, calls, strict=True)
            ]
        )
        t0 = time.monotonic()
        ep.requests += 1
        try:
            async with self._session.post(
                ep.url, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except TimeoutError as e:
            raise EndpointError("timeout", f"no answer within {self.timeout_s:g}s") from e
        except aiohttp.ClientError as e:
            raise EndpointError("connection", str(e) or type(e).__name__) from e
        if self.hooks.on_request:
            self.hooks.on_request(ep.label, len(calls), time.monotonic() - t0)
        if status == 429:
            raise EndpointError("rate_limited", "HTTP 429", retry_after)
        if status == 413:
            raise _BatchTooLarge()
        if status >= 500 or status in (401, 403, 404, 408):
            raise EndpointError(f"http_{status}", raw[:200].decode("utf-8", "replace"))
        try:
            reply = json.loads(raw)
        except ValueError as e:
            raise EndpointError("bad_json", raw[:200].decode("utf-8", "replace")) from e
        if isinstance(reply, dict):  # one error for the whole batch
            err = reply.get("error") or {}
            msg = str(err.get("message", reply))[:200]
            if len(calls) > 1 and "batch" in msg.lower():
                raise _BatchTooLarge()
            if _endpoint_problem(err):
                raise EndpointError("rate_limited", msg, retry_after)
            raise EndpointError("bad_reply", msg)
        if not isinstance(reply, list):
            raise EndpointError("bad_reply", f"expected a JSON array, got {type(reply).__name__}")
        by_id = {r.get("id"): r for r in reply if isinstance(r, dict)}
        out: list[Any] = []
        for i, (method, _params) in zip(ids, calls, strict=True):
            r = by_id.get(i)
            if r is None:
                raise EndpointError("bad_reply", f"no answer for call {i} ({method})")
            if "error" in r and r["error"] is not None:
                err = r["error"]
                if _endpoint_problem(err):
                    raise EndpointError("rate_limited", str(err.get("message"))[:200], retry_after)
                self._succeeded(ep)
                raise RpcError(method, int(err.get("code", 0)), str(err.get("message", "")))
            out.append(r.get("result"))
        self._succeeded(ep)
        return out

    # ------------------------------------------------------------------ health

    async def _probe_chain_id(self, ep: Endpoint) -> int | None:
        try:
            cid, head = await self._post(ep, [("eth_chainId", []), ("eth_blockNumber", [])])
            ep.head = int(head, 16)
            return int(cid, 16)
        except (EndpointError, RpcError, _BatchTooLarge, ValueError, TypeError) as e:
            ep.up = False
            ep.failures += 1
            ep.last_error = str(e) or type(e).__name__
            ep.retry_at = time.monotonic() + self._backoff(ep.failures)
            return None

    async def check_health(self) -> dict[str, bool]:
        """Ask every endpoint for its head; mark lagging or silent ones down, answering
        ones up. Returns endpoint label -> up."""

        async def probe(ep: Endpoint) -> None:
            try:
                (head,) = await self._post(ep, [("eth_blockNumber", [])])
                ep.head = int(head, 16)
            except (EndpointError, RpcError, _BatchTooLarge, ValueError, TypeError) as e:
                if ep.up or ep.retry_at <= time.monotonic():
                    self._failed(
                        ep, e if isinstance(e, EndpointError) else EndpointError("health", str(e))
                    )
                ep.head = None

        await asyncio.gather(*(probe(e) for e in self.endpoints))
        heads = [e.head for e in self.endpoints if e.head is not None]
        best = max(heads) if heads else None
        for e in self.endpoints:
            if e.head is None or best is None:
                continue
            if best - e.head > self.stale_blocks:
                self._failed(e, EndpointError("stale", f"head {e.head} vs best {best}"))
            else:
                self._succeeded(e)
        return {e.label: e.up for e in self.endpoints}

    async def _health_loop(self) -> None:
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), timeout=self.health_interval_s)
            if self._closed.is_set():
                return
            try:
                await self.check_health()
            except Exception:  # a health probe must never kill the pool
                log.exception("JSON-RPC health check failed")


class _BatchTooLarge(Exception):
    """The endpoint refused the batch size; the caller splits it."""


def _endpoint_problem(err: Any) -> bool:
    if not isinstance(err, dict):
        return False
    code = err.get("code")
    msg = str(err.get("message", "")).lower()
    return code in ENDPOINT_ERROR_CODES or any(h in msg for h in ENDPOINT_ERROR_HINTS)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def hex_int(value: Any) -> int:
    """A JSON-RPC quantity ("0x1a") as int; ints pass through."""
    if isinstance(value, int):
        return value
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError(f"not a hex quantity: {value!r}")
    return int(value, 16)
