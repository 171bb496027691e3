"""Governance webhooks: signed JSON, retries with backoff, dead letters; a real local
receiver verifies every signature the way docs/governance.md tells receivers to."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from detector.policy import ActionDecision, ActionKind
from pipelines.chain.enforcer import ActionResult
from pipelines.governance import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WEBHOOK_DLQ_COLUMNS,
    WebhookDeadLetter,
    WebhookNotifier,
    WebhookTarget,
    alert_body,
    clickhouse_dead_letters,
    incident_alert,
    needs_governance,
    notifier_from_settings,
    redact_url,
    sign,
    slash_alert,
    verify_signature,
)
from pipelines.procs import free_port
from pipelines.records import TOPIC_GOVERNANCE_ALERTS, GovernanceAlertRecord

SECRET = "whsec-test-3f9a7c"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "governance.md"


@dataclass
class Receiver:
    """A webhook receiver: answers with `statuses` in turn (then 200), checks signatures."""

    port: int
    statuses: list[int] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)
    retry_after: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/vigil?token=querysecret"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ok = verify_signature(
                SECRET, self.headers[TIMESTAMP_HEADER], body, self.headers[SIGNATURE_HEADER]
            )
            rec.seen.append(
                {
                    "path": self.path,
                    "valid": ok,
                    "delivery": self.headers[DELIVERY_HEADER],
                    "body": json.loads(body),
                    "type": self.headers["Content-Type"],
                }
            )
            status = rec.statuses.pop(0) if rec.statuses else (200 if ok else 401)
            self.send_response(status)
            if rec.retry_after and status == 429:
                self.send_header("Retry-After", rec.retry_after)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", rec.port), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


def record(n: int = 1) -> GovernanceAlertRecord:
    return incident_alert(
        incident_id=f"inc-{n}",
        entity="0x" + "ab" * 20,
        category="lazy",
        severity="critical",
        evidence_hash="0x" + "cd" * 32,
        summary="spot checks failing",
        created_at=1_700_000_000.0 + n,
    )


def notifier(
    targets: list[WebhookTarget], sleeps: list[float], dead: list[WebhookDeadLetter], **kw: Any
) -> WebhookNotifier:
    kw.setdefault("max_attempts", 4)
    return WebhookNotifier(
        targets, backoff_s=0.5, sleep=sleeps.append, on_dead_letter=dead.append, **kw
    )


def test_signed_delivery_is_retried_after_a_500(receiver: Receiver) -> None:
    receiver.statuses = [500]
    sleeps: list[float] = []
    dead: list[WebhookDeadLetter] = []
    with notifier([WebhookTarget(receiver.url, SecretStr(SECRET))], sleeps, dead) as n:
        (res,) = n.deliver(record())
    assert res.delivered and res.attempts == 2 and res.status_code == 200
    assert [s["valid"] for s in receiver.seen] == [True, True]
    assert {s["delivery"] for s in receiver.seen} == {"incident:inc-1:critical"}
    assert receiver.seen[0]["type"] == "application/json"
    assert receiver.seen[1]["body"]["evidence_hash"] == "0x" + "cd" * 32
    assert sleeps == [0.5] and dead == []


def test_after_the_last_failure_a_dead_letter_is_kept(receiver: Receiver) -> None:
    receiver.statuses = [500, 502, 503, 500, 500]
    sleeps: list[float] = []
    dead: list[WebhookDeadLetter] = []
    with notifier(
        [WebhookTarget(receiver.url, SecretStr(SECRET))], sleeps, dead, max_backoff_s=1.5
    ) as n:
        (res,) = n.deliver(record())
    assert not res.delivered and res.attempts == 4 and res.status_code == 500
    assert sleeps == [0.5, 1.0, 1.5]  # exponential, capped
    assert len(receiver.seen) == 4 and all(s["valid"] for s in receiver.seen)
    (d,) = dead
    assert res.dead_letter == d
    assert (d.alert_id, d.attempts, d.last_status, d.last_error) == (
        "incident:inc-1:critical",
        4,
        500,
        "HTTP 500",
    )
    assert "querysecret" not in d.target and d.target.endswith("/hooks/vigil")
    assert json.loads(d.body)["incident_id"] == "inc-1"
    row = d.row()
    assert len(row) == len(WEBHOOK_DLQ_COLUMNS) and row[0] == d.alert_id


def test_client_errors_are_not_retried_and_429_honours_retry_after(receiver: Receiver) -> None:
    sleeps: list[float] = []
    dead: list[WebhookDeadLetter] = []
    target = WebhookTarget(receiver.url, SecretStr(SECRET))
    receiver.statuses = [410]
    with notifier([target], sleeps, dead) as n:
        (res,) = n.deliver(record())
    assert not res.delivered and res.attempts == 1 and sleeps == [] and len(dead) == 1

    receiver.statuses, receiver.retry_after = [429], "2"
    with notifier([target], sleeps, dead) as n:
        (res,) = n.deliver(record(2))
    assert res.delivered and sleeps == [2.0]


def test_wrong_secret_is_refused_by_the_receiver(receiver: Receiver) -> None:
    sleeps: list[float] = []
    dead: list[WebhookDeadLetter] = []
    with notifier([WebhookTarget(receiver.url, SecretStr("not-the-secret"))], sleeps, dead) as n:
        (res,) = n.deliver(record())
    assert not res.delivered and res.status_code == 401 and receiver.seen[0]["valid"] is False
    assert len(dead) == 1 and sleeps == []


def test_unreachable_receiver_dead_letters_and_secrets_stay_out_of_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sleeps: list[float] = []
    dead: list[WebhookDeadLetter] = []
    url = f"http://user:pw@127.0.0.1:{free_port()}/x?token=querysecret"
    caplog.set_level(logging.DEBUG)
    with notifier([WebhookTarget(url, SecretStr(SECRET))], sleeps, dead, max_attempts=2) as n:
        (res,) = n.deliver(record())
    assert not res.delivered and res.status_code == 0 and dead[0].last_error == "ConnectError"
    assert sleeps == [0.5]
    for secret in (SECRET, "querysecret", "pw@"):
        assert secret not in caplog.text
        assert secret not in repr(n.targets)


def test_signature_verification_rules() -> None:
    body = alert_body(record())
    now = 1_700_000_100
    sig = sign(SECRET, now, body)
    assert re.fullmatch(r"sha256=[0-9a-f]{64}", sig)
    assert verify_signature(SECRET, str(now), body, sig, now=now)
    assert verify_signature(SecretStr(SECRET), str(now), body, sig, now=now + 299)
    assert not verify_signature(SECRET, str(now), body, sig, now=now + 301)  # stale
    assert not verify_signature(SECRET, str(now), body + b" ", sig, now=now)  # tampered
    assert not verify_signature(SECRET, str(now + 1), body, sig, now=now)  # other timestamp
    assert not verify_signature("other", str(now), body, sig, now=now)
    assert not verify_signature(SECRET, None, body, sig, now=now)
    assert not verify_signature(SECRET, "soon", body, sig, now=now)


def test_docs_receiver_snippet_verifies_our_signatures() -> None:
    """The snippet in docs/governance.md must accept what we send and refuse tampering."""
    text = DOCS.read_text()
    match = re.search(r"```python\n(# receiver.*?)```", text, re.S)
    assert match, "docs/governance.md lacks the receiver snippet"
    scope: dict[str, Any] = {}
    exec(compile(match.group(1), "governance.md", "exec"), scope)  # noqa: S102
    check = scope["verify_vigil_signature"]
    body = alert_body(record())
    ts = int(time.time())
    headers = {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(SECRET, ts, body)}
    assert check(SECRET.encode(), headers, body) is True
    assert check(SECRET.encode(), headers, body.replace(b"critical", b"low")) is False


def test_governance_records() -> None:
    assert TOPIC_GOVERNANCE_ALERTS == "governance.alerts.v1"
    assert needs_governance("high") and needs_governance("critical")
    assert not needs_governance("medium") and not needs_governance("low")
    d = ActionDecision(
        ActionKind.SLASH_PROPOSAL,
        "0x" + "ab" * 20,
        "hard evidence",
        "0x" + "ee" * 32,
        {"v": 1},
        amount_wei=12 * 10**18,
        hard_evidence=True,
        incident_id="inc-9",
    )
    r = ActionResult("slash_proposal", d.entity, d.evidence_hash, "mined", "0x" + "11" * 32, 7, 3)
    rec = slash_alert(
        d, r, category="lazy", severity="critical", created_at=5.0, challenge_end_block=12
    )
    assert (rec.kind, rec.proposal_id, rec.amount_wei, rec.alert_id) == (
        "slash_proposal",
        3,
        "12000000000000000000",
        "slash:" + "0x" + "ee" * 32,
    )
    back = GovernanceAlertRecord.loads(rec.dumps())
    assert back.asdict() == rec.asdict()
    body = json.loads(alert_body(rec))
    assert body["amount_wei"] == "12000000000000000000" and "__faust" not in body


def test_dead_letters_go_to_the_table_writer() -> None:
    inserted: list[tuple[str, list[Any], list[str]]] = []

    class FakeClient:
        def insert(self, table: str, rows: list[Any], column_names: list[str], **kw: Any) -> None:
            inserted.append((table, rows, column_names))

    write = clickhouse_dead_letters(lambda: FakeClient())
    d = WebhookDeadLetter("a1", "http://x/y", 3, 500, "HTTP 500", "{}", 1_700_000_000.0)
    write(d)
    assert inserted == [("webhook_dlq", [d.row()], WEBHOOK_DLQ_COLUMNS)]


def test_notifier_from_settings_and_url_redaction() -> None:
    class S:
        governance_webhook_urls = ["https://gov.example/hook?key=abc"]
        governance_webhook_secret = SecretStr("s")

    n = notifier_from_settings(S())
    assert len(n.targets) == 1 and "abc" not in repr(n.targets[0])
    n.close()
    assert len(notifier_from_settings(object()).targets) == 0
    assert redact_url("https://u:p@h.example:8443/a/b?x=1#f") == "https://h.example:8443/a/b"
