"""The node against the real parts: anvil + NodeRegistry, and a Tansu Kafka broker.

Covers what cannot be faked: telemetry records on the topic, settlement on chain
with the Merkle commitment, on-chain throttles honoured (and pardons picked up
from events), sybil registration, the `python -m inference_node serve` entry,
and that request content reaches none of logs, Kafka or calldata.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import SecretStr
from web3 import Web3

from inference_node.commitments import merkle_root
from inference_node.model import MiniLMEmbedder
from inference_node.settings import NodeSettings
from inference_node.settlement import register_identities, registry_from_settings
from pipelines.chain.anvil import DEV_ACCOUNTS, start_anvil
from pipelines.chain.contracts import compile_project, deploy_node_registry, transact
from pipelines.procs import ManagedProcess, free_port, port_open
from pipelines.stack import tansu_argv
from tests.inference_node.conftest import running_node

pytestmark = pytest.mark.integration

TOPIC = "node.telemetry.v1"
ETH = 10**18
DEPLOYER, MONITOR, GOVERNANCE = DEV_ACCOUNTS[0], DEV_ACCOUNTS[1], DEV_ACCOUNTS[2]
FIELDS = {
    "schema_version",
    "node_id",
    "kind",
    "ts",
    "latency_ms",
    "batch_size",
    "tokens",
    "queue_depth",
    "errors",
    "device",
    "gpu_util",
    "gpu_mem_mb",
}
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    rpc_url: str
    bootstrap: str
    registry_address: str
    abi_path: Path
    w3: Web3
    registry: Any

    def settings(self, key_index: int, **kw: Any) -> NodeSettings:
        base: dict[str, Any] = {
            "embedded": True,  # anvil dev keys: accepted by embedded-demo nodes only
            "device": "cpu",
            "rpc_url": self.rpc_url,
            "registry_address": self.registry_address,
            "abi_path": self.abi_path,
            "operator_private_key": SecretStr(DEV_ACCOUNTS[key_index][1]),
            "kafka_bootstrap": self.bootstrap,
            "settle_interval_s": 0,
            "register_stake_wei": ETH,
            "throttle_refresh_s": 0.2,
            "heartbeat_interval_s": 0.2,
            "max_wait_ms": 5.0,
        }
        base.update(kw)
        return NodeSettings(**base)

    def events(self, name: str, **filters: Any) -> list[Any]:
        ev = getattr(self.registry.events, name)
        return list(ev.get_logs(from_block=0, argument_filters=filters or None))


async def _create_topic(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, 1, 1)])
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    d = tmp_path_factory.mktemp("node-stack")
    artifact = compile_project()["NodeRegistry"]
    abi_path = d / "NodeRegistry.abi.json"
    abi_path.write_text(json.dumps(artifact.abi))
    procs: list[ManagedProcess] = []
    try:
        aport = free_port()
        procs.append(start_anvil(aport, log_path=d / "anvil.log"))
        rpc = f"http://127.0.0.1:{aport}"
        kport = free_port()
        broker = ManagedProcess(
            "tansu",
            tansu_argv(kport),
            log_path=d / "tansu.log",
        ).start()
        procs.append(broker)
        broker.wait_healthy(lambda: port_open("127.0.0.1", kport), timeout=30)
        bootstrap = f"127.0.0.1:{kport}"
        asyncio.run(_create_topic(bootstrap))
        w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 30}))
        address = deploy_node_registry(
            w3,
            DEPLOYER[1],
            monitor=MONITOR[0],
            governance=GOVERNANCE[0],
            challenge_period_blocks=5,
            min_stake_wei=ETH,
            artifact=artifact,
        )
        registry = w3.eth.contract(address=address, abi=artifact.abi)
        yield Stack(rpc, bootstrap, address, abi_path, w3, registry)
    finally:
        for p in reversed(procs):
            p.stop()


def _telemetry(
    bootstrap: str,
    node_id: str,
    want: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 15.0,
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Records of `node_id` on the topic (and every raw value) once `want` holds."""

    async def read() -> tuple[list[dict[str, Any]], list[bytes]]:
        c = AIOKafkaConsumer(
            TOPIC,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await c.start()
        raw: list[bytes] = []
        mine: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                got = await c.getmany(timeout_ms=500)
                for msgs in got.values():
                    for m in msgs:
                        raw.append(m.value)
                        rec = json.loads(m.value)
                        if rec.get("node_id") == node_id:
                            mine.append(rec)
                if want(mine):
                    break
            return mine, raw
        finally:
            await c.stop()

    return asyncio.run(read())


def test_settlement_telemetry_and_privacy(
    stack: Stack, embedder: MiniLMEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    marker = "SECRET-PROMPT-91c2e4"
    s = stack.settings(3, node_id="node-a")
    node_addr = DEV_ACCOUNTS[3][0]
    served: list[tuple[str, str, int]] = []

    async def go() -> None:
        async with running_node(s, embedder=embedder) as (client, node):
            for i in range(5):
                r = await client.post(
                    "/v1/embeddings", json={"input": [f"{marker} {i}", f"plain text {i}"]}
                )
                assert r.status_code == 200, r.text
                body = r.json()
                served.append((body["id"], body["output_hash"], body["usage"]["total_tokens"]))
            await client.post("/v1/challenge", json={"request_id": served[0][0]})
            assert node.settler is not None
            done = await node.settler.settle_once()
            assert done is not None and done.node == node_addr
            assert await node.settler.settle_once() is None  # nothing new to settle
            await asyncio.sleep(0.5)  # a couple of heartbeats

    with caplog.at_level(logging.DEBUG):
        asyncio.run(go())

    # --- on chain: registration, then one settlement committing to the served pairs
    assert stack.registry.functions.nodeInfo(node_addr).call()[0] == node_addr
    settled = stack.events("UsageSettled", node=node_addr)
    assert len(settled) == 1
    args = settled[0]["args"]
    assert args["units"] == sum(t for _, _, t in served)
    assert "0x" + args["commitment"].hex() == merkle_root([(r, h) for r, h, _ in served])
    period, total, last = stack.registry.functions.nodeAccounting(node_addr).call()[:3]
    assert (period, total, last) == (1, args["units"], args["commitment"])

    # --- telemetry: batches and heartbeats with exactly the schema
    recs, raw = _telemetry(
        stack.bootstrap,
        "node-a",
        lambda m: (
            {r["kind"] for r in m} >= {"batch", "heartbeat"}
            and sum(r["batch_size"] for r in m if r["kind"] == "batch") >= 11
        ),
    )
    assert {r["kind"] for r in recs} == {"batch", "heartbeat"}
    for r in recs:
        assert set(r) == FIELDS and r["schema_version"] == 1 and r["device"] == "cpu"
    batches = [r for r in recs if r["kind"] == "batch"]
    assert sum(r["batch_size"] for r in batches) == 12  # 5 requests x 2 + the challenge re-run

    # --- privacy: the marker is nowhere but in the HTTP exchange itself
    assert marker not in caplog.text
    assert all(marker.encode() not in v for v in raw)
    needle = marker.encode().hex()
    for n in range(stack.w3.eth.block_number + 1):
        for tx in stack.w3.eth.get_block(n, full_transactions=True)["transactions"]:
            assert needle not in bytes(tx["input"]).hex()


def test_overclaiming_node_settles_more_than_it_served(
    stack: Stack, embedder: MiniLMEmbedder
) -> None:
    s = stack.settings(
        4, node_id="node-greedy", fault="overclaim", overclaim_factor=3.0, settle_interval_s=0.3
    )
    node_addr = DEV_ACCOUNTS[4][0]

    async def go() -> int:
        async with running_node(s, embedder=embedder) as (client, _):
            r = await client.post("/v1/embeddings", json={"input": ["a b c", "d e f g"]})
            tokens = int(r.json()["usage"]["total_tokens"])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not stack.events("UsageSettled", node=node_addr):
                await asyncio.sleep(0.2)
            return tokens

    served = asyncio.run(go())
    settled = stack.events("UsageSettled", node=node_addr)
    assert settled, "the periodic settler never settled"
    assert sum(e["args"]["units"] for e in settled) == 3 * served


def test_throttled_account_is_refused_until_pardoned(
    stack: Stack, embedder: MiniLMEmbedder
) -> None:
    user = DEV_ACCOUNTS[7][0]
    head = stack.w3.eth.block_number
    transact(
        stack.w3, MONITOR[1], stack.registry.functions.throttle(user, 2, head + 100, os.urandom(32))
    )
    s = stack.settings(5, node_id="node-t", operator_private_key=None, register_stake_wei=0)

    async def go() -> None:
        async with running_node(s, embedder=embedder) as (client, node):
            assert node.settler is None  # read-only node: throttles without settlement
            r = await client.post(
                "/v1/embeddings", json={"input": "hi"}, headers={"x-vigil-account": user}
            )
            assert r.status_code == 429
            assert "throttled on chain (level 2)" in r.json()["error"]["message"]
            r = await client.post("/v1/embeddings", json={"input": "hi", "user": user})
            assert r.status_code == 429
            other = await client.post(
                "/v1/embeddings",
                json={"input": "hi"},
                headers={"x-vigil-account": DEV_ACCOUNTS[8][0]},
            )
            assert other.status_code == 200
            await asyncio.to_thread(
                transact, stack.w3, GOVERNANCE[1], stack.registry.functions.pardon(user)
            )
            deadline = time.monotonic() + 10
            status = 429
            while status == 429 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                status = (
                    await client.post(
                        "/v1/embeddings", json={"input": "hi"}, headers={"x-vigil-account": user}
                    )
                ).status_code
            assert status == 200, "the Pardoned event was not picked up"

    asyncio.run(go())


def test_sybil_operator_registers_several_identities(stack: Stack) -> None:
    s = stack.settings(6, fault="sybil", sybil_identities=2)
    client = registry_from_settings(s)
    done = register_identities(client, s, ETH, sybils=2)
    assert len(done) == 3 and all(r is not None for _, r in done)
    nodes = stack.registry.functions.nodesOf(DEV_ACCOUNTS[6][0]).call()
    assert [n.lower() for n in nodes] == [n.lower() for n, _ in done]
    again = register_identities(client, s, ETH, sybils=2)
    assert all(r is None for _, r in again)  # idempotent


def test_register_command(stack: Stack) -> None:
    node = "0x" + os.urandom(20).hex()
    env = {
        **os.environ,
        "VIGIL_NODE_NODE_ADDRESS": node,
        "VIGIL_NODE_RPC_URL": stack.rpc_url,
        "VIGIL_NODE_REGISTRY_ADDRESS": stack.registry_address,
        "VIGIL_NODE_ABI_PATH": str(stack.abi_path),
        "VIGIL_NODE_OPERATOR_PRIVATE_KEY": DEV_ACCOUNTS[8][1],
        "VIGIL_NODE_PUBLIC_URL": "https://node.example:8100",
        "VIGIL_NODE_EMBEDDED": "true",
    }
    cmd = [sys.executable, "-m", "inference_node", "register", "--stake-wei", str(2 * ETH)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=60, check=True)
    result = json.loads(out.stdout)
    assert result["operator"] == DEV_ACCOUNTS[8][0]
    assert result["nodes"][0]["tx_hash"].startswith("0x")
    op, stake, url = stack.registry.functions.nodeInfo(Web3.to_checksum_address(node)).call()[:3]
    assert (op, stake, url) == (DEV_ACCOUNTS[8][0], 2 * ETH, "https://node.example:8100")
    assert DEV_ACCOUNTS[8][1][2:] not in (out.stdout + out.stderr).decode()
    bad = subprocess.run(
        cmd, cwd=ROOT, env={**env, "VIGIL_NODE_RPC_URL": ""}, capture_output=True, timeout=60
    )
    assert bad.returncode != 0 and b"chain settings" in bad.stderr
    dev = subprocess.run(  # the same dev key outside the embedded demo: refused, not echoed
        cmd, cwd=ROOT, env={**env, "VIGIL_NODE_EMBEDDED": "false"}, capture_output=True, timeout=60
    )
    assert dev.returncode != 0 and b"well-known anvil development key" in dev.stderr
    assert b"VIGIL_NODE_OPERATOR_PRIVATE_KEY" in dev.stderr
    assert DEV_ACCOUNTS[8][1][2:].encode() not in dev.stdout + dev.stderr


def test_serve_entry_point_runs_a_real_node(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    key_addr, key = DEV_ACCOUNTS[9]
    env = {
        **os.environ,
        "VIGIL_NODE_PORT": str(port),
        "VIGIL_NODE_NODE_ID": "node-cli",
        "VIGIL_NODE_DEVICE": "cpu",
        "VIGIL_NODE_RPC_URL": stack.rpc_url,
        "VIGIL_NODE_REGISTRY_ADDRESS": stack.registry_address,
        "VIGIL_NODE_ABI_PATH": str(stack.abi_path),
        "VIGIL_NODE_OPERATOR_PRIVATE_KEY": key,
        "VIGIL_NODE_EMBEDDED": "true",
        "VIGIL_NODE_REGISTER_STAKE_WEI": str(ETH),
        "VIGIL_NODE_KAFKA_BOOTSTRAP": stack.bootstrap,
        "VIGIL_NODE_SETTLE_INTERVAL_S": "3600",
        "HF_HUB_OFFLINE": "1",
    }
    log_path = tmp_path / "node.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "inference_node", "serve"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{base}/health", timeout=1) as resp,
            ):
                if resp.status == 200:
                    break
            time.sleep(0.3)
        else:
            pytest.fail(f"node not healthy:\n{log_path.read_text()[-3000:]}")
        req = urllib.request.Request(
            f"{base}/v1/embeddings",
            data=json.dumps({"input": "from the CLI"}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.loads(resp.read())
        assert len(body["data"][0]["embedding"]) == 384
        proc.send_signal(signal.SIGTERM)  # graceful stop settles what is pending
        # uvicorn re-raises the signal after a clean shutdown, as supervisors expect
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM), log_path.read_text()[-3000:]
        assert "Application shutdown complete" in log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    settled = stack.events("UsageSettled", node=key_addr)
    assert len(settled) == 1 and settled[0]["args"]["units"] == body["usage"]["total_tokens"]
    assert key not in log_path.read_text() and key[2:] not in log_path.read_text()


def test_telemetry_survives_a_broker_that_comes_up_late(tmp_path: Path) -> None:
    from inference_node.telemetry import KafkaSink, TelemetryBuffer, TelemetryRecord

    kport = free_port()
    bootstrap = f"127.0.0.1:{kport}"
    broker = ManagedProcess(
        "tansu-late",
        tansu_argv(kport),
        log_path=tmp_path / "tansu.log",
    )

    def rec(i: int) -> TelemetryRecord:
        return TelemetryRecord(
            node_id="node-late",
            kind="heartbeat",
            ts=float(i),
            latency_ms=0.0,
            batch_size=0,
            tokens=0,
            queue_depth=i,
            errors=0,
            device="cpu",
            gpu_util=0.0,
            gpu_mem_mb=0.0,
        )

    async def go() -> TelemetryBuffer:
        buf = TelemetryBuffer(
            KafkaSink(bootstrap, TOPIC, request_timeout_s=2.0),
            capacity=100,
            retry_initial_s=0.1,
            retry_max_s=0.5,
        )
        await buf.start()
        for i in range(20):
            buf.emit(rec(i))
        await asyncio.sleep(1.0)
        assert buf.sent == 0 and buf.send_failures > 0 and len(buf) == 20
        broker.start()
        await asyncio.to_thread(broker.wait_healthy, lambda: port_open("127.0.0.1", kport), 30)
        await _create_topic(bootstrap)
        assert await buf.flush(20.0), f"{len(buf)} records still buffered"
        await buf.stop()
        return buf

    try:
        buf = asyncio.run(go())
        assert (buf.sent, buf.dropped) == (20, 0)
        recs, _ = _telemetry(bootstrap, "node-late", lambda m: len(m) >= 20)
        assert sorted(r["queue_depth"] for r in recs) == list(range(20))
    finally:
        broker.stop()
