"""ClickHouse schema as ordered, versioned migrations.

Why versioned: the embedded store persists across restarts and production ClickHouse
is long-lived, so a schema change must be an explicit, replayable step, applied once.
`migrate()` records each applied version in `<db>.schema_migrations`.

Why ReplacingMergeTree everywhere: Kafka consumers replay after crashes and writers
retry, so the same logical row can be written more than once. Each table's ORDER BY
is the row's identity; readers use `FINAL` (or `argMax(col, version)` grouped by the
key) so duplicates never count twice. Caveat that writers must respect: ClickHouse
only collapses duplicates inside one partition, so the partition column (a day of
the event time) must be the same for every write of a key -- derive it from the
event (block time), not from the wall clock, and write a retraction with the
original row's time. (ReplacingMergeTree with `is_deleted` rather than
CollapsingMergeTree: a collapsing cancel row must repeat the old row exactly, which a
replaying consumer cannot know; a higher version can always be written.)

Why rollups: time-series panels over days of data read per-minute
AggregatingMergeTree tables filled by materialized views (`ROLLUP_TABLES`), not the
raw rows. Their counts are uniq states of the row identity, so duplicates and
backfills never inflate them. Raw high-volume tables have TTLs; whole daily parts
expire (`ttl_only_drop_parts`).

Why a deduplication window on every table: `BatchedWriter` retries a batch with the
same `insert_deduplication_token`; the server then drops an insert it had already
committed -- in the table and in the views fed by it. Replicated tables (cluster
mode, `pipelines.storage.cluster`) keep such a log by default.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field

from clickhouse_connect.driver import Client

from pipelines.storage.cluster import SHARDING_KEYS, render_statement

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "schema_migrations"


@dataclass(frozen=True)
class Migration:
    """One schema step. Statements use `{db}` for the (quoted) database name and must
    be idempotent (IF NOT EXISTS), so a migration interrupted halfway can be re-run."""

    version: int
    name: str
    statements: list[str] = field(default_factory=list)


# Column order for inserts (clickhouse-connect `column_names=`), per table.
TABLE_COLUMNS: dict[str, list[str]] = {
    "transactions": [
        "tx_hash",
        "block_number",
        "block_hash",
        "block_time",
        "tx_index",
        "sender",
        "to_address",
        "value_wei",
        "gas_price_wei",
        "gas",
        "nonce",
        "selector",
        "status",
        "confirmed",
        "ingested_at",
        "version",
        "is_deleted",
    ],
    "scores": [
        "tx_hash",
        "sender",
        "block_number",
        "block_time",
        "score",
        "threshold",
        "model_version",
        "features",
        "scored_at",
    ],
    "alerts": [
        "alert_id",
        "entity",
        "category",
        "severity",
        "detector",
        "score",
        "threshold",
        "evidence_hash",
        "explanation",
        "tx_hash",
        "created_at",
    ],
    "actions": [
        "evidence_hash",
        "kind",
        "target",
        "tx_hash",
        "block_number",
        "status",
        "created_at",
    ],
    "dlq": ["topic", "partition", "offset", "reason", "raw", "received_at"],
    "evidence": ["evidence_hash", "entity", "doc", "created_at"],
    # --- migration 3 -----------------------------------------------------------
    "telemetry": [
        "node_id",
        "kind",
        "ts",
        "latency_ms",
        "batch_size",
        "tokens",
        "queue_depth",
        "errors",
        "device",
        "gpu_util",
        "gpu_mem_mb",
    ],
    "features": ["entity", "source", "ts", "window_s", "features", "model_version"],
    "incidents": [
        "incident_id",
        "entity",
        "category",
        "severity",
        "status",
        "first_seen",
        "last_seen",
        "alert_count",
        "detectors",
        "evidence_hash",
        "chain_id",
        "updated_at",
    ],
    "reputation": ["node_id", "ts", "score", "components", "reason"],
    "pipeline_health": ["ts", "component", "instance", "metric", "value"],
    "challenges": ["node_id", "request_id", "ts", "passed", "cosine"],
}

# Columns that migration 3 added to tables of migrations 1-2 with a DEFAULT: writers
# that do not supply them yet (TABLE_COLUMNS above) get the default (chain 0).
DEFAULTED_COLUMNS: dict[str, list[str]] = {
    "transactions": ["chain_id"],
    "alerts": ["chain_id"],
    "actions": ["chain_id"],
}

# Per-minute rollups (AggregatingMergeTree) that panels read, and the materialized
# views that fill them. Read them with the -Merge combinators (or sum/max for the
# SimpleAggregateFunction columns), grouped by the key.
ROLLUP_TABLES: dict[str, str] = {
    "alerts_1m": "alerts",
    "tx_1m": "transactions",
    "telemetry_1m": "telemetry",
    "pipeline_health_1m": "pipeline_health",
}
MATERIALIZED_VIEWS: dict[str, str] = {f"{name}_mv": name for name in ROLLUP_TABLES}

# Inserts retried with the same `insert_deduplication_token` are dropped by the server
# when the table keeps a deduplication log (replicated tables always do).
DEDUP_WINDOW = 1000

_V1 = [
    # Block follower output. `version` grows with each observation of a tx (pending ->
    # confirmed, or re-inclusion after a reorg); `is_deleted = 1` retracts a tx that a
    # reorg dropped: FINAL then hides it.
    """
    CREATE TABLE IF NOT EXISTS {db}.transactions
    (
        tx_hash String,
        block_number UInt64,
        block_hash String,
        block_time DateTime64(3, 'UTC'),
        tx_index UInt32,
        sender String,
        to_address String,
        value_wei UInt256,
        gas_price_wei UInt64,
        gas UInt64,
        nonce UInt64,
        selector String,
        status UInt8,
        confirmed UInt8,
        ingested_at DateTime64(3, 'UTC'),
        version UInt64,
        is_deleted UInt8 DEFAULT 0
    )
    ENGINE = ReplacingMergeTree(version, is_deleted)
    PARTITION BY toYYYYMMDD(block_time)
    ORDER BY tx_hash
    """,
    """
    CREATE TABLE IF NOT EXISTS {db}.scores
    (
        tx_hash String,
        sender String,
        block_number UInt64,
        block_time DateTime64(3, 'UTC'),
        score Float64,
        threshold Float64,
        model_version String,
        features String,
        scored_at DateTime64(3, 'UTC')
    )
    ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMMDD(block_time)
    ORDER BY (tx_hash, model_version)
    """,
    """
    CREATE TABLE IF NOT EXISTS {db}.alerts
    (
        alert_id String,
        entity String,
        category LowCardinality(String),
        severity LowCardinality(String),
        detector LowCardinality(String),
        score Float64,
        threshold Float64,
        evidence_hash String,
        explanation String,
        tx_hash String,
        created_at DateTime64(3, 'UTC')
    )
    ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMMDD(created_at)
    ORDER BY alert_id
    """,
    """
    CREATE TABLE IF NOT EXISTS {db}.actions
    (
        evidence_hash String,
        kind LowCardinality(String),
        target String,
        tx_hash String,
        block_number UInt64,
        status LowCardinality(String),
        created_at DateTime64(3, 'UTC')
    )
    ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMMDD(created_at)
    ORDER BY (evidence_hash, kind)
    """,
    """
    CREATE TABLE IF NOT EXISTS {db}.dlq
    (
        topic String,
        partition UInt32,
        offset UInt64,
        reason String,
        raw String,
        received_at DateTime64(3, 'UTC')
    )
    ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMMDD(received_at)
    ORDER BY (topic, partition, offset)
    """,
]

_V2 = [
    # Evidence documents, retrievable by the keccak hash of `doc` (what goes on chain).
    """
    CREATE TABLE IF NOT EXISTS {db}.evidence
    (
        evidence_hash String,
        entity String,
        doc String,
        created_at DateTime64(3, 'UTC')
    )
    ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMMDD(created_at)
    ORDER BY evidence_hash
    """,
]

_DEDUP = f"non_replicated_deduplication_window = {DEDUP_WINDOW}"
# Raw, high-volume tables expire whole daily parts (cheap drops, no rewrites).
_TTL_SETTINGS = f"{_DEDUP}, ttl_only_drop_parts = 1"

_V3 = [
    # A chain dimension for multi-chain deployments (one follower per chain). Rows
    # written without it belong to chain 0 until the writers supply it.
    *[
        f"ALTER TABLE {{db}}.{table} ADD COLUMN IF NOT EXISTS chain_id UInt64 DEFAULT 0"
        for table in DEFAULTED_COLUMNS
    ],
    # Retried inserts (same token) are dropped server-side: exactly-once for the writer.
    *[
        f"ALTER TABLE {{db}}.{table} MODIFY SETTING {_DEDUP}"
        for table in ("transactions", "scores", "alerts", "actions", "dlq", "evidence")
    ],
    # Node telemetry (batches and heartbeats). Identity is (node, kind, ts): a replayed
    # event collapses; raw rows live 30 days, the per-minute rollup much longer.
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.telemetry
    (
        node_id String,
        kind LowCardinality(String),
        ts DateTime64(3, 'UTC'),
        latency_ms Float64,
        batch_size UInt32,
        tokens UInt64,
        queue_depth UInt32,
        errors UInt32,
        device LowCardinality(String),
        gpu_util Float32,
        gpu_mem_mb Float32
    )
    ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMMDD(ts)
    ORDER BY (node_id, kind, ts)
    TTL toDateTime(ts) + INTERVAL 30 DAY
    SETTINGS {_TTL_SETTINGS}
    """,
    # Window features per entity (sender or node) as scored, for explanations and
    # retraining; a map keeps the table stable when feature sets change.
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.features
    (
        entity String,
        source LowCardinality(String),
        ts DateTime64(3, 'UTC'),
        window_s Float32,
        features Map(LowCardinality(String), Float64),
        model_version LowCardinality(String)
    )
    ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMMDD(ts)
    ORDER BY (entity, source, ts)
    TTL toDateTime(ts) + INTERVAL 14 DAY
    SETTINGS {_TTL_SETTINGS}
    """,
    # One row per incident state; the newest `updated_at` wins (status changes and
    # new alerts rewrite it). Partitioned by `first_seen`, which never changes, so all
    # versions of an incident meet in one partition and collapse.
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.incidents
    (
        incident_id String,
        entity String,
        category LowCardinality(String),
        severity LowCardinality(String),
        status LowCardinality(String),
        first_seen DateTime64(3, 'UTC'),
        last_seen DateTime64(3, 'UTC'),
        alert_count UInt32,
        detectors Array(LowCardinality(String)),
        evidence_hash String,
        chain_id UInt64 DEFAULT 0,
        updated_at DateTime64(3, 'UTC')
    )
    ENGINE = ReplacingMergeTree(updated_at)
    PARTITION BY toYYYYMMDD(first_seen)
    ORDER BY incident_id
    SETTINGS {_DEDUP}
    """,
    # Reputation history per node: the score and the components it is made of, so an
    # operator can see (and contest) what moved it. Kept without TTL (governance).
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.reputation
    (
        node_id String,
        ts DateTime64(3, 'UTC'),
        score Float64,
        components Map(LowCardinality(String), Float64),
        reason String
    )
    ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMMDD(ts)
    ORDER BY (node_id, ts)
    SETTINGS {_DEDUP}
    """,
    # Self-monitoring samples: head lag, consumer lag, events/s, DLQ and error counts.
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.pipeline_health
    (
        ts DateTime64(3, 'UTC'),
        component LowCardinality(String),
        instance String,
        metric LowCardinality(String),
        value Float64
    )
    ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMMDD(ts)
    ORDER BY (component, metric, instance, ts)
    TTL toDateTime(ts) + INTERVAL 30 DAY
    SETTINGS {_TTL_SETTINGS}
    """,
    # Spot-check results: a challenge's request id identifies it.
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.challenges
    (
        node_id String,
        request_id String,
        ts DateTime64(3, 'UTC'),
        passed UInt8,
        cosine Float64
    )
    ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMMDD(ts)
    ORDER BY (node_id, request_id)
    TTL toDateTime(ts) + INTERVAL 90 DAY
    SETTINGS {_TTL_SETTINGS}
    """,
    # --- per-minute rollups ------------------------------------------------------
    # Counts are uniqExact/uniq states of the row identity, so a replayed or
    # backfilled row never counts twice; the writer's dedup token covers the rest.
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.alerts_1m
    (
        minute DateTime('UTC'),
        chain_id UInt64,
        category LowCardinality(String),
        severity LowCardinality(String),
        detector LowCardinality(String),
        alerts AggregateFunction(uniqExact, String),
        entities AggregateFunction(uniqExact, String),
        max_score SimpleAggregateFunction(max, Float64)
    )
    ENGINE = AggregatingMergeTree
    PARTITION BY toYYYYMMDD(minute)
    ORDER BY (minute, chain_id, category, severity, detector)
    SETTINGS {_DEDUP}
    """,
    """
    CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.alerts_1m_mv TO {db}.alerts_1m AS
    SELECT
        toStartOfMinute(toDateTime(created_at)) AS minute,
        chain_id,
        category,
        severity,
        detector,
        uniqExactState(alert_id) AS alerts,
        uniqExactState(entity) AS entities,
        max(score) AS max_score
    FROM {db}.alerts
    GROUP BY minute, chain_id, category, severity, detector
    """,
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.tx_1m
    (
        minute DateTime('UTC'),
        chain_id UInt64,
        txs AggregateFunction(uniq, String),
        senders AggregateFunction(uniq, String),
        failed AggregateFunction(uniqIf, String, UInt8),
        max_gas_price SimpleAggregateFunction(max, UInt64)
    )
    ENGINE = AggregatingMergeTree
    PARTITION BY toYYYYMMDD(minute)
    ORDER BY (minute, chain_id)
    SETTINGS {_DEDUP}
    """,
    """
    CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.tx_1m_mv TO {db}.tx_1m AS
    SELECT
        toStartOfMinute(toDateTime(block_time)) AS minute,
        chain_id,
        uniqState(tx_hash) AS txs,
        uniqState(sender) AS senders,
        uniqIfState(tx_hash, status = 0) AS failed,
        max(gas_price_wei) AS max_gas_price
    FROM {db}.transactions
    WHERE is_deleted = 0
    GROUP BY minute, chain_id
    """,
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.telemetry_1m
    (
        minute DateTime('UTC'),
        node_id String,
        events SimpleAggregateFunction(sum, UInt64),
        batches SimpleAggregateFunction(sum, UInt64),
        latency_ms AggregateFunction(quantilesIf(0.5, 0.95, 0.99), Float64, UInt8),
        tokens SimpleAggregateFunction(sum, UInt64),
        errors SimpleAggregateFunction(sum, UInt64),
        gpu_util AggregateFunction(avg, Float32),
        max_queue_depth SimpleAggregateFunction(max, UInt32),
        last_seen SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
    )
    ENGINE = AggregatingMergeTree
    PARTITION BY toYYYYMMDD(minute)
    ORDER BY (node_id, minute)
    TTL minute + INTERVAL 400 DAY
    SETTINGS {_TTL_SETTINGS}
    """,
    """
    CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.telemetry_1m_mv TO {db}.telemetry_1m AS
    SELECT
        toStartOfMinute(toDateTime(ts)) AS minute,
        node_id,
        count() AS events,
        countIf(kind = 'batch') AS batches,
        quantilesIfState(0.5, 0.95, 0.99)(latency_ms, kind = 'batch') AS latency_ms,
        sum(tokens) AS tokens,
        sum(errors) AS errors,
        avgState(gpu_util) AS gpu_util,
        max(queue_depth) AS max_queue_depth,
        max(ts) AS last_seen
    FROM {db}.telemetry
    GROUP BY minute, node_id
    """,
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.pipeline_health_1m
    (
        minute DateTime('UTC'),
        component LowCardinality(String),
        metric LowCardinality(String),
        samples SimpleAggregateFunction(sum, UInt64),
        value_sum SimpleAggregateFunction(sum, Float64),
        value_avg AggregateFunction(avg, Float64),
        value_min SimpleAggregateFunction(min, Float64),
        value_max SimpleAggregateFunction(max, Float64),
        value_last AggregateFunction(argMax, Float64, DateTime64(3, 'UTC'))
    )
    ENGINE = AggregatingMergeTree
    PARTITION BY toYYYYMMDD(minute)
    ORDER BY (component, metric, minute)
    TTL minute + INTERVAL 90 DAY
    SETTINGS {_TTL_SETTINGS}
    """,
    """
    CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.pipeline_health_1m_mv
    TO {db}.pipeline_health_1m AS
    SELECT
        toStartOfMinute(toDateTime(ts)) AS minute,
        component,
        metric,
        count() AS samples,
        sum(value) AS value_sum,
        avgState(value) AS value_avg,
        min(value) AS value_min,
        max(value) AS value_max,
        argMaxState(value, ts) AS value_last
    FROM {db}.pipeline_health
    GROUP BY minute, component, metric
    """,
    # Backfill the replay-safe rollups from rows written before this migration (uniq
    # states make a second run, or an overlap with the view, harmless).
    """
    INSERT INTO {db}.alerts_1m
    SELECT
        toStartOfMinute(toDateTime(created_at)) AS minute,
        chain_id,
        category,
        severity,
        detector,
        uniqExactState(alert_id),
        uniqExactState(entity),
        max(score)
    FROM {db}.alerts
    GROUP BY minute, chain_id, category, severity, detector
    """,
    """
    INSERT INTO {db}.tx_1m
    SELECT
        toStartOfMinute(toDateTime(block_time)) AS minute,
        chain_id,
        uniqState(tx_hash),
        uniqState(sender),
        uniqIfState(tx_hash, status = 0),
        max(gas_price_wei)
    FROM {db}.transactions
    WHERE is_deleted = 0
    GROUP BY minute, chain_id
    """,
]

# Tables owned by the simulator, the API and the governance notifier: their DDL lives
# beside the code that writes them; the migration makes them part of every install.
_V4_MODULES = (
    ("pipelines.simulator.labels", "LABELS_DDL"),
    ("pipelines.api", "CONTESTS_DDL"),
    ("pipelines.governance", "WEBHOOK_DLQ_DDL"),
)


_V4_COLUMNS = (
    ("sim_labels", "pipelines.simulator.labels", "LABELS_COLUMNS"),
    ("contests", "pipelines.api", "CONTESTS_COLUMNS"),
    ("webhook_dlq", "pipelines.governance", "WEBHOOK_DLQ_COLUMNS"),
)


def _v4() -> list[str]:
    import importlib

    for table, module, name in _V4_COLUMNS:
        TABLE_COLUMNS[table] = list(getattr(importlib.import_module(module), name))
    return [getattr(importlib.import_module(m), name) for m, name in _V4_MODULES]


MIGRATIONS: list[Migration] = [
    Migration(1, "transactions, scores, alerts, actions, dlq", _V1),
    Migration(2, "evidence", _V2),
    Migration(
        3,
        "telemetry, features, incidents, reputation, pipeline_health, challenges, "
        "chain_id, per-minute rollups",
        _V3,
    ),
    Migration(4, "simulator labels, contests, webhook dead letters", _v4()),
]

# Tables that get a shard-local table plus a Distributed one in cluster mode (the
# migrations ledger is not among them: it is replicated whole to every server).
_SHARDED = set(SHARDING_KEYS)

_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def quote_database(database: str) -> str:
    """Backquoted database name; only plain identifiers are accepted (no injection)."""
    if not _IDENT_RE.fullmatch(database):
        raise ValueError(f"invalid database name {database!r}")
    return f"`{database}`"


def applied_versions(client: Client, database: str) -> list[int]:
    """Versions recorded in `<db>.schema_migrations` ([] when the table is missing)."""
    db = quote_database(database)
    exists = client.command(f"EXISTS TABLE {db}.{MIGRATIONS_TABLE}")
    if str(exists).strip() != "1":
        return []
    rows = client.query(
        f"SELECT version FROM {db}.{MIGRATIONS_TABLE} FINAL ORDER BY version"
    ).result_rows
    return [int(r[0]) for r in rows]


def _migrations_table_ddl(db: str) -> str:
    return f"""
        CREATE TABLE IF NOT EXISTS {db}.{MIGRATIONS_TABLE}
        (
            version UInt32,
            name String,
            applied_at DateTime64(3, 'UTC')
        )
        ENGINE = ReplacingMergeTree
        ORDER BY version
        """


def schema_ddl(
    database: str, migrations: list[Migration] | None = None, *, cluster: str | None = None
) -> list[str]:
    """Every statement `migrate` runs on an empty database, in order (for review,
    `vigil storage ddl`, and for applying the schema with other tools)."""
    db = quote_database(database)
    out = render_statement("CREATE DATABASE IF NOT EXISTS {db}", db, cluster)
    out += render_statement(_migrations_table_ddl("{db}"), db, cluster, _SHARDED)
    for step in sorted(MIGRATIONS if migrations is None else migrations, key=lambda m: m.version):
        for statement in step.statements:
            out += render_statement(statement, db, cluster, _SHARDED)
    return out


def migrate(
    client: Client,
    database: str,
    migrations: list[Migration] | None = None,
    *,
    cluster: str | None = None,
) -> list[int]:
    """Create `database` and apply the migrations it lacks, in version order.

    Returns the versions applied by this call ([] when already up to date). Running
    it again, or concurrently from two processes, applies nothing twice: statements
    are IF NOT EXISTS and the migrations table is itself deduplicated by version.
    With `cluster`, DDL runs ON CLUSTER with Replicated engines and Distributed tables
    (`pipelines.storage.cluster`); the migrations ledger is then replicated to every
    server, so any of them can be asked what is applied.
    """
    steps = sorted(MIGRATIONS if migrations is None else migrations, key=lambda m: m.version)
    versions = [m.version for m in steps]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions: {versions}")
    db = quote_database(database)
    for stmt in render_statement("CREATE DATABASE IF NOT EXISTS {db}", db, cluster):
        client.command(stmt)
    for stmt in render_statement(_migrations_table_ddl("{db}"), db, cluster, _SHARDED):
        client.command(stmt)
    done = set(applied_versions(client, database))
    applied: list[int] = []
    for step in steps:
        if step.version in done:
            continue
        log.info("applying migration %d (%s) to %s", step.version, step.name, database)
        for statement in step.statements:
            for stmt in render_statement(statement, db, cluster, _SHARDED):
                client.command(stmt)
        client.insert(
            MIGRATIONS_TABLE,
            [[step.version, step.name, dt.datetime.now(dt.UTC)]],
            column_names=["version", "name", "applied_at"],
            database=database,
        )
        applied.append(step.version)
    return applied
