"""The node's HTTP API (OpenAI-compatible embeddings) and the service wiring behind it.

`NodeService` owns the parts: model, batcher, meter, challenge window, fault
injector, telemetry buffer, settler and throttle cache; `create_app` exposes it
as a FastAPI app whose lifespan starts and stops them in order. Request content
lives only in the request itself and in the in-memory challenge window: no log
line, metric, telemetry record or transaction carries it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from inference_node.batcher import (
    BatcherClosed,
    BatchFailed,
    BatchResult,
    BatchStats,
    DynamicBatcher,
    QueueFull,
)
from inference_node.commitments import output_hash
from inference_node.faults import FaultConfig, FaultInjector
from inference_node.metering import ChallengeStore, UsageMeter
from inference_node.metrics import PROM_CONTENT_TYPE, NodeMetrics
from inference_node.model import Embedder, MiniLMEmbedder, gpu_stats
from inference_node.settings import NodeSettings
from inference_node.telemetry import KafkaSink, TelemetryBuffer, TelemetryRecord, TelemetrySink
from inference_node.throttle import ThrottleCache, is_address

if TYPE_CHECKING:  # web3 is imported only by nodes that use a chain
    from inference_node.settlement import RegistryClient, Settler

log = logging.getLogger(__name__)

ACCOUNT_HEADER = "x-vigil-account"
HASH_HEADER = "x-vigil-output-hash"
REQUEST_ID_HEADER = "x-vigil-request-id"


# --------------------------------------------------------------------------- wire models


class EmbeddingRequest(BaseModel):
    """OpenAI `POST /v1/embeddings` body (token-array inputs are not supported)."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class ChallengeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128)


def openai_error(
    status: int,
    message: str,
    *,
    type_: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error in OpenAI's shape, so that OpenAI clients surface it properly."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class ApiError(Exception):
    """Raised inside handlers; rendered by `openai_error`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str,
        code: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type_ = type_
        self.code = code
        self.param = param
        self.headers = headers


# --------------------------------------------------------------------------- service


@dataclass(frozen=True)
class Served:
    request_id: str
    vectors: npt.NDArray[np.float32]
    tokens: int
    output_hash: str


class NodeService:
    """Every long-lived part of one node, started and stopped together."""

    def __init__(
        self,
        settings: NodeSettings,
        *,
        embedder: Embedder | None = None,
        registry: RegistryClient | None = None,
        telemetry_sink: TelemetrySink | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.started_at = time.monotonic()
        self.ready = False
        key = settings.operator_private_key
        self.operator: str | None = None
        if key is not None:
            from eth_account import Account

            self.operator = str(Account.from_key(key.get_secret_value()).address)
        self.node_address = settings.node_address or self.operator
        self.node_id = settings.node_id or self.node_address or "node-local"
        self.faults = FaultInjector(FaultConfig.from_settings(settings))
        self.metrics = NodeMetrics()
        self.store = ChallengeStore(ttl_s=settings.challenge_ttl_s, cap=settings.challenge_cap)
        self.registry = registry
        self.settler: Settler | None = None
        self.throttles: ThrottleCache | None = None
        self.meter = UsageMeter(keep_records=False, soft_limit=settings.settle_max_records)
        self.telemetry: TelemetryBuffer | None = None
        if telemetry_sink is None and settings.kafka_bootstrap:
            telemetry_sink = KafkaSink(settings.kafka_bootstrap, settings.telemetry_topic)
        if telemetry_sink is not None:
            self.telemetry = TelemetryBuffer(telemetry_sink, capacity=settings.telemetry_buffer)
        self.batcher: DynamicBatcher | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._gpu: tuple[float, float] = (0.0, 0.0)
        self._gpu_read_at = float("-inf")
        self.metrics.on_collect(self._refresh_gauges)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        s = self.settings
        if self.embedder is None:
            self.embedder = await asyncio.to_thread(
                MiniLMEmbedder,
                model_path=s.model_path,
                device=s.device,
                max_seq_length=s.max_seq_length,
                name=s.model_name,
            )
        self.metrics.info.labels(self.node_id, self.embedder.device, s.model_name).set(1)
        self.batcher = DynamicBatcher(
            self.embedder.encode,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            queue_limit=s.queue_limit,
            before_batch=self.faults.before_batch,
            on_batch=self._on_batch,
        )
        await self.batcher.start()
        if self.telemetry is not None:
            await self.telemetry.start()
            self._spawn(self._heartbeats(), "vigil-heartbeat")
        else:
            log.info("telemetry off (no kafka_bootstrap)")
        await self._start_chain()
        self.ready = True
        log.info(
            "node %s serving %s on %s (max batch %d, wait %.1f ms, queue %d)",
            self.node_id,
            s.model_name,
            self.embedder.device,
            s.max_batch_size,
            s.max_wait_ms,
            s.queue_limit,
        )

    async def _start_chain(self) -> None:
        s = self.settings
        if self.registry is None and not s.chain_enabled:
            log.info("chain off: no settlement, no throttle checks")
            return
        from inference_node.settlement import Settler, identities, registry_from_settings

        if self.registry is None:
            self.registry = registry_from_settings(s)
        self.throttles = ThrottleCache(self.registry, ttl_s=s.throttle_cache_ttl_s)
        self._spawn(self.throttles.run(s.throttle_refresh_s), "vigil-throttles")
        if self.registry.operator is None or self.node_address is None:
            log.warning("no operator key: settlement off (throttles still honoured)")
            return
        if s.register_stake_wei:
            await self.register(s.register_stake_wei)
        ids = identities(s, self.registry.operator, self.faults.sybil_identities)
        self.meter.keep_records = True
        self.settler = Settler(
            self.registry, self.meter, ids[0], self.faults, extra_identities=ids[1:]
        )
        if s.settle_interval_s > 0:
            self._spawn(self.settler.run(s.settle_interval_s), "vigil-settler")

    async def register(self, stake_wei: int) -> list[tuple[str, Any | None]]:
        """Register this node (and sybil drill identities) on chain; idempotent."""
        from inference_node.settlement import ChainError, register_identities

        if self.registry is None:
            raise ChainError("registration needs the chain settings and an operator key")
        return await asyncio.to_thread(
            register_identities,
            self.registry,
            self.settings,
            stake_wei,
            self.faults.sybil_identities,
        )

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def stop(self) -> None:
        self.ready = False
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.batcher is not None:
            await self.batcher.stop()
        if self.settler is not None:
            try:
                await asyncio.wait_for(self.settler.settle_once(), self.settings.tx_timeout_s)
            except Exception as exc:  # noqa: BLE001 - shutdown goes on
                log.warning("final settlement failed: %s", exc)
        if self.telemetry is not None:
            await self.telemetry.stop()
        self.store.clear()
        log.info("node %s stopped", self.node_id)

    # ------------------------------------------------------------------ telemetry
    def _record(self, kind: Literal["batch", "heartbeat"], **fields: Any) -> TelemetryRecord:
        device = self.embedder.device if self.embedder else "cpu"
        now = time.monotonic()
        if now - self._gpu_read_at > 0.5:  # NVML reads are not free: at most 2/s
            self._gpu, self._gpu_read_at = gpu_stats(device), now
        util, mem = self._gpu
        base: dict[str, Any] = dict(
            latency_ms=0.0,
            batch_size=0,
            tokens=0,
            errors=0,
            queue_depth=self.batcher.queue_depth if self.batcher else 0,
        )
        base.update(fields)
        return TelemetryRecord(
            node_id=self.node_id,
            kind=kind,
            ts=time.time(),
            device=device,
            gpu_util=util,
            gpu_mem_mb=mem,
            **base,
        )

    def _on_batch(self, b: BatchStats) -> None:
        self.metrics.batch_size.observe(b.batch_size)
        self.metrics.batch_latency.observe(b.latency_ms / 1000.0)
        self.metrics.compute_seconds.inc(b.latency_ms / 1000.0)
        if self.telemetry is not None:
            self.telemetry.emit(
                self._record(
                    "batch",
                    latency_ms=round(b.latency_ms, 3),
                    batch_size=b.batch_size,
                    tokens=b.tokens,
                    queue_depth=b.queue_depth,
                    errors=b.errors,
                )
            )

    async def _heartbeats(self) -> None:
        while True:
            if self.telemetry is not None and self.faults.heartbeat_allowed():
                self.telemetry.emit(self._record("heartbeat"))
            await asyncio.sleep(self.settings.heartbeat_interval_s)

    def _refresh_gauges(self) -> None:
        self.metrics.queue_depth.set(self.batcher.queue_depth if self.batcher else 0)
        self.metrics.challenge_window.set(len(self.store))
        if self.telemetry is not None:
            self.metrics.telemetry_buffered.set(len(self.telemetry))
            self.metrics.telemetry_sent.set(self.telemetry.sent)
            self.metrics.telemetry_dropped.set(self.telemetry.dropped)

    # ------------------------------------------------------------------ serving
    async def _compute(
        self, request_id: str, texts: list[str]
    ) -> tuple[npt.NDArray[np.float32], list[int], float]:
        """Vectors, token counts and compute share for `texts` (lazy skips the model)."""
        assert self.embedder is not None and self.batcher is not None
        if self.faults.is_lazy(request_id):
            tokens = await asyncio.to_thread(self.embedder.count_tokens, texts)
            return self.faults.garbage(request_id, len(texts), self.embedder.dim), tokens, 0.0
        try:
            res: BatchResult = await asyncio.wait_for(
                self.batcher.submit(texts), self.settings.request_timeout_s
            )
        except QueueFull as exc:
            self.metrics.rejected.labels("queue_full").inc()
            raise ApiError(
                429,
                f"node overloaded: {exc}; retry later",
                type_="overloaded",
                code="queue_full",
                headers={"retry-after": "1"},
            ) from exc
        except BatchFailed as exc:
            raise ApiError(
                500, "inference failed; retry", type_="server_error", code="inference_failed"
            ) from exc
        except BatcherClosed as exc:
            raise ApiError(
                503, "node is not serving", type_="server_error", code="unavailable"
            ) from exc
        except TimeoutError as exc:
            raise ApiError(
                504, "inference timed out", type_="server_error", code="timeout"
            ) from exc
        return res.vectors, res.tokens, res.compute_ms

    async def embed(self, texts: list[str], account: str | None) -> Served:
        if not self.ready:
            raise ApiError(503, "node is starting", type_="server_error", code="unavailable")
        if account is not None and self.throttles is not None:
            throttled = await self.throttles.check(account)
            if throttled is not None:
                self.metrics.rejected.labels("throttled").inc()
                raise ApiError(429, throttled.reason, type_="throttled", code="account_throttled")
        request_id = f"emb-{uuid.uuid4().hex}"
        vectors, tokens, compute_ms = await self._compute(request_id, texts)
        out_hash = output_hash(vectors)
        n_tokens = int(sum(tokens))
        self.metrics.tokens.inc(n_tokens)
        self.meter.record(request_id, n_tokens, compute_ms, out_hash)
        self.store.put(request_id, texts, out_hash)
        return Served(request_id, vectors, n_tokens, out_hash)

    async def challenge(self, request_id: str) -> dict[str, Any]:
        entry = self.store.get(request_id)
        if entry is None:
            self.metrics.challenges.labels("unknown").inc()
            raise ApiError(
                404,
                "request not in the challenge window (expired or never served)",
                type_="invalid_request_error",
                code="unknown_request",
                param="request_id",
            )
        vectors, _, _ = await self._compute(request_id, entry.texts)
        self.metrics.challenges.labels("answered").inc()
        return {
            "object": "challenge",
            "request_id": request_id,
            "node_id": self.node_id,
            "model": self.settings.model_name,
            "input": entry.texts,
            "data": _embedding_items(vectors, "float"),
            "output_hash": output_hash(vectors),
            "committed_hash": entry.output_hash,
        }


def _embedding_items(vectors: Any, encoding: str) -> list[dict[str, Any]]:
    arr = np.asarray(vectors, dtype="<f4")
    if encoding == "base64":
        return [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(row.tobytes()).decode(),
            }
            for i, row in enumerate(arr)
        ]
    return [
        {"object": "embedding", "index": i, "embedding": row.tolist()} for i, row in enumerate(arr)
    ]


# --------------------------------------------------------------------------- app


def create_app(
    settings: NodeSettings,
    *,
    embedder: Embedder | None = None,
    registry: RegistryClient | None = None,
    telemetry_sink: TelemetrySink | None = None,
) -> FastAPI:
    """The node as an ASGI app; the lifespan starts and stops its `NodeService`."""
    node = NodeService(
        settings, embedder=embedder, registry=registry, telemetry_sink=telemetry_sink
    )
    model_aliases = {settings.model_name, f"sentence-transformers/{settings.model_name}"}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await node.start()
        except BaseException:
            await node.stop()  # release whatever started before the failure
            raise
        try:
            yield
        finally:
            await node.stop()

    app = FastAPI(title="Vigil inference node", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.node = node

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return openai_error(
            exc.status,
            exc.message,
            type_=exc.type_,
            code=exc.code,
            param=exc.param,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Never echo the offending input back (pydantic's default includes it).
        parts = [
            f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
            for e in exc.errors()[:5]
        ]
        return openai_error(
            400,
            "invalid request: " + "; ".join(parts),
            type_="invalid_request_error",
            code="invalid_request",
        )

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        status = "500"
        try:
            texts = [body.input] if isinstance(body.input, str) else list(body.input)
            _validate(settings, body, texts, model_aliases, node.embedder)
            account = request.headers.get(ACCOUNT_HEADER)
            if account is not None and not is_address(account):
                raise ApiError(
                    400,
                    f"{ACCOUNT_HEADER} must be a 0x address",
                    type_="invalid_request_error",
                    code="invalid_account",
                )
            if account is None and body.user and is_address(body.user):
                account = body.user
            served = await node.embed(texts, account)
            status = "200"
            return JSONResponse(
                {
                    "object": "list",
                    "id": served.request_id,
                    "data": _embedding_items(served.vectors, body.encoding_format),
                    "model": settings.model_name,
                    "usage": {"prompt_tokens": served.tokens, "total_tokens": served.tokens},
                    "output_hash": served.output_hash,
                },
                headers={HASH_HEADER: served.output_hash, REQUEST_ID_HEADER: served.request_id},
            )
        except ApiError as exc:
            status = str(exc.status)
            raise
        finally:
            node.metrics.requests.labels("embeddings", status).inc()
            node.metrics.request_latency.labels("embeddings").observe(time.perf_counter() - t0)

    @app.post("/v1/challenge")
    async def challenge(body: ChallengeRequest, request: Request) -> JSONResponse:
        token = settings.challenge_token
        if token is not None:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
                node.metrics.challenges.labels("unauthorized").inc()
                raise ApiError(
                    401,
                    "challenges need the verifier's bearer token",
                    type_="authentication_error",
                    code="unauthorized",
                )
        return JSONResponse(await node.challenge(body.request_id))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": settings.model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "vigil-node",
                }
            ],
        }

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {
            "status": "ok" if node.ready else "starting",
            "node_id": node.node_id,
            "model": settings.model_name,
            "device": node.embedder.device if node.embedder else None,
            "queue_depth": node.batcher.queue_depth if node.batcher else 0,
            "uptime_s": round(time.monotonic() - node.started_at, 1),
        }
        return JSONResponse(body, status_code=200 if node.ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(node.metrics.render(), media_type=PROM_CONTENT_TYPE)

    return app


def _validate(
    s: NodeSettings,
    body: EmbeddingRequest,
    texts: list[str],
    aliases: set[str],
    embedder: Embedder | None,
) -> None:
    if body.model is not None and body.model not in aliases:
        raise ApiError(
            404,
            f"model {body.model!r} is not served here (try {s.model_name!r})",
            type_="invalid_request_error",
            code="model_not_found",
            param="model",
        )
    if not texts:
        raise ApiError(
            400,
            "input must not be empty",
            type_="invalid_request_error",
            code="invalid_request",
            param="input",
        )
    if len(texts) > s.max_inputs_per_request:
        raise ApiError(
            400,
            f"at most {s.max_inputs_per_request} inputs per request",
            type_="invalid_request_error",
            code="too_many_inputs",
            param="input",
        )
    if any(len(t) > s.max_input_chars for t in texts):
        raise ApiError(
            400,
            f"an input exceeds {s.max_input_chars} characters",
            type_="invalid_request_error",
            code="input_too_long",
            param="input",
        )
    dim = embedder.dim if embedder is not None else None
    if body.dimensions is not None and body.dimensions != dim:
        raise ApiError(
            400,
            f"this model has {dim} dimensions; other sizes are not supported",
            type_="invalid_request_error",
            code="invalid_dimensions",
            param="dimensions",
        )
