"""Dynamic batching: many small requests become one forward pass.

A GPU is used well only with full batches, while a lone request must not wait
long: the batcher closes a batch when it holds `max_batch_size` inputs or when
its oldest request has waited `max_wait_ms`, runs the model in one dedicated
worker thread (the event loop keeps answering), and resolves each request's
future with its slice. The queue is bounded so that overload turns into fast
`QueueFull` refusals (HTTP 429) rather than unbounded memory and latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from inference_node.model import Encoded

log = logging.getLogger(__name__)

EncodeFn = Callable[[list[str]], Encoded]


class BatcherError(RuntimeError):
    """Base of the batcher's refusals and failures."""


class QueueFull(BatcherError):
    """The pending queue is at its limit; the caller should back off (HTTP 429)."""


class BatcherClosed(BatcherError):
    """The batcher is not running (starting up or shutting down)."""


class BatchFailed(BatcherError):
    """The forward pass holding this request failed."""


@dataclass(frozen=True)
class BatchResult:
    """One request's share of a batch."""

    vectors: npt.NDArray[np.float32]
    tokens: list[int]
    compute_ms: float  # this request's token-weighted share of the batch's compute time
    batch_size: int
    queue_ms: float


@dataclass(frozen=True)
class BatchStats:
    """What one batch did; fed to telemetry and metrics."""

    ts: float
    latency_ms: float
    batch_size: int
    requests: int
    tokens: int
    queue_depth: int
    errors: int


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future[BatchResult]
    enqueued: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Bounded request queue in front of one model worker thread."""

    def __init__(
        self,
        encode: EncodeFn,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        queue_limit: int = 256,
        before_batch: Callable[[int], None] | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or queue_limit < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and queue_limit must be >= 1, max_wait_ms >= 0")
        self._encode = encode
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_limit = queue_limit
        self._before_batch = before_batch
        self._on_batch = on_batch
        self._pending: deque[_Pending] = deque()
        self._pending_inputs = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.batches = 0
        self.errors = 0

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (not counting the one being computed)."""
        return len(self._pending)

    async def start(self) -> None:
        if self.running:
            return
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-model")
        self._task = asyncio.create_task(self._run(), name="vigil-batcher")

    async def stop(self) -> None:
        """Stop taking work, fail whatever is still queued, release the worker thread."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(BatcherClosed("node is shutting down"))
        self._pending_inputs = 0
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # ------------------------------------------------------------------ submit
    async def submit(self, texts: list[str]) -> BatchResult:
        """Queue `texts` (one request) and wait for its vectors.

        Raises `QueueFull` at once when `queue_limit` requests are waiting,
        `BatchFailed` when the forward pass fails, `BatcherClosed` when stopped.
        """
        if not self.running or self._wakeup is None:
            raise BatcherClosed("batcher is not running")
        if len(self._pending) >= self.queue_limit:
            raise QueueFull(f"{len(self._pending)} requests queued (limit {self.queue_limit})")
        fut: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(list(texts), fut))
        self._pending_inputs += len(texts)
        self._wakeup.set()
        return await fut

    # ------------------------------------------------------------------ worker
    async def _run(self) -> None:
        while True:
            try:
                await self._wait_for_batch()
                items = self._take_batch()
                if items:
                    await self._process(items)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the worker must outlive any bad batch
                log.exception("batcher loop error (continuing)")
                await asyncio.sleep(0.01)

    async def _wait_for_batch(self) -> None:
        assert self._wakeup is not None
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._pending[0].enqueued + self.max_wait_s
        while self._pending_inputs < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _take_batch(self) -> list[_Pending]:
        items: list[_Pending] = []
        n = 0
        while self._pending:
            head = self._pending[0]
            if items and n + len(head.texts) > self.max_batch_size:
                break
            self._pending.popleft()
            self._pending_inputs -= len(head.texts)
            if head.future.done():  # caller went away (timeout, disconnect)
                continue
            items.append(head)
            n += len(head.texts)
        return items

    def _compute(self, texts: list[str]) -> tuple[Encoded, float]:
        """Worker thread: fault hook, then the model, in chunks of max_batch_size."""
        t0 = time.perf_counter()
        if self._before_batch is not None:
            self._before_batch(len(texts))
        parts = [
            self._encode(texts[i : i + self.max_batch_size])
            for i in range(0, len(texts), self.max_batch_size)
        ]
        if len(parts) == 1:
            enc = parts[0]
        else:
            enc = Encoded(
                np.concatenate([p.vectors for p in parts]), [t for p in parts for t in p.tokens]
            )
        return enc, (time.perf_counter() - t0) * 1000.0

    async def _process(self, items: list[_Pending]) -> None:
        texts = [t for it in items for t in it.texts]
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        self.batches += 1
        try:
            enc, ms = await loop.run_in_executor(self._executor, self._compute, texts)
            if enc.vectors.shape[0] != len(texts) or len(enc.tokens) != len(texts):
                raise BatchFailed(f"model returned {enc.vectors.shape[0]} rows for {len(texts)}")
        except Exception as exc:  # noqa: BLE001 - every waiter gets the failure
            self.errors += len(items)
            log.warning("batch of %d inputs failed: %s", len(texts), type(exc).__name__)
            err = exc if isinstance(exc, BatcherError) else BatchFailed("inference failed")
            for it in items:
                if not it.future.done():
                    it.future.set_exception(err)
            ms = (time.monotonic() - started) * 1000.0
            self._report(ms, len(texts), 0, len(items), errors=len(items))
            return
        total_tokens = max(1, sum(enc.tokens))
        off = 0
        for it in items:
            k = len(it.texts)
            toks = enc.tokens[off : off + k]
            result = BatchResult(
                vectors=enc.vectors[off : off + k],
                tokens=toks,
                compute_ms=ms * sum(toks) / total_tokens,
                batch_size=len(texts),
                queue_ms=(started - it.enqueued) * 1000.0,
            )
            off += k
            if not it.future.done():
                it.future.set_result(result)
        self._report(ms, len(texts), sum(enc.tokens), len(items), errors=0)

    def _report(self, ms: float, size: int, tokens: int, requests: int, errors: int) -> None:
        if self._on_batch is None:
            return
        stats = BatchStats(
            ts=time.time(),
            latency_ms=ms,
            batch_size=size,
            requests=requests,
            tokens=tokens,
            queue_depth=len(self._pending),
            errors=errors,
        )
        try:
            self._on_batch(stats)
        except Exception:  # noqa: BLE001 - observers never break serving
            log.exception("batch observer failed")
