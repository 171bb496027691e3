"""The gateway over real HTTP to in-thread nodes: routing, skips, retries, spot checks.

Nodes are the real node app (`create_app`) served by uvicorn on loopback; most
use a hash-based fake model so that only the gateway's behaviour is measured.
The last test uses the real MiniLM model and a real Kafka broker (Tansu): an
honest node passes its spot checks, a lazy one fails them, and the verdicts
land on `node.challenges.v1`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from inference_node.gateway import (
    Gateway,
    GatewayConfigError,
    GatewaySettings,
    NodeEndpoint,
    SpotCheckSampler,
    VerdictMessage,
    create_gateway,
    parse_nodes,
    parse_reputation,
    served_hash,
)
from inference_node.routing import spot_penalty, weights
from inference_node.server import create_app
from inference_node.settings import NodeSettings
from inference_node.verifier import Verdict
from tests.inference_node.harness import (
    CaptureSink,
    FakeEmbedder,
    closed_port_url,
    dropping_node,
    serve_in_thread,
)

ADDR_A = "0x" + "aa" * 20
ADDR_B = "0x" + "bb" * 20
USER = "0x" + "12" * 20
VERDICT_FIELDS = {
    "schema_version",
    "node_id",
    "request_id",
    "passed",
    "cosine",
    "hash_ok",
    "reason",
    "ts",
}


def node_app(node_id: str, embedder: Any | None = None, **kw: Any) -> FastAPI:
    s = NodeSettings(device="cpu", node_id=node_id, max_wait_ms=2.0, **kw)
    return create_app(s, embedder=embedder or FakeEmbedder())


def gw_settings(**kw: Any) -> GatewaySettings:
    base: dict[str, Any] = {"spot_check_rate": 0.0, "health_interval_s": 0.2, "seed": 3}
    base.update(kw)
    return GatewaySettings(**base)


@asynccontextmanager
async def running_gateway(
    settings: GatewaySettings, nodes: list[NodeEndpoint] | None = None, **kw: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    app = create_gateway(settings, nodes, **kw)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client, app.state.gateway


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@contextlib.contextmanager
def fake_nodes(*ids: str, **kw: Any) -> Iterator[list[NodeEndpoint]]:
    with contextlib.ExitStack() as stack:
        yield [
            NodeEndpoint(id=i, url=stack.enter_context(serve_in_thread(node_app(i, **kw))))
            for i in ids
        ]


# --------------------------------------------------------------------------- settings


def test_settings_read_nodes_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "VIGIL_GATEWAY_NODES", f"a=http://10.0.0.1:8100={ADDR_A}, b=http://10.0.0.2:8100/"
    )
    monkeypatch.setenv("VIGIL_GATEWAY_CHALLENGE_TOKEN", "s3cret")
    s = GatewaySettings()
    assert [(n.id, n.url, n.address) for n in s.nodes] == [
        ("a", "http://10.0.0.1:8100", ADDR_A),
        ("b", "http://10.0.0.2:8100", None),
    ]
    assert "s3cret" not in repr(s)
    monkeypatch.setenv(
        "VIGIL_GATEWAY_NODES", json.dumps([{"url": "http://h:1", "address": ADDR_B}])
    )
    (n,) = GatewaySettings().nodes
    assert n.key == ADDR_B and n.id == ""
    assert parse_nodes("http://x:1") == [NodeEndpoint(url="http://x:1")]


def test_settings_refuse_inconsistent_config() -> None:
    with pytest.raises(ValueError, match="chain settings incomplete"):
        GatewaySettings(rpc_url="http://127.0.0.1:8545")
    with pytest.raises(ValueError, match="unique"):
        GatewaySettings(nodes="a=http://h:1,a=http://h:2")
    with pytest.raises(ValueError, match="http"):
        GatewaySettings(nodes="a=ftp://h:1")
    with pytest.raises(GatewayConfigError, match="no nodes"):
        create_gateway(GatewaySettings())


# --------------------------------------------------------------------------- routing


def test_routes_over_http_and_relays_node_headers() -> None:
    async def go(nodes: list[NodeEndpoint]) -> None:
        async with running_gateway(gw_settings(), nodes) as (client, gw):
            assert all(n.healthy for n in gw.nodes.values())
            served: Counter[str] = Counter()
            for i in range(30):
                r = await client.post(
                    "/v1/embeddings",
                    json={"input": [f"hello {i}", "world"], "user": USER},
                )
                assert r.status_code == 200, r.text
                body = r.json()
                assert r.headers["x-vigil-request-id"] == body["id"]
                assert r.headers["x-vigil-output-hash"] == body["output_hash"]
                assert served_hash(r.content) == body["output_hash"]
                served[r.headers["x-vigil-node-id"]] += 1
            assert set(served) == {"n1", "n2"}
            view = (await client.get("/v1/gateway/nodes")).json()["nodes"]
            assert {v["node_id"] for v in view} == {"n1", "n2"}
            assert all(v["latency_ms"] > 0 for v in view)
            text = (await client.get("/metrics")).text
            for nid, k in served.items():
                assert (
                    metric(text, "vigil_gateway_node_requests_total", node=nid, outcome="ok") == k
                )
            assert metric(text, "vigil_gateway_requests_total", status="200") == 30
            assert metric(text, "vigil_gateway_node_up", node="n1") == 1
            assert (await client.get("/health")).json()["routable"] == 2
            assert (await client.get("/v1/models")).json()["data"][0]["id"] == "all-MiniLM-L6-v2"

    with fake_nodes("n1", "n2") as nodes:
        asyncio.run(go(nodes))


def test_node_failing_mid_request_is_retried_on_another() -> None:
    async def go(nodes: list[NodeEndpoint]) -> None:
        s = gw_settings(health_interval_s=60, max_consecutive_failures=3)
        async with running_gateway(s, nodes) as (client, gw):
            # Make the dying node by far the preferred one, so it is tried first.
            gw.nodes["bad"].latency_ms, gw.nodes["good"].latency_ms = 1.0, 5000.0
            for i in range(6):
                r = await client.post("/v1/embeddings", json={"input": f"are you there? {i}"})
                assert r.status_code == 200, r.text
                assert r.headers["x-vigil-node-id"] == "good"
            # three drops in a row took it out of rotation until a probe passes
            assert not gw.nodes["bad"].healthy
            text = (await client.get("/metrics")).text
            assert metric(text, "vigil_gateway_node_requests_total", node="bad") == 3
            assert (
                metric(text, "vigil_gateway_node_requests_total", node="bad", outcome="dropped")
                == 3
            )
            assert metric(text, "vigil_gateway_retries_total") == 3
            assert metric(text, "vigil_gateway_requests_total", status="200") == 6
            assert metric(text, "vigil_gateway_node_up", node="bad") == 0

    with dropping_node("bad") as bad_url, serve_in_thread(node_app("good")) as good_url:
        nodes = [NodeEndpoint(id="bad", url=bad_url), NodeEndpoint(id="good", url=good_url)]
        asyncio.run(go(nodes))


def test_offline_node_is_taken_out_at_the_first_refused_connection() -> None:
    async def go(nodes: list[NodeEndpoint]) -> None:
        async with running_gateway(gw_settings(health_interval_s=60), nodes) as (client, gw):
            gone = gw.nodes["gone"]
            gone.healthy, gone.latency_ms = True, 1.0  # as if it died since the last probe
            gw.nodes["good"].latency_ms = 5000.0
            r = await client.post("/v1/embeddings", json={"input": "hello"})
            assert r.status_code == 200 and r.headers["x-vigil-node-id"] == "good"
            assert not gone.healthy
            text = (await client.get("/metrics")).text
            assert (
                metric(
                    text, "vigil_gateway_node_requests_total", node="gone", outcome="unreachable"
                )
                == 1
            )

    with serve_in_thread(node_app("good")) as good_url:
        nodes = [
            NodeEndpoint(id="gone", url=closed_port_url()),
            NodeEndpoint(id="good", url=good_url),
        ]
        asyncio.run(go(nodes))


class FakeThrottles:
    """ThrottleReader with fixed throttle states."""

    def __init__(self, throttled: dict[str, tuple[int, int]]) -> None:
        self.throttled = {k.lower(): v for k, v in throttled.items()}
        self.operator: str | None = None

    def block_number(self) -> int:
        return 100

    def throttle_of(self, account: str) -> tuple[int, int]:
        return self.throttled.get(account.lower(), (0, 0))

    def throttle_event_accounts(self, from_block: int, to_block: int) -> set[str]:
        return set()


def test_throttled_and_offline_nodes_are_skipped() -> None:
    async def go(nodes: list[NodeEndpoint]) -> None:
        reader = FakeThrottles({ADDR_B: (2, 10**9)})
        s = gw_settings(throttle_cache_ttl_s=0.1)
        async with running_gateway(s, nodes, throttle_reader=reader) as (client, gw):
            assert gw.nodes["throttled"].throttled and not gw.nodes["offline"].healthy
            for i in range(15):
                r = await client.post("/v1/embeddings", json={"input": f"text {i}"})
                assert r.status_code == 200 and r.headers["x-vigil-node-id"] == "ok"
            text = (await client.get("/metrics")).text
            assert metric(text, "vigil_gateway_node_throttled", node="throttled") == 1
            assert metric(text, "vigil_gateway_node_up", node="offline") == 0
            assert metric(text, "vigil_gateway_node_requests_total", node="throttled") == 0
            assert metric(text, "vigil_gateway_node_requests_total", node="offline") == 0
            assert metric(text, "vigil_gateway_retries_total") == 0
            # the throttle is lifted on chain: the next probe puts the node back
            reader.throttled.clear()
            await asyncio.sleep(0.6)
            assert not gw.nodes["throttled"].throttled

    with (
        serve_in_thread(node_app("ok")) as ok_url,
        serve_in_thread(node_app("throttled")) as thr_url,
    ):
        nodes = [
            NodeEndpoint(id="ok", url=ok_url, address=ADDR_A),
            NodeEndpoint(id="throttled", url=thr_url, address=ADDR_B),
            NodeEndpoint(id="offline", url=closed_port_url()),
        ]
        asyncio.run(go(nodes))


def test_no_node_left_is_503_and_client_errors_are_not_retried() -> None:
    async def down() -> None:
        nodes = [NodeEndpoint(id="x", url=closed_port_url())]
        async with running_gateway(gw_settings(), nodes) as (client, _):
            r = await client.post("/v1/embeddings", json={"input": "hi"})
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "no_node_available"
            assert (await client.get("/health")).status_code == 503
            r = await client.post("/v1/embeddings", content=b"not json")
            assert r.status_code == 400

    asyncio.run(down())

    async def client_errors(nodes: list[NodeEndpoint]) -> None:
        async with running_gateway(gw_settings(), nodes) as (client, _):
            r = await client.post("/v1/embeddings", json={"input": []})
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
            r = await client.post("/v1/embeddings", json={"input": "x", "model": "gpt-9"})
            assert r.status_code == 404
            text = (await client.get("/metrics")).text
            assert metric(text, "vigil_gateway_retries_total") == 0
            assert metric(text, "vigil_gateway_node_requests_total", outcome="client_error") == 2

    with fake_nodes("c1", "c2") as nodes:
        asyncio.run(client_errors(nodes))


class ThrottlingRegistry(FakeThrottles):
    """What a node needs of a registry to refuse throttled user accounts (no settlement)."""


def test_throttled_user_is_refused_once_not_retried_everywhere() -> None:
    registry = ThrottlingRegistry({USER: (2, 10**9)})

    def app(nid: str) -> FastAPI:
        s = NodeSettings(device="cpu", node_id=nid, max_wait_ms=2.0)
        return create_app(s, embedder=FakeEmbedder(), registry=registry)  # type: ignore[arg-type]

    async def go(nodes: list[NodeEndpoint]) -> None:
        async with running_gateway(gw_settings(), nodes) as (client, _):
            r = await client.post(
                "/v1/embeddings", json={"input": "hi"}, headers={"x-vigil-account": USER}
            )
            assert r.status_code == 429 and r.json()["error"]["code"] == "account_throttled"
            r = await client.post("/v1/embeddings", json={"input": "hi", "user": USER})
            assert r.status_code == 429
            r = await client.post("/v1/embeddings", json={"input": "hi", "user": ADDR_A})
            assert r.status_code == 200
            text = (await client.get("/metrics")).text
            assert metric(text, "vigil_gateway_retries_total") == 0
            assert metric(text, "vigil_gateway_node_requests_total", outcome="refused") == 2

    with serve_in_thread(app("t1")) as u1, serve_in_thread(app("t2")) as u2:
        asyncio.run(go([NodeEndpoint(id="t1", url=u1), NodeEndpoint(id="t2", url=u2)]))


def test_reputation_scores_shift_routing() -> None:
    rep = FastAPI()

    @rep.get("/v1/nodes")
    async def scores() -> list[dict[str, Any]]:
        return [{"node": "TRUSTED", "score": 100.0}, {"node": ADDR_B, "score": 10.0}]

    async def go(nodes: list[NodeEndpoint], rep_url: str) -> None:
        async with running_gateway(gw_settings(reputation_url=rep_url), nodes) as (client, gw):
            assert gw.nodes["trusted"].reputation == 1.0
            assert gw.nodes["shady"].reputation == pytest.approx(0.1)  # matched by address
            assert gw.nodes["unknown"].reputation == 1.0  # not scored: default weight
            served: Counter[str] = Counter()
            for i in range(40):
                r = await client.post("/v1/embeddings", json={"input": f"q {i}"})
                served[r.headers["x-vigil-node-id"]] += 1
            assert served["shady"] <= 3 < served["trusted"]
            view = {
                v["node_id"]: v for v in (await client.get("/v1/gateway/nodes")).json()["nodes"]
            }
            assert view["shady"]["weight_share"] < 0.05

    with (
        fake_nodes("trusted", "unknown") as nodes,
        serve_in_thread(node_app("shady")) as shady,
        serve_in_thread(rep) as rep_url,
    ):
        nodes.append(NodeEndpoint(id="shady", url=shady, address=ADDR_B))
        asyncio.run(go(nodes, rep_url))


def test_parse_reputation_shapes() -> None:
    # the API's 0-100 scores become routing's [0, 1] fractions
    assert parse_reputation([{"node": "A", "score": 50}]) == {"a": 0.5}
    assert parse_reputation({"items": [{"node": "c", "score": 120}], "total": 1}) == {"c": 1.0}
    assert parse_reputation({"nodes": [{"node": "b", "score": -1}, {"x": 1}]}) == {"b": 0.0}
    assert parse_reputation([{"node": "d", "score": 0.3}], scale=1.0) == {"d": 0.3}
    with pytest.raises(ValueError):
        parse_reputation({"nodes": 3})
    with pytest.raises(ValueError, match="less than or equal to 1"):
        GatewaySettings(min_reputation=50)  # a fraction of the full score, not 0-100


def test_api_scores_out_of_100_route_less_to_the_low_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reputation API's own page shape and 0-100 scale: 30/100 gets less than 90/100."""
    import inference_node.gateway as gateway_mod

    monkeypatch.setattr(gateway_mod, "REPUTATION_PAGE", 1)  # make it page through
    rep = FastAPI()
    table = [{"node": "hi", "score": 90.0}, {"node": "lo", "score": 30.0}]

    @rep.get("/v1/nodes")
    async def scores(limit: int = 50, offset: int = 0) -> dict[str, Any]:
        return {"items": table[offset : offset + limit], "total": 2, "limit": limit}

    async def go(nodes: list[NodeEndpoint], rep_url: str) -> None:
        async with running_gateway(gw_settings(reputation_url=rep_url), nodes) as (client, gw):
            assert gw.nodes["hi"].reputation == pytest.approx(0.9)
            assert gw.nodes["lo"].reputation == pytest.approx(0.3)
            served: Counter[str] = Counter()
            for i in range(60):
                r = await client.post("/v1/embeddings", json={"input": f"q {i}"})
                served[r.headers["x-vigil-node-id"]] += 1
            assert served["lo"] * 2 < served["hi"], served  # latency noise aside
            view = {
                v["node_id"]: v for v in (await client.get("/v1/gateway/nodes")).json()["nodes"]
            }
            assert view["lo"]["weight_share"] < view["hi"]["weight_share"]

    with fake_nodes("hi", "lo") as nodes, serve_in_thread(rep) as rep_url:
        asyncio.run(go(nodes, rep_url))


class FakeDirectory:
    def __init__(self, nodes: list[NodeEndpoint]) -> None:
        self.nodes = nodes

    def list_nodes(self) -> list[NodeEndpoint]:
        return list(self.nodes)


def test_nodes_discovered_from_a_directory() -> None:
    async def go(urls: list[str]) -> None:
        directory = FakeDirectory(
            [NodeEndpoint(url=urls[0], address=ADDR_A), NodeEndpoint(url=urls[1], address=ADDR_B)]
        )
        async with running_gateway(gw_settings(), [], directory=directory) as (client, gw):
            assert set(gw.nodes) == {ADDR_A, ADDR_B}
            # named by the id each node reports on /health (the id its telemetry uses)
            assert {n.node_id for n in gw.nodes.values()} == {"d1", "d2"}
            r = await client.post("/v1/embeddings", json={"input": "x"})
            assert r.status_code == 200 and r.headers["x-vigil-node-id"] in {"d1", "d2"}
            directory.nodes = directory.nodes[:1]
            await gw.discover_once()
            assert set(gw.nodes) == {ADDR_A}

    with serve_in_thread(node_app("d1")) as u1, serve_in_thread(node_app("d2")) as u2:
        asyncio.run(go([u1, u2]))


# --------------------------------------------------------------------------- spot checks


def test_sampler_rate_is_respected_and_seeded() -> None:
    n = 20_000
    for rate in (0.05, 0.3):
        sampler = SpotCheckSampler(rate, seed=1)
        hits = sum(sampler.sample() for _ in range(n))
        sd = (n * rate * (1 - rate)) ** 0.5
        assert abs(hits - n * rate) < 4 * sd
    assert not any(SpotCheckSampler(0.0).sample() for _ in range(1000))
    assert all(SpotCheckSampler(1.0).sample() for _ in range(1000))
    a, b = SpotCheckSampler(0.5, seed=9), SpotCheckSampler(0.5, seed=9)
    assert [a.sample() for _ in range(100)] == [b.sample() for _ in range(100)]
    with pytest.raises(ValueError):
        SpotCheckSampler(1.5)


def test_spot_checks_follow_the_rate_and_publish_verdicts() -> None:
    rate, n, seed = 0.3, 60, 11
    reference = SpotCheckSampler(rate, seed)  # the gateway's draws, replayed
    expected = sum(reference.sample() for _ in range(n))
    sink = CaptureSink()
    token = SecretStr("challenge-token")

    async def go(nodes: list[NodeEndpoint]) -> Gateway:
        s = gw_settings(spot_check_rate=rate, seed=seed, challenge_token=token)
        async with running_gateway(s, nodes, embedder=FakeEmbedder(), verdict_sink=sink) as (
            client,
            gw,
        ):
            ids = []
            for i in range(n):
                r = await client.post("/v1/embeddings", json={"input": [f"check {i}", "b"]})
                assert r.status_code == 200
                ids.append(r.headers["x-vigil-request-id"])
            deadline = time.monotonic() + 20
            while gw.spot.pending and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            recent = (await client.get("/v1/gateway/verdicts")).json()["verdicts"]
            assert len(recent) == expected
            assert all(v["passed"] and v["request_id"] in ids for v in recent)
            text = (await client.get("/metrics")).text
            assert metric(text, "vigil_gateway_spot_checks_total", outcome="passed") == expected
        return gw

    with fake_nodes("s1", "s2", challenge_token=token) as nodes:
        asyncio.run(go(nodes))
    assert 0.15 * n < expected < 0.45 * n
    assert len(sink.messages) == expected  # flushed on stop
    assert all(set(m) == VERDICT_FIELDS and m["schema_version"] == 1 for m in sink.messages)
    assert {m["node_id"] for m in sink.messages} <= {"s1", "s2"}


def test_failed_spot_checks_lower_the_nodes_weight_until_they_decay() -> None:
    token = SecretStr("challenge-token")
    now = [1000.0]

    async def go(nodes: list[NodeEndpoint]) -> None:
        s = gw_settings(spot_check_rate=1.0, challenge_token=token, spot_fail_decay_s=60.0)
        async with running_gateway(s, nodes, embedder=FakeEmbedder()) as (client, gw):
            gw.clock = gw.spot.clock = lambda: now[0]
            served: Counter[str] = Counter()
            for i in range(40):
                r = await client.post("/v1/embeddings", json={"input": [f"check {i}", "b"]})
                assert r.status_code == 200
                served[r.headers["x-vigil-node-id"]] += 1
                while gw.spot.pending:  # the verdict lands before the next request
                    await asyncio.sleep(0.01)
            failures = len(gw.nodes["lazy"].spot_failures)
            assert failures == served["lazy"] >= 1 and not gw.nodes["honest"].spot_failures
            assert served["lazy"] * 2 < served["honest"], served
            cands = {c.node_id: c for c in gw.candidates()}
            assert cands["lazy"].spot_failures == failures
            w = dict(zip(cands, weights(list(cands.values()), gw.policy), strict=True))
            clean = dataclasses.replace(cands["lazy"], spot_failures=0)
            (w_clean,) = weights([clean, cands["honest"]], gw.policy)[:1]
            assert w["lazy"] == pytest.approx(w_clean * spot_penalty(failures, gw.policy))
            assert w["lazy"] <= w_clean / 2
            view = {
                v["node_id"]: v for v in (await client.get("/v1/gateway/nodes")).json()["nodes"]
            }
            assert view["lazy"]["spot_failures"] == failures
            now[0] += 61.0  # past the decay period: full weight again
            cands = {c.node_id: c for c in gw.candidates()}
            assert cands["lazy"].spot_failures == 0

    with (
        serve_in_thread(node_app("honest", challenge_token=token)) as h,
        serve_in_thread(
            node_app("lazy", challenge_token=token, fault="lazy", fault_rate=1.0)
        ) as lz,
    ):
        asyncio.run(go([NodeEndpoint(id="honest", url=h), NodeEndpoint(id="lazy", url=lz)]))


def test_wrong_challenge_token_is_not_blamed_on_the_node() -> None:
    sink = CaptureSink()

    async def go(nodes: list[NodeEndpoint]) -> None:
        s = gw_settings(spot_check_rate=1.0, challenge_token=SecretStr("wrong"))
        async with running_gateway(s, nodes, embedder=FakeEmbedder(), verdict_sink=sink) as (
            client,
            gw,
        ):
            await client.post("/v1/embeddings", json={"input": "x"})
            while gw.spot.pending:
                await asyncio.sleep(0.05)
            text = (await client.get("/metrics")).text
            assert metric(text, "vigil_gateway_spot_checks_total", node="p", outcome="error") == 1

    with fake_nodes("p", challenge_token=SecretStr("right")) as nodes:
        asyncio.run(go(nodes))
    assert sink.messages == []


def test_verdict_message_is_the_topic_schema() -> None:
    v = Verdict("node-1", "emb-1", False, 0.12, 1.5, "cosine low", True)
    d = json.loads(VerdictMessage(v).to_json())
    assert set(d) == VERDICT_FIELDS and next(iter(d)) == "schema_version"
    assert VerdictMessage(v).node_id == "node-1"


# --------------------------------------------------------------------------- with Kafka


@pytest.mark.integration
def test_lazy_node_fails_spot_checks_on_kafka(embedder: Any, tmp_path: Path) -> None:
    """Real model, real broker: honest verdicts pass, lazy ones fail, all on the topic."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from pipelines.procs import ManagedProcess, free_port, port_open
    from pipelines.stack import tansu_argv

    topic = "node.challenges.v1"
    kport = free_port()
    bootstrap = f"127.0.0.1:{kport}"
    broker = ManagedProcess(
        "tansu-gateway",
        tansu_argv(kport),
        log_path=tmp_path / "tansu.log",
    ).start()
    token = SecretStr("spot-check-token")

    async def create_topic() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 1, 1)])
        finally:
            await admin.close()

    async def drive(nodes: list[NodeEndpoint]) -> dict[str, set[str]]:
        s = gw_settings(spot_check_rate=1.0, challenge_token=token, kafka_bootstrap=bootstrap)
        served: dict[str, set[str]] = {"honest": set(), "lazy": set()}
        async with running_gateway(s, nodes, embedder=embedder) as (client, gw):
            for i in range(8):
                r = await client.post(
                    "/v1/embeddings",
                    json={"input": [f"spot check number {i}", "a second sentence"]},
                )
                assert r.status_code == 200, r.text
                served[r.headers["x-vigil-node-id"]].add(r.headers["x-vigil-request-id"])
            while gw.spot.pending:
                await asyncio.sleep(0.05)
            buf = gw.spot.buffer
            assert buf is not None and await buf.flush(15.0)
        return served

    async def consume(want: int) -> list[dict[str, Any]]:
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        await c.start()
        got: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + 15
            while len(got) < want and time.monotonic() < deadline:
                for msgs in (await c.getmany(timeout_ms=500)).values():
                    got.extend(json.loads(m.value) for m in msgs)
        finally:
            await c.stop()
        return got

    try:
        broker.wait_healthy(lambda: port_open("127.0.0.1", kport), timeout=30)
        asyncio.run(create_topic())
        with (
            serve_in_thread(node_app("honest", embedder, challenge_token=token)) as h,
            serve_in_thread(
                node_app("lazy", embedder, challenge_token=token, fault="lazy", fault_rate=1.0)
            ) as lz,
        ):
            served = asyncio.run(
                drive([NodeEndpoint(id="honest", url=h), NodeEndpoint(id="lazy", url=lz)])
            )
        verdicts = asyncio.run(consume(8))
    finally:
        broker.stop()

    assert served["honest"] and served["lazy"], served
    assert len(verdicts) == 8
    by_node: dict[str, list[dict[str, Any]]] = {"honest": [], "lazy": []}
    for v in verdicts:
        assert set(v) == VERDICT_FIELDS and v["schema_version"] == 1
        assert v["request_id"] in served[v["node_id"]]
        by_node[v["node_id"]].append(v)
    assert all(v["passed"] and v["cosine"] > 0.999 and v["hash_ok"] for v in by_node["honest"])
    assert all(not v["passed"] and v["cosine"] < 0.5 for v in by_node["lazy"])
    assert all("below tolerance" in v["reason"] for v in by_node["lazy"])
