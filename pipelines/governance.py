"""Governance alerts: records for `governance.alerts.v1` and signed webhook delivery.

Every slash proposal and every HIGH/CRITICAL incident becomes one
`GovernanceAlertRecord`. It goes to the Kafka topic (the agent sends `record.dumps()`)
and to each configured webhook as a canonical JSON body, signed so the receiver
can tell it came from this Vigil and was not replayed:

    X-Vigil-Timestamp: <unix seconds>
    X-Vigil-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
    X-Vigil-Delivery:  <alert_id>   (stable across retries: receivers drop duplicates)

Delivery retries connection errors, timeouts, 408, 429 and 5xx with exponential
backoff (honouring a short Retry-After); after the last attempt, or at once on any
other 4xx, the alert becomes a dead letter handed to `on_dead_letter` (e.g. the
`webhook_dlq` table) and returned. See docs/governance.md for a receiver snippet.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import SecretStr

from detector.policy import ActionDecision, Severity
from pipelines.chain.enforcer import ActionResult
from pipelines.records import SCHEMA_VERSION, GovernanceAlertRecord

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Vigil-Signature"
TIMESTAMP_HEADER = "X-Vigil-Timestamp"
DELIVERY_HEADER = "X-Vigil-Delivery"
EVENT_HEADER = "X-Vigil-Event"
#: Receivers should refuse signatures older (or newer) than this.
DEFAULT_TOLERANCE_S = 300
KIND_SLASH_PROPOSAL = "slash_proposal"
KIND_INCIDENT = "incident"

#: DDL of the dead-letter table (to be added as a migration; `{db}` is the database).
WEBHOOK_DLQ_DDL = """
CREATE TABLE IF NOT EXISTS {db}.webhook_dlq
(
    alert_id String,
    target String,
    attempts UInt32,
    last_status UInt16,
    last_error String,
    body String,
    failed_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(failed_at)
ORDER BY (alert_id, target, failed_at)
"""
WEBHOOK_DLQ_COLUMNS = [
    "alert_id",
    "target",
    "attempts",
    "last_status",
    "last_error",
    "body",
    "failed_at",
]


# --------------------------------------------------------------------- records


def needs_governance(severity: str | Severity) -> bool:
    """HIGH and CRITICAL incidents go to governance; lower ones only to the SOC."""
    sev = severity if isinstance(severity, Severity) else Severity.parse(severity)
    return sev >= Severity.HIGH


def incident_alert(
    *,
    incident_id: str,
    entity: str,
    category: str,
    severity: str,
    evidence_hash: str,
    summary: str,
    created_at: float,
) -> GovernanceAlertRecord:
    """The governance alert of one HIGH/CRITICAL incident (one per incident severity)."""
    sev = Severity.parse(severity).label
    return GovernanceAlertRecord(
        schema_version=SCHEMA_VERSION,
        alert_id=f"incident:{incident_id}:{sev}",
        kind=KIND_INCIDENT,
        entity=entity,
        severity=sev,
        category=category,
        summary=summary,
        evidence_hash=evidence_hash,
        created_at=created_at,
        incident_id=incident_id,
    )


def slash_alert(
    decision: ActionDecision,
    result: ActionResult,
    *,
    category: str,
    severity: str,
    created_at: float,
    challenge_end_block: int = 0,
) -> GovernanceAlertRecord:
    """The governance alert of a slash proposal (sent or dry-run)."""
    return GovernanceAlertRecord(
        schema_version=SCHEMA_VERSION,
        alert_id=f"slash:{decision.evidence_hash}",
        kind=KIND_SLASH_PROPOSAL,
        entity=decision.entity,
        severity=Severity.parse(severity).label,
        category=category,
        summary=decision.reason,
        evidence_hash=decision.evidence_hash,
        created_at=created_at,
        incident_id=decision.incident_id,
        tx_hash=result.tx_hash,
        proposal_id=-1 if result.proposal_id is None else result.proposal_id,
        amount_wei=str(decision.amount_wei),
        challenge_end_block=challenge_end_block,
    )


def alert_body(record: GovernanceAlertRecord) -> bytes:
    """The webhook body: canonical JSON of the record's fields (sorted, compact)."""
    return json.dumps(record.asdict(), sort_keys=True, separators=(",", ":")).encode()


# --------------------------------------------------------------------- signatures


def _key(secret: str | bytes | SecretStr) -> bytes:
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes | SecretStr, timestamp: int, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`."""
    mac = hmac.new(_key(secret), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str | bytes | SecretStr,
    timestamp: str | None,
    body: bytes,
    signature: str | None,
    *,
    now: float | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """What a receiver checks: fresh timestamp and a matching HMAC (constant time)."""
    if not timestamp or not signature:
        return False
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


# --------------------------------------------------------------------- delivery


def redact_url(url: str) -> str:
    """scheme://host[:port]/path: no credentials, query or fragment (they may hold tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class WebhookTarget:
    """One receiver and the shared secret that signs what it gets."""

    url: str
    secret: SecretStr

    def __repr__(self) -> str:
        return f"WebhookTarget({redact_url(self.url)!r})"


@dataclass(frozen=True, slots=True)
class WebhookDeadLetter:
    """An alert a receiver never accepted, kept for replay."""

    alert_id: str
    target: str  # redacted URL
    attempts: int
    last_status: int  # 0: no HTTP answer
    last_error: str
    body: str
    failed_at: float

    def row(self) -> list[Any]:
        """A `webhook_dlq` row (column order `WEBHOOK_DLQ_COLUMNS`)."""
        return [
            self.alert_id,
            self.target,
            self.attempts,
            self.last_status,
            self.last_error,
            self.body,
            datetime.fromtimestamp(self.failed_at, tz=UTC),
        ]


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    target: str  # redacted URL
    alert_id: str
    delivered: bool
    attempts: int
    status_code: int  # last HTTP status (0: none)
    dead_letter: WebhookDeadLetter | None = None


def _retryable(status: int) -> bool:
    return status in (408, 425, 429) or status >= 500


class WebhookNotifier:
    """Posts signed governance alerts to webhooks with bounded retries and a DLQ."""

    def __init__(
        self,
        targets: Sequence[WebhookTarget],
        *,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        timeout_s: float = 5.0,
        on_dead_letter: Callable[[WebhookDeadLetter], None] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.targets = list(targets)
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.on_dead_letter = on_dead_letter
        self.clock = clock
        self.sleep = sleep
        self._http = httpx.Client(timeout=timeout_s, transport=transport, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> WebhookNotifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def backoff(self, attempt: int) -> float:
        """Wait after failed attempt `attempt` (1-based): backoff_s * 2^(attempt-1), capped."""
        return float(min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s))

    def deliver(self, record: GovernanceAlertRecord) -> list[DeliveryResult]:
        """Deliver `record` to every target; never raises for a receiver's failure."""
        body = alert_body(record)
        return [self._deliver_one(t, record, body) for t in self.targets]

    def _deliver_one(
        self, target: WebhookTarget, record: GovernanceAlertRecord, body: bytes
    ) -> DeliveryResult:
        where = redact_url(target.url)
        status, error = 0, ""
        for attempt in range(1, self.max_attempts + 1):
            ts = int(self.clock())
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: str(ts),
                SIGNATURE_HEADER: sign(target.secret, ts, body),
                DELIVERY_HEADER: record.alert_id,
                EVENT_HEADER: record.kind,
            }
            retry_after: float | None = None
            try:
                resp = self._http.post(target.url, content=body, headers=headers)
                status, error = resp.status_code, ""
                if 200 <= status < 300:
                    log.info(
                        "alert %s delivered to %s (attempt %d)", record.alert_id, where, attempt
                    )
                    return DeliveryResult(where, record.alert_id, True, attempt, status)
                error = f"HTTP {status}"
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                if not _retryable(status):
                    log.warning("alert %s refused by %s: %s", record.alert_id, where, error)
                    return self._dead(where, record, body, attempt, status, error)
            except httpx.HTTPError as e:
                status, error = 0, type(e).__name__
            log.warning(
                "alert %s to %s failed (attempt %d/%d): %s",
                record.alert_id,
                where,
                attempt,
                self.max_attempts,
                error,
            )
            if attempt < self.max_attempts:
                wait = self.backoff(attempt)
                if retry_after is not None:
                    wait = min(max(wait, retry_after), self.max_backoff_s)
                self.sleep(wait)
        return self._dead(where, record, body, self.max_attempts, status, error)

    def _dead(
        self,
        where: str,
        record: GovernanceAlertRecord,
        body: bytes,
        attempts: int,
        status: int,
        error: str,
    ) -> DeliveryResult:
        dead = WebhookDeadLetter(
            record.alert_id, where, attempts, status, error, body.decode(), self.clock()
        )
        log.error(
            "alert %s to %s dead-lettered after %d attempts", record.alert_id, where, attempts
        )
        if self.on_dead_letter is not None:
            try:
                self.on_dead_letter(dead)
            except Exception:
                log.exception("could not store the dead letter of alert %s", record.alert_id)
        return DeliveryResult(where, record.alert_id, False, attempts, status, dead)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def clickhouse_dead_letters(
    client_factory: Callable[[], Any], database: str | None = None
) -> Callable[[WebhookDeadLetter], None]:
    """An `on_dead_letter` callback that inserts into the `webhook_dlq` table."""

    def write(dead: WebhookDeadLetter) -> None:
        client = client_factory()
        client.insert(
            "webhook_dlq", [dead.row()], column_names=WEBHOOK_DLQ_COLUMNS, database=database
        )

    return write


def notifier_from_settings(
    settings: Any, on_dead_letter: Callable[[WebhookDeadLetter], None] | None = None
) -> WebhookNotifier:
    """Build the notifier from `governance_webhook_urls` / `governance_webhook_secret`
    (settings fields; absent fields mean no webhooks)."""
    urls: list[str] = list(getattr(settings, "governance_webhook_urls", None) or [])
    secret = getattr(settings, "governance_webhook_secret", None)
    if urls and secret is None:
        raise ValueError("governance_webhook_urls is set but governance_webhook_secret is not")
    key = secret if isinstance(secret, SecretStr) else SecretStr(str(secret or ""))
    targets = [WebhookTarget(u, key) for u in urls]
    return WebhookNotifier(
        targets,
        max_attempts=int(getattr(settings, "governance_webhook_attempts", 5)),
        on_dead_letter=on_dead_letter,
    )
