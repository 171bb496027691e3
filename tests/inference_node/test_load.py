"""The load generator: realistic requests, honest counting, and the end-to-end run
through a gateway in front of two real MiniLM nodes; plus both CLI entries."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference_node.gateway import GatewaySettings, NodeEndpoint, create_gateway
from inference_node.load import (
    WORDS,
    LoadConfig,
    LoadConfigError,
    RequestFactory,
    arrival_times,
    percentile,
    run_load,
    user_accounts,
)
from inference_node.throttle import is_address
from tests.inference_node.harness import serve_in_thread
from tests.inference_node.test_gateway import node_app

ROOT = Path(__file__).resolve().parents[2]


def test_requests_look_like_real_users() -> None:
    cfg = LoadConfig(users=10, seed=4)
    f = RequestFactory(cfg, random.Random(4))
    reqs = [f.request() for _ in range(2000)]
    accounts = Counter(a for a, _ in reqs)
    assert all(is_address(a) for a in accounts) and len(accounts) == 10
    top, _ = accounts.most_common(1)[0]
    assert top == user_accounts(10, 4)[0]  # skewed: user 0 is the heaviest
    assert accounts.most_common()[0][1] > 3 * accounts.most_common()[-1][1]
    assert all(body["user"] == a for a, body in reqs)
    batches = [len(b["input"]) for _, b in reqs if isinstance(b["input"], list)]
    assert 0.15 < len(batches) / len(reqs) < 0.35 and max(batches) <= cfg.max_inputs
    texts = [
        t for _, b in reqs for t in ([b["input"]] if isinstance(b["input"], str) else b["input"])
    ]
    lengths = sorted(len(t.split()) for t in texts)
    assert 8 <= percentile([float(x) for x in lengths], 50) <= 16
    assert lengths[0] >= 1 and lengths[-1] <= cfg.max_words and lengths[-1] > 60
    assert set(texts[0].rstrip(".?").lower().replace(".", "").split()) <= set(WORDS)
    again = RequestFactory(cfg, random.Random(4))
    assert [again.request() for _ in range(50)] == reqs[:50]  # seeded


def test_poisson_arrivals_and_percentiles() -> None:
    rng = random.Random(1)
    it = arrival_times(20.0, rng)
    times = [next(it) for _ in range(20_000)]
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    mean = sum(gaps) / len(gaps)
    assert mean == pytest.approx(0.05, rel=0.03)
    var = sum((g - mean) ** 2 for g in gaps) / len(gaps)
    assert var**0.5 == pytest.approx(mean, rel=0.05)  # exponential: sd == mean
    assert percentile([], 50) == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    with pytest.raises(LoadConfigError):
        LoadConfig(rate=0)
    with pytest.raises(LoadConfigError):
        LoadConfig(concurrency=0)


def test_counts_every_outcome() -> None:
    seen: list[dict[str, Any]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        body = json.loads(req.content)
        seen.append({"body": body, "account": req.headers.get("x-vigil-account")})
        n = len(seen)
        if n % 5 == 0:
            return httpx.Response(429, json={"error": {"code": "account_throttled"}})
        if n % 7 == 0:
            return httpx.Response(502, json={"error": {"code": "upstream_failed"}})
        if n % 11 == 0:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json={"data": []}, headers={"x-vigil-node-id": f"n{n % 2}"})

    cfg = LoadConfig(url="http://gw", rate=400.0, duration_s=5.0, max_requests=77, concurrency=8)
    progress: list[int] = []
    summary = asyncio.run(
        run_load(
            cfg,
            transport=httpx.MockTransport(handler),
            on_progress=lambda s, _: progress.append(s.done),
        )
    )
    d = summary.to_dict()
    assert d["sent"] == 77 == len(seen) == summary.done == progress[-1]
    ns = range(1, 78)
    n429 = sum(n % 5 == 0 for n in ns)
    n502 = sum(n % 7 == 0 and n % 5 != 0 for n in ns)
    ndrop = sum(n % 11 == 0 and n % 7 != 0 and n % 5 != 0 for n in ns)
    assert (d["throttled_429"], d["statuses"]["502"], d["statuses"]["ConnectError"]) == (
        n429,
        n502,
        ndrop,
    )
    assert d["errors"] == n502 + ndrop and d["ok"] == 77 - n429 - n502 - ndrop
    assert sum(d["by_node"].values()) == d["ok"]
    assert 0 < d["p50_ms"] <= d["p99_ms"]
    assert all(s["account"] == s["body"]["user"] for s in seen)


def test_load_through_gateway_with_two_real_nodes(embedder: Any) -> None:
    """End to end over loopback HTTP: load -> gateway -> two MiniLM nodes (CPU)."""
    with (
        serve_in_thread(node_app("real-1", embedder)) as u1,
        serve_in_thread(node_app("real-2", embedder)) as u2,
    ):
        nodes = [NodeEndpoint(id="real-1", url=u1), NodeEndpoint(id="real-2", url=u2)]
        settings = GatewaySettings(spot_check_rate=0.2, health_interval_s=0.5, seed=1)
        app = create_gateway(settings, nodes, embedder=embedder)
        with serve_in_thread(app) as gw_url:
            cfg = LoadConfig(url=gw_url, rate=15.0, duration_s=2.0, concurrency=8, seed=2)
            summary = asyncio.run(run_load(cfg))
            gw = app.state.gateway
            deadline = time.monotonic() + 20
            while gw.spot.pending and time.monotonic() < deadline:
                time.sleep(0.05)
            verdicts = list(gw.spot.recent)
    d = summary.to_dict()
    assert 15 <= d["sent"] <= 60
    assert d["ok"] == d["sent"] and d["errors"] == d["throttled_429"] == 0, d
    assert set(d["by_node"]) == {"real-1", "real-2"}
    assert 0 < d["p50_ms"] <= d["p99_ms"] < 10_000
    assert verdicts and all(v.passed for v in verdicts)


def test_gateway_and_load_command_lines(tmp_path: Path) -> None:
    """`python -m inference_node gateway` then `... load` against it, as an operator would."""
    from pipelines.procs import free_port

    with serve_in_thread(node_app("cli-node")) as node_url:
        port = free_port()
        env = {**os.environ, "VIGIL_GATEWAY_SPOT_CHECK_RATE": "0", "VIGIL_GATEWAY_PORT": str(port)}
        log_path = tmp_path / "gateway.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "inference_node",
                    "gateway",
                    "--node",
                    f"cli-node={node_url}",
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
            out_json = tmp_path / "summary.json"
            load = subprocess.run(
                [
                    sys.executable, "-m", "inference_node", "load", "--url", base,
                    "--rate", "50", "--requests", "12", "--duration", "5", "--no-progress",
                    "--json", str(out_json),
                ],
                cwd=ROOT,
                capture_output=True,
                timeout=60,
                check=True,
            )  # fmt: skip
            summary = json.loads(load.stdout)
            assert summary == json.loads(out_json.read_text())
            assert summary["sent"] == summary["ok"] == 12
            assert summary["by_node"] == {"cli-node": 12}
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
            assert "gateway stopped" in log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
