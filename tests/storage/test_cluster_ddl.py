"""Schema DDL for one server and for an ON CLUSTER deployment.

Single-server DDL is what chdb runs (checked by migrating a real database, including
the upgrade of an install that has migrations 1-2 only). Cluster DDL cannot run
without ZooKeeper/Keeper, so its text is checked here and every statement is parsed
by the real ClickHouse parser (`formatQuery`).
"""

from __future__ import annotations

import re

import pytest
from clickhouse_connect.driver import Client
from typer.testing import CliRunner

from pipelines.storage.cluster import (
    SHARDING_KEYS,
    DdlError,
    app,
    readonly_user_statements,
    render_statement,
)
from pipelines.storage.schema import (
    DEFAULTED_COLUMNS,
    MATERIALIZED_VIEWS,
    MIGRATIONS,
    ROLLUP_TABLES,
    TABLE_COLUMNS,
    migrate,
    schema_ddl,
)

CLUSTER = "vigil_cluster"
ZK = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"


def _tables_created(ddl: list[str]) -> list[str]:
    return [
        m.group(1) for s in ddl if (m := re.match(r"CREATE TABLE IF NOT EXISTS `vigil`\.(\w+)", s))
    ]


def test_every_table_has_a_sharding_key() -> None:
    assert set(SHARDING_KEYS) == set(TABLE_COLUMNS) | set(ROLLUP_TABLES)


def test_single_server_ddl_is_the_migrations_verbatim() -> None:
    ddl = schema_ddl("vigil")
    text = "\n".join(ddl)
    assert "ON CLUSTER" not in text and "Replicated" not in text and "Distributed" not in text
    statements = [s for m in MIGRATIONS for s in m.statements]
    assert len(ddl) == 2 + len(statements)  # + database + migrations ledger
    assert ddl[0] == "CREATE DATABASE IF NOT EXISTS `vigil`"
    for rendered, source in zip(ddl[2:], statements, strict=True):
        squash = re.sub(r"\s+", " ", source.replace("{db}", "`vigil`")).strip()
        assert re.sub(r"\s+", " ", rendered).strip() == squash
    assert set(_tables_created(ddl)) == set(TABLE_COLUMNS) | set(ROLLUP_TABLES) | {
        "schema_migrations"
    }


def test_cluster_ddl_uses_replicated_local_tables_behind_distributed_ones() -> None:
    ddl = schema_ddl("vigil", cluster=CLUSTER)
    assert ddl[0] == f"CREATE DATABASE IF NOT EXISTS `vigil` ON CLUSTER `{CLUSTER}`"
    for stmt in ddl:
        if not stmt.startswith("INSERT"):  # backfills write through Distributed tables
            assert f"ON CLUSTER `{CLUSTER}`" in stmt, stmt
    created = _tables_created(ddl)
    for table in [*TABLE_COLUMNS, *ROLLUP_TABLES]:
        assert f"{table}_local" in created and table in created, table
        local = next(
            s for s in ddl if s.startswith(f"CREATE TABLE IF NOT EXISTS `vigil`.{table}_local ")
        )
        assert re.search(rf"ENGINE = Replicated\w*MergeTree\({re.escape(ZK)}", local), local
        assert "PARTITION BY toYYYYMMDD(" in local
        dist = next(s for s in ddl if s.startswith(f"CREATE TABLE IF NOT EXISTS `vigil`.{table} "))
        assert dist.endswith(
            f"ENGINE = Distributed('{CLUSTER}', 'vigil', '{table}_local', {SHARDING_KEYS[table]})"
        ), dist
        assert f"AS `vigil`.{table}_local" in dist
    # Engine parameters survive: version and is_deleted columns, the incidents' version.
    tx = next(s for s in ddl if "`vigil`.transactions_local ON" in s and "CREATE" in s)
    assert f"ReplicatedReplacingMergeTree({ZK}, version, is_deleted)" in tx
    inc = next(s for s in ddl if "`vigil`.incidents_local ON" in s and "CREATE" in s)
    assert f"ReplicatedReplacingMergeTree({ZK}, updated_at)" in inc
    assert "TTL toDateTime(ts) + INTERVAL 30 DAY" in next(
        s for s in ddl if "`vigil`.telemetry_local ON" in s and "CREATE" in s
    )
    # The ledger is replicated to every server, not sharded.
    ledger = next(s for s in ddl if "schema_migrations" in s)
    assert "'/clickhouse/tables/all/{database}/{table}'" in ledger and "Distributed" not in ledger
    # Each shard's view aggregates its own rows into its own rollup.
    for view, rollup in MATERIALIZED_VIEWS.items():
        mv = next(s for s in ddl if f"MATERIALIZED VIEW IF NOT EXISTS `vigil`.{view} " in s)
        assert f"TO `vigil`.{rollup}_local" in mv
        assert f"FROM `vigil`.{ROLLUP_TABLES[rollup]}_local" in mv
    # New columns go to both tables; engine settings only to the local one.
    adds = [s for s in ddl if "ADD COLUMN IF NOT EXISTS chain_id" in s]
    assert len(adds) == 2 * len(DEFAULTED_COLUMNS)
    settings = [s for s in ddl if "MODIFY SETTING" in s]
    assert settings and all("_local ON CLUSTER" in s for s in settings)


def test_cluster_ddl_is_valid_clickhouse_sql(client: Client) -> None:
    statements = schema_ddl("vigil", cluster=CLUSTER)
    statements += readonly_user_statements("vigil", "grafana", "pw", cluster=CLUSTER)
    statements += readonly_user_statements("vigil", "grafana", "pw")
    for stmt in statements:
        formatted = client.query("SELECT formatQuery({q:String})", parameters={"q": stmt})
        assert formatted.result_rows[0][0], stmt


def test_statements_without_a_cluster_form_are_refused() -> None:
    with pytest.raises(DdlError):
        render_statement("DROP TABLE {db}.x", "`vigil`", CLUSTER)
    with pytest.raises(ValueError):
        render_statement("CREATE DATABASE {db}", "`vigil`", "bad name")


def test_readonly_user_sql() -> None:
    stmts = readonly_user_statements("vigil", "grafana", "s3cret")
    text = "\n".join(stmts)
    assert "GRANT SELECT ON `vigil`.* TO `vigil_dashboards`" in text
    assert "readonly = 1" in text and "max_execution_time = 60 CHANGEABLE_IN_READONLY" in text
    assert "s3cret" not in text and "sha256_hash" in text
    assert "ON CLUSTER" not in text
    clustered = readonly_user_statements("vigil", "grafana", "pw", cluster=CLUSTER)
    assert all(f"ON CLUSTER `{CLUSTER}`" in s for s in clustered)
    with pytest.raises(ValueError):
        readonly_user_statements("vigil", "bad user", "pw")
    with pytest.raises(ValueError, match="password"):
        readonly_user_statements("vigil", "grafana", "")


def test_single_server_ddl_runs_on_the_embedded_engine(client: Client, db: str) -> None:
    assert migrate(client, db) == [m.version for m in MIGRATIONS]
    engines: dict[str, str] = dict(
        client.query(
            "SELECT name, engine FROM system.tables WHERE database = {d:String}",
            parameters={"d": db},
        ).result_rows  # type: ignore[arg-type]
    )
    for rollup in ROLLUP_TABLES:
        assert engines[rollup] == "AggregatingMergeTree"
    for view in MATERIALIZED_VIEWS:
        assert engines[view] == "MaterializedView"
    assert engines["incidents"] == "ReplacingMergeTree"


def test_upgrade_from_migrations_1_and_2_backfills_the_rollups(client: Client, db: str) -> None:
    assert migrate(client, db, MIGRATIONS[:2]) == [1, 2]
    client.command(
        f"INSERT INTO `{db}`.alerts (alert_id, entity, category, severity, detector, score, "
        "threshold, evidence_hash, explanation, tx_hash, created_at) VALUES "
        "('a1', 'e1', 'bot', 'high', 'd', 1, 0.5, 'h1', '', '', now64(3)), "
        "('a2', 'e2', 'bot', 'low', 'd', 1, 0.5, 'h2', '', '', now64(3))"
    )
    assert migrate(client, db) == [3, 4]
    total = client.query(f"SELECT uniqExactMerge(alerts) FROM `{db}`.alerts_1m").result_rows
    assert total == [(2,)]
    described = [r[0] for r in client.query(f"DESCRIBE TABLE `{db}`.alerts").result_rows]
    assert described[-1] == "chain_id"


def test_embedded_server_enforces_readonly_per_request(client: Client, db: str) -> None:
    """What the dashboards' `readonly=1` setting does on the embedded server."""
    migrate(client, db)
    assert client.query(f"SELECT count() FROM `{db}`.alerts", settings={"readonly": 1})
    with pytest.raises(Exception, match="READONLY|readonly"):
        client.command(f"DROP TABLE `{db}`.alerts", settings={"readonly": 1})
    assert client.command(f"EXISTS TABLE `{db}`.alerts") == 1


def test_storage_ddl_command() -> None:
    result = CliRunner().invoke(app, ["ddl", "--cluster", CLUSTER])
    assert result.exit_code == 0, result.output
    assert result.output.count(";\n") == len(schema_ddl("vigil", cluster=CLUSTER))
    result = CliRunner().invoke(app, ["readonly-user", "--password", "pw"])
    assert result.exit_code == 0 and "CREATE USER IF NOT EXISTS `grafana`" in result.output
