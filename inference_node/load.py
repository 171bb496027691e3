"""Load generator: realistic user traffic for a gateway (or a single node).

Open-loop Poisson arrivals at a target rate (bounded by a concurrency cap, so
an overloaded target slows the generator instead of exhausting sockets; the
arrivals that had to wait are counted as `late`). Each request comes from one
of a set of user accounts, sent both as the OpenAI `user` field and as the
`x-vigil-account` header, with a skewed (Zipf-like) activity so that a few
users are heavy, as on a real network. Texts are drawn from a built-in word
list with log-normal lengths (mostly short queries, a tail of long passages),
and some requests batch several inputs. Everything is seeded: the same
configuration sends the same requests.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from eth_utils import keccak

ACCOUNT_HEADER = "x-vigil-account"
NODE_HEADER = "x-vigil-node-id"

_WORD_TEXT = """
    the of and to in is that for it as was with be by on not he this are or his from at
    which but have an they you were her she there one all we their been has when who will
    more if no out so said what up its about into than them can only other new some time
    could these two may then do first any my now such like our over man me even most made
    after also did many before must through back years where much your way well down should
    because each just those people how too little state good very make world still own see
    men work long get here between both life being under never day same another know while
    last might us great old year off come since against go came right used take three
    model network node inference token embedding vector search query document answer user
    question latency throughput batch request response server client cluster market price
    chain block transaction contract stake reward wallet account settlement protocol data
    summary report review article paper research study result method analysis training
    language image video audio music recipe travel weather sport health finance history
    science city country river mountain ocean forest garden kitchen school office product
    customer support order delivery payment invoice policy security privacy access update
    error issue fix release version feature design test build deploy monitor alert log
    fast slow simple complex large small open private public local global daily weekly
    explain describe compare translate classify find write list show tell help recommend
"""
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())


class LoadConfigError(ValueError):
    """A load configuration that cannot run."""


@dataclass(frozen=True)
class LoadConfig:
    """What to send, how fast and for how long."""

    url: str = "http://127.0.0.1:8000"
    rate: float = 5.0  # mean requests per second (Poisson)
    duration_s: float = 30.0
    max_requests: int | None = None  # stop earlier after this many
    concurrency: int = 32
    users: int = 20
    seed: int = 0
    timeout_s: float = 30.0
    model: str | None = "all-MiniLM-L6-v2"
    median_words: float = 12.0
    max_words: int = 180  # stays under the nodes' default 256-token window
    max_inputs: int = 8  # largest batch one request carries

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration_s <= 0:
            raise LoadConfigError("rate and duration_s must be > 0")
        if self.concurrency < 1 or self.users < 1 or self.max_inputs < 1:
            raise LoadConfigError("concurrency, users and max_inputs must be >= 1")
        if self.max_requests is not None and self.max_requests < 1:
            raise LoadConfigError("max_requests must be >= 1")
        if not 1 <= self.median_words <= self.max_words:
            raise LoadConfigError("need 1 <= median_words <= max_words")


def user_accounts(n: int, seed: int = 0) -> list[str]:
    """`n` deterministic 0x addresses standing for the network's users."""
    return ["0x" + keccak(f"vigil-load-user|{seed}|{i}".encode())[-20:].hex() for i in range(n)]


class RequestFactory:
    """Seeded source of (account, embeddings request body) pairs."""

    def __init__(self, cfg: LoadConfig, rng: random.Random) -> None:
        self.cfg = cfg
        self.rng = rng
        self.accounts = user_accounts(cfg.users, cfg.seed)
        # Zipf-like: user i is 1/(i+1) as active as the first.
        self._cum = list(_cumsum([1.0 / (i + 1) for i in range(cfg.users)]))

    def account(self) -> str:
        x = self.rng.random() * self._cum[-1]
        lo, hi = 0, len(self._cum) - 1
        while lo < hi:  # first index whose cumulative weight exceeds x
            mid = (lo + hi) // 2
            if self._cum[mid] > x:
                hi = mid
            else:
                lo = mid + 1
        return self.accounts[lo]

    def n_words(self) -> int:
        n = round(self.rng.lognormvariate(math.log(self.cfg.median_words), 0.9))
        return min(max(n, 1), self.cfg.max_words)

    def text(self) -> str:
        words = [self.rng.choice(WORDS) for _ in range(self.n_words())]
        out: list[str] = []
        start = True
        for w in words:
            out.append(w.capitalize() if start else w)
            start = self.rng.random() < 0.08
            if start:
                out[-1] += "."
        s = " ".join(out)
        return s if s.endswith(".") else s + ("?" if self.rng.random() < 0.3 else ".")

    def n_inputs(self) -> int:
        if self.cfg.max_inputs == 1 or self.rng.random() < 0.75:
            return 1
        return self.rng.randint(2, self.cfg.max_inputs)

    def request(self) -> tuple[str, dict[str, Any]]:
        account = self.account()
        n = self.n_inputs()
        inp: str | list[str] = self.text() if n == 1 else [self.text() for _ in range(n)]
        body: dict[str, Any] = {"input": inp, "user": account}
        if self.cfg.model:
            body["model"] = self.cfg.model
        return account, body


def _cumsum(xs: list[float]) -> Iterator[float]:
    total = 0.0
    for x in xs:
        total += x
        yield total


def arrival_times(rate: float, rng: random.Random) -> Iterator[float]:
    """Offsets (s) of a Poisson process with `rate` events per second."""
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        yield t


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of an ascending list; 0 when empty."""
    if not sorted_values:
        return 0.0
    k = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(k, len(sorted_values)) - 1]


@dataclass
class LoadSummary:
    """Counts and latency of one run (`to_dict()` is the JSON the CLI prints)."""

    sent: int = 0
    ok: int = 0
    throttled: int = 0  # HTTP 429 (throttled account or overloaded network)
    errors: int = 0  # any other status, or no response at all
    late: int = 0  # arrivals that waited for a free concurrency slot
    elapsed_s: float = 0.0
    inputs: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    by_node: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def done(self) -> int:
        return self.ok + self.throttled + self.errors

    def latency(self, q: float) -> float:
        return percentile(sorted(self.latencies_ms), q)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "ok": self.ok,
            "throttled_429": self.throttled,
            "errors": self.errors,
            "late": self.late,
            "inputs": self.inputs,
            "elapsed_s": round(self.elapsed_s, 3),
            "achieved_rps": round(self.sent / self.elapsed_s, 2) if self.elapsed_s else 0.0,
            "p50_ms": round(self.latency(50), 2),
            "p99_ms": round(self.latency(99), 2),
            "statuses": dict(sorted(self.statuses.items())),
            "by_node": dict(sorted(self.by_node.items())),
        }


ProgressFn = Callable[[LoadSummary, float], None]  # (summary so far, seconds elapsed)


async def run_load(
    cfg: LoadConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    on_progress: ProgressFn | None = None,
) -> LoadSummary:
    """Send requests to `cfg.url` until `duration_s` (or `max_requests`); all are awaited.

    Latency is measured per request (ok ones only, for p50/p99) from the moment
    it is sent; `on_progress` is called after every completed request.
    """
    rng = random.Random(f"vigil-load|{cfg.seed}")
    factory = RequestFactory(cfg, rng)
    summary = LoadSummary()
    sem = asyncio.Semaphore(cfg.concurrency)
    tasks: set[asyncio.Task[None]] = set()
    url = cfg.url.rstrip("/") + "/v1/embeddings"
    limits = httpx.Limits(
        max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency
    )
    t0 = time.monotonic()

    async with httpx.AsyncClient(
        transport=transport, timeout=cfg.timeout_s, limits=limits
    ) as client:

        async def one(account: str, body: dict[str, Any]) -> None:
            started = time.perf_counter()
            try:
                resp = await client.post(url, json=body, headers={ACCOUNT_HEADER: account})
            except httpx.HTTPError as exc:
                summary.errors += 1
                summary.statuses[type(exc).__name__] += 1
            else:
                summary.statuses[str(resp.status_code)] += 1
                if resp.status_code == 200:
                    summary.ok += 1
                    summary.latencies_ms.append((time.perf_counter() - started) * 1000.0)
                    node = resp.headers.get(NODE_HEADER)
                    if node:
                        summary.by_node[node] += 1
                elif resp.status_code == 429:
                    summary.throttled += 1
                else:
                    summary.errors += 1
            finally:
                sem.release()
                if on_progress is not None:
                    on_progress(summary, time.monotonic() - t0)

        for offset in arrival_times(cfg.rate, rng):
            if offset > cfg.duration_s:
                break
            if cfg.max_requests is not None and summary.sent >= cfg.max_requests:
                break
            delay = t0 + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if sem.locked():
                summary.late += 1
            await sem.acquire()
            account, body = factory.request()
            summary.sent += 1
            summary.inputs += 1 if isinstance(body["input"], str) else len(body["input"])
            task = asyncio.create_task(one(account, body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    summary.elapsed_s = time.monotonic() - t0
    return summary
