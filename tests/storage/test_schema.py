"""Migrations and the Vigil tables through clickhouse-connect, as the pipelines use them."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from clickhouse_connect.driver import Client

from pipelines.storage.client import connect
from pipelines.storage.schema import (
    DEFAULTED_COLUMNS,
    MATERIALIZED_VIEWS,
    MIGRATIONS,
    ROLLUP_TABLES,
    TABLE_COLUMNS,
    applied_versions,
    migrate,
)
from tests.storage.conftest import ServerProc

pytestmark = pytest.mark.integration

T0 = dt.datetime(2024, 5, 17, 12, 30, 45, 123000, tzinfo=dt.UTC)
# The same instant in another zone: clickhouse-connect must convert it to UTC.
T0_PLUS2 = T0.astimezone(dt.timezone(dt.timedelta(hours=2)))
BIG = 2**200 + 12345  # UInt256 far beyond 64 bits
MAX256 = 2**256 - 1

ROWS: dict[str, list[list[object]]] = {
    "transactions": [
        [
            "0xa1",
            19_000_000,
            "0xb1",
            T0,
            7,
            "0xs1",
            "0xt1",
            BIG,
            30_000_000_000,
            21000,
            5,
            "0xa9059cbb",
            1,
            1,
            T0_PLUS2,
            3,
            0,
        ],
        [
            "0xa2",
            19_000_001,
            "0xb2",
            T0_PLUS2,
            0,
            "0xs2",
            "",
            MAX256,
            2**64 - 1,
            0,
            0,
            "",
            0,
            0,
            T0,
            1,
            0,
        ],
    ],
    "scores": [
        ["0xa1", "0xs1", 19_000_000, T0, 0.93, 0.8, "iforest-v1", '{"rate": 4.5}', T0_PLUS2],
    ],
    "alerts": [
        [
            "al-1",
            "0xs1",
            "bot",
            "high",
            "iforest",
            0.93,
            0.8,
            "ev1",
            '{"top": ["rate"]}',
            "0xa1",
            T0,
        ],
    ],
    "actions": [["ev1", "throttle", "0xs1", "0xa1", 19_000_000, "sent", T0]],
    "dlq": [["chain.tx.v1", 3, 2**40, "bad json", "{not json", T0_PLUS2]],
}


def _utc(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return value


def test_migrate_is_idempotent(client: Client, db: str) -> None:
    assert migrate(client, db) == [m.version for m in MIGRATIONS]
    assert migrate(client, db) == []
    assert applied_versions(client, db) == [m.version for m in MIGRATIONS]
    tables = {r[0] for r in client.query(f"SHOW TABLES FROM {db}").result_rows}
    assert tables == (
        set(TABLE_COLUMNS) | set(ROLLUP_TABLES) | set(MATERIALIZED_VIEWS) | {"schema_migrations"}
    )
    for table, columns in TABLE_COLUMNS.items():
        described = [r[0] for r in client.query(f"DESCRIBE TABLE {db}.{table}").result_rows]
        assert described == columns + DEFAULTED_COLUMNS.get(table, []), table


def test_migrate_rejects_bad_database_names(client: Client) -> None:
    with pytest.raises(ValueError):
        migrate(client, "x`; DROP DATABASE default")


@pytest.mark.parametrize("compress", [False, True, "gzip", "zstd"])
def test_every_column_type_round_trips(chserver: ServerProc, db: str, compress: bool | str) -> None:
    client = connect(chserver.url, "default", "", None, compress=compress)
    try:
        migrate(client, db)
        for table, rows in ROWS.items():
            client.insert(table, rows, column_names=TABLE_COLUMNS[table], database=db)
            key = TABLE_COLUMNS[table][0]
            cols = ", ".join(TABLE_COLUMNS[table])
            got = client.query(f"SELECT {cols} FROM {db}.{table} FINAL ORDER BY {key}").result_rows
            assert [[_utc(v) for v in row] for row in got] == [
                [_utc(v) for v in row] for row in rows
            ], table
        # Time zone travels with the column type: "schema" mode returns aware UTC datetimes.
        aware = connect(chserver.url, "default", "", db, compress=compress, tz_mode="schema")
        try:
            ts = aware.query(
                "SELECT block_time FROM transactions WHERE tx_hash = '0xa1'"
            ).result_rows[0][0]
            assert ts == T0 and ts.utcoffset() == dt.timedelta(0)
        finally:
            aware.close()
        df = client.query_df(
            f"SELECT tx_hash, value_wei, block_time FROM {db}.transactions ORDER BY tx_hash"
        )
        assert list(df["tx_hash"]) == ["0xa1", "0xa2"] and int(df["value_wei"][1]) == MAX256
        arr = client.query_np(f"SELECT score, threshold FROM {db}.scores")
        assert arr.shape == (1, 2) and float(arr[0][0]) == pytest.approx(0.93)
        assert (
            client.command(
                f"SELECT toString(value_wei) FROM {db}.transactions WHERE tx_hash='0xa1'"
            )
            == BIG
        )
    finally:
        client.close()


def test_replacing_merge_tree_dedupes_under_final(client: Client, db: str) -> None:
    migrate(client, db)
    cols = TABLE_COLUMNS["transactions"]

    def tx(h: str, block: int, version: int, deleted: int = 0) -> list[object]:
        return [
            h,
            block,
            f"0xb{block}",
            T0,
            0,
            "0xs",
            "0xt",
            1,
            1,
            21000,
            0,
            "",
            1,
            0,
            T0,
            version,
            deleted,
        ]

    # Replays and retries: the same tx written several times, in separate inserts (parts).
    for version in (1, 3, 2):
        client.insert(
            "transactions", [tx("0x1", 100 + version, version)], column_names=cols, database=db
        )
    client.insert("transactions", [tx("0x2", 200, 1)], column_names=cols, database=db)
    client.insert(
        "transactions", [tx("0x2", 200, 2, deleted=1)], column_names=cols, database=db
    )  # reorged out
    assert client.command(f"SELECT count() FROM {db}.transactions") == 5
    rows = client.query(
        f"SELECT tx_hash, block_number FROM {db}.transactions FINAL ORDER BY tx_hash"
    ).result_rows
    assert rows == [("0x1", 103)]
    latest = client.query(
        f"SELECT tx_hash, argMax(block_number, version) FROM {db}.transactions"
        " GROUP BY tx_hash ORDER BY tx_hash"
    ).result_rows
    assert latest[0] == ("0x1", 103)
    # Tables without a version column keep the last insert.
    for score in (0.1, 0.7):
        row = ["0x1", "0xs", 100, T0, score, 0.5, "m1", "{}", T0]
        client.insert("scores", [row], column_names=TABLE_COLUMNS["scores"], database=db)
    assert client.query(f"SELECT score FROM {db}.scores FINAL").result_rows == [(0.7,)]


@pytest.mark.parametrize("compress", [False, True])
def test_100k_row_insert_and_read(chserver: ServerProc, db: str, compress: bool) -> None:
    client = connect(chserver.url, "default", "", None, compress=compress)
    migrate(client, db)
    n = 100_000
    cols = TABLE_COLUMNS["transactions"]
    data: list[list[object]] = [
        [f"0x{i:064x}" for i in range(n)],
        list(range(n)),
        [f"0xb{i // 100}" for i in range(n)],
        [T0 + dt.timedelta(seconds=i) for i in range(n)],
        [i % 100 for i in range(n)],
        [f"0xs{i % 1000}" for i in range(n)],
        [f"0xt{i % 10}" for i in range(n)],
        [i * 10**18 for i in range(n)],
        [30_000_000_000] * n,
        [21000] * n,
        [i // 1000 for i in range(n)],
        ["0xa9059cbb"] * n,
        [1] * n,
        [1] * n,
        [T0] * n,
        [1] * n,
        [0] * n,
    ]
    started = time.perf_counter()
    summary = client.insert(
        "transactions", data, column_names=cols, database=db, column_oriented=True
    )
    insert_s = time.perf_counter() - started
    assert summary.written_rows >= n  # plus the rows the per-minute rollup view wrote
    started = time.perf_counter()
    rows = client.query(
        f"SELECT tx_hash, block_number, value_wei, block_time FROM {db}.transactions"
    ).result_rows
    query_s = time.perf_counter() - started
    assert len(rows) == n and max(r[2] for r in rows) == (n - 1) * 10**18
    assert client.command(f"SELECT count(), max(value_wei) FROM {db}.transactions FINAL") == [
        str(n),
        str((n - 1) * 10**18),
    ]
    client.close()
    print(f"100k rows (compress={compress}): insert {insert_s:.3f}s, read back {query_s:.3f}s")
    assert insert_s < 10 and query_s < 10  # generous: shared CPUs; see the report for speeds


def test_millisecond_ticks_store_the_same_instant_as_datetimes(client: Client, db: str) -> None:
    """`rows.ms` (what the per-tx tables are written with) and `rows.ts` (every other
    table) must land on the same DateTime64(3) value, boundaries and rounding included."""
    from pipelines.storage.rows import ms, ts

    times = [0.0, 1.0005, 1_700_000_000.0, 1_700_000_000.0004999, 1_700_000_000.0009999]
    times += [1_700_000_000.1234565, 1_716_000_000.999, 1_716_000_000.9995, 2**33 + 0.25]
    client.command(f"CREATE TABLE {db}.ticks (i UInt32, t DateTime64(3, 'UTC')) ENGINE = Memory")
    client.insert("ticks", [[i, ts(t)] for i, t in enumerate(times)], database=db)
    client.insert("ticks", [[100 + i, ms(t)] for i, t in enumerate(times)], database=db)
    got = client.query(f"SELECT i, toUnixTimestamp64Milli(t) FROM {db}.ticks ORDER BY i")
    by_i = dict(got.result_rows)
    assert [by_i[100 + i] for i in range(len(times))] == [by_i[i] for i in range(len(times))]
    assert [by_i[100 + i] for i in range(len(times))] == [ms(t) for t in times]
