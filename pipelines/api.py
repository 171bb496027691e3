"""`vigil api`: the reputation and SOC API (FastAPI, OpenAPI docs at /docs).

Who uses it: node operators (their score, what lowered it, the evidence behind each
penalty, and a signed contest), governance and SOC tooling (alerts and incidents
filtered by time, entity, category and severity; evidence documents by the keccak
hash that went on chain).

Reads ClickHouse through clickhouse-connect with server-side parameters only
(`{name:Type}`), `FINAL` on the ReplacingMergeTree tables. Every request is rate
limited per client address (token bucket). Errors are 4xx with a plain message;
storage or chain failures are 503 without internals, and nothing from `Settings`
(keys, passwords) is ever echoed in a response or written to the log.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak
from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from web3 import Web3
from web3.contract import Contract

from detector.reputation import Reputation, explain_components
from pipelines.settings import Settings

log = logging.getLogger(__name__)

API_VERSION = "1"
ADDRESS_PATTERN = r"^0x[0-9a-fA-F]{40}$"
HASH_PATTERN = r"^0x[0-9a-fA-F]{64}$"
SIGNATURE_PATTERN = r"^(0x)?[0-9a-fA-F]{130}$"
#: How far a contest's signed timestamp may be from the server clock.
CONTEST_WINDOW_S = 600
_HASH_RE = re.compile(HASH_PATTERN)

#: DDL of the contests table (to be added as a migration; `{db}` is the database).
CONTESTS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.contests
(
    contest_id String,
    node_id String,
    operator String,
    evidence_hash String,
    reason String,
    signature String,
    signed_at DateTime64(3, 'UTC'),
    received_at DateTime64(3, 'UTC'),
    status LowCardinality(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(signed_at)
ORDER BY contest_id
"""
CONTESTS_COLUMNS = [
    "contest_id",
    "node_id",
    "operator",
    "evidence_hash",
    "reason",
    "signature",
    "signed_at",
    "received_at",
    "status",
]
REPUTATION_COLUMNS = ["node_id", "ts", "score", "components", "reason"]


def reputation_row(node_id: str, ts: float, rep: Reputation) -> list[Any]:
    """A `reputation` table row (column order `REPUTATION_COLUMNS`) for the writer."""
    return [
        node_id.lower(),
        datetime.fromtimestamp(ts, tz=UTC),
        rep.score,
        rep.values(),
        rep.explain(),
    ]


def contest_message(node: str, evidence_hash: str, reason: str, timestamp: int) -> str:
    """The exact text an operator signs (EIP-191 `personal_sign`) to contest."""
    return (
        "Vigil reputation contest v1\n"
        f"node: {node.lower()}\n"
        f"evidence: {evidence_hash.lower() or '-'}\n"
        f"timestamp: {timestamp}\n"
        f"reason: {reason}"
    )


# --------------------------------------------------------------------- rate limit


class TokenBucket:
    """Per-key token bucket: `burst` requests at once, refilled at `rate_per_s`.

    Pure apart from the injected clock; keeps at most `max_keys` buckets (least
    recently used are dropped, which only ever forgives a client).
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, cost: float = 1.0) -> tuple[bool, float]:
        """(allowed, seconds until allowed)."""
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            allowed = tokens >= cost
            if allowed:
                tokens -= cost
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        return allowed, 0.0 if allowed else (cost - tokens) / self.rate


# --------------------------------------------------------------------- models


class SortField(StrEnum):
    score = "score"
    node = "node"
    updated_at = "updated_at"


class SortOrder(StrEnum):
    asc = "asc"
    desc = "desc"


class SeverityName(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


class NodeSummary(BaseModel):
    node: str
    score: float
    updated_at: datetime
    components: dict[str, float]


class NodePage(BaseModel):
    items: list[NodeSummary]
    total: int
    limit: int
    offset: int


class ComponentOut(BaseModel):
    name: str
    value: float = Field(description="0..1, 1 is best")
    weight: float
    points: float = Field(description="weight * value * 100: what it adds to the score")
    lost: float = Field(description="weight * (1 - value) * 100: what it cost")


class EvidenceLink(BaseModel):
    source: str = Field(description="alert | incident | action")
    evidence_hash: str
    at: datetime
    summary: str
    url: str


class HistoryPoint(BaseModel):
    ts: datetime
    score: float


class ReputationOut(BaseModel):
    node: str
    score: float
    updated_at: datetime
    explanation: str
    reason: str
    components: list[ComponentOut]
    evidence: list[EvidenceLink]
    history: list[HistoryPoint]


class EvidenceOut(BaseModel):
    evidence_hash: str
    entity: str
    created_at: datetime
    verified: bool = Field(description="keccak256 of `canonical` equals `evidence_hash`")
    canonical: str = Field(description="the exact canonical JSON text that was hashed")
    doc: Any
    references: list[str] = Field(description="links to evidence this document cites")


class AlertOut(BaseModel):
    alert_id: str
    entity: str
    category: str
    severity: str
    detector: str
    score: float
    threshold: float
    evidence_hash: str
    explanation: str
    tx_hash: str
    created_at: datetime
    evidence_url: str


class AlertPage(BaseModel):
    items: list[AlertOut]
    total: int
    limit: int
    offset: int


class IncidentOut(BaseModel):
    incident_id: str
    entity: str
    category: str
    severity: str
    status: str
    first_seen: datetime
    last_seen: datetime
    alert_count: int
    detectors: list[str]
    evidence_hash: str
    evidence_url: str


class IncidentPage(BaseModel):
    items: list[IncidentOut]
    total: int
    limit: int
    offset: int


class ContestIn(BaseModel):
    evidence_hash: str = Field(
        "", description="the penalty's evidence hash ('' for the score in general)"
    )
    reason: str = Field(min_length=1, max_length=2000)
    timestamp: int = Field(description="unix seconds, signed; must be within 10 minutes")
    signature: str = Field(
        pattern=SIGNATURE_PATTERN,
        description="EIP-191 personal_sign of `contest_message(...)` by the node's operator",
    )


class ContestOut(BaseModel):
    contest_id: str
    node: str
    operator: str
    status: str


class ErrorOut(BaseModel):
    detail: str


# --------------------------------------------------------------------- app


class _Clients:
    """One ClickHouse client per worker thread (a client is not thread safe)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self._local = threading.local()

    def get(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self.factory()
            self._local.client = client
        return client

    def drop(self) -> None:
        self._local.client = None


def _ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _utc(v: Any) -> datetime:
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(v), tz=UTC)


def _evidence_url(h: str) -> str:
    return f"/v1/evidence/{h}" if h else ""


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut},
    404: {"model": ErrorOut},
    429: {"model": ErrorOut},
    503: {"model": ErrorOut},
}

NodePath = Annotated[str, Path(pattern=ADDRESS_PATTERN, description="node address (0x + 40 hex)")]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=1_000_000)]


def create_api(
    settings: Settings,
    clickhouse_client_factory: Callable[[], Any],
    w3: Web3 | None = None,
    registry: Contract | None = None,
    *,
    rate_limiter: TokenBucket | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The API app. `clickhouse_client_factory()` returns a client bound to the Vigil
    database; `w3`/`registry` (optional) enable contest verification."""
    secrets = [
        s.get_secret_value()
        for s in (
            settings.clickhouse_password,
            settings.monitor_private_key,
            settings.monitor_keystore_password,
        )
        if s is not None and s.get_secret_value()
    ]
    clients = _Clients(clickhouse_client_factory)
    limiter = rate_limiter or TokenBucket(rate_per_s=20.0, burst=40)

    app = FastAPI(
        title="Vigil reputation and SOC API",
        version=API_VERSION,
        description=(
            "Node reputation (score, components, evidence), evidence documents by keccak "
            "hash, alerts and incidents for SOC tooling, and signed contests by node "
            "operators. Rate limited per client address (429 with Retry-After)."
        ),
    )

    def redact(text: str) -> str:
        for s in secrets:
            text = text.replace(s, "***")
        return text

    @contextmanager
    def storage() -> Iterator[Any]:
        try:
            yield clients.get()
        except HTTPException:
            raise
        except Exception as e:
            clients.drop()
            log.warning("storage query failed: %s: %s", type(e).__name__, redact(str(e))[:300])
            raise HTTPException(503, "storage unavailable, try again later") from None

    def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with storage() as client:
            return list(client.query(sql, parameters=params).result_rows)

    @app.middleware("http")
    async def rate_limit(request: Request, call_next: Callable[[Request], Any]) -> Response:
        if request.url.path.startswith("/v1/"):
            key = request.client.host if request.client else "unknown"
            allowed, wait = limiter.take(key)
            if not allowed:
                return JSONResponse(
                    {"detail": "rate limit exceeded, slow down"},
                    status_code=429,
                    headers={"Retry-After": str(max(1, int(wait + 0.999)))},
                )
        response: Response = await call_next(request)
        return response

    # ------------------------------------------------------------- nodes

    sort_sql = {
        SortField.score: "score",
        SortField.node: "node_id",
        SortField.updated_at: "updated_at",
    }

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, str]:
        """Liveness for supervisors and load balancers (no data access)."""
        return {"status": "ok"}

    @app.get("/v1/nodes", response_model=NodePage, responses=_ERRORS, tags=["reputation"])
    def list_nodes(
        sort: SortField = SortField.score,
        order: SortOrder = SortOrder.desc,
        limit: Limit = 50,
        offset: Offset = 0,
        min_score: Annotated[float | None, Query(ge=0, le=100)] = None,
        max_score: Annotated[float | None, Query(ge=0, le=100)] = None,
    ) -> NodePage:
        """Nodes with their latest reputation, sortable and paginated."""
        having = []
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if min_score is not None:
            having.append("score >= {min_score:Float64}")
            params["min_score"] = min_score
        if max_score is not None:
            having.append("score <= {max_score:Float64}")
            params["max_score"] = max_score
        having_sql = f"HAVING {' AND '.join(having)}" if having else ""
        base = (
            "SELECT node_id, argMax(score, ts) AS score, max(ts) AS updated_at, "
            "argMax(components, ts) AS components FROM reputation FINAL "
            f"GROUP BY node_id {having_sql}"
        )
        direction = "ASC" if order is SortOrder.asc else "DESC"
        rows = query(
            f"{base} ORDER BY {sort_sql[sort]} {direction}, node_id ASC "
            "LIMIT {limit:UInt32} OFFSET {offset:UInt32}",
            params,
        )
        total = query(f"SELECT count() FROM ({base})", params)[0][0]
        items = [
            NodeSummary(
                node=str(r[0]),
                score=round(float(r[1]), 3),
                updated_at=_utc(r[2]),
                components={str(k): float(v) for k, v in dict(r[3]).items()},
            )
            for r in rows
        ]
        return NodePage(items=items, total=int(total), limit=limit, offset=offset)

    @app.get(
        "/v1/nodes/{node}/reputation",
        response_model=ReputationOut,
        responses=_ERRORS,
        tags=["reputation"],
    )
    def node_reputation(
        node: NodePath,
        history: Annotated[int, Query(ge=1, le=1000)] = 50,
        evidence_limit: Annotated[int, Query(ge=1, le=200)] = 20,
    ) -> ReputationOut:
        """A node's score, the components that make it up (largest loss first), the
        recent evidence behind its penalties, and its score history."""
        n = node.lower()
        points = query(
            "SELECT ts, score, components, reason FROM reputation FINAL "
            "WHERE lower(node_id) = {node:String} ORDER BY ts DESC LIMIT {n:UInt32}",
            {"node": n, "n": history},
        )
        if not points:
            raise HTTPException(404, f"no reputation recorded for node {n}")
        ts, score, components, reason = points[0]
        rep = explain_components({str(k): float(v) for k, v in dict(components).items()})
        p = {"node": n, "n": evidence_limit}
        links: list[EvidenceLink] = []
        for aid, cat, sev, det, h, at in query(
            "SELECT alert_id, category, severity, detector, evidence_hash, created_at "
            "FROM alerts FINAL WHERE lower(entity) = {node:String} AND evidence_hash != '' "
            "ORDER BY created_at DESC LIMIT {n:UInt32}",
            p,
        ):
            links.append(
                EvidenceLink(
                    source="alert",
                    evidence_hash=h,
                    at=_utc(at),
                    summary=f"{sev} {cat} alert {aid} by {det}",
                    url=_evidence_url(h),
                )
            )
        for iid, cat, sev, status, h, at in query(
            "SELECT incident_id, category, severity, status, evidence_hash, last_seen "
            "FROM incidents FINAL WHERE lower(entity) = {node:String} AND evidence_hash != '' "
            "ORDER BY last_seen DESC LIMIT {n:UInt32}",
            p,
        ):
            links.append(
                EvidenceLink(
                    source="incident",
                    evidence_hash=h,
                    at=_utc(at),
                    summary=f"{sev} {cat} incident {iid} ({status})",
                    url=_evidence_url(h),
                )
            )
        for kind, status, tx, h, at in query(
            "SELECT kind, status, tx_hash, evidence_hash, created_at FROM actions FINAL "
            "WHERE lower(target) = {node:String} AND kind != 'observe' "
            "ORDER BY created_at DESC LIMIT {n:UInt32}",
            p,
        ):
            links.append(
                EvidenceLink(
                    source="action",
                    evidence_hash=h,
                    at=_utc(at),
                    summary=f"{kind} ({status}) tx {tx or '-'}",
                    url=_evidence_url(h),
                )
            )
        links.sort(key=lambda x: x.at, reverse=True)
        return ReputationOut(
            node=n,
            score=round(float(score), 3),
            updated_at=_utc(ts),
            explanation=rep.explain(),
            reason=str(reason),
            components=[
                ComponentOut(
                    name=c.name,
                    value=round(c.value, 6),
                    weight=c.weight,
                    points=round(c.points, 3),
                    lost=round(c.lost, 3),
                )
                for c in rep.components
            ],
            evidence=links[: evidence_limit * 3],
            history=[HistoryPoint(ts=_utc(r[0]), score=round(float(r[1]), 3)) for r in points],
        )

    # ------------------------------------------------------------- evidence

    @app.get(
        "/v1/evidence/{evidence_hash}",
        response_model=EvidenceOut,
        responses=_ERRORS,
        tags=["evidence"],
    )
    def get_evidence(
        evidence_hash: Annotated[
            str, Path(pattern=HASH_PATTERN, description="0x + 64 hex (keccak256)")
        ],
    ) -> EvidenceOut:
        """The canonical evidence document whose keccak256 went on chain."""
        h = evidence_hash.lower()
        rows = query(
            "SELECT entity, doc, created_at FROM evidence FINAL "
            "WHERE evidence_hash = {h:String} LIMIT 1",
            {"h": h},
        )
        if not rows:
            raise HTTPException(404, f"no evidence stored with hash {h}")
        entity, text, created = rows[0]
        text = str(text)
        try:
            doc: Any = json.loads(text)
        except ValueError:
            doc = None
        refs = sorted({_evidence_url(x) for x in _cited_hashes(doc) if x != h})
        return EvidenceOut(
            evidence_hash=h,
            entity=str(entity),
            created_at=_utc(created),
            verified="0x" + keccak(text=text).hex() == h,
            canonical=text,
            doc=doc,
            references=refs,
        )

    # ------------------------------------------------------------- alerts / incidents

    def _filters(
        time_col_from: str,
        time_col_to: str,
        since: datetime | None,
        until: datetime | None,
        **eq: str | None,
    ) -> tuple[str, dict[str, Any]]:
        where: list[str] = []
        params: dict[str, Any] = {}
        if since is not None:
            where.append(f"{time_col_from} >= fromUnixTimestamp64Milli({{since:Int64}})")
            params["since"] = _ms(since)
        if until is not None:
            where.append(f"{time_col_to} < fromUnixTimestamp64Milli({{until:Int64}})")
            params["until"] = _ms(until)
        for col, value in eq.items():
            if value is not None:
                fn = "lower" if col == "entity" else ""
                where.append(f"{fn}({col}) = {{{col}:String}}")
                params[col] = value.lower() if col == "entity" else value
        return ("WHERE " + " AND ".join(where)) if where else "", params

    @app.get("/v1/alerts", response_model=AlertPage, responses=_ERRORS, tags=["soc"])
    def list_alerts(
        since: Annotated[datetime | None, Query(description="ISO 8601 or unix seconds")] = None,
        until: Annotated[datetime | None, Query(description="exclusive")] = None,
        entity: Annotated[str | None, Query(pattern=ADDRESS_PATTERN)] = None,
        category: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        severity: SeverityName | None = None,
        detector: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> AlertPage:
        """Alerts, newest first, filtered by time, entity, category, severity, detector."""
        _check_range(since, until)
        where, params = _filters(
            "created_at",
            "created_at",
            since,
            until,
            entity=entity,
            category=category,
            severity=severity.value if severity else None,
            detector=detector,
        )
        rows = query(
            "SELECT alert_id, entity, category, severity, detector, score, threshold, "
            f"evidence_hash, explanation, tx_hash, created_at FROM alerts FINAL {where} "
            "ORDER BY created_at DESC, alert_id LIMIT {limit:UInt32} OFFSET {offset:UInt32}",
            {**params, "limit": limit, "offset": offset},
        )
        total = query(f"SELECT count() FROM alerts FINAL {where}", params)[0][0]
        items = [
            AlertOut(
                alert_id=r[0],
                entity=r[1],
                category=r[2],
                severity=r[3],
                detector=r[4],
                score=float(r[5]),
                threshold=float(r[6]),
                evidence_hash=r[7],
                explanation=r[8],
                tx_hash=r[9],
                created_at=_utc(r[10]),
                evidence_url=_evidence_url(r[7]),
            )
            for r in rows
        ]
        return AlertPage(items=items, total=int(total), limit=limit, offset=offset)

    @app.get("/v1/incidents", response_model=IncidentPage, responses=_ERRORS, tags=["soc"])
    def list_incidents(
        since: Annotated[
            datetime | None, Query(description="incidents still active at or after this")
        ] = None,
        until: Annotated[datetime | None, Query(description="incidents begun before this")] = None,
        entity: Annotated[str | None, Query(pattern=ADDRESS_PATTERN)] = None,
        category: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        severity: SeverityName | None = None,
        status: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> IncidentPage:
        """Incidents overlapping [since, until), newest activity first."""
        _check_range(since, until)
        where, params = _filters(
            "last_seen",
            "first_seen",
            since,
            until,
            entity=entity,
            category=category,
            severity=severity.value if severity else None,
            status=status,
        )
        rows = query(
            "SELECT incident_id, entity, category, severity, status, first_seen, last_seen, "
            f"alert_count, detectors, evidence_hash FROM incidents FINAL {where} "
            "ORDER BY last_seen DESC, incident_id LIMIT {limit:UInt32} OFFSET {offset:UInt32}",
            {**params, "limit": limit, "offset": offset},
        )
        total = query(f"SELECT count() FROM incidents FINAL {where}", params)[0][0]
        items = [
            IncidentOut(
                incident_id=r[0],
                entity=r[1],
                category=r[2],
                severity=r[3],
                status=r[4],
                first_seen=_utc(r[5]),
                last_seen=_utc(r[6]),
                alert_count=int(r[7]),
                detectors=[str(d) for d in r[8]],
                evidence_hash=r[9],
                evidence_url=_evidence_url(r[9]),
            )
            for r in rows
        ]
        return IncidentPage(items=items, total=int(total), limit=limit, offset=offset)

    # ------------------------------------------------------------- contest

    @app.post(
        "/v1/nodes/{node}/contest",
        status_code=202,
        response_model=ContestOut,
        responses={**_ERRORS, 401: {"model": ErrorOut}, 403: {"model": ErrorOut}},
        tags=["reputation"],
    )
    def contest(node: NodePath, body: ContestIn) -> ContestOut:
        """Contest a node's score or one penalty. Accepted only when signed (EIP-191
        personal_sign of `contest_message`) by the node's on-chain operator."""
        n = node.lower()
        ev = body.evidence_hash.lower()
        if ev and not _HASH_RE.fullmatch(ev):
            raise HTTPException(422, "evidence_hash must be '' or 0x + 64 hex digits")
        if abs(clock() - body.timestamp) > CONTEST_WINDOW_S:
            raise HTTPException(
                400, f"timestamp must be within {CONTEST_WINDOW_S}s of the server clock"
            )
        if w3 is None or registry is None:
            raise HTTPException(503, "contest verification unavailable: no chain configured")
        message = contest_message(n, ev, body.reason, body.timestamp)
        sig = body.signature.removeprefix("0x")
        try:
            signer = str(
                Account.recover_message(encode_defunct(text=message), signature=bytes.fromhex(sig))
            )
        except Exception:
            raise HTTPException(401, "signature is not a valid EIP-191 signature") from None
        try:
            operator = str(registry.functions.nodeInfo(Web3.to_checksum_address(n)).call()[0])
        except Exception as e:
            log.warning("nodeInfo call failed: %s", type(e).__name__)
            raise HTTPException(503, "chain unavailable, try again later") from None
        if int(operator, 16) == 0:
            raise HTTPException(404, f"node {n} is not registered")
        if signer.lower() != operator.lower():
            raise HTTPException(403, "signature is not by the node's operator")
        contest_id = "0x" + keccak(bytes.fromhex(sig)).hex()
        now = clock()
        with storage() as client:
            client.insert(
                "contests",
                [
                    [
                        contest_id,
                        n,
                        operator.lower(),
                        ev,
                        body.reason,
                        "0x" + sig.lower(),
                        datetime.fromtimestamp(body.timestamp, tz=UTC),
                        datetime.fromtimestamp(now, tz=UTC),
                        "received",
                    ]
                ],
                column_names=CONTESTS_COLUMNS,
            )
        log.info("contest %s for node %s received", contest_id, n)
        return ContestOut(contest_id=contest_id, node=n, operator=operator, status="received")

    return app


def _check_range(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and _ms(since) >= _ms(until):
        raise HTTPException(400, "since must be before until")


def _cited_hashes(doc: Any) -> Iterator[str]:
    """Evidence hashes a document cites (values of keys naming evidence)."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            if isinstance(v, str) and _HASH_RE.fullmatch(v) and ("evidence" in k or k == "lifts"):
                yield v.lower()
            else:
                yield from _cited_hashes(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _cited_hashes(v)


def serve_api(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    """Run the API with uvicorn until SIGINT/SIGTERM (`vigil api`)."""
    import uvicorn

    from pipelines.chain.contracts import compile_project
    from pipelines.storage.client import connect

    login = settings.clickhouse_login()  # before serving: a refused default fails the start

    def factory() -> Any:
        return connect(
            settings.clickhouse_url,
            *login,
            settings.clickhouse_database,
            retry_for=2.0,  # a request waits briefly, then answers 503
        )

    w3: Web3 | None = None
    registry: Contract | None = None
    if settings.node_registry_address:
        w3 = Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 10}))
        registry = w3.eth.contract(
            address=Web3.to_checksum_address(settings.node_registry_address),
            abi=compile_project()["NodeRegistry"].abi,
        )
    app = create_api(settings, factory, w3, registry)
    uvicorn.run(
        app, host=host or settings.api_host, port=port or settings.api_port, log_level="info"
    )
