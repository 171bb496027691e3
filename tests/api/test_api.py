"""The reputation / SOC API over a real (embedded) ClickHouse and a real chain."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak
from fastapi.testclient import TestClient
from pydantic import SecretStr

from detector.evidence import canonical_json, evidence_hash
from detector.reputation import NodeReputation
from pipelines.api import (
    CONTESTS_COLUMNS,
    CONTESTS_DDL,
    REPUTATION_COLUMNS,
    TokenBucket,
    contest_message,
    create_api,
    reputation_row,
)
from pipelines.chain.anvil import DEV_ACCOUNTS
from pipelines.chain.enforcer import ClickHouseActionLog
from pipelines.settings import Settings
from pipelines.storage.client import connect
from pipelines.storage.schema import TABLE_COLUMNS, migrate, quote_database
from tests.api.conftest import Registry, Storage

pytestmark = pytest.mark.integration

CH_PASSWORD = "chpw-9f8e7d-never-show"
MONITOR_KEY = DEV_ACCOUNTS[1][1]
T0 = 1_750_000_000.0
HONEST = ["0x" + f"{i:02x}" * 20 for i in (1, 2, 3)]
LAZY = "0x" + "1a" * 20
OVERCLAIM = "0x" + "0c" * 20
BOT = "0x" + "b0" * 20


def dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def settings() -> Settings:
    return Settings(
        embedded=True,
        clickhouse_password=SecretStr(CH_PASSWORD),
        monitor_private_key=SecretStr(MONITOR_KEY),
    )


def honest_rep(rep: NodeReputation, t: float) -> NodeReputation:
    for i in range(100):
        s = t + i * 60
        rep = rep.observe_interval(s, up=True).observe_batch(s, 250.0, 8, 0)
        if i % 5 == 0:
            rep = rep.observe_spot_check(s, passed=True)
    return rep


@pytest.fixture(scope="module")
def seeded(storage: Storage, registry: Registry) -> dict[str, Any]:
    """Migrated database with reputation, alerts, incidents, actions and evidence."""
    admin = connect(storage.url, "default", "", None)
    migrate(admin, storage.database)
    admin.command(CONTESTS_DDL.format(db=quote_database(storage.database)))
    db = storage.database
    now = T0 + 100 * 60

    evid: dict[str, str] = {}
    docs: list[list[Any]] = []

    def store(entity: str, doc: dict[str, Any]) -> str:
        h = evidence_hash(doc)
        docs.append([h, entity, canonical_json(doc), dt(now)])
        return h

    lazy_ev = store(
        LAZY,
        {
            "entity": LAZY,
            "detectors": ["rule:spot_check"],
            "scores": {"cosine": 0.12},
            "features": {"pass_rate": 0.2},
            "raw": ["challenge:r1", "challenge:r2"],
            "model_versions": {},
        },
    )
    over_ev = store(
        OVERCLAIM,
        {
            "entity": OVERCLAIM,
            "detectors": ["rule:overclaim"],
            "scores": {"claim_ratio": 3.0},
            "features": {"claimed": 300, "served": 100},
            "raw": ["settle:0xabc"],
            "model_versions": {},
        },
    )
    slash_ev = store(
        LAZY,
        {
            "v": "vigil.action-evidence.v1",
            "action": "slash_proposal",
            "entity": LAZY,
            "incident": {"incident_evidence": lazy_ev},
            "step": 0,
            "share_bps": 1000,
        },
    )
    bot_ev = store(BOT, {"entity": BOT, "detectors": ["tx_iforest"], "scores": {"s": 0.8}})
    evid.update(lazy=lazy_ev, over=over_ev, slash=slash_ev, bot=bot_ev)

    reps: list[list[Any]] = []
    for n in HONEST:
        reps.append(reputation_row(n, now, honest_rep(NodeReputation(), T0).score(now)))
    lazy = honest_rep(NodeReputation(), T0)
    for i in range(120):  # fails three spot checks in four
        lazy = lazy.observe_spot_check(now - 600 + i, passed=i % 4 == 0)
    lazy = lazy.observe_incident(now - 100, "critical").observe_slash(now - 50)
    reps.append(reputation_row(LAZY, now - 3600, honest_rep(NodeReputation(), T0).score(now)))
    reps.append(reputation_row(LAZY, now, lazy.score(now)))
    over = honest_rep(NodeReputation(), T0).observe_incident(now - 10, "high").observe_slash(now)
    reps.append(reputation_row(OVERCLAIM, now, over.score(now)))
    # the node registered on chain (for contests) has a middling score
    reps.append(reputation_row(registry.node, now, over.score(now)))

    alerts = [
        [
            f"a-lazy-{i}",
            LAZY,
            "lazy",
            "critical",
            "rule:spot_check",
            0.9,
            0.5,
            lazy_ev,
            "{}",
            "",
            dt(now - 300 + i),
        ]
        for i in range(3)
    ]
    alerts += [
        [
            "a-over",
            OVERCLAIM,
            "overclaim",
            "high",
            "rule:overclaim",
            3.0,
            1.5,
            over_ev,
            "{}",
            "",
            dt(now - 200),
        ],
        [
            "a-bot-1",
            BOT,
            "bot",
            "high",
            "tx_iforest",
            0.8,
            0.6,
            bot_ev,
            "{}",
            "0x" + "11" * 32,
            dt(now - 5000),
        ],
        [
            "a-bot-2",
            BOT,
            "bot",
            "medium",
            "tx_iforest",
            0.7,
            0.6,
            bot_ev,
            "{}",
            "0x" + "12" * 32,
            dt(now - 100),
        ],
        [
            "a-honest",
            HONEST[0],
            "latency",
            "low",
            "telemetry_lstm",
            0.61,
            0.6,
            "",
            "{}",
            "",
            dt(now - 50),
        ],
    ]
    incidents = [
        [
            "i-lazy",
            LAZY,
            "lazy",
            "critical",
            "open",
            dt(now - 300),
            dt(now - 298),
            3,
            ["rule:spot_check"],
            lazy_ev,
            0,
            dt(now),
        ],
        [
            "i-over",
            OVERCLAIM,
            "overclaim",
            "high",
            "open",
            dt(now - 200),
            dt(now - 200),
            1,
            ["rule:overclaim"],
            over_ev,
            0,
            dt(now),
        ],
        [
            "i-bot",
            BOT,
            "bot",
            "high",
            "resolved",
            dt(now - 5000),
            dt(now - 100),
            2,
            ["tx_iforest"],
            bot_ev,
            0,
            dt(now),
        ],
    ]
    actions = [
        [slash_ev, "slash_proposal", LAZY, "0x" + "22" * 32, 42, "mined", dt(now - 40)],
        [bot_ev, "throttle", BOT, "0x" + "33" * 32, 43, "mined", dt(now - 30)],
    ]
    c = connect(storage.url, "default", "", db)
    c.insert("evidence", docs, column_names=TABLE_COLUMNS["evidence"])
    c.insert("reputation", reps, column_names=REPUTATION_COLUMNS)
    c.insert("alerts", alerts, column_names=TABLE_COLUMNS["alerts"])
    c.insert("incidents", incidents, column_names=TABLE_COLUMNS["incidents"])
    c.insert("actions", actions, column_names=TABLE_COLUMNS["actions"])
    return {"evidence": evid, "now": now}


@pytest.fixture
def api(storage: Storage, registry: Registry, seeded: dict[str, Any]) -> Iterator[TestClient]:
    app = create_api(settings(), storage.client, registry.w3, registry.contract)
    with TestClient(app) as client:
        yield client


def test_openapi_docs_are_served(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    for path in (
        "/v1/nodes",
        "/v1/nodes/{node}/reputation",
        "/v1/evidence/{evidence_hash}",
        "/v1/alerts",
        "/v1/incidents",
        "/v1/nodes/{node}/contest",
    ):
        assert path in spec["paths"]
    assert api.get("/docs").status_code == 200


def test_nodes_are_sortable_and_paginated(api: TestClient, registry: Registry) -> None:
    r = api.get("/v1/nodes", params={"sort": "score", "order": "desc", "limit": 10})
    assert r.status_code == 200
    page = r.json()
    assert page["total"] == 6 and len(page["items"]) == 6
    scores = [n["score"] for n in page["items"]]
    assert scores == sorted(scores, reverse=True)
    assert page["items"][-1]["node"] == LAZY  # latest row counts, not the older high one
    assert set(page["items"][0]["components"]) >= {"uptime", "spot_checks", "slashes"}

    asc = api.get("/v1/nodes", params={"sort": "node", "order": "asc", "limit": 2, "offset": 2})
    everyone = sorted([*HONEST, LAZY, OVERCLAIM, registry.node.lower()])
    assert [n["node"] for n in asc.json()["items"]] == everyone[2:4]
    high = api.get("/v1/nodes", params={"min_score": 95}).json()
    assert {n["node"] for n in high["items"]} == set(HONEST) and high["total"] == 3
    for bad in ({"sort": "stake"}, {"order": "up"}, {"limit": 0}, {"limit": 501}, {"offset": -1}):
        resp = api.get("/v1/nodes", params=bad)
        assert resp.status_code == 422, bad
        assert resp.json()["detail"]


def test_reputation_explains_a_low_score(api: TestClient, seeded: dict[str, Any]) -> None:
    r = api.get(f"/v1/nodes/{LAZY}/reputation")
    assert r.status_code == 200
    rep = r.json()
    assert rep["score"] < 70
    names = [c["name"] for c in rep["components"]]
    assert names[0] == "spot_checks" and sorted(names) == sorted(
        ["uptime", "spot_checks", "latency", "errors", "incidents", "throttles", "slashes"]
    )
    lost = [c["lost"] for c in rep["components"]]
    assert lost == sorted(lost, reverse=True)
    assert sum(c["points"] for c in rep["components"]) == pytest.approx(rep["score"], abs=0.01)
    assert "spot_checks" in rep["explanation"]
    sources = {e["source"] for e in rep["evidence"]}
    assert sources == {"alert", "incident", "action"}
    ev = seeded["evidence"]
    urls = {e["url"] for e in rep["evidence"]}
    assert f"/v1/evidence/{ev['lazy']}" in urls and f"/v1/evidence/{ev['slash']}" in urls
    assert [h["score"] for h in rep["history"]][0] == rep["score"] and len(rep["history"]) == 2
    # every evidence link resolves to a document whose keccak is the hash
    for url in urls:
        doc = api.get(url)
        assert doc.status_code == 200 and doc.json()["verified"] is True

    honest = api.get(f"/v1/nodes/{HONEST[0].upper().replace('0X', '0x')}/reputation").json()
    assert honest["score"] > 95 and honest["evidence"] == []  # the low alert had no evidence
    assert api.get(f"/v1/nodes/{BOT}/reputation").status_code == 404
    assert api.get("/v1/nodes/0x1234/reputation").status_code == 422


def test_evidence_by_hash(api: TestClient, seeded: dict[str, Any]) -> None:
    ev = seeded["evidence"]
    r = api.get(f"/v1/evidence/{ev['slash']}")
    assert r.status_code == 200
    body = r.json()
    assert body["entity"] == LAZY and body["verified"] is True
    assert "0x" + keccak(text=body["canonical"]).hex() == ev["slash"]
    assert body["doc"]["action"] == "slash_proposal"
    assert body["references"] == [f"/v1/evidence/{ev['lazy']}"]  # what the slash cites
    upper = api.get(f"/v1/evidence/0x{ev['over'][2:].upper()}")
    assert upper.status_code == 200 and upper.json()["doc"]["features"]["claimed"] == 300
    missing = api.get("/v1/evidence/0x" + "00" * 32)
    assert missing.status_code == 404 and "no evidence" in missing.json()["detail"]
    assert api.get("/v1/evidence/0x1234").status_code == 422
    assert api.get("/v1/evidence/" + "ab" * 32).status_code == 422


def test_alerts_filters(api: TestClient, seeded: dict[str, Any]) -> None:
    now = seeded["now"]
    everything = api.get("/v1/alerts").json()
    assert everything["total"] == 7
    times = [a["created_at"] for a in everything["items"]]
    assert times == sorted(times, reverse=True)
    lazy = api.get("/v1/alerts", params={"entity": LAZY.upper().replace("0X", "0x")}).json()
    assert lazy["total"] == 3 and {a["category"] for a in lazy["items"]} == {"lazy"}
    assert lazy["items"][0]["evidence_url"] == f"/v1/evidence/{seeded['evidence']['lazy']}"
    assert api.get("/v1/alerts", params={"severity": "high"}).json()["total"] == 2
    bots = api.get("/v1/alerts", params={"category": "bot", "since": now - 1000}).json()
    assert [a["alert_id"] for a in bots["items"]] == ["a-bot-2"]
    iso = datetime.fromtimestamp(now - 250, tz=UTC).isoformat()
    window = api.get("/v1/alerts", params={"since": iso, "until": now - 60}).json()
    assert {a["alert_id"] for a in window["items"]} == {"a-over", "a-bot-2"}
    paged = api.get("/v1/alerts", params={"limit": 2, "offset": 6}).json()
    assert len(paged["items"]) == 1 and paged["total"] == 7
    assert api.get("/v1/alerts", params={"detector": "tx_iforest"}).json()["total"] == 2
    assert api.get("/v1/alerts", params={"severity": "urgent"}).status_code == 422
    assert api.get("/v1/alerts", params={"entity": "bob"}).status_code == 422
    assert api.get("/v1/alerts", params={"since": "yesterday"}).status_code == 422
    r = api.get("/v1/alerts", params={"since": now, "until": now - 10})
    assert r.status_code == 400 and "before" in r.json()["detail"]


def test_incidents_filters(api: TestClient, seeded: dict[str, Any]) -> None:
    now = seeded["now"]
    everything = api.get("/v1/incidents").json()
    assert everything["total"] == 3
    assert [i["incident_id"] for i in everything["items"]] == ["i-bot", "i-over", "i-lazy"]
    crit = api.get("/v1/incidents", params={"severity": "critical"}).json()["items"]
    assert [i["incident_id"] for i in crit] == ["i-lazy"]
    assert crit[0]["detectors"] == ["rule:spot_check"] and crit[0]["alert_count"] == 3
    # overlap: the bot incident spans [now-5000, now-100]
    old = api.get("/v1/incidents", params={"until": now - 1000}).json()["items"]
    assert [i["incident_id"] for i in old] == ["i-bot"]
    assert api.get("/v1/incidents", params={"status": "resolved"}).json()["total"] == 1
    by_entity = api.get("/v1/incidents", params={"entity": OVERCLAIM, "category": "overclaim"})
    assert by_entity.json()["items"][0]["evidence_url"].endswith(seeded["evidence"]["over"])
    assert api.get("/v1/incidents", params={"limit": 1000}).status_code == 422


def _signed(registry: Registry, key: str, *, node: str | None = None, **kw: Any) -> dict[str, Any]:
    node = node or registry.node
    body = {
        "evidence_hash": "",
        "reason": "spot checks were run against the wrong model",
        "timestamp": int(time.time()),
    }
    body.update(kw)
    text = contest_message(node, body["evidence_hash"], body["reason"], body["timestamp"])
    sig = Account.sign_message(encode_defunct(text=text), private_key=key).signature
    return {**body, "signature": "0x" + bytes(sig).hex()}


def test_contest_needs_the_operators_signature(
    api: TestClient, registry: Registry, storage: Storage, seeded: dict[str, Any]
) -> None:
    node = registry.node
    good = _signed(registry, DEV_ACCOUNTS[3][1], evidence_hash=seeded["evidence"]["over"])
    r = api.post(f"/v1/nodes/{node}/contest", json=good)
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["status"] == "received" and out["operator"] == registry.operator.address
    rows = (
        storage.client()
        .query(
            "SELECT node_id, operator, evidence_hash, reason FROM contests FINAL "
            "WHERE contest_id = {c:String}",
            parameters={"c": out["contest_id"]},
        )
        .result_rows
    )
    assert rows == [
        (
            node.lower(),
            registry.operator.address.lower(),
            seeded["evidence"]["over"],
            good["reason"],
        )
    ]
    assert len(CONTESTS_COLUMNS) == 9

    wrong_key = _signed(registry, DEV_ACCOUNTS[4][1])
    r = api.post(f"/v1/nodes/{node}/contest", json=wrong_key)
    assert r.status_code == 403 and "operator" in r.json()["detail"]

    tampered = {**good, "reason": "something else"}
    assert api.post(f"/v1/nodes/{node}/contest", json=tampered).status_code == 403

    garbage = {**good, "signature": "0x" + "00" * 65}
    r = api.post(f"/v1/nodes/{node}/contest", json=garbage)
    assert r.status_code == 401 and "signature" in r.json()["detail"]

    stale = _signed(registry, DEV_ACCOUNTS[3][1], timestamp=int(time.time()) - 3600)
    r = api.post(f"/v1/nodes/{node}/contest", json=stale)
    assert r.status_code == 400 and "timestamp" in r.json()["detail"]

    other = _signed(registry, DEV_ACCOUNTS[3][1], node=registry.unregistered)
    r = api.post(f"/v1/nodes/{registry.unregistered}/contest", json=other)
    assert r.status_code == 404 and "not registered" in r.json()["detail"]

    for bad in (
        {**good, "reason": ""},
        {**good, "signature": "0x1234"},
        {**good, "evidence_hash": "0x12"},
        {k: v for k, v in good.items() if k != "timestamp"},
    ):
        resp = api.post(f"/v1/nodes/{node}/contest", json=bad)
        assert resp.status_code == 422, bad
    assert api.post("/v1/nodes/not-a-node/contest", json=good).status_code == 422
    assert api.post(f"/v1/nodes/{node}/contest", content=b"{not json").status_code == 422


def test_contest_without_a_chain_is_unavailable(storage: Storage, registry: Registry) -> None:
    app = create_api(settings(), storage.client)
    with TestClient(app) as c:
        r = c.post(f"/v1/nodes/{registry.node}/contest", json=_signed(registry, DEV_ACCOUNTS[3][1]))
    assert r.status_code == 503


def test_rate_limit_answers_429(storage: Storage, seeded: dict[str, Any]) -> None:
    clock = {"t": 0.0}
    bucket = TokenBucket(rate_per_s=0.5, burst=3, clock=lambda: clock["t"])
    app = create_api(settings(), storage.client, rate_limiter=bucket)
    with TestClient(app) as c:
        assert [c.get("/v1/nodes").status_code for _ in range(3)] == [200] * 3
        r = c.get("/v1/alerts")
        assert r.status_code == 429 and r.headers["Retry-After"] == "2"
        assert "rate limit" in r.json()["detail"]
        assert c.get("/openapi.json").status_code == 200  # docs are not limited
        clock["t"] = 2.0
        assert c.get("/v1/nodes").status_code == 200


def test_token_bucket_is_per_client_and_bounded() -> None:
    clock = {"t": 100.0}
    b = TokenBucket(rate_per_s=1.0, burst=2, max_keys=2, clock=lambda: clock["t"])
    assert b.take("a")[0] and b.take("a")[0]
    allowed, wait = b.take("a")
    assert not allowed and wait == pytest.approx(1.0)
    assert b.take("b")[0]  # another client has its own bucket
    clock["t"] += 0.5
    assert not b.take("a")[0]
    clock["t"] += 0.6
    assert b.take("a")[0]
    b.take("c")
    assert len(b._buckets) == 2  # least recently used dropped
    with pytest.raises(ValueError):
        TokenBucket(rate_per_s=0, burst=1)


def test_no_secret_leaks_in_responses_or_logs(
    storage: Storage, caplog: pytest.LogCaptureFixture, seeded: dict[str, Any]
) -> None:
    caplog.set_level(logging.DEBUG)

    def broken() -> Any:
        raise RuntimeError(f"auth failed for default:{CH_PASSWORD}@{storage.url} key {MONITOR_KEY}")

    app = create_api(settings(), broken)
    bodies = []
    with TestClient(app) as c:
        for path in (
            "/v1/nodes",
            f"/v1/nodes/{LAZY}/reputation",
            "/v1/alerts",
            "/v1/incidents",
            f"/v1/evidence/{seeded['evidence']['lazy']}",
        ):
            r = c.get(path)
            assert r.status_code == 503, path
            assert r.json() == {"detail": "storage unavailable, try again later"}
            bodies.append(r.text)
        bodies.append(c.get("/openapi.json").text)
    good = create_api(settings(), storage.client)
    with TestClient(good) as c:
        bodies += [c.get(p).text for p in ("/v1/nodes", f"/v1/nodes/{LAZY}/reputation")]
    for secret in (CH_PASSWORD, MONITOR_KEY, MONITOR_KEY[2:]):
        assert all(secret not in b for b in bodies)
        assert secret not in caplog.text
    assert "storage query failed" in caplog.text  # the failure itself is logged


def test_action_log_reads_the_actions_table(storage: Storage, seeded: dict[str, Any]) -> None:
    log_ = ClickHouseActionLog(storage.client())
    found = log_.lookup(seeded["evidence"]["bot"])
    assert found is not None
    assert (found.kind, found.target, found.tx_hash, found.block_number) == (
        "throttle",
        BOT,
        "0x" + "33" * 32,
        43,
    )
    assert log_.lookup("0x" + "99" * 32) is None


def test_reputation_row_matches_the_table() -> None:
    rep = NodeReputation().observe_incident(0, "high").score(0)
    row = reputation_row("0xABC", 5.0, rep)
    assert len(row) == len(REPUTATION_COLUMNS) == len(TABLE_COLUMNS["reputation"])
    assert row[0] == "0xabc" and row[2] == rep.score and row[3]["incidents"] < 1
