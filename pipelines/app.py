"""The Faust application: thin agents around the pure processing core.

Agents decode, call a pure function, write and send. Every per-event failure is
caught and routed to `<topic>.dlq` with the reason (Faust would otherwise ack the
failed event and move on, silently). Writes happen before the event is acked, and
every sink is idempotent by key, so a crash or rebalance replays at most a few
events and never double counts them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
from web3 import Web3

from detector.features import FEATURE_NAMES, SenderWindow
from detector.policy import ActionPolicy, EntityAlertState, Severity
from pipelines.chain.contracts import compile_project
from pipelines.chain.enforcer import ActionResult, Enforcer, load_monitor_account
from pipelines.records import (
    SCHEMA_VERSION,
    TOPIC_ACTIONS,
    TOPIC_ALERTS,
    TOPIC_CHAIN_TX,
    ActionRecord,
    AlertRecord,
    DeadLetter,
    InvalidMessage,
    decode_alert,
    decode_tx_batch,
    dlq_topic,
)
from pipelines.scoring import (
    Alert,
    ScoringConfig,
    TxModel,
    TxScoringCore,
    load_model,
    save_model,
)
from pipelines.settings import Settings
from pipelines.storage import rows
from pipelines.storage.client import connect
from pipelines.storage.schema import TABLE_COLUMNS

log = logging.getLogger(__name__)


class Sink:
    """ClickHouse writes for one agent (its own client: clients are not shared)."""

    def __init__(self, settings: Settings) -> None:
        self.client = connect(
            settings.clickhouse_url,
            settings.clickhouse_user,
            settings.clickhouse_password.get_secret_value(),
            settings.clickhouse_database,
        )

    def insert(self, table: str, data: list[list[Any]]) -> None:
        if data:
            self.client.insert(table, data, column_names=TABLE_COLUMNS[table])


def alert_record(a: Alert) -> AlertRecord:
    return AlertRecord(
        schema_version=SCHEMA_VERSION,
        alert_id=a.alert_id,
        entity=a.entity,
        category=a.category,
        severity=a.severity,
        detector=a.detector,
        score=a.score,
        threshold=a.threshold,
        evidence_hash=a.evidence_hash,
        explanation=a.explanation,
        tx_hash=a.tx_hash,
        block_number=a.block_number,
        created_at=a.created_at,
    )


def action_record(r: ActionResult, now: float) -> ActionRecord:
    return ActionRecord(
        schema_version=SCHEMA_VERSION,
        kind=r.kind,
        target=r.target,
        evidence_hash=r.evidence_hash,
        tx_hash=r.tx_hash,
        block_number=r.block_number,
        status=r.status,
        created_at=now,
    )


def build_enforcer(settings: Settings) -> Enforcer:
    w3 = Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 30}))
    if settings.node_registry_address is None:
        raise ValueError("node_registry_address is not set (VIGIL_NODE_REGISTRY_ADDRESS)")
    registry = w3.eth.contract(
        address=Web3.to_checksum_address(settings.node_registry_address),
        abi=compile_project()["NodeRegistry"].abi,
    )
    account = None if settings.dry_run else load_monitor_account(settings)
    return Enforcer(w3, registry, account, dry_run=settings.dry_run)


def build_app(settings: Settings) -> faust.App:
    """Create the Faust app with its topics, tables and agents for `settings`."""
    app = faust.App(
        settings.app_id,
        broker=settings.kafka_url,
        store="memory://",
        autodiscover=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=settings.worker_web_port,
        datadir=str(settings.data_dir / "faust"),
        table_standby_replicas=0,
    )
    parts = settings.topic_partitions
    tx_topic = app.topic(
        TOPIC_CHAIN_TX, value_serializer="raw", key_serializer="raw", partitions=parts
    )
    alerts_topic = app.topic(
        TOPIC_ALERTS, value_serializer="raw", key_serializer="raw", partitions=parts
    )
    actions_topic = app.topic(
        TOPIC_ACTIONS, value_serializer="raw", key_serializer="raw", partitions=parts
    )
    dlq = {
        t: app.topic(dlq_topic(t), value_serializer="raw", key_serializer="raw", partitions=1)
        for t in (TOPIC_CHAIN_TX, TOPIC_ALERTS)
    }
    windows = app.Table("sender-windows", partitions=parts)
    alert_state = app.Table("alert-state", partitions=parts)

    cfg = ScoringConfig.from_settings(settings)
    model_root = settings.data_dir / "models"

    def persist(model: TxModel) -> None:
        save_model(model, model_root, cfg)

    core = TxScoringCore(cfg, load_model(model_root), on_fit=persist)
    action_policy = ActionPolicy(
        throttle_level=settings.throttle_level, throttle_blocks=settings.throttle_blocks
    )
    counters = {"events": 0, "txs": 0, "scored": 0, "alerts": 0, "dlq": 0, "actions": 0}

    async def dead_letter(sink: Sink, topic: str, event: faust.EventT, reason: str) -> None:
        msg = event.message
        now = time.time()
        counters["dlq"] += 1
        log.warning("%s[%d]@%d -> dlq: %s", topic, msg.partition, msg.offset, reason)
        raw = event.value if isinstance(event.value, bytes) else None
        rec = DeadLetter(
            topic=topic,
            partition=msg.partition,
            offset=msg.offset,
            reason=reason,
            raw=(raw or b"").decode("latin-1"),
            received_at=now,
        )
        await sink_call(
            sink.insert, "dlq", [rows.dlq_row(topic, msg.partition, msg.offset, reason, raw, now)]
        )
        await (await dlq[topic].send(key=msg.key, value=rec.dumps()))

    async def sink_call(fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    @app.agent(tx_topic, name="score-transactions")
    async def score_transactions(stream: faust.StreamT) -> None:
        sink = await asyncio.to_thread(Sink, settings)
        async for event in stream.events():
            counters["events"] += 1
            try:
                batch = decode_tx_batch(event.value)
            except InvalidMessage as e:
                await dead_letter(sink, TOPIC_CHAIN_TX, event, str(e))
                continue
            try:
                senders = {tx.sender for tx in batch.txs}
                stored = {s: windows.get(s) for s in senders}
                states = {s: SenderWindow.from_dict(d) if d else None for s, d in stored.items()}
                prev = {s: EntityAlertState.from_dict(alert_state.get(s)) for s in senders}
                result = core.process(batch.txs, states, prev)
                now = time.time()
                version = core.model.version if core.model else ""
                await sink_call(
                    sink.insert,
                    "transactions",
                    rows.transaction_rows(batch, version=int(now * 1000), ingested_at=now),
                )
                await sink_call(
                    sink.insert,
                    "scores",
                    rows.score_rows(
                        result.scored,
                        model_version=version,
                        feature_names=list(FEATURE_NAMES),
                        scored_at=now,
                    ),
                )
                await sink_call(sink.insert, "alerts", rows.alert_rows(result.alerts))
                await sink_call(sink.insert, "evidence", rows.evidence_rows(result.alerts))
                for a in result.alerts:
                    await (
                        await alerts_topic.send(
                            key=a.entity.encode(), value=alert_record(a).dumps()
                        )
                    )
                for s, st in result.states.items():
                    windows[s] = st.to_dict()
                for s, ast in result.alert_states.items():
                    alert_state[s] = ast.to_dict()
            except Exception as e:  # never stop the stream on one bad event
                log.exception(
                    "processing failed for %s[%d]@%d",
                    event.message.topic,
                    event.message.partition,
                    event.message.offset,
                )
                await dead_letter(sink, TOPIC_CHAIN_TX, event, f"processing error: {e!r}")
                continue
            counters["txs"] += len(batch.txs)
            counters["scored"] += len(result.scored)
            counters["alerts"] += len(result.alerts)

    @app.agent(alerts_topic, name="enforce")
    async def enforce(stream: faust.StreamT) -> None:
        sink = await asyncio.to_thread(Sink, settings)
        enforcer = await asyncio.to_thread(build_enforcer, settings)
        async for event in stream.events():
            try:
                alert = decode_alert(event.value)
                severity = Severity.parse(alert.severity)
                level, until = await sink_call(enforcer.throttle_state, alert.entity)
                head = await sink_call(enforcer.head)
                decision = action_policy.throttle(
                    severity=severity, current_level=level, current_until=until, head_block=head
                )
                if decision is None:
                    continue
                result = await sink_call(
                    enforcer.throttle,
                    alert.entity,
                    decision.level,
                    decision.until_block,
                    alert.evidence_hash,
                )
                now = time.time()
                await sink_call(sink.insert, "actions", rows.action_rows([result], created_at=now))
                await (
                    await actions_topic.send(
                        key=alert.entity.encode(), value=action_record(result, now).dumps()
                    )
                )
                counters["actions"] += 1
            except InvalidMessage as e:
                await dead_letter(sink, TOPIC_ALERTS, event, str(e))
            except Exception as e:
                log.exception("enforcement failed")
                await dead_letter(sink, TOPIC_ALERTS, event, f"enforcement error: {e!r}")

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json({"status": "ok", "warming_up": core.warming_up, **counters})

    app.vigil_counters = counters  # type: ignore[attr-defined]
    return app


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run a Faust worker in this process until SIGTERM/SIGINT."""
    from faust.worker import Worker

    app = build_app(settings)
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
