"""Task distribution: an OpenAI-compatible gateway in front of many inference nodes.

Users talk to the gateway as they would to one node (`POST /v1/embeddings`).
The gateway routes each request to a node chosen by weight (reputation, recent
latency, load, its own failed spot checks; see `routing`), skips nodes that are
unhealthy or throttled on
chain, and retries on another node when one fails (connection drop, timeout,
5xx, queue full). Client errors (4xx, a throttled user account) are relayed as
they are: another node would refuse them too.

It is also where spot checks start: a seeded share of served requests is
challenged at the serving node afterwards (in the background, so users never
wait for it), the answer is judged by a trusted `Verifier` with the gateway's
own reference model, and the `Verdict` goes to Kafka `node.challenges.v1`
through the same outage-tolerant buffer the nodes use for telemetry.

Nodes come from a static list (`VIGIL_GATEWAY_NODES`) and/or the NodeRegistry
contract (`nodeCount/nodeAt/nodeInfo`, re-read periodically). Like the node, the
gateway never logs or publishes request content.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import httpx
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from inference_node.commitments import CommitmentError, output_hash
from inference_node.metrics import PROM_CONTENT_TYPE
from inference_node.model import Embedder, MiniLMEmbedder
from inference_node.routing import (
    DEFAULT_POLICY,
    Candidate,
    RoutingPolicy,
    choose,
    ewma,
    recent_failures,
    weights,
)
from inference_node.settings import DeviceName
from inference_node.telemetry import KafkaSink, TelemetryBuffer, TelemetrySink
from inference_node.throttle import ThrottleCache, ThrottleReader
from inference_node.verifier import DEFAULT_TOLERANCE, Verdict, Verifier

if TYPE_CHECKING:
    from inference_node.settlement import RegistryClient

log = logging.getLogger(__name__)

CHALLENGES_TOPIC = "node.challenges.v1"
ACCOUNT_HEADER = "x-vigil-account"
HASH_HEADER = "x-vigil-output-hash"
REQUEST_ID_HEADER = "x-vigil-request-id"
NODE_HEADER = "x-vigil-node-id"
_RELAYED_HEADERS = ("content-type", HASH_HEADER, REQUEST_ID_HEADER, "retry-after")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


class GatewayConfigError(ValueError):
    """The gateway settings are inconsistent; the message says how to fix them."""


class DiscoveryError(RuntimeError):
    """The node list could not be read from the registry."""


# --------------------------------------------------------------------------- settings


class NodeEndpoint(BaseModel):
    """One node the gateway may route to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field("", description="Name in metrics and verdicts; default: the node's own.")
    url: str = Field(min_length=1, description="Base URL, e.g. http://10.0.0.5:8100")
    address: str | None = Field(None, description="On-chain node address (throttle checks).")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("node url must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and not _ADDRESS.match(v):
            raise ValueError("must be a 0x-prefixed 20-byte hex address")
        return v

    @property
    def key(self) -> str:
        """Stable routing key: the configured id, else the address, else the URL."""
        return self.id or (self.address.lower() if self.address else self.url)


def parse_nodes(value: str) -> list[NodeEndpoint]:
    """Nodes from a JSON list, or the compact `id=url[=0xaddress]` comma-separated form."""
    value = value.strip()
    if not value:
        return []
    if value.startswith("["):
        try:
            items = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"nodes: invalid JSON: {exc}") from exc
        return [NodeEndpoint.model_validate(i) for i in items]
    out: list[NodeEndpoint] = []
    for part in re.split(r"[,\s]+", value):
        if not part:
            continue
        node_id, sep, rest = part.partition("=")
        if not sep:  # a bare URL
            node_id, rest = "", part
        address: str | None = None
        url, sep2, tail = rest.rpartition("=")
        if sep2 and _ADDRESS.match(tail):
            address = tail
        else:
            url = rest
        out.append(NodeEndpoint(id=node_id, url=url, address=address))
    return out


class GatewaySettings(BaseSettings):
    """All of the gateway's configuration, from `VIGIL_GATEWAY_*` variables."""

    model_config = SettingsConfigDict(
        env_prefix="VIGIL_GATEWAY_", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    # --- where the nodes are --------------------------------------------------
    nodes: Annotated[list[NodeEndpoint], NoDecode] = Field(
        default_factory=list,
        description='JSON list of {"id","url","address"} or "id=url[=0xaddr],..."',
    )
    rpc_url: str | None = Field(None, description="Chain endpoint: discovery and throttles.")
    registry_address: str | None = None
    abi_path: Path | None = Field(None, description="JSON file with the NodeRegistry ABI.")
    discover: bool = Field(True, description="With a registry: route to its active nodes too.")
    discovery_interval_s: float = Field(30.0, gt=0)
    throttle_refresh_s: float = Field(2.0, gt=0)
    throttle_cache_ttl_s: float = Field(30.0, gt=0)

    # --- routing --------------------------------------------------------------
    reputation_url: str | None = Field(
        None, description="Reputation API base URL (GET /v1/nodes); unset: every node 1.0."
    )
    reputation_interval_s: float = Field(10.0, gt=0)
    # The API serves 0-100; routing works on [0, 1]: scores are divided by this on read.
    reputation_scale: float = Field(100.0, gt=0, description="Full score of the reputation API.")
    reputation_power: float = Field(2.0, ge=0)
    min_reputation: float = Field(
        0.0, ge=0, le=1, description="Fraction of the full score below which: never routed to."
    )
    spot_fail_factor: float = Field(
        0.5, gt=0, le=1, description="Weight multiplier per failed spot check (recent)."
    )
    spot_fail_floor: float = Field(0.125, gt=0, le=1, description="Lowest spot-check multiplier.")
    spot_fail_decay_s: float = Field(300.0, gt=0, description="How long a failed check counts.")
    queue_penalty: float = Field(1.0, ge=0)
    latency_alpha: float = Field(0.2, gt=0, le=1, description="EWMA weight of a new sample.")
    health_interval_s: float = Field(2.0, gt=0)
    health_timeout_s: float = Field(1.0, gt=0)
    max_consecutive_failures: int = Field(3, ge=1, description="Then out until a probe passes.")
    retries: int = Field(2, ge=0, description="Other nodes tried after a failure.")
    connect_timeout_s: float = Field(2.0, gt=0)
    request_timeout_s: float = Field(30.0, gt=0)
    max_connections: int = Field(256, ge=1)

    # --- spot checks -----------------------------------------------------------
    spot_check_rate: float = Field(0.05, ge=0, le=1, description="Share of served requests.")
    challenge_token: SecretStr | None = Field(None, description="Bearer token nodes expect.")
    spot_check_concurrency: int = Field(2, ge=1, description="Challenges verified at once.")
    spot_check_backlog: int = Field(64, ge=1, description="Pending checks; more are skipped.")
    verify_tolerance: float = Field(DEFAULT_TOLERANCE, gt=0, le=1)
    kafka_bootstrap: str | None = Field(None, description="host:port list; unset: log only.")
    challenges_topic: str = CHALLENGES_TOPIC
    verdict_buffer: int = Field(10_000, ge=1)
    recent_verdicts: int = Field(200, ge=1, description="Kept for GET /v1/gateway/verdicts.")

    # --- reference model (the verifier's) ---------------------------------------
    model_name: str = "all-MiniLM-L6-v2"
    model_path: Path | None = None
    device: DeviceName = "auto"
    max_seq_length: int = Field(256, ge=8, le=512, description="Must match the nodes'.")

    seed: int = 0

    @field_validator("nodes", mode="before")
    @classmethod
    def _nodes(cls, v: Any) -> Any:
        return parse_nodes(v) if isinstance(v, str) else v

    @field_validator("registry_address")
    @classmethod
    def _registry(cls, v: str | None) -> str | None:
        if v is not None and not _ADDRESS.match(v):
            raise ValueError("must be a 0x-prefixed 20-byte hex address")
        return v

    @field_validator("kafka_bootstrap", "rpc_url", "reputation_url")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None

    @model_validator(mode="after")
    def _consistent(self) -> GatewaySettings:
        chain = {
            "rpc_url": self.rpc_url,
            "registry_address": self.registry_address,
            "abi_path": self.abi_path,
        }
        given = [k for k, v in chain.items() if v]
        if given and len(given) != len(chain):
            missing = sorted(set(chain) - set(given))
            raise GatewayConfigError(f"chain settings incomplete: set {missing} too (or none)")
        keys = [n.key for n in self.nodes]
        if len(set(keys)) != len(keys):
            raise GatewayConfigError("node ids (or urls) must be unique")
        return self

    @property
    def chain_enabled(self) -> bool:
        return bool(self.rpc_url and self.registry_address and self.abi_path)

    def policy(self) -> RoutingPolicy:
        return RoutingPolicy(
            reputation_power=self.reputation_power,
            min_reputation=self.min_reputation,
            queue_penalty=self.queue_penalty,
            spot_fail_factor=self.spot_fail_factor,
            spot_fail_floor=min(self.spot_fail_floor, self.spot_fail_factor),
            spot_fail_decay_s=self.spot_fail_decay_s,
        )


# --------------------------------------------------------------------------- metrics

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    """What `/metrics` exposes: client-facing outcomes, per-node outcomes, spot checks."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "vigil_gateway_requests_total", "Client requests by status", ["status"], registry=r
        )
        self.request_latency = Histogram(
            "vigil_gateway_request_seconds",
            "Client-facing latency, retries included",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.node_requests = Counter(
            "vigil_gateway_node_requests_total",
            "Attempts per node by outcome "
            "(ok, refused, client_error, overloaded, server_error, timeout, dropped, unreachable)",
            ["node", "outcome"],
            registry=r,
        )
        self.node_latency = Histogram(
            "vigil_gateway_node_request_seconds",
            "Latency of successful attempts per node",
            ["node"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "vigil_gateway_retries_total", "Attempts after a failed one", registry=r
        )
        self.spot_checks = Counter(
            "vigil_gateway_spot_checks_total",
            "Spot checks per node by outcome "
            "(passed, failed, unanswered, unreachable, error, skipped)",
            ["node", "outcome"],
            registry=r,
        )
        self.node_up = Gauge("vigil_gateway_node_up", "Node passes health", ["node"], registry=r)
        self.node_throttled = Gauge(
            "vigil_gateway_node_throttled", "Node throttled on chain", ["node"], registry=r
        )
        self.node_weight = Gauge(
            "vigil_gateway_node_weight_share", "Share of routing weight", ["node"], registry=r
        )
        self.node_latency_ewma = Gauge(
            "vigil_gateway_node_latency_ewma_ms",
            "Latency estimate used by routing",
            ["node"],
            registry=r,
        )
        self.node_inflight = Gauge(
            "vigil_gateway_node_inflight", "Outstanding requests", ["node"], registry=r
        )
        self.node_reputation = Gauge(
            "vigil_gateway_node_reputation", "Reputation used by routing", ["node"], registry=r
        )
        self.verdicts_buffered = Gauge(
            "vigil_gateway_verdicts_buffered", "Verdicts not yet acknowledged", registry=r
        )
        self.verdicts_sent = Gauge(
            "vigil_gateway_verdicts_sent", "Verdicts acknowledged by Kafka", registry=r
        )
        self.verdicts_dropped = Gauge(
            "vigil_gateway_verdicts_dropped", "Verdicts dropped (buffer full)", registry=r
        )

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


# --------------------------------------------------------------------------- nodes


class NodeDirectory(Protocol):
    """Somewhere to discover nodes (the NodeRegistry contract in production)."""

    def list_nodes(self) -> list[NodeEndpoint]: ...


class RegistryDirectory:
    """Active nodes of NodeRegistry via `nodeCount/nodeAt/nodeInfo` (blocking: use a thread)."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client

    def list_nodes(self) -> list[NodeEndpoint]:
        fns = self.client.contract.functions
        try:
            count = int(fns.nodeCount().call())
            out: list[NodeEndpoint] = []
            for i in range(count):
                addr = str(fns.nodeAt(i).call())
                _, _, url, _, active = fns.nodeInfo(addr).call()
                if not active or not str(url).startswith(("http://", "https://")):
                    continue
                out.append(NodeEndpoint(url=str(url), address=addr))
            return out
        except Exception as exc:  # web3 raises many unrelated types
            raise DiscoveryError(f"cannot list nodes from the registry: {exc}") from exc


class NodeState:
    """Live view of one node: what routing needs, updated by probes and by traffic."""

    def __init__(self, endpoint: NodeEndpoint, *, discovered: bool = False) -> None:
        self.endpoint = endpoint
        self.discovered = discovered
        self.healthy = False  # until the first probe says otherwise
        self.throttled = False
        self.reputation = 1.0  # [0, 1]: the API's 0-100 score / reputation_scale
        self.spot_failures: deque[float] = deque(maxlen=64)  # when (clock) checks failed here
        self.latency_ms: float | None = None
        self.inflight = 0
        self.queue_depth = 0
        self.failures = 0  # consecutive failed attempts
        self.reported_id = ""  # node_id from the node's /health

    @property
    def key(self) -> str:
        return self.endpoint.key

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def node_id(self) -> str:
        """Name in metrics and verdicts: the configured id, else the node's own, else its key."""
        return self.endpoint.id or self.reported_id or self.key

    def candidate(self, now: float = 0.0, policy: RoutingPolicy = DEFAULT_POLICY) -> Candidate:
        """This node as routing sees it at `now` (the gateway's clock)."""
        return Candidate(
            node_id=self.key,
            healthy=self.healthy,
            throttled=self.throttled,
            reputation=self.reputation,
            latency_ms=self.latency_ms,
            inflight=self.inflight,
            queue_depth=self.queue_depth,
            spot_failures=recent_failures(self.spot_failures, now, policy),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "url": self.url,
            "address": self.endpoint.address,
            "healthy": self.healthy,
            "throttled": self.throttled,
            "reputation": self.reputation,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 2),
            "inflight": self.inflight,
            "queue_depth": self.queue_depth,
            "discovered": self.discovered,
        }


# --------------------------------------------------------------------------- spot checks


class SpotCheckSampler:
    """Seeded Bernoulli sampling of served requests (reproducible in drills and tests)."""

    def __init__(self, rate: float, seed: int = 0) -> None:
        if not 0 <= rate <= 1:
            raise ValueError("rate must be in [0, 1]")
        self.rate = rate
        self._rng = random.Random(f"vigil-spot-check|{seed}")

    def sample(self) -> bool:
        return self.rate > 0 and self._rng.random() < self.rate


@dataclass(frozen=True)
class VerdictMessage:
    """A `Verdict` as one `node.challenges.v1` message (key: node id)."""

    verdict: Verdict

    @property
    def node_id(self) -> str:
        return self.verdict.node_id

    def to_json(self) -> bytes:
        d = self.verdict.to_dict()
        d = {"schema_version": d.pop("schema_version"), **d}
        return json.dumps(d, separators=(",", ":")).encode()


def served_hash(body: bytes) -> str | None:
    """Output hash of the vectors in an embeddings response as the client received them."""
    try:
        data = json.loads(body)["data"]
        rows: list[Any] = []
        for item in sorted(data, key=lambda d: int(d["index"])):
            emb = item["embedding"]
            if isinstance(emb, str):
                rows.append(np.frombuffer(base64.b64decode(emb), dtype="<f4"))
            else:
                rows.append(np.asarray(emb, dtype=np.float32))
        return output_hash(np.stack(rows)) if rows else None
    except (KeyError, TypeError, ValueError, CommitmentError):
        return None


def request_texts(payload: dict[str, Any]) -> list[str] | None:
    """The inputs of an embeddings request, or None when they are not plain strings."""
    inp = payload.get("input")
    if isinstance(inp, str):
        return [inp]
    if isinstance(inp, list) and inp and all(isinstance(t, str) for t in inp):
        return list(inp)
    return None


class SpotChecker:
    """Challenges sampled requests in the background and publishes the verdicts."""

    def __init__(
        self,
        settings: GatewaySettings,
        client: httpx.AsyncClient,
        metrics: GatewayMetrics,
        *,
        embedder: Embedder | None,
        sink: TelemetrySink | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.clock = clock  # when a failed check happened, for routing's decay
        self.sampler = SpotCheckSampler(settings.spot_check_rate, settings.seed)
        self.embedder = embedder
        self.verifier: Verifier | None = None
        self.buffer: TelemetryBuffer | None = None
        if sink is None and settings.kafka_bootstrap:
            sink = KafkaSink(settings.kafka_bootstrap, settings.challenges_topic)
        if sink is not None:
            self.buffer = TelemetryBuffer(sink, capacity=settings.verdict_buffer)
        self.recent: deque[Verdict] = deque(maxlen=settings.recent_verdicts)
        self._sem = asyncio.Semaphore(settings.spot_check_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        token = settings.challenge_token
        self._headers = {"authorization": f"Bearer {token.get_secret_value()}"} if token else {}

    @property
    def enabled(self) -> bool:
        return self.settings.spot_check_rate > 0

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        s = self.settings
        if not self.enabled:
            log.info("spot checks off (spot_check_rate=0)")
            return
        if self.embedder is None:
            self.embedder = await asyncio.to_thread(
                MiniLMEmbedder,
                model_path=s.model_path,
                device=s.device,
                max_seq_length=s.max_seq_length,
                name=s.model_name,
            )
        self.verifier = Verifier(self.embedder, tolerance=s.verify_tolerance)
        if self.buffer is not None:
            await self.buffer.start()
        else:
            log.warning("no kafka_bootstrap: spot-check verdicts are only logged and counted")
        log.info(
            "spot checks on: rate %.3f, reference model on %s",
            s.spot_check_rate,
            self.embedder.device,
        )

    async def stop(self, drain_s: float = 5.0) -> None:
        if self._tasks:
            _, left = await asyncio.wait(set(self._tasks), timeout=drain_s)
            for t in left:
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*left, return_exceptions=True)
        if self.buffer is not None:
            await self.buffer.stop()

    def maybe_check(
        self, node: NodeState, request_id: str, texts: list[str] | None, body: bytes
    ) -> bool:
        """Sample this served request; if chosen, check it in the background."""
        if self.verifier is None or not self.sampler.sample():
            return False
        if texts is None or not request_id:
            return False
        if len(self._tasks) >= self.settings.spot_check_backlog:
            self.metrics.spot_checks.labels(node.node_id, "skipped").inc()
            return False
        task = asyncio.create_task(
            self._check(node, request_id, texts, body), name=f"vigil-spot-{request_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _challenge(self, node: NodeState, request_id: str) -> httpx.Response:
        """POST /v1/challenge, retrying briefly while the node is busy or restarting."""
        delay = 0.25
        for attempt in range(3):
            try:
                resp = await self.client.post(
                    f"{node.url}/v1/challenge",
                    json={"request_id": request_id},
                    headers=self._headers,
                    timeout=self.settings.request_timeout_s,
                )
            except httpx.HTTPError:
                if attempt == 2:
                    raise
            else:
                if resp.status_code not in (429, 503) or attempt == 2:
                    return resp
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    async def _check(self, node: NodeState, request_id: str, texts: list[str], body: bytes) -> None:
        assert self.verifier is not None
        nid = node.node_id
        async with self._sem:
            try:
                resp = await self._challenge(node, request_id)
            except httpx.HTTPError as exc:
                # The node went away: its health covers that; no evidence either way.
                log.info("spot check of %s at %s: node unreachable (%s)", request_id, nid, exc)
                self.metrics.spot_checks.labels(nid, "unreachable").inc()
                return
            if resp.status_code in (401, 403):
                log.error(
                    "node %s refused the gateway's challenge token (HTTP %d): "
                    "check VIGIL_GATEWAY_CHALLENGE_TOKEN",
                    nid,
                    resp.status_code,
                )
                self.metrics.spot_checks.labels(nid, "error").inc()
                return
            if resp.status_code != 200:
                verdict = Verdict(
                    nid,
                    request_id,
                    False,
                    -1.0,
                    time.time(),
                    f"challenge unanswered: HTTP {resp.status_code}",
                    False,
                )
                self._publish(verdict, "unanswered", node)
                return
            try:
                answer = resp.json()
            except ValueError:
                answer = {}
            expected = await asyncio.to_thread(served_hash, body)
            verdict = await asyncio.to_thread(
                self.verifier.verify,
                answer if isinstance(answer, dict) else {},
                node_id=nid,
                expected_hash=expected,
                expected_inputs=texts,
            )
            # The node's answer names the request; keep ours (it is what was served).
            if verdict.request_id != request_id:
                verdict = Verdict(
                    verdict.node_id,
                    request_id,
                    verdict.passed,
                    verdict.cosine,
                    verdict.ts,
                    verdict.reason,
                    verdict.hash_ok,
                )
            self._publish(verdict, "passed" if verdict.passed else "failed", node)

    def _publish(self, verdict: Verdict, outcome: str, node: NodeState) -> None:
        self.metrics.spot_checks.labels(verdict.node_id, outcome).inc()
        self.recent.append(verdict)
        if not verdict.passed:
            # Routing's own, immediate evidence: the node's weight drops for a while.
            node.spot_failures.append(self.clock())
        if verdict.passed:
            log.debug("spot check %s at %s passed", verdict.request_id, verdict.node_id)
        else:
            log.warning(
                "spot check %s at %s FAILED: %s",
                verdict.request_id,
                verdict.node_id,
                verdict.reason,
            )
        if self.buffer is not None:
            self.buffer.emit(VerdictMessage(verdict))


# --------------------------------------------------------------------------- gateway


class NoNodeAvailable(RuntimeError):
    """No healthy, unthrottled node is left to try."""


@dataclass(frozen=True)
class Relayed:
    """What the client gets back, and which node (if any) served it."""

    status: int
    body: bytes
    headers: dict[str, str]
    node: NodeState | None


def _error_body(message: str, type_: str, code: str) -> bytes:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return json.dumps(body).encode()


def _error_code(body: bytes) -> str | None:
    try:
        err = json.loads(body).get("error")
        return str(err.get("code")) if isinstance(err, dict) else None
    except (ValueError, AttributeError):
        return None


class Gateway:
    """The node pool, the routing loop around it, and the background refreshers."""

    def __init__(
        self,
        settings: GatewaySettings,
        nodes: Sequence[NodeEndpoint] | None = None,
        *,
        embedder: Embedder | None = None,
        verdict_sink: TelemetrySink | None = None,
        http_client: httpx.AsyncClient | None = None,
        directory: NodeDirectory | None = None,
        throttle_reader: ThrottleReader | None = None,
        policy: RoutingPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.policy = policy or settings.policy()
        self.clock = clock
        self.metrics = GatewayMetrics()
        self.rng = random.Random(f"vigil-routing|{settings.seed}")
        static = list(settings.nodes if nodes is None else nodes)
        self.nodes: dict[str, NodeState] = {n.key: NodeState(n) for n in static}
        self._owns_client = http_client is None
        self.client = http_client or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
                # below uvicorn's 5 s keep-alive, so a connection the node is
                # closing is not reused (that race reads as a mid-request drop)
                keepalive_expiry=2.0,
            ),
        )
        if settings.chain_enabled and (directory is None or throttle_reader is None):
            from inference_node.settlement import RegistryClient, load_abi

            assert settings.rpc_url and settings.registry_address and settings.abi_path
            registry = RegistryClient(
                settings.rpc_url, settings.registry_address, load_abi(settings.abi_path)
            )
            if directory is None and settings.discover:
                directory = RegistryDirectory(registry)
            throttle_reader = throttle_reader or registry
        self.directory = directory
        self.throttles = (
            ThrottleCache(throttle_reader, ttl_s=settings.throttle_cache_ttl_s)
            if throttle_reader is not None
            else None
        )
        self.spot = SpotChecker(
            settings, self.client, self.metrics, embedder=embedder, sink=verdict_sink, clock=clock
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._last_warning: dict[str, float] = {}
        if not self.nodes and directory is None:
            raise GatewayConfigError(
                "no nodes: set VIGIL_GATEWAY_NODES or the registry (rpc_url, "
                "registry_address, abi_path)"
            )

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.spot.start()
        if self.directory is not None:
            await self.discover_once()
        await self.probe_once()
        if self.settings.reputation_url:
            await self.reputation_once()
            self._spawn(self._every(self.settings.reputation_interval_s, self.reputation_once))
        if self.directory is not None:
            self._spawn(self._every(self.settings.discovery_interval_s, self.discover_once))
        if self.throttles is not None:
            self._spawn(self.throttles.run(self.settings.throttle_refresh_s))
        self._spawn(self._every(self.settings.health_interval_s, self.probe_once))
        up = sum(n.healthy for n in self.nodes.values())
        log.info("gateway routing to %d nodes (%d healthy)", len(self.nodes), up)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        await self.spot.stop()
        if self._owns_client:
            await self.client.aclose()
        log.info("gateway stopped")

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.create_task(coro))

    async def _every(self, interval_s: float, fn: Any) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await fn()
            except Exception as exc:  # noqa: BLE001 - background refreshers must keep going
                self._warn(getattr(fn, "__name__", "refresh"), exc)

    def _warn(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(what, float("-inf")) > 10.0:
            self._last_warning[what] = now
            log.warning("%s failed (%s: %s)", what, type(exc).__name__, exc)

    # ------------------------------------------------------------------ refreshers
    async def discover_once(self) -> None:
        """Add active registry nodes, drop discovered ones that left it."""
        assert self.directory is not None
        try:
            found = await asyncio.to_thread(self.directory.list_nodes)
        except DiscoveryError as exc:
            self._warn("node discovery", exc)
            return
        static_addr = {
            n.endpoint.address.lower()
            for n in self.nodes.values()
            if n.endpoint.address and not n.discovered
        }
        seen: set[str] = set()
        for ep in found:
            if ep.address and ep.address.lower() in static_addr:
                continue  # configured explicitly: the static entry wins
            seen.add(ep.key)
            if ep.key not in self.nodes:
                self.nodes[ep.key] = NodeState(ep, discovered=True)
                log.info("discovered node %s at %s", ep.key, ep.url)
            elif self.nodes[ep.key].url != ep.url:
                state = NodeState(ep, discovered=True)
                self.nodes[ep.key] = state
                log.info("node %s moved to %s", ep.key, ep.url)
        for key in [k for k, n in self.nodes.items() if n.discovered and k not in seen]:
            log.info("node %s left the registry", key)
            del self.nodes[key]

    async def _probe(self, node: NodeState) -> None:
        try:
            resp = await self.client.get(
                f"{node.url}/health", timeout=self.settings.health_timeout_s
            )
            ok = resp.status_code == 200
            body = resp.json() if ok else {}
        except (httpx.HTTPError, ValueError):
            ok, body = False, {}
        if ok and not node.healthy:
            log.info("node %s is up", node.node_id)
        elif not ok and node.healthy:
            log.warning("node %s failed its health probe; routing around it", node.node_id)
        node.healthy = ok
        if ok:
            node.failures = 0
            node.queue_depth = int(body.get("queue_depth", 0) or 0)
            node.reported_id = str(body.get("node_id", "") or "")
        if self.throttles is not None and node.endpoint.address:
            throttled = await self.throttles.check(node.endpoint.address) is not None
            if throttled != node.throttled:
                log.warning(
                    "node %s is %s on chain",
                    node.node_id,
                    "throttled" if throttled else "no longer throttled",
                )
            node.throttled = throttled

    async def probe_once(self) -> None:
        """Health (and throttle) state of every node, probed concurrently."""
        await asyncio.gather(*(self._probe(n) for n in list(self.nodes.values())))

    async def reputation_once(self) -> None:
        """Scores from the reputation API (0-100, every page), as [0, 1] fractions of
        `reputation_scale`; nodes it does not list keep 1.0."""
        url = str(self.settings.reputation_url).rstrip("/")
        if not url.endswith("/v1/nodes"):
            url += "/v1/nodes"
        scores: dict[str, float] = {}
        try:
            for page in range(REPUTATION_MAX_PAGES):
                resp = await self.client.get(
                    url,
                    params={"limit": REPUTATION_PAGE, "offset": page * REPUTATION_PAGE},
                    timeout=self.settings.health_timeout_s * 5,
                )
                resp.raise_for_status()
                body = resp.json()
                got = parse_reputation(body, scale=self.settings.reputation_scale)
                scores.update(got)
                total = body.get("total") if isinstance(body, dict) else None
                if not isinstance(total, int) or (page + 1) * REPUTATION_PAGE >= total:
                    break  # the last page (or an unpaged list)
        except (httpx.HTTPError, ValueError) as exc:
            self._warn("reputation refresh", exc)
            return
        for n in self.nodes.values():
            names = {n.key.lower(), n.node_id.lower()}
            if n.endpoint.address:
                names.add(n.endpoint.address.lower())
            score = next((scores[k] for k in names if k in scores), None)
            n.reputation = 1.0 if score is None else score

    # ------------------------------------------------------------------ routing
    def candidates(self) -> list[Candidate]:
        now = self.clock()
        return [n.candidate(now, self.policy) for n in self.nodes.values()]

    def pick(self, exclude: set[str]) -> NodeState | None:
        c = choose(self.candidates(), self.rng, self.policy, exclude=exclude)
        return None if c is None else self.nodes.get(c.node_id)

    async def forward(self, raw: bytes, headers: dict[str, str]) -> Relayed:
        """Send one embeddings request to the best node, retrying elsewhere on failure."""
        tried: set[str] = set()
        last: Relayed | None = None
        for attempt in range(self.settings.retries + 1):
            node = self.pick(tried)
            if node is None:
                break
            if attempt:
                self.metrics.retries.inc()
            tried.add(node.key)
            result, retry = await self._attempt(node, raw, headers)
            if not retry:
                return result
            last = result
        if last is not None:
            return last  # every node tried failed: relay the last failure
        raise NoNodeAvailable("no healthy, unthrottled node is available")

    async def _attempt(
        self, node: NodeState, raw: bytes, headers: dict[str, str]
    ) -> tuple[Relayed, bool]:
        """One try at `node`: (what to relay, whether another node should be tried)."""
        nid = node.node_id
        node.inflight += 1
        t0 = time.perf_counter()
        try:
            resp = await self.client.post(f"{node.url}/v1/embeddings", content=raw, headers=headers)
        except httpx.TimeoutException:
            self._failed(node, "timeout", hard=False)
            return self._gateway_error(504, f"node {nid} timed out", "upstream_timeout"), True
        except httpx.ConnectError:
            self._failed(node, "unreachable", hard=True)  # nothing listens: the node is down
            log.warning("node %s unreachable; retrying elsewhere", nid)
            return self._gateway_error(502, f"node {nid} unreachable", "upstream_failed"), True
        except httpx.HTTPError as exc:
            self._failed(node, "dropped", hard=False)
            log.warning(
                "node %s failed mid-request (%s); retrying elsewhere", nid, type(exc).__name__
            )
            return self._gateway_error(502, f"node {nid} failed", "upstream_failed"), True
        finally:
            node.inflight -= 1
        elapsed = time.perf_counter() - t0
        out = {k: v for k in _RELAYED_HEADERS if (v := resp.headers.get(k)) is not None}
        relayed = Relayed(resp.status_code, resp.content, out, node)
        status = resp.status_code
        if status == 200:
            node.failures = 0
            node.latency_ms = ewma(node.latency_ms, elapsed * 1000.0, self.settings.latency_alpha)
            self.metrics.node_requests.labels(nid, "ok").inc()
            self.metrics.node_latency.labels(nid).observe(elapsed)
            return relayed, False
        if status == 429 and _error_code(resp.content) == "account_throttled":
            self.metrics.node_requests.labels(nid, "refused").inc()
            return relayed, False  # the user is throttled on chain: every node refuses
        if status == 429:
            self._failed(node, "overloaded", hard=False)
            return relayed, True
        if status >= 500 or status == 408:
            self._failed(node, "server_error", hard=status == 503)
            return relayed, True
        self.metrics.node_requests.labels(nid, "client_error").inc()
        return relayed, False

    def _failed(self, node: NodeState, outcome: str, *, hard: bool) -> None:
        """Count a failed attempt; a dead connection (or many failures) takes the node out."""
        self.metrics.node_requests.labels(node.node_id, outcome).inc()
        if outcome == "overloaded":
            return  # busy, not broken: the queue-depth term already steers away
        node.failures += 1
        if node.healthy and (hard or node.failures >= self.settings.max_consecutive_failures):
            node.healthy = False
            log.warning(
                "node %s taken out of rotation (%s) until a probe passes", node.node_id, outcome
            )

    @staticmethod
    def _gateway_error(status: int, message: str, code: str) -> Relayed:
        return Relayed(
            status,
            _error_body(message, "server_error", code),
            {"content-type": "application/json"},
            None,
        )

    # ------------------------------------------------------------------ metrics
    def refresh_gauges(self) -> None:
        cands = self.candidates()
        w = weights(cands, self.policy)
        total = sum(w) or 1.0
        m = self.metrics
        for n, wi in zip(self.nodes.values(), w, strict=True):
            nid = n.node_id
            m.node_up.labels(nid).set(1 if n.healthy else 0)
            m.node_throttled.labels(nid).set(1 if n.throttled else 0)
            m.node_weight.labels(nid).set(wi / total)
            m.node_latency_ewma.labels(nid).set(n.latency_ms or 0.0)
            m.node_inflight.labels(nid).set(n.inflight)
            m.node_reputation.labels(nid).set(n.reputation)
        buf = self.spot.buffer
        if buf is not None:
            m.verdicts_buffered.set(len(buf))
            m.verdicts_sent.set(buf.sent)
            m.verdicts_dropped.set(buf.dropped)


REPUTATION_PAGE = 500  # the API's largest `limit`
REPUTATION_MAX_PAGES = 20


def parse_reputation(body: Any, *, scale: float = 100.0) -> dict[str, float]:
    """{node (lower-cased): reputation in [0, 1]} from `GET /v1/nodes`.

    The API's scores run 0-`scale` (100); routing wants fractions, so each score is
    divided by `scale` and clamped to [0, 1]. Accepts the API's page
    ({"items": [...], "total": ...}), a bare list of {"node", "score"} objects, or
    one wrapped in {"nodes": [...]} or {"data": [...]}.
    """
    if scale <= 0:
        raise ValueError("scale must be > 0")
    items: Any
    if isinstance(body, dict):
        items = next((body[k] for k in ("items", "nodes", "data") if k in body), [])
    else:
        items = body
    if not isinstance(items, list):
        raise ValueError("reputation response is not a list of {node, score}")
    out: dict[str, float] = {}
    for item in items:
        if not isinstance(item, dict) or "node" not in item or "score" not in item:
            continue
        score = item["score"]
        if isinstance(score, bool) or not isinstance(score, int | float):
            continue  # not a number: treat the node as unscored
        out[str(item["node"]).lower()] = min(1.0, max(0.0, float(score) / scale))
    return out


# --------------------------------------------------------------------------- app


def create_gateway(
    settings: GatewaySettings,
    nodes: Sequence[NodeEndpoint] | None = None,
    *,
    embedder: Embedder | None = None,
    verdict_sink: TelemetrySink | None = None,
    http_client: httpx.AsyncClient | None = None,
    directory: NodeDirectory | None = None,
    throttle_reader: ThrottleReader | None = None,
    policy: RoutingPolicy | None = None,
) -> FastAPI:
    """The gateway as an ASGI app; `nodes` (if given) replaces `settings.nodes`.

    `embedder` is the verifier's reference model (default: MiniLM loaded at start
    when spot checks are on); `verdict_sink` replaces the Kafka sink (tests);
    `http_client` replaces the client used to reach nodes.
    """
    gw = Gateway(
        settings,
        nodes,
        embedder=embedder,
        verdict_sink=verdict_sink,
        http_client=http_client,
        directory=directory,
        throttle_reader=throttle_reader,
        policy=policy,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await gw.start()
        except BaseException:
            await gw.stop()
            raise
        try:
            yield
        finally:
            await gw.stop()

    app = FastAPI(title="Vigil gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gw

    def error(status: int, message: str, type_: str, code: str) -> Response:
        return Response(
            _error_body(message, type_, code), status_code=status, media_type="application/json"
        )

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        t0 = time.perf_counter()
        status = 500
        try:
            raw = await request.body()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = None
            if not isinstance(payload, dict):
                status = 400
                return error(
                    400, "body must be a JSON object", "invalid_request_error", "invalid_request"
                )
            headers = {"content-type": "application/json"}
            account = request.headers.get(ACCOUNT_HEADER)
            if account is not None:
                headers[ACCOUNT_HEADER] = account
            try:
                relayed = await gw.forward(raw, headers)
            except NoNodeAvailable as exc:
                status = 503
                return Response(
                    _error_body(f"{exc}; retry later", "server_error", "no_node_available"),
                    status_code=503,
                    media_type="application/json",
                    headers={"retry-after": "1"},
                )
            status = relayed.status
            out_headers = dict(relayed.headers)
            if relayed.node is not None:
                out_headers[NODE_HEADER] = relayed.node.node_id
                if status == 200:
                    gw.spot.maybe_check(
                        relayed.node,
                        out_headers.get(REQUEST_ID_HEADER, ""),
                        request_texts(payload),
                        relayed.body,
                    )
            return Response(relayed.body, status_code=status, headers=out_headers)
        finally:
            gw.metrics.requests.labels(str(status)).inc()
            gw.metrics.request_latency.observe(time.perf_counter() - t0)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": settings.model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "vigil-network",
                }
            ],
        }

    @app.get("/v1/gateway/nodes")
    async def nodes_view() -> dict[str, Any]:
        cands = gw.candidates()
        w = weights(cands, gw.policy)
        total = sum(w) or 1.0
        return {
            "nodes": [
                {
                    **n.to_dict(),
                    "spot_failures": c.spot_failures,
                    "weight_share": round(wi / total, 4),
                }
                for n, c, wi in zip(gw.nodes.values(), cands, w, strict=True)
            ]
        }

    @app.get("/v1/gateway/verdicts")
    async def verdicts() -> dict[str, Any]:
        return {"verdicts": [v.to_dict() for v in gw.spot.recent]}

    @app.get("/health")
    async def health() -> JSONResponse:
        routable = sum(c.eligible for c in gw.candidates())
        body = {
            "status": "ok" if routable else "no_node_available",
            "nodes": len(gw.nodes),
            "routable": routable,
            "spot_checks_pending": gw.spot.pending,
        }
        return JSONResponse(body, status_code=200 if routable else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        gw.refresh_gauges()
        return Response(gw.metrics.render(), media_type=PROM_CONTENT_TYPE)

    return app


__all__ = [
    "CHALLENGES_TOPIC",
    "Gateway",
    "GatewayConfigError",
    "GatewaySettings",
    "NodeEndpoint",
    "NoNodeAvailable",
    "RegistryDirectory",
    "SpotCheckSampler",
    "VerdictMessage",
    "create_gateway",
    "parse_nodes",
    "parse_reputation",
]
