"""Dynamic batching with a stand-in model: batch forming, bounds, failure isolation."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from inference_node.batcher import (
    BatcherClosed,
    BatchFailed,
    BatchStats,
    DynamicBatcher,
    QueueFull,
)
from inference_node.model import Encoded


class FakeModel:
    """Vectors = [len(text)] * 4; records the batch sizes it saw."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.sizes: list[int] = []
        self.fail_next = False
        self.gate: threading.Event | None = None

    def encode(self, texts: list[str]) -> Encoded:
        if self.gate is not None:
            self.gate.wait(5)
        time.sleep(self.delay_s)
        self.sizes.append(len(texts))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        v = np.array([[len(t)] * 4 for t in texts], dtype=np.float32)
        return Encoded(v, [len(t) for t in texts])


def test_concurrent_requests_share_batches_and_get_their_own_rows() -> None:
    model = FakeModel(delay_s=0.01)
    stats: list[BatchStats] = []

    async def go() -> None:
        b = DynamicBatcher(
            model.encode, max_batch_size=8, max_wait_ms=20, queue_limit=100, on_batch=stats.append
        )
        await b.start()
        try:
            texts = ["x" * (i + 1) for i in range(40)]
            results = await asyncio.gather(*(b.submit([t]) for t in texts))
        finally:
            await b.stop()
        for t, r in zip(texts, results, strict=True):
            assert r.vectors.shape == (1, 4) and r.vectors[0, 0] == len(t)
            assert r.tokens == [len(t)]
        assert max(r.batch_size for r in results) > 1

    asyncio.run(go())
    assert max(model.sizes) == 8 and all(s <= 8 for s in model.sizes)
    assert sum(model.sizes) == 40
    assert sum(s.batch_size for s in stats) == 40 and sum(s.tokens for s in stats) == 820
    shares = [s.latency_ms for s in stats]
    assert all(ms > 0 for ms in shares)


def test_a_lone_request_waits_at_most_about_max_wait() -> None:
    model = FakeModel()

    async def go() -> float:
        b = DynamicBatcher(model.encode, max_batch_size=64, max_wait_ms=30, queue_limit=10)
        await b.start()
        try:
            t0 = time.perf_counter()
            await b.submit(["hi"])
            return time.perf_counter() - t0
        finally:
            await b.stop()

    assert 0.02 <= asyncio.run(go()) < 1.0


def test_oversized_request_is_split_into_model_sized_chunks() -> None:
    model = FakeModel()

    async def go() -> None:
        b = DynamicBatcher(model.encode, max_batch_size=4, max_wait_ms=1, queue_limit=10)
        await b.start()
        try:
            r = await b.submit([str(i) * (i + 1) for i in range(10)])
        finally:
            await b.stop()
        assert [int(x) for x in r.vectors[:, 0]] == list(range(1, 11))

    asyncio.run(go())
    assert model.sizes == [4, 4, 2]


def test_full_queue_refuses_at_once_and_recovers() -> None:
    model = FakeModel()
    model.gate = threading.Event()

    async def go() -> None:
        b = DynamicBatcher(model.encode, max_batch_size=1, max_wait_ms=0, queue_limit=3)
        await b.start()
        try:
            first = asyncio.create_task(b.submit(["a"]))  # taken by the (blocked) worker
            await asyncio.sleep(0.05)
            waiting = [asyncio.create_task(b.submit([c])) for c in "bcd"]
            await asyncio.sleep(0.01)
            with pytest.raises(QueueFull):
                await b.submit(["e"])
            model.gate.set()
            done = await asyncio.gather(first, *waiting)
            assert len(done) == 4
            assert (await b.submit(["again"])).vectors[0, 0] == 5
        finally:
            model.gate.set()
            await b.stop()

    asyncio.run(go())


def test_a_failed_batch_fails_only_its_requests_and_the_worker_survives() -> None:
    model = FakeModel()
    stats: list[BatchStats] = []

    async def go() -> None:
        b = DynamicBatcher(
            model.encode, max_batch_size=8, max_wait_ms=5, queue_limit=10, on_batch=stats.append
        )
        await b.start()
        try:
            model.fail_next = True
            with pytest.raises(BatchFailed):
                await b.submit(["x"])
            assert (await b.submit(["yy"])).vectors[0, 0] == 2
        finally:
            await b.stop()
        with pytest.raises(BatcherClosed):
            await b.submit(["late"])

    asyncio.run(go())
    assert [s.errors for s in stats] == [1, 0]


def test_stop_fails_queued_requests_instead_of_hanging() -> None:
    model = FakeModel()
    model.gate = threading.Event()

    async def go() -> None:
        b = DynamicBatcher(model.encode, max_batch_size=1, max_wait_ms=0, queue_limit=10)
        await b.start()
        asyncio.create_task(b.submit(["a"]))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(b.submit(["b"]))
        await asyncio.sleep(0.01)
        await b.stop()
        model.gate.set()
        with pytest.raises(BatcherClosed):
            await queued

    asyncio.run(go())
