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
original row's time.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field

from clickhouse_connect.driver import Client

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
}

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

MIGRATIONS: list[Migration] = [
    Migration(1, "transactions, scores, alerts, actions, dlq", _V1),
    Migration(2, "evidence", _V2),
]

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


def migrate(client: Client, database: str, migrations: list[Migration] | None = None) -> list[int]:
    """Create `database` and apply the migrations it lacks, in version order.

    Returns the versions applied by this call ([] when already up to date). Running
    it again, or concurrently from two processes, applies nothing twice: statements
    are IF NOT EXISTS and the migrations table is itself deduplicated by version.
    """
    steps = sorted(MIGRATIONS if migrations is None else migrations, key=lambda m: m.version)
    versions = [m.version for m in steps]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions: {versions}")
    db = quote_database(database)
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    client.command(
        f"""
        CREATE TABLE IF NOT EXISTS {db}.{MIGRATIONS_TABLE}
        (
            version UInt32,
            name String,
            applied_at DateTime64(3, 'UTC')
        )
        ENGINE = ReplacingMergeTree
        ORDER BY version
        """
    )
    done = set(applied_versions(client, database))
    applied: list[int] = []
    for step in steps:
        if step.version in done:
            continue
        log.info("applying migration %d (%s) to %s", step.version, step.name, database)
        for statement in step.statements:
            client.command(statement.format(db=db))
        client.insert(
            MIGRATIONS_TABLE,
            [[step.version, step.name, dt.datetime.now(dt.UTC)]],
            column_names=["version", "name", "applied_at"],
            database=database,
        )
        applied.append(step.version)
    return applied
