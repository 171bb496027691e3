"""The node's API with the real model, in process (ASGI): correctness, batching, overload,
spot checks, throttles and privacy of request content."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from inference_node.commitments import output_hash
from inference_node.model import MiniLMEmbedder
from inference_node.settings import NodeSettings
from inference_node.telemetry import TelemetryRecord
from inference_node.verifier import Verifier
from tests.inference_node.conftest import running_node

TEXTS = [
    "A decentralized network of GPU nodes serves inference.",
    "Usage is settled on chain every period.",
    "The quick brown fox jumps over the lazy dog.",
    "",
]


class CaptureSink:
    """Telemetry sink that keeps what it is sent."""

    def __init__(self) -> None:
        self.records: list[TelemetryRecord] = []

    async def send(self, records: list[TelemetryRecord]) -> None:
        self.records.extend(records)

    async def close(self) -> None:
        pass


def _settings(**kw: Any) -> NodeSettings:
    base: dict[str, Any] = {"device": "cpu", "node_id": "node-test", "max_wait_ms": 10.0}
    base.update(kw)
    return NodeSettings(**base)


def test_embeddings_match_sentence_transformers(embedder: MiniLMEmbedder) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(embedder.model_path), device="cpu").encode(
        TEXTS, normalize_embeddings=True
    )

    async def go() -> dict[str, Any]:
        async with running_node(_settings(), embedder=embedder) as (client, _):
            r = await client.post(
                "/v1/embeddings", json={"input": TEXTS, "model": "all-MiniLM-L6-v2"}
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert r.headers["x-vigil-output-hash"] == body["output_hash"]
            assert r.headers["x-vigil-request-id"] == body["id"]
            one = await client.post("/v1/embeddings", json={"input": TEXTS[0]})
            b64 = await client.post(
                "/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64"}
            )
            v_json = np.asarray(one.json()["data"][0]["embedding"], dtype=np.float32)
            v_b64 = np.frombuffer(base64.b64decode(b64.json()["data"][0]["embedding"]), "<f4")
            assert np.allclose(v_json, v_b64, atol=1e-6)
            assert output_hash([v_b64]) == b64.headers["x-vigil-output-hash"]
            return body

    body = asyncio.run(go())
    assert body["object"] == "list" and body["model"] == "all-MiniLM-L6-v2"
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    got = np.asarray([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert got.shape == (4, 384)
    assert output_hash(got) == body["output_hash"]  # the hash commits to the JSON floats
    cos = np.sum(got * reference, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cos.min() > 0.999, cos
    usage = body["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] == sum(embedder.count_tokens(TEXTS))


def test_openai_errors_models_health_metrics(embedder: MiniLMEmbedder) -> None:
    async def go() -> None:
        async with running_node(_settings(), embedder=embedder) as (client, _):
            r = await client.post("/v1/embeddings", json={"input": "x", "model": "gpt-4"})
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
            r = await client.post("/v1/embeddings", json={"input": []})
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
            r = await client.post("/v1/embeddings", json={"input": "x", "dimensions": 1536})
            assert r.status_code == 400
            r = await client.post(
                "/v1/embeddings", json={"input": "x"}, headers={"x-vigil-account": "alice"}
            )
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_account"
            models = (await client.get("/v1/models")).json()
            assert models["data"][0]["id"] == "all-MiniLM-L6-v2"
            health = await client.get("/health")
            assert health.status_code == 200 and health.json()["device"] == embedder.device
            assert "fault" not in health.text
            await client.post("/v1/embeddings", json={"input": "count me"})
            text = (await client.get("/metrics")).text
            assert 'vigil_node_requests_total{endpoint="embeddings",status="200"} 1.0' in text
            assert "vigil_node_batch_size_bucket" in text

    asyncio.run(go())


def test_concurrent_load_forms_batches(embedder: MiniLMEmbedder) -> None:
    sink = CaptureSink()

    async def go() -> None:
        s = _settings(max_batch_size=16, max_wait_ms=50.0, heartbeat_interval_s=60)
        async with running_node(s, embedder=embedder, telemetry_sink=sink) as (client, node):
            rs = await asyncio.gather(
                *(
                    client.post("/v1/embeddings", json={"input": f"sentence number {i}"})
                    for i in range(48)
                )
            )
            assert {r.status_code for r in rs} == {200}
            assert node.telemetry is not None and await node.telemetry.flush(5)

    asyncio.run(go())
    batches = [r for r in sink.records if r.kind == "batch"]
    assert max(b.batch_size for b in batches) > 1
    assert sum(b.batch_size for b in batches) == 48
    assert all(b.device == embedder.device and b.latency_ms > 0 and b.tokens > 0 for b in batches)


def test_overload_answers_429_and_the_node_keeps_serving(embedder: MiniLMEmbedder) -> None:
    async def go() -> None:
        s = _settings(max_batch_size=1, max_wait_ms=0.0, queue_limit=2, fault="slow", slow_ms=100.0)
        async with running_node(s, embedder=embedder) as (client, _):
            rs = await asyncio.gather(
                *(client.post("/v1/embeddings", json={"input": f"load {i}"}) for i in range(30))
            )
            codes = [r.status_code for r in rs]
            assert codes.count(429) >= 20 and codes.count(200) >= 2, codes
            refused = next(r for r in rs if r.status_code == 429)
            assert refused.json()["error"]["code"] == "queue_full"
            assert refused.headers["retry-after"] == "1"
            assert (await client.get("/health")).status_code == 200
            again = await client.post("/v1/embeddings", json={"input": "after the storm"})
            assert again.status_code == 200

    asyncio.run(go())


def test_lazy_node_fails_spot_checks_and_honest_node_passes(embedder: MiniLMEmbedder) -> None:
    verifier = Verifier(embedder)
    token = "verifier-secret"

    async def run(fault: str) -> list[Any]:
        s = _settings(fault=fault, fault_rate=1.0, challenge_token=SecretStr(token))
        async with running_node(s, embedder=embedder) as (client, _):
            r = await client.post("/v1/embeddings", json={"input": TEXTS[:2]})
            assert r.status_code == 200
            rid, served = r.json()["id"], r.headers["x-vigil-output-hash"]
            denied = await client.post("/v1/challenge", json={"request_id": rid})
            assert denied.status_code == 401
            unknown = await client.post(
                "/v1/challenge",
                json={"request_id": "emb-nope"},
                headers={"authorization": f"Bearer {token}"},
            )
            assert unknown.status_code == 404
            return [
                await verifier.spot_check(
                    client,
                    "http://node",
                    rid,
                    token=token,
                    expected_hash=served,
                    expected_inputs=TEXTS[:2],
                )
            ]

    honest = asyncio.run(run("none"))[0]
    lazy = asyncio.run(run("lazy"))[0]
    assert honest.passed and honest.cosine > 0.999, honest
    assert honest.node_id == "node-test" and honest.request_id.startswith("emb-")
    assert not lazy.passed and lazy.cosine < 0.5 and lazy.hash_ok, lazy
    assert set(lazy.to_dict()) >= {"node_id", "request_id", "passed", "cosine", "ts"}


def test_flaky_node_errors_show_in_telemetry_only_as_errors(embedder: MiniLMEmbedder) -> None:
    sink = CaptureSink()

    async def go() -> list[int]:
        s = _settings(fault="flaky", fault_rate=1.0, flaky_period_s=60, flaky_burst_s=60)
        async with running_node(s, embedder=embedder, telemetry_sink=sink) as (client, node):
            rs = [await client.post("/v1/embeddings", json={"input": "x"}) for _ in range(3)]
            assert node.telemetry is not None and await node.telemetry.flush(5)
            return [r.status_code for r in rs]

    assert asyncio.run(go()) == [500, 500, 500]
    errors = [r.errors for r in sink.records if r.kind == "batch"]
    assert sum(errors) == 3
    assert all("flaky" not in r.to_json().decode() for r in sink.records)


class FakeRegistry:
    """Just the reads the throttle cache needs; no operator (settlement off)."""

    operator = None

    def __init__(self, throttled: dict[str, tuple[int, int]]) -> None:
        self.throttled = throttled

    def block_number(self) -> int:
        return 10

    def throttle_of(self, account: str) -> tuple[int, int]:
        return self.throttled.get(account.lower(), (0, 0))

    def throttle_event_accounts(self, a: int, b: int) -> set[str]:
        return set()


def test_throttled_account_gets_429_by_header_or_user_field(embedder: MiniLMEmbedder) -> None:
    bad = "0x" + "be" * 20
    good = "0x" + "90" * 20
    reg = FakeRegistry({bad: (1, 50)})

    async def go() -> None:
        async with running_node(_settings(), embedder=embedder, registry=reg) as (client, _):  # type: ignore[arg-type]
            r = await client.post(
                "/v1/embeddings", json={"input": "x"}, headers={"x-vigil-account": bad}
            )
            assert r.status_code == 429
            err = r.json()["error"]
            assert err["code"] == "account_throttled" and "until block 50" in err["message"]
            r = await client.post("/v1/embeddings", json={"input": "x", "user": bad})
            assert r.status_code == 429
            r = await client.post("/v1/embeddings", json={"input": "x", "user": good})
            assert r.status_code == 200
            r = await client.post("/v1/embeddings", json={"input": "x", "user": "some-name"})
            assert r.status_code == 200

    asyncio.run(go())


def test_request_content_never_reaches_logs(
    embedder: MiniLMEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    marker = "PRIVATE-MARKER-7f3a9c"
    sink = CaptureSink()

    async def go() -> None:
        s = _settings(fault="lazy", fault_rate=0.5)
        async with running_node(s, embedder=embedder, telemetry_sink=sink) as (client, node):
            ids = []
            for i in range(4):
                r = await client.post("/v1/embeddings", json={"input": f"{marker} {i}"})
                ids.append(r.json()["id"])
            bad = await client.post("/v1/embeddings", json={"input": [marker, 5]})
            assert bad.status_code == 400 and marker not in bad.text
            too_long = await client.post("/v1/embeddings", json={"input": marker * 10_000})
            assert too_long.status_code == 400 and marker not in too_long.text
            for rid in ids:
                assert (await client.post("/v1/challenge", json={"request_id": rid})).is_success
            assert node.telemetry is not None and await node.telemetry.flush(5)
            metrics = (await client.get("/metrics")).text
            assert marker not in metrics

    with caplog.at_level(logging.DEBUG):
        asyncio.run(go())
    assert caplog.records, "expected some log output to check"
    assert marker not in caplog.text
    assert all(marker not in r.to_json().decode() for r in sink.records)
