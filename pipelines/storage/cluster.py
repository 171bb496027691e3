"""DDL for one ClickHouse server or a sharded, replicated cluster, from the same migrations.

Why a text transform instead of two schemas: migrations are written once, for a single
server (what the embedded chdb runs), and applied on existing installs; a second,
hand-kept cluster schema would drift. In cluster mode every statement is rewritten:

* `CREATE TABLE t (...) ENGINE = XMergeTree(args)` becomes a local table
  `t_local ON CLUSTER c ... ENGINE = ReplicatedXMergeTree('/clickhouse/tables/{shard}/
  {database}/{table}', '{replica}', args)` plus `t ON CLUSTER c AS t_local ENGINE =
  Distributed(c, db, t_local, <sharding key>)`. Readers and writers keep using `t`.
* A materialized view reads the *local* source and writes the *local* rollup, so each
  shard aggregates its own rows; dashboards read the Distributed rollup and the -Merge
  combinators combine the shards' states.
* `ALTER TABLE` runs `ON CLUSTER` against the local table, and also against the
  Distributed one when it changes columns.
* `INSERT ... SELECT` (backfills) is left alone: it names Distributed tables, so it
  reads every shard and writes through the sharding key.

The sharding key of each table hashes a column that is the same for every version of a
row (so ReplacingMergeTree versions of one key meet on one shard), and keeps an
entity's rows together (per-sender windows, per-node telemetry).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

log = logging.getLogger(__name__)

LOCAL_SUFFIX = "_local"
ZK_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
REPLICA = "{replica}"
# Not sharded: one copy on every replica of every shard (the migrations ledger).
ZK_PATH_UNSHARDED = "/clickhouse/tables/all/{database}/{table}"

# table -> sharding key expression of its Distributed table
SHARDING_KEYS: dict[str, str] = {
    "transactions": "cityHash64(sender)",
    "scores": "cityHash64(sender)",
    "alerts": "cityHash64(entity)",
    "actions": "cityHash64(target)",
    "dlq": "cityHash64(topic, partition)",
    "evidence": "cityHash64(entity)",
    "telemetry": "cityHash64(node_id)",
    "features": "cityHash64(entity)",
    "incidents": "cityHash64(entity)",
    "reputation": "cityHash64(node_id)",
    "pipeline_health": "cityHash64(component)",
    "challenges": "cityHash64(node_id)",
    "sim_labels": "cityHash64(entity)",
    "contests": "cityHash64(node_id)",
    "webhook_dlq": "cityHash64(alert_id)",
    # Rollups are filled per shard by their views; the key only routes backfills.
    "alerts_1m": "cityHash64(category)",
    "tx_1m": "chain_id",
    "telemetry_1m": "cityHash64(node_id)",
    "pipeline_health_1m": "cityHash64(component)",
}
DEFAULT_SHARDING_KEY = "rand()"

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_IDENT_RE = re.compile(_IDENT)
_CREATE_TABLE_RE = re.compile(
    rf"^\s*CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?(?P<db>`?{_IDENT}`?)\.(?P<name>{_IDENT})\s*\(",
    re.I | re.S,
)
_CREATE_MV_RE = re.compile(
    rf"^\s*CREATE\s+MATERIALIZED\s+VIEW\s+(IF\s+NOT\s+EXISTS\s+)?"
    rf"(?P<db>`?{_IDENT}`?)\.(?P<name>{_IDENT})\s+TO\s+",
    re.I | re.S,
)
_ALTER_RE = re.compile(
    rf"^\s*ALTER\s+TABLE\s+(?P<db>`?{_IDENT}`?)\.(?P<name>{_IDENT})\s+", re.I | re.S
)
_ENGINE_RE = re.compile(rf"\)\s*ENGINE\s*=\s*(?P<engine>{_IDENT})", re.I | re.S)
_COLUMN_CHANGE_RE = re.compile(r"\b(ADD|DROP|MODIFY|RENAME|COMMENT)\s+COLUMN\b", re.I)
_CREATE_DB_RE = re.compile(r"^\s*CREATE\s+DATABASE\s+(IF\s+NOT\s+EXISTS\s+)?(?P<db>\S+)", re.I)


class DdlError(ValueError):
    """A statement this module cannot rewrite for cluster mode."""


@dataclass(frozen=True)
class ClusterSpec:
    """Where and how to place tables: `name` is a cluster of the servers' config."""

    name: str

    def __post_init__(self) -> None:
        if not _IDENT_RE.fullmatch(self.name):
            raise ValueError(f"invalid cluster name {self.name!r}")

    @property
    def on_cluster(self) -> str:
        return f"ON CLUSTER `{self.name}`"


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _balanced(text: str, open_at: int) -> int:
    """Index just past the parenthesis group opening at `open_at` (quotes respected)."""
    depth = 0
    i = open_at
    quote: str | None = None
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise DdlError(f"unbalanced parentheses in: {text[open_at : open_at + 80]!r}")


def _unquote(db: str) -> str:
    return db.strip("`")


def _local(db: str, name: str) -> str:
    return f"{db}.{name}{LOCAL_SUFFIX}"


def _create_table(stmt: str, spec: ClusterSpec, sharded_tables: set[str]) -> list[str]:
    m = _CREATE_TABLE_RE.match(stmt)
    assert m is not None
    db, name = m.group("db"), m.group("name")
    columns_end = _balanced(stmt, m.end() - 1)
    em = _ENGINE_RE.match(stmt, columns_end - 1)
    if em is None:
        raise DdlError(f"no ENGINE after the columns of {db}.{name}")
    engine = em.group("engine")
    if not engine.endswith("MergeTree") or engine.startswith("Replicated"):
        raise DdlError(f"{db}.{name}: cannot replicate engine {engine}")
    pos = em.end()
    args = ""
    if pos < len(stmt) and stmt[pos] == "(":
        end = _balanced(stmt, pos)
        args = stmt[pos + 1 : end - 1].strip()
        pos = end
    rest = stmt[pos:]
    sharded = name in sharded_tables
    zk = ZK_PATH if sharded else ZK_PATH_UNSHARDED
    rep_args = ", ".join(a for a in (_quote(zk), _quote(REPLICA), args) if a)
    head = stmt[: m.start("name")] + (name + LOCAL_SUFFIX if sharded else name)
    body = stmt[m.end("name") : columns_end]
    local = (
        f"{head} {spec.on_cluster}{body}\nENGINE = Replicated{engine}({rep_args}){rest}"
    ).strip()
    if not sharded:
        return [local]
    key = SHARDING_KEYS.get(name, DEFAULT_SHARDING_KEY)
    distributed = (
        f"CREATE TABLE IF NOT EXISTS {db}.{name} {spec.on_cluster}\n"
        f"AS {_local(db, name)}\n"
        f"ENGINE = Distributed({_quote(spec.name)}, {_quote(_unquote(db))}, "
        f"{_quote(name + LOCAL_SUFFIX)}, {key})"
    )
    return [local, distributed]


def _create_view(stmt: str, spec: ClusterSpec, sharded_tables: set[str]) -> list[str]:
    m = _CREATE_MV_RE.match(stmt)
    assert m is not None
    db = m.group("db")
    body = stmt[m.end("name") :]
    # Point TO and FROM at the shard-local tables.
    for table in sorted(sharded_tables, key=len, reverse=True):
        body = re.sub(
            rf"(?<![A-Za-z0-9_]){re.escape(db)}\.{table}(?![A-Za-z0-9_])",
            _local(db, table),
            body,
        )
    return [(stmt[: m.end("name")] + f" {spec.on_cluster}" + body).strip()]


def _alter(stmt: str, spec: ClusterSpec, sharded_tables: set[str]) -> list[str]:
    m = _ALTER_RE.match(stmt)
    assert m is not None
    db, name = m.group("db"), m.group("name")
    tail = stmt[m.end() :].strip()
    if name not in sharded_tables:
        return [f"ALTER TABLE {db}.{name} {spec.on_cluster} {tail}"]
    out = [f"ALTER TABLE {_local(db, name)} {spec.on_cluster} {tail}"]
    if _COLUMN_CHANGE_RE.search(tail):
        out.append(f"ALTER TABLE {db}.{name} {spec.on_cluster} {tail}")
    return out


def render_statement(
    statement: str,
    database_sql: str,
    cluster: str | None = None,
    sharded_tables: set[str] | None = None,
) -> list[str]:
    """One migration statement (with `{db}`) as the statements to run.

    `database_sql` is the quoted database name. Single-server mode returns the statement
    unchanged (only `{db}` substituted), which is what runs on chdb; cluster mode returns
    one or two rewritten statements (see the module docstring).
    """
    stmt = "\n".join(line.rstrip() for line in statement.strip().splitlines())
    stmt = _dedent(stmt).replace("{db}", database_sql)
    if cluster is None:
        return [stmt]
    spec = ClusterSpec(cluster)
    tables = set(SHARDING_KEYS) if sharded_tables is None else sharded_tables
    if _CREATE_TABLE_RE.match(stmt):
        return _create_table(stmt, spec, tables)
    if _CREATE_MV_RE.match(stmt):
        return _create_view(stmt, spec, tables)
    if _ALTER_RE.match(stmt):
        return _alter(stmt, spec, tables)
    if re.match(r"^\s*INSERT\s+INTO\s", stmt, re.I):
        return [stmt]
    if (m := _CREATE_DB_RE.match(stmt)) is not None:
        return [f"{stmt[: m.end()]} {spec.on_cluster}{stmt[m.end() :]}"]
    raise DdlError(f"no cluster form for statement: {stmt[:80]!r}")


def _dedent(text: str) -> str:
    lines = text.splitlines()
    indents = [len(x) - len(x.lstrip()) for x in lines[1:] if x.strip()]
    cut = min(indents, default=0)
    return "\n".join([lines[0], *(x[cut:] for x in lines[1:])]) if lines else text


# --------------------------------------------------------------------- read-only role


def readonly_user_statements(
    database: str,
    user: str,
    password: str,
    *,
    role: str = "vigil_dashboards",
    cluster: str | None = None,
    max_execution_time_s: int = 60,
) -> list[str]:
    """SQL for a real ClickHouse server: a role that may only SELECT from `database`,
    and a `readonly = 1` user holding it, for Grafana and `vigil report`.

    Why `max_execution_time ... CHANGEABLE_IN_READONLY`: Grafana's ClickHouse plugin
    sets it on every query, which a plain readonly user is refused. The password is
    sent as its SHA-256 only, so it never appears in server logs or query history.
    Statements for the embedded chdb server: none; it has one user and enforces
    read-only per request (`readonly=1` or GET), see `pipelines.storage.chserver`.
    """
    for ident in (database, user, role):
        if not _IDENT_RE.fullmatch(ident):
            raise ValueError(f"invalid identifier {ident!r}")
    on = f" {ClusterSpec(cluster).on_cluster}" if cluster else ""
    if not password:
        raise ValueError("the dashboards user needs a password")
    digest = hashlib.sha256(password.encode()).hexdigest()
    auth = f"IDENTIFIED WITH sha256_hash BY {_quote(digest)}"
    return [
        f"CREATE ROLE IF NOT EXISTS `{role}`{on}",
        f"GRANT{on} SELECT ON `{database}`.* TO `{role}`",
        f"CREATE USER IF NOT EXISTS `{user}`{on} {auth} DEFAULT ROLE `{role}` "
        f"SETTINGS readonly = 1, "
        f"max_execution_time = {max_execution_time_s} CHANGEABLE_IN_READONLY",
        f"GRANT{on} `{role}` TO `{user}`",
    ]


# --------------------------------------------------------------------------------- CLI

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="ClickHouse schema as SQL: single server or ON CLUSTER, and the dashboards' user.",
)


@app.command("ddl")
def ddl_command(
    database: Annotated[str, typer.Option(help="Database name.")] = "vigil",
    cluster: Annotated[
        str | None, typer.Option(help="Cluster name from the servers' remote_servers.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> None:
    """Print every migration's DDL, as `migrate` would apply it."""
    from pipelines.storage.schema import schema_ddl

    text = ";\n\n".join(schema_ddl(database, cluster=cluster)) + ";\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)


@app.command("readonly-user")
def readonly_user_command(
    password: Annotated[
        str,
        typer.Option(
            envvar="VIGIL_GRAFANA_CLICKHOUSE_PASSWORD",
            prompt=True,
            hide_input=True,
            help="Its password.",
        ),
    ],
    database: Annotated[str, typer.Option(help="Database the role may read.")] = "vigil",
    user: Annotated[str, typer.Option(help="User to create.")] = "grafana",
    role: Annotated[str, typer.Option(help="Role holding SELECT.")] = "vigil_dashboards",
    cluster: Annotated[str | None, typer.Option(help="Run ON CLUSTER this cluster.")] = None,
) -> None:
    """Print the SQL creating the dashboards' read-only role and user."""
    for stmt in readonly_user_statements(database, user, password, role=role, cluster=cluster):
        typer.echo(stmt + ";")
