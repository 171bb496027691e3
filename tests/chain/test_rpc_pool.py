"""The JSON-RPC pool against scripted fake endpoints: rotation, backoff, batching, errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from pipelines.chain.follower import Follower
from pipelines.chain.metrics import FollowerMetrics
from pipelines.chain.rpc import PoolHooks, RpcError, RpcPool, RpcUnavailable
from pipelines.procs import free_port
from pipelines.settings import Settings


@dataclass
class FakeNode:
    """An endpoint whose behaviour the test switches: ok | 429 | 500 | down."""

    chain_id: int = 31337
    head: int = 100
    mode: str = "ok"
    max_batch: int | None = None
    seen: list[int] = field(default_factory=list)  # batch sizes served
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        if self.mode == "429":
            return web.Response(status=429, headers={"Retry-After": "0.05"}, text="slow down")
        if self.mode == "500":
            return web.Response(status=500, text="boom")
        calls = json.loads(await request.read())
        if self.max_batch is not None and len(calls) > self.max_batch:
            body = {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": -32600, "message": "batch too large"},
            }
            return web.json_response(body)
        self.seen.append(len(calls))
        out = []
        for c in calls:
            m = c["method"]
            if m == "eth_chainId":
                out.append({"id": c["id"], "result": hex(self.chain_id)})
            elif m == "eth_blockNumber":
                out.append({"id": c["id"], "result": hex(self.head)})
            elif m == "echo":
                out.append({"id": c["id"], "result": c["params"][0]})
            else:
                out.append(
                    {"id": c["id"], "error": {"code": -32601, "message": "Method not found"}}
                )
        return web.json_response(out[::-1])  # answers in any order: matched by id

    async def start(self) -> FakeNode:
        app = web.Application()
        app.router.add_post("/", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        self.port = self.port or free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


def _pool(*urls: str, **kw: Any) -> RpcPool:
    kw.setdefault("backoff_base_s", 0.05)
    kw.setdefault("backoff_max_s", 0.2)
    kw.setdefault("timeout_s", 2.0)
    return RpcPool(list(urls), seed=1, **kw)


def test_batches_come_back_in_call_order_and_are_split_to_the_limit() -> None:
    async def go() -> None:
        a = await FakeNode().start()
        pool = _pool(a.url, max_batch=7)
        try:
            assert await pool.start(health_loop=False) == 31337
            out = await pool.batch([("echo", [i]) for i in range(30)])
            assert out == list(range(30))
            assert max(a.seen) <= 7
        finally:
            await pool.close()
            await a.stop()

    run(go)


def test_an_endpoint_that_refuses_big_batches_gets_smaller_ones() -> None:
    async def go() -> None:
        a = await FakeNode(max_batch=4).start()
        pool = _pool(a.url, max_batch=20)
        try:
            await pool.start(health_loop=False)
            assert await pool.batch([("echo", [i]) for i in range(20)]) == list(range(20))
            assert pool.max_batch <= 4
        finally:
            await pool.close()
            await a.stop()

    run(go)


def test_rate_limited_endpoint_rotates_to_the_next_and_backs_off() -> None:
    async def go() -> None:
        a, b = await FakeNode().start(), await FakeNode().start()
        errors: list[tuple[str, str]] = []
        pool = _pool(a.url, b.url, hooks=PoolHooks(on_error=lambda e, k: errors.append((e, k))))
        try:
            await pool.start(health_loop=False)
            assert pool.current.url == a.url
            a.mode = "429"
            assert await pool.call("echo", "x") == "x"
            assert pool.current.url == b.url
            assert errors == [(pool.endpoints[0].label, "rate_limited")]
            assert not pool.endpoints[0].up and pool.endpoints[0].failures == 1
            b.mode = "500"  # now both fail: the pool waits (backoff) and retries until one heals
            a.mode = "ok"
            assert await pool.call("echo", "y") == "y"
            assert pool.current.url == a.url and pool.endpoints[0].up
            assert (f"http://127.0.0.1:{b.port}", "http_500") in errors
        finally:
            await pool.close()
            await a.stop()
            await b.stop()

    run(go)


def test_consecutive_failures_back_off_exponentially() -> None:
    pool = _pool("http://127.0.0.1:9", backoff_base_s=1.0, backoff_max_s=8.0)
    delays = [pool._backoff(k) for k in range(1, 7)]
    assert all(0.5 * 2 ** (k - 1) <= d <= 2 ** (k - 1) for k, d in enumerate(delays[:4], 1))
    assert all(4.0 <= d <= 8.0 for d in delays[4:])  # capped (with jitter)


def test_a_call_waits_while_every_endpoint_is_down_and_resumes_when_one_returns() -> None:
    async def go() -> None:
        a = await FakeNode().start()
        port = a.port
        pool = _pool(a.url)
        try:
            await pool.start(health_loop=False)
            await a.stop()  # connection refused from now on
            pending = asyncio.create_task(pool.call("echo", 5))
            await asyncio.sleep(0.5)
            assert not pending.done()
            a2 = await FakeNode(port=port).start()
            assert await asyncio.wait_for(pending, 5) == 5
            await a2.stop()
        finally:
            await pool.close()

    run(go)


def test_a_json_rpc_error_about_the_call_is_raised_not_rotated() -> None:
    async def go() -> None:
        a, b = await FakeNode().start(), await FakeNode().start()
        pool = _pool(a.url, b.url)
        try:
            await pool.start(health_loop=False)
            with pytest.raises(RpcError) as e:
                await pool.call("eth_nope")
            assert e.value.code == -32601 and pool.current.url == a.url
        finally:
            await pool.close()
            await a.stop()
            await b.stop()

    run(go)


def test_no_reachable_endpoint_at_start_is_a_clear_error() -> None:
    async def go() -> None:
        pool = _pool(f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}")
        with pytest.raises(RpcUnavailable, match="none of the 2 JSON-RPC endpoint"):
            await pool.start()

    run(go)


def test_endpoints_of_different_chains_are_refused() -> None:
    async def go() -> None:
        a, b = await FakeNode(chain_id=1).start(), await FakeNode(chain_id=2).start()
        try:
            with pytest.raises(RpcUnavailable, match="different chains"):
                await _pool(a.url, b.url).start()
        finally:
            await a.stop()
            await b.stop()

    run(go)


def test_health_check_marks_a_stale_endpoint_down_and_a_healed_one_up() -> None:
    async def go() -> None:
        a, b = await FakeNode(head=1000).start(), await FakeNode(head=1000).start()
        pool = _pool(a.url, b.url, stale_blocks=10)
        try:
            await pool.start(health_loop=False)
            b.head = 900
            state = await pool.check_health()
            assert state == {pool.endpoints[0].label: True, pool.endpoints[1].label: False}
            b.head = 1000
            await asyncio.sleep(0.25)  # past its backoff
            assert all((await pool.check_health()).values())
        finally:
            await pool.close()
            await a.stop()
            await b.stop()

    run(go)


# ------------------------------------------------------- follower summary vs metric


def _metric(f: Any, endpoint: str, kind: str) -> float:
    value = f.metrics.registry.get_sample_value(
        "vigil_rpc_errors_total", {"endpoint": endpoint, "kind": kind}
    )
    return float(value or 0.0)


def test_follower_summary_counts_the_rpc_errors_the_metric_counts(tmp_path: Path) -> None:
    """An outage of the only endpoint (connection refused): the run summary's
    `rpc_errors` is `vigil_rpc_errors_total`, not 0."""

    async def go() -> None:
        a = await FakeNode().start()
        port = a.port
        f = Follower(Settings(rpc_url=a.url, data_dir=tmp_path))
        f.pool.backoff_base_s, f.pool.backoff_max_s = 0.02, 0.1
        label = f.pool.endpoints[0].label
        try:
            await f.pool.start(health_loop=False)
            assert f.stats["rpc_errors"] == 0
            await a.stop()  # the outage
            pending = asyncio.create_task(f.pool.call("echo", 5))
            await asyncio.sleep(0.4)
            a2 = await FakeNode(port=port).start()
            assert await asyncio.wait_for(pending, 5) == 5
            await a2.stop()
        finally:
            await f.pool.close()
        failures = _metric(f, label, "connection")
        assert failures >= 2
        assert f.stats["rpc_errors"] == failures == f.pool.endpoints[0].errors

    run(go)


def test_follower_counts_json_rpc_error_answers_in_the_metric_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call error the follower retries (`RpcError`) is counted once, in the metric
    (kind `rpc_error`), and the summary reads it from there."""
    shared = FollowerMetrics()
    shared.rpc_errors.labels("http://other:1", "timeout").inc(3)  # before this follower
    f = Follower(
        Settings(rpc_url="http://127.0.0.1:1", data_dir=tmp_path, poll_interval_s=0.01),
        metrics=shared,
    )
    polls = 0

    async def poll_once() -> bool | None:
        nonlocal polls
        polls += 1
        if polls <= 2:
            raise RpcError("eth_getBlockByNumber", -32000, "header not found")
        f.request_stop()
        return None

    monkeypatch.setattr(f, "poll_once", poll_once)
    monkeypatch.setattr(f, "_cp", lambda: SimpleNamespace(block_number=0, epoch=lambda: 0))
    asyncio.run(f.run())
    assert polls == 3
    assert _metric(f, f.pool.current.label, "rpc_error") == 2
    assert f.stats["rpc_errors"] == 2  # only this follower's, not the 3 before it
