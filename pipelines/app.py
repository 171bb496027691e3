"""The Faust application: thin agents around the pure processing core.

Agents decode, call a pure function, write and send. Every per-event failure is
caught and routed to `<topic>.dlq` with the reason (Faust would otherwise ack the
failed event and move on, silently). Writes happen before the event is acked, and
every sink is idempotent by key, so a crash or rebalance replays at most a few
events and never double counts them.

Streams and what they do:
- `chain.tx.v1` -> score-transactions: sender windows, isolation forest, bot alerts.
- `node.telemetry.v1`, `node.challenges.v1`, `node.claims.v1` -> node state, rules
  (spot-check failures, overclaim, heartbeat loss), reputation, node alerts.
- `alerts.v1` -> enforce: incidents, the action ladder, exactly-once contract calls,
  governance alerts and webhooks.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import faust
from web3 import Web3

from detector.evidence import canonical_json
from detector.features import FEATURE_NAMES, SenderWindow, remove
from detector.incidents import IncidentState, merge_alert
from detector.node_perf import NodeFleet
from detector.node_rules import (
    NodeState,
    RuleConfig,
    RuleHit,
    heartbeat_rule,
    observe_claim,
    observe_telemetry,
    observe_verdict,
    overclaim_rule,
    perf_rules,
    spot_check_rule,
)
from detector.policy import (
    ActionKind,
    ActionLadder,
    ChainView,
    EnforcementState,
    EntityAlertState,
    Incident,
    Severity,
)
from detector.reputation import NodeReputation
from detector.types import Tx
from pipelines.api import REPUTATION_COLUMNS, reputation_row
from pipelines.chain.contracts import compile_project
from pipelines.chain.enforcer import ActionResult, Enforcer, load_monitor_account
from pipelines.chain.reorg import canonical_tx_hashes, inclusion_rows, retraction_rows
from pipelines.governance import (
    incident_alert,
    needs_governance,
    notifier_from_settings,
    slash_alert,
)
from pipelines.node_side import (
    challenge_row,
    incident_row,
    node_alert,
    observe_registration,
    registration_record,
    telemetry_row,
)
from pipelines.records import (
    DLQ_TOPICS,
    SCHEMA_VERSION,
    TOPIC_ACTIONS,
    TOPIC_ALERTS,
    TOPIC_CHAIN_REORG,
    TOPIC_CHAIN_TX,
    TOPIC_CHALLENGES,
    TOPIC_GOVERNANCE_ALERTS,
    TOPIC_NODE_CLAIMS,
    TOPIC_NODE_REGISTRY,
    TOPIC_TELEMETRY,
    ActionRecord,
    AlertRecord,
    ClaimRecord,
    InvalidMessage,
    RegistrationRecord,
    TxBatch,
    dead_letter_record,
    decode_alert,
    decode_claim,
    decode_registration,
    decode_reorg,
    decode_telemetry,
    decode_tx_batch,
    decode_verdict,
    dlq_topic,
)
from pipelines.scoring import (
    Alert,
    BatchResult,
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
from pipelines.storage.writer import BatchedWriter
from pipelines.txstate import (
    PartitionState,
    StateLog,
    StateLogError,
    from_warm_entries,
    warm_entry,
)

log = logging.getLogger(__name__)


FEATURE_LIST = list(FEATURE_NAMES)
EMPTY_ALERT_STATE = EntityAlertState().to_dict()


def state_changes(
    txs: list[Tx], result: BatchResult, st: PartitionState
) -> tuple[dict[str, list[Any]], dict[str, dict[str, Any]], float]:
    """What a batch changed in its partition's state, as the state log takes it: each
    touched sender's [newest tx time, window], the alert states that differ from the
    stored ones (most senders' do not), and the batch's newest block time."""
    newest: dict[str, float] = {}
    for tx in txs:
        newest[tx.sender] = max(tx.timestamp, newest.get(tx.sender, tx.timestamp))
    changed = {}
    for s, ast in result.alert_states.items():
        d = ast.to_dict()
        if d != (st.alerts.get(s) or EMPTY_ALERT_STATE):
            changed[s] = d
    windows = {s: [newest[s], w.to_dict()] for s, w in result.states.items()}
    return windows, changed, max(newest.values(), default=0.0)


def _where(event: Any) -> str:
    m = event.message
    return f"{m.topic}[{m.partition}]@{m.offset}"


class Sink:
    """ClickHouse writes for one agent: durable before the event is acknowledged.

    Each table gets a `BatchedWriter` that inserts at once or, while ClickHouse is
    down, spools the rows to disk (fsynced) and replays them in order later, with
    dedup tokens so every row lands exactly once. Either way the rows are safe when
    `insert` returns, so the agent may ack the event. Reads use a separate client.
    """

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.spool_dir = settings.data_dir / "spool" / name
        self._client: Any = None
        self.writers: dict[str, BatchedWriter] = {}

    @property
    def client(self) -> Any:
        """The read client, connected on first use: a sink created while ClickHouse is
        down must still take writes (they spool)."""
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self, retry_for: float = 10.0) -> Any:
        s = self.settings
        return connect(
            s.clickhouse_url, *s.clickhouse_login(), s.clickhouse_database, retry_for=retry_for
        )

    def _writer_client(self) -> Any:
        """No waiting here: the writer has its own backoff and spools meanwhile."""
        return self._connect(retry_for=0)

    def insert(self, table: str, data: list[list[Any]]) -> None:
        if not data:
            return
        writer = self.writers.get(table)
        if writer is None:
            columns = REPUTATION_COLUMNS if table == "reputation" else TABLE_COLUMNS[table]
            writer = self.writers[table] = BatchedWriter(
                self._writer_client,
                table,
                columns,
                database=self.settings.clickhouse_database,
                max_rows=100_000,
                max_delay_s=1.0,
                spool_dir=self.spool_dir,
            )
        writer.add(data)
        if not writer.flush(timeout=0):
            log.warning(
                "ClickHouse unavailable: %d %s rows spooled to %s", len(data), table, self.spool_dir
            )


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
    return Enforcer(
        w3,
        registry,
        account,
        dry_run=settings.dry_run,
        nonce_lock_path=settings.data_dir / "enforcer.lock",
    )


@dataclass
class Context:
    """What every agent shares: settings, the app, topics, counters."""

    settings: Settings
    app: faust.App
    topics: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    sinks: dict[str, Sink] = field(default_factory=dict)

    async def sink(self, name: str) -> Sink:
        """The named agent's sink, created once per worker: a restarted agent reuses it
        (its writers hold the spool directory's lock, so a second one could not open)."""
        if name not in self.sinks:
            self.sinks[name] = await self.call(Sink, self.settings, name)
        return self.sinks[name]

    def topic(self, name: str, partitions: int | None = None) -> Any:
        if name not in self.topics:
            self.topics[name] = self.app.topic(
                name,
                value_serializer="raw",
                key_serializer="raw",
                partitions=partitions or self.settings.topic_partitions,
            )
        return self.topics[name]

    async def call(self, fn: Any, *args: Any) -> Any:
        """Blocking I/O (ClickHouse, web3) off the event loop."""
        return await asyncio.to_thread(fn, *args)

    async def send(self, topic: str, key: str, value: bytes) -> None:
        """Send and wait for the broker's ack: the event is acked only after."""
        await (await self.topic(topic).send(key=key.encode(), value=value))

    async def dead_letter(self, sink: Sink, topic: str, event: Any, reason: str) -> None:
        await self.dead_letters(sink, topic, [(event, reason)])

    async def dead_letters(self, sink: Sink, topic: str, items: list[tuple[Any, str]]) -> None:
        """Refused events: one `dlq` insert for all of them (durable first), then their
        records to `<topic>.dlq`, sent together and awaited together."""
        if not items:
            return
        now = time.time()
        dlq_rows, records = [], []
        for event, reason in items:
            msg = event.message
            log.warning("%s[%d]@%d -> dlq: %s", topic, msg.partition, msg.offset, reason)
            raw = event.value if isinstance(event.value, bytes) else None
            dlq_rows.append(rows.dlq_row(topic, msg.partition, msg.offset, reason, raw, now))
            records.append(
                (msg, dead_letter_record(topic, msg.partition, msg.offset, reason, raw, now))
            )
        self.counters["dlq"] += len(items)
        await self.call(sink.insert, "dlq", dlq_rows)
        out = self.topic(dlq_topic(topic), 1)
        acks: list[tuple[Any, Any]] = []
        for msg, rec in records:
            try:
                acks.append((msg, await out.send(key=msg.key, value=rec.dumps())))
            except Exception:  # the ClickHouse row above already holds it: never crash here
                self._dlq_send_failed(topic, msg)
        for msg, ack in acks:
            try:
                await ack
            except Exception:
                self._dlq_send_failed(topic, msg)

    def _dlq_send_failed(self, topic: str, msg: Any) -> None:
        self.counters["dlq_send_failed"] = self.counters.get("dlq_send_failed", 0) + 1
        log.exception(
            "could not send the dead letter of %s[%d]@%d to %s",
            topic,
            msg.partition,
            msg.offset,
            dlq_topic(topic),
        )

    async def publish_alerts(self, sink: Sink, alerts: list[Alert]) -> None:
        """Store alerts and their evidence, then hand them to enforcement."""
        if not alerts:
            return
        await self.call(sink.insert, "alerts", rows.alert_rows(alerts))
        await self.call(sink.insert, "evidence", rows.evidence_rows(alerts))
        for a in alerts:
            await self.send(TOPIC_ALERTS, a.entity, alert_record(a).dumps())
        self.counters["alerts"] += len(alerts)


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
        producer_compression_type=settings.kafka_codec,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=settings.worker_web_port,
        datadir=str(settings.data_dir / "faust"),
        table_standby_replicas=0,
    )
    ctx = Context(
        settings,
        app,
        counters={
            "events": 0,
            "txs": 0,
            "scored": 0,
            "alerts": 0,
            "dlq": 0,
            "actions": 0,
            "telemetry": 0,
            "verdicts": 0,
            "claims": 0,
            "incidents": 0,
            "reorgs": 0,
            "orphaned_skipped": 0,
            "protected_skipped": 0,
            "redelivered_skipped": 0,
        },
    )
    for name in DLQ_TOPICS:
        ctx.topic(dlq_topic(name), 1)
    _transaction_agents(ctx)
    # One reputation per node, fed by telemetry, spot checks and enforcement alike.
    reputations = app.Table("node-reputation", partitions=settings.topic_partitions)
    _node_agents(ctx, reputations)
    _enforcement_agents(ctx, reputations)

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json({"status": "ok", **ctx.counters})

    app.vigil_counters = ctx.counters  # type: ignore[attr-defined]
    return app


# ------------------------------------------------------------------- transactions


def _transaction_agents(ctx: Context) -> None:
    settings, app = ctx.settings, ctx.app
    cfg = ScoringConfig.from_settings(settings)
    model_root = settings.data_dir / "models"

    def persist(model: TxModel) -> None:
        save_model(model, model_root, cfg)

    core = TxScoringCore(cfg, load_model(model_root), on_fit=persist)
    state_topic = ctx.topic(f"{settings.app_id}-tx-state")

    async def send_state(partition: int, value: bytes) -> Any:
        return await state_topic.send(value=value, partition=partition)

    # Per-sender state of the tx path, per source partition (see pipelines/txstate.py).
    store = StateLog(
        state_topic.get_topic_name(),
        settings.kafka_bootstrap,
        send_state,
        evict_after_s=2 * cfg.window_s,
        declare=state_topic.maybe_declare,
        snapshot_every=settings.state_snapshot_every,
        index_group=f"{settings.app_id}-tx-state-snapshots",
    )

    @app.on_partitions_revoked.connect
    async def forget_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked = args[0] if args else kwargs.get("revoked", ())
        store.forget(tp.partition for tp in revoked if tp.topic == TOPIC_CHAIN_TX)

    async def score_group(sink: Sink, partition: int, group: list[tuple[Any, TxBatch]]) -> None:
        """Score the txs of several messages of one partition as one batch: one feature
        pass, one forest call, one insert per table and one state delta."""
        async with store.lock(partition):
            st = await store.state(partition)
            fresh = [(e, b) for e, b in group if e.message.offset > st.applied_offset]
            ctx.counters["redelivered_skipped"] += len(group) - len(fresh)
            if not fresh:  # already fully applied before a crash or rebalance
                return
            txs = [tx for _, b in fresh for tx in b.txs]
            senders = {tx.sender for tx in txs}
            states = {
                s: SenderWindow.from_dict(d) if (d := st.windows.get(s)) else None for s in senders
            }
            prev = {s: EntityAlertState.from_dict(st.alerts.get(s)) for s in senders}
            result = core.process(txs, states, prev)
            now = time.time()
            version = core.model.version if core.model else ""
            tx_rows = [r for _, b in fresh for r in inclusion_rows(b, ingested_at=now)]
            score_rows = rows.score_rows(
                result.scored, model_version=version, feature_names=FEATURE_LIST, scored_at=now
            )
            score_rows += rows.sequence_score_rows(result.sequence, scored_at=now)  # if on
            await asyncio.gather(
                ctx.call(sink.insert, "transactions", tx_rows),
                ctx.call(sink.insert, "scores", score_rows),
            )
            await ctx.publish_alerts(sink, result.alerts)
            windows, changed_alerts, now_block = state_changes(txs, result, st)
            await store.save(
                partition,
                windows,
                changed_alerts,
                applied_offset=max(e.message.offset for e, _ in fresh),
                now=now_block,
                warm=[warm_entry(tx, row) for tx, row in result.buffered],
                warm_done=result.fitted is not None,
            )
            if result.fitted is not None:  # the other partitions' warm-up txs are scored too
                for other, ost in list(store.partitions.items()):
                    if other != partition and ost.warm:
                        await store.save(
                            other, {}, {}, applied_offset=None, now=now_block, warm_done=True
                        )
            ctx.counters["txs"] += len(txs)
            ctx.counters["scored"] += len(result.scored)

    async def restore_warm(partition: int, st: PartitionState) -> None:
        """After a restart, the warm-up txs this partition had buffered go back to the
        core (or, if the model was fitted meanwhile, are scored and stored now)."""
        if not st.warm:
            return
        txs, feature_rows = from_warm_entries(st.warm)
        scored = core.restore(txs, feature_rows)
        log.info("partition %d: %d warm-up txs restored", partition, len(txs))
        if scored:
            sink = await ctx.sink("transactions")
            now = time.time()
            version = core.model.version if core.model else ""
            await ctx.call(
                sink.insert,
                "scores",
                rows.score_rows(
                    scored, model_version=version, feature_names=FEATURE_LIST, scored_at=now
                ),
            )
            await store.save(partition, {}, {}, applied_offset=None, now=0.0, warm_done=True)
            ctx.counters["scored"] += len(scored)

    store.on_recover = restore_warm

    @app.agent(ctx.topic(TOPIC_CHAIN_TX), name="score-transactions")
    async def score_transactions(stream: faust.StreamT) -> None:
        """Up to `batch_size` messages (each one shard of one block) at a time; events
        are acked by Faust after the body has written and sent everything for them."""
        sink = await ctx.sink("transactions")
        take = cast(faust.Stream, stream).take_events  # StreamT does not declare it
        async for events in take(settings.batch_size, within=settings.batch_within_s):
            by_partition: dict[int, list[tuple[Any, TxBatch]]] = {}
            refused: list[tuple[Any, str]] = []
            for event in events:
                ctx.counters["events"] += 1
                try:
                    batch = decode_tx_batch(event.value)
                except InvalidMessage as e:
                    refused.append((event, str(e)))
                    continue
                by_partition.setdefault(event.message.partition, []).append((event, batch))
            await ctx.dead_letters(sink, TOPIC_CHAIN_TX, refused)
            for partition, group in by_partition.items():
                try:
                    await score_group(sink, partition, group)
                except StateLogError:
                    raise  # state cannot be kept safely: stop rather than guess
                except Exception as e:
                    if len(group) == 1:  # never stop the stream on one bad event
                        log.exception("processing failed for %s", _where(group[0][0]))
                        await ctx.dead_letter(
                            sink, TOPIC_CHAIN_TX, group[0][0], f"processing error: {e!r}"
                        )
                        continue
                    log.exception("a batch of %d failed; retrying one by one", len(group))
                    for item in group:  # isolates the failing message; sinks are idempotent
                        try:
                            await score_group(sink, partition, [item])
                        except StateLogError:
                            raise
                        except Exception as e1:
                            log.exception("processing failed for %s", _where(item[0]))
                            await ctx.dead_letter(
                                sink, TOPIC_CHAIN_TX, item[0], f"processing error: {e1!r}"
                            )

    @app.agent(ctx.topic(TOPIC_CHAIN_REORG), name="apply-reorgs")
    async def apply_reorgs(stream: faust.StreamT) -> None:
        """Retract what a reorg orphaned: hidden in ClickHouse, gone from sender windows.

        `chain.reorg.v1` is keyed by shard like `chain.tx.v1` and has as many
        partitions, so Faust assigns both topics' partition p to the same worker."""
        sink = await ctx.sink("reorgs")
        async for event in stream.events():
            try:
                reorg = decode_reorg(event.value)
                await ctx.call(
                    sink.insert, "transactions", retraction_rows(reorg, ingested_at=time.time())
                )
                partition = event.message.partition
                async with store.lock(partition):
                    st = await store.state(partition)
                    changed = {}
                    for sender, hashes in reorg.tx_hashes_by_sender().items():
                        stored = st.windows.get(sender)
                        if stored:
                            w = remove(SenderWindow.from_dict(stored), hashes)
                            changed[sender] = [st.seen.get(sender, 0.0), w.to_dict()]
                    if changed:
                        now = max(st.seen.values(), default=0.0)
                        await store.save(partition, changed, {}, applied_offset=None, now=now)
                ctx.counters["reorgs"] += 1
            except InvalidMessage as e:
                await ctx.dead_letter(sink, TOPIC_CHAIN_REORG, event, str(e))
            except StateLogError:
                raise
            except Exception as e:
                log.exception("reorg handling failed")
                await ctx.dead_letter(sink, TOPIC_CHAIN_REORG, event, f"processing error: {e!r}")

    ctx.counters["warming_up"] = int(core.warming_up)

    @app.timer(2.0)
    async def model_status() -> None:
        ctx.counters["warming_up"] = int(core.warming_up)


# -------------------------------------------------------------------------- nodes


def _node_agents(ctx: Context, reputations: Any) -> None:
    """Telemetry, spot-check verdicts and on-chain claims -> node state, rules, reputation."""
    settings, app = ctx.settings, ctx.app
    parts = settings.topic_partitions
    nodes = app.Table("node-state", partitions=parts)
    rule_cfg = RuleConfig(heartbeat_timeout_s=settings.node_heartbeat_timeout_s)
    fired: dict[tuple[str, str], float] = {}  # (node, rule) -> when (alert once per episode)
    last_written: dict[str, float] = {}
    # Serving-health scores (latency overhead, failure bursts) per node of this worker's
    # partitions, against the medians of those nodes; soft evidence only. In memory: after a
    # restart each node's baseline is learnt again from its next records.
    fleet = NodeFleet()
    ctx.counters.setdefault("registrations", 0)

    def rule_alerts(node: str, state: NodeState, at: float) -> list[Alert]:
        """Rule hits on `state` (may update its overclaim grace clock: store it after)."""
        hits: list[RuleHit | None] = [
            spot_check_rule(state, rule_cfg),
            overclaim_rule(state, rule_cfg, at),
        ]
        score = fleet.score(node)
        if score is not None:
            hits += perf_rules(score, rule_cfg)
        alerts = []
        for hit in hits:
            if hit is not None and (node, hit.rule) not in fired:
                fired[(node, hit.rule)] = at
                alerts.append(node_alert(node, hit, at))
        return alerts

    async def write_reputation(s: Sink, node: str, rep: NodeReputation, at: float) -> None:
        if at - last_written.get(node, 0.0) < settings.reputation_write_interval_s:
            return
        last_written[node] = at
        await ctx.call(s.insert, "reputation", [reputation_row(node, at, rep.score(at))])

    async def handle(s: Sink, topic: str, event: Any, step: Any) -> None:
        try:
            await step(s)
        except InvalidMessage as e:
            await ctx.dead_letter(s, topic, event, str(e))
        except Exception as e:
            log.exception("node event failed on %s", topic)
            await ctx.dead_letter(s, topic, event, f"processing error: {e!r}")

    async def update_node(
        s: Sink,
        node: str,
        at: float,
        counter: str,
        on_state: Callable[[NodeState], bool | None],
        on_rep: Callable[[NodeReputation], NodeReputation] | None = None,
    ) -> None:
        """Read the node's state and reputation, apply one event, store, run the rules."""
        state = NodeState.from_dict(nodes.get(node))
        if on_state(state) is False:
            return  # a replayed event: nothing changed
        rep = NodeReputation.from_dict(reputations.get(node))
        if on_rep is not None:
            rep = on_rep(rep)
            reputations[node] = rep.to_dict()
            await write_reputation(s, node, rep, at)
        alerts = rule_alerts(node, state, at)
        nodes[node] = state.to_dict()
        ctx.counters[counter] += 1
        await ctx.publish_alerts(s, alerts)

    def uptime(previous: float | None, at: float) -> Callable[[NodeReputation], NodeReputation]:
        """A heartbeat: the intervals missed since the previous one count as down."""

        def step(rep: NodeReputation) -> NodeReputation:
            gap = 0.0 if previous is None else at - previous
            missed = min(100, max(0, round(gap / settings.node_heartbeat_interval_s) - 1))
            for _ in range(missed):
                rep = rep.observe_interval(at, up=False)
            return rep.observe_interval(at, up=True)

        return step

    @app.agent(ctx.topic(TOPIC_TELEMETRY), name="node-telemetry")
    async def node_telemetry(stream: faust.StreamT) -> None:
        sink = await ctx.sink("telemetry")  # one ClickHouse client per agent
        async for event in stream.events():

            async def step(s: Sink, event: Any = event) -> None:
                t = decode_telemetry(event.value)
                await ctx.call(s.insert, "telemetry", [telemetry_row(t)])
                previous = NodeState.from_dict(nodes.get(t.node_id)).last_heartbeat
                if t.kind == "heartbeat":
                    fired.pop((t.node_id, "rule:heartbeat"), None)
                    on_rep = uptime(previous, t.ts)
                else:
                    failed = t.errors > 0  # a failed batch reports its requests as errors
                    fleet.learn(
                        t.node_id,
                        {
                            "latency_ms": t.latency_ms,
                            "tokens": float(t.tokens),
                            "batches": 0.0 if failed else 1.0,
                            "failed": 1.0 if failed else 0.0,
                        },
                        t=t.ts,
                    )
                    on_rep = lambda r: r.observe_batch(  # noqa: E731
                        t.ts, t.latency_ms, t.batch_size, t.errors
                    )
                await update_node(
                    s,
                    t.node_id,
                    t.ts,
                    "telemetry",
                    lambda st: observe_telemetry(
                        st,
                        kind=t.kind,
                        ts=t.ts,
                        tokens=t.tokens,
                        errors=t.errors,
                        latency_ms=t.latency_ms,
                    ),
                    on_rep,
                )

            await handle(sink, TOPIC_TELEMETRY, event, step)

    @app.agent(ctx.topic(TOPIC_CHALLENGES), name="node-challenges")
    async def node_challenges(stream: faust.StreamT) -> None:
        sink = await ctx.sink("challenges")
        async for event in stream.events():

            async def step(s: Sink, event: Any = event) -> None:
                v = decode_verdict(event.value)
                await ctx.call(s.insert, "challenges", [challenge_row(v)])
                await update_node(
                    s,
                    v.node_id,
                    v.ts,
                    "verdicts",
                    lambda st: observe_verdict(
                        st, passed=v.passed, request_id=v.request_id, ts=v.ts
                    ),
                    lambda r: r.observe_spot_check(v.ts, v.passed),
                )

            await handle(sink, TOPIC_CHALLENGES, event, step)

    def node_state_agent(
        topic: str,
        name: str,
        sink_name: str,
        counter: str,
        change: Callable[[bytes | None, float], tuple[str, Callable[[NodeState], bool | None]]],
    ) -> None:
        """An agent whose events only change their node's state: `change(raw, now)` decodes
        one message into the node and the step to apply to its state."""

        @app.agent(ctx.topic(topic), name=name)
        async def agent(stream: faust.StreamT) -> None:
            sink = await ctx.sink(sink_name)
            async for event in stream.events():

                async def step(s: Sink, event: Any = event) -> None:
                    now = time.time()
                    node, on_state = change(event.value, now)
                    await update_node(s, node, now, counter, on_state)

                await handle(sink, topic, event, step)

    def claim(raw: bytes | None, now: float) -> tuple[str, Callable[[NodeState], bool]]:
        """An on-chain usage settlement, checked against the node's telemetry."""
        c = decode_claim(raw)
        return c.node, lambda st: observe_claim(st, units=c.units, period=c.period, ts=now)

    def registration(raw: bytes | None, now: float) -> tuple[str, Callable[[NodeState], bool]]:
        """A node exists from its registration on, so one that never sends anything is
        still timed out by the heartbeat rule; a deregistered one is not."""
        r = decode_registration(raw)
        return r.node, lambda st: observe_registration(st, r, now)

    node_state_agent(TOPIC_NODE_CLAIMS, "node-claims", "claims", "claims", claim)
    node_state_agent(
        TOPIC_NODE_REGISTRY, "node-registry", "registry", "registrations", registration
    )

    timer_sink: dict[str, Sink] = {}

    @app.timer(5.0)
    async def heartbeat_watch() -> None:
        """Heartbeat loss is the absence of events, so a timer looks for it."""
        if "s" not in timer_sink:
            timer_sink["s"] = await ctx.sink("node-timers")
        now = time.time()
        fleet.refresh()  # the medians each node's serving health is compared with
        alerts = []
        for node, raw in list(nodes.items()):
            state = NodeState.from_dict(raw)
            # silence, and a claim excess that outlived its grace without new events
            # (read only: the grace clock is stored by the event path)
            for hit in (heartbeat_rule(state, rule_cfg, now), overclaim_rule(state, rule_cfg, now)):
                if hit is not None and (node, hit.rule) not in fired:
                    fired[(node, hit.rule)] = now
                    alerts.append(node_alert(node, hit, now))
        await ctx.publish_alerts(timer_sink["s"], alerts)

    cursor_path = settings.data_dir / "claims.cursor"

    @app.timer(2.0, on_leader=True)
    async def claims_watch() -> None:
        """On-chain usage settlements -> `node.claims.v1` (keyed by node, like telemetry)."""
        if settings.node_registry_address is None:
            return
        start = int(cursor_path.read_text()) if cursor_path.exists() else 0
        logs, head = await ctx.call(_usage_settled, settings, start)
        for e in logs:
            a = e["args"]
            rec = ClaimRecord(
                schema_version=SCHEMA_VERSION,
                node=str(a["node"]).lower(),
                operator=str(a["operator"]).lower(),
                period=int(a["period"]),
                units=int(a["units"]),
                commitment="0x" + bytes(a["commitment"]).hex(),
                block_number=int(e["blockNumber"]),
                tx_hash=e["transactionHash"].to_0x_hex(),
            )
            await ctx.send(TOPIC_NODE_CLAIMS, rec.node, rec.dumps())
        cursor_path.write_text(str(head + 1))

    registry_cursor = settings.data_dir / "registrations.cursor"

    def node_registered(start: int) -> tuple[list[RegistrationRecord], int]:
        """`NodeRegistered` and `NodeDeregistered` events from block `start` to the head, in
        chain order, with their block times."""
        w3 = Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 10}))
        head = int(w3.eth.block_number)
        if head < start:
            return [], start - 1
        registry = w3.eth.contract(
            address=Web3.to_checksum_address(str(settings.node_registry_address)),
            abi=compile_project()["NodeRegistry"].abi,
        )
        times: dict[int, float] = {}
        out = []
        events = registry.events
        logs = [
            *events.NodeRegistered.get_logs(from_block=start, to_block=head),
            *events.NodeDeregistered.get_logs(from_block=start, to_block=head),
        ]
        for e in sorted(logs, key=lambda e: (int(e["blockNumber"]), int(e["logIndex"]))):
            n = int(e["blockNumber"])
            if n not in times:
                times[n] = float(w3.eth.get_block(n)["timestamp"])
            out.append(registration_record(e, times[n]))
        return out, head

    @app.timer(2.0, on_leader=True)
    async def registry_watch() -> None:
        """On-chain registrations and deregistrations -> `node.registry.v1` (keyed by node,
        like telemetry). Replays after a crash are harmless: a registration only moves
        `first_seen` back, a deregistration only `deregistered_at`."""
        if settings.node_registry_address is None:
            return
        start = int(registry_cursor.read_text()) if registry_cursor.exists() else 0
        recs, head = await ctx.call(node_registered, start)
        for rec in recs:
            await ctx.send(TOPIC_NODE_REGISTRY, rec.node, rec.dumps())
        registry_cursor.write_text(str(head + 1))


def _usage_settled(settings: Settings, start: int) -> tuple[list[Any], int]:
    w3 = Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 10}))
    head = int(w3.eth.block_number)
    if head < start:
        return [], start - 1
    registry = w3.eth.contract(
        address=Web3.to_checksum_address(str(settings.node_registry_address)),
        abi=compile_project()["NodeRegistry"].abi,
    )
    return list(registry.events.UsageSettled.get_logs(from_block=start, to_block=head)), head


# -------------------------------------------------------------------- enforcement


def _enforcement_agents(ctx: Context, reputations: Any) -> None:
    """alerts.v1 -> incidents -> the action ladder -> contract calls + governance."""
    settings, app = ctx.settings, ctx.app
    parts = settings.topic_partitions
    incidents = app.Table("incidents", partitions=parts)
    enforcement = app.Table("enforcement-state", partitions=parts)
    ladder = ActionLadder()

    @app.agent(ctx.topic(TOPIC_ALERTS), name="enforce")
    async def enforce(stream: faust.StreamT) -> None:
        sink = await ctx.sink("enforce")
        enforcer = (
            await ctx.call(build_enforcer, settings)
            if settings.node_registry_address is not None
            else None
        )
        if enforcer is None:
            log.warning("no node_registry_address: incidents are recorded, no action is sent")
        notifier = notifier_from_settings(settings)
        protected = {a.lower() for a in settings.protected_accounts}
        if enforcer is not None and enforcer.account is not None:  # never act against ourselves
            protected.add(enforcer.account.address.lower())
        async for event in stream.events():
            try:
                alert = decode_alert(event.value)
                severity = Severity.parse(alert.severity)
                now = time.time()
                if await ctx.call(_rests_on_orphans, sink, settings, alert.evidence_hash):
                    log.warning("alert %s rests only on reorged-out txs: no action", alert.alert_id)
                    ctx.counters["orphaned_skipped"] += 1
                    continue
                inc = merge_alert(
                    IncidentState.from_dict(incidents.get(alert.entity)),
                    entity=alert.entity,
                    category=alert.category,
                    severity=severity,
                    detector=alert.detector,
                    evidence=alert.evidence_hash,
                    at=alert.created_at,
                )
                incidents[alert.entity] = inc.to_dict()
                await ctx.call(
                    sink.insert, "incidents", [incident_row(inc, status="open", updated_at=now)]
                )
                ctx.counters["incidents"] += 1
                if alert.entity in protected:
                    log.info("alert about protected account %s: recorded, no action", alert.entity)
                    ctx.counters["protected_skipped"] += 1
                    continue
                view = (
                    await ctx.call(enforcer.chain_view, alert.entity)
                    if enforcer is not None
                    else ChainView(head_block=0)
                )
                state, decision = ladder.decide(
                    EnforcementState.from_dict(enforcement.get(alert.entity)),
                    Incident(
                        inc.incident_id,
                        inc.entity,
                        inc.category,
                        inc.severity,
                        inc.evidence_hash,
                        inc.last_seen,
                        inc.detectors,
                    ),
                    view,
                )
                result: ActionResult | None = None
                if decision.onchain and decision.evidence_doc is not None:
                    doc = canonical_json(decision.evidence_doc)
                    await ctx.call(
                        sink.insert,
                        "evidence",
                        [[decision.evidence_hash, alert.entity, doc, rows.ts(alert.created_at)]],
                    )
                    if enforcer is not None:
                        result = await ctx.call(enforcer.apply, decision)
                if result is not None:
                    await ctx.call(
                        sink.insert,
                        "actions",
                        rows.action_rows([result], created_at=alert.created_at),
                    )
                    await ctx.send(TOPIC_ACTIONS, alert.entity, action_record(result, now).dumps())
                    ctx.counters["actions"] += 1
                    if view.is_node:
                        rep = NodeReputation.from_dict(reputations.get(alert.entity))
                        rep = (
                            rep.observe_slash(now)
                            if decision.kind is ActionKind.SLASH_PROPOSAL
                            else rep.observe_throttle(now)
                        )
                        reputations[alert.entity] = rep.to_dict()
                enforcement[alert.entity] = state.to_dict()  # only after the action went out
                gov = []
                if decision.kind is ActionKind.SLASH_PROPOSAL and result is not None:
                    gov.append(
                        slash_alert(
                            decision,
                            result,
                            category=inc.category,
                            severity=inc.severity.label,
                            created_at=now,
                        )
                    )
                if needs_governance(inc.severity) and inc.alert_count == 1:
                    gov.append(
                        incident_alert(
                            incident_id=inc.incident_id,
                            entity=inc.entity,
                            category=inc.category,
                            severity=inc.severity.label,
                            evidence_hash=inc.evidence_hash,
                            summary=f"{inc.category} incident: {', '.join(inc.detectors)}",
                            created_at=now,
                        )
                    )
                for g in gov:
                    await ctx.send(TOPIC_GOVERNANCE_ALERTS, g.entity, g.dumps())
                    await ctx.call(notifier.deliver, g)
            except InvalidMessage as e:
                await ctx.dead_letter(sink, TOPIC_ALERTS, event, str(e))
            except Exception as e:
                log.exception("enforcement failed")
                await ctx.dead_letter(sink, TOPIC_ALERTS, event, f"enforcement error: {e!r}")


def _rests_on_orphans(sink: Sink, settings: Settings, evidence: str) -> bool:
    """True when the alert's evidence references txs and none is canonical any more."""
    found = sink.client.query(
        "SELECT doc FROM evidence FINAL WHERE evidence_hash = {h:String} LIMIT 1",
        parameters={"h": evidence},
    ).result_rows
    if not found:
        return False
    refs = json.loads(found[0][0]).get("tx_refs") or []
    if not refs:
        return False
    return not canonical_tx_hashes(sink.client, settings.clickhouse_database, refs)


def tune_gc() -> None:
    """Fewer full garbage collections: the worker holds hundreds of thousands of state
    objects, and with CPython's default thresholds each gen-2 pass walks them all (about
    a third of the transaction path's CPU in `bench/pipeline_bench.py`'s profile). Objects
    alive at start-up are frozen out of collection altogether."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run a Faust worker in this process until SIGTERM/SIGINT."""
    from faust.worker import Worker

    # web3 imports py_ecc, which raises the recursion limit to 100,000: a deeply nested
    # hostile JSON message would then overflow the C stack (a segfault, replayed on every
    # restart). A sane bound turns it into a RecursionError -> InvalidMessage -> DLQ.
    sys.setrecursionlimit(min(sys.getrecursionlimit(), 10_000))
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = build_app(settings)
    tune_gc()
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    # No terminal spinner: at --log-level warning and above Faust would hook it to the
    # root logger at DEBUG, and every debug call in aiokafka would build a record.
    worker.spinner = None
    worker.execute_from_commandline()
