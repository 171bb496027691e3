"""The batched writer against the real embedded ClickHouse, including outages.

The outage test is the one that matters: the server process is stopped (SIGTERM) and
later crashed (SIGKILL) while rows keep coming; the writer spools, replays when the
server is back on the same data dir and port, and every row arrives exactly once --
in the table and in the per-minute rollup its materialized view feeds.
"""

from __future__ import annotations

import datetime as dt
import decimal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver import Client
from clickhouse_connect.driver.exceptions import OperationalError

from pipelines.procs import free_port
from pipelines.storage.client import connect
from pipelines.storage.schema import TABLE_COLUMNS, migrate
from pipelines.storage.writer import (
    BatchedWriter,
    SpoolFull,
    WriterClosed,
    _Batch,
    _decode_object,
    _serialize,
    is_retryable,
)
from tests.storage.conftest import ServerProc

pytestmark = pytest.mark.integration

# Recent: telemetry has a 30-day TTL, older rows would expire on arrival.
T0 = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)
COLS = TABLE_COLUMNS["telemetry"]


def telemetry_rows(start: int, n: int) -> list[list[Any]]:
    """n telemetry rows with unique (node, kind, ts) keys: row i is at T0 + i ms."""
    return [
        [
            f"node-{i % 7}",
            "batch",
            T0 + dt.timedelta(milliseconds=i),
            10.0 + i % 50,
            8,
            100 + i % 13,
            i % 5,
            0,
            "cuda",
            0.5,
            1024.0,
        ]
        for i in range(start, start + n)
    ]


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Target:
    """A client factory whose URL the test can point at a dead port and back."""

    def __init__(self, url: str, database: str) -> None:
        self.url = url
        self.database = database
        self.calls = 0

    def __call__(self) -> Client:
        self.calls += 1
        return connect(
            self.url,
            database=self.database,
            retry_for=0,
            connect_timeout=1,
            send_receive_timeout=15,
        )


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def counts(client: Client, db: str) -> tuple[int, int, int]:
    """(rows, distinct keys, events counted by the rollup view)."""
    rows, keys = client.query(
        f"SELECT count(), uniqExact(node_id, kind, ts) FROM `{db}`.telemetry"
    ).result_rows[0]
    events = client.query(f"SELECT sum(events) FROM `{db}`.telemetry_1m").result_rows[0][0]
    return int(rows), int(keys), int(events or 0)


@pytest.fixture
def migrated(client: Client, db: str) -> str:
    migrate(client, db)
    return db


def test_spool_encoding_keeps_every_python_type() -> None:
    naive = dt.datetime(2024, 1, 2, 3, 4, 5, 678000)
    row = [
        T0,
        naive,
        dt.date(2024, 1, 2),
        b"\x00\xffraw",
        decimal.Decimal("1.25"),
        uuid.UUID(int=7),
        ("a", 1),
        {"latency": 1.5, "n": 2},
        {1: "int key"},
        [[1, 2], [3]],
        2**200 + 1,
        None,
        True,
        "text with \"quotes\" and {'$t': 'dt'}",
    ]
    import json

    doc = json.loads(
        _serialize(_Batch(3, "tok", [row]), {"table": "t"}), object_hook=_decode_object
    )
    assert doc["rows"] == [row]
    assert doc["rows"][0][0].tzinfo is not None and doc["rows"][0][1].tzinfo is None
    assert (doc["seq"], doc["token"]) == (3, "tok")


def test_retryable_errors_are_told_apart_from_bad_batches() -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError

    assert is_retryable(OperationalError("connection refused"))
    assert is_retryable(
        DatabaseError("Received ClickHouse exception, code: 242, TABLE_IS_READ_ONLY")
    )
    assert not is_retryable(DatabaseError("Received ClickHouse exception, code: 53, TYPE_MISMATCH"))
    assert not is_retryable(DataError("bad value"))


def test_batches_by_size_and_by_time(chserver: ServerProc, migrated: str, tmp_path: Path) -> None:
    target = Target(chserver.url, migrated)
    writer = BatchedWriter(
        target, "telemetry", COLS, max_rows=100, max_delay_s=0.3, spool_dir=tmp_path
    )
    try:
        writer.add(telemetry_rows(0, 250))
        # Two full batches went out in the caller's thread; 50 rows wait for the clock.
        assert writer.stats.batches_written == 2 and writer.pending_rows == 50
        started = time.monotonic()
        wait_for(lambda: writer.stats.batches_written == 3, 5, "the time-bound flush")
        assert time.monotonic() - started < 2
        assert writer.spooled_batches == 0 and writer.stats.batches_spooled == 0
    finally:
        writer.close()
    with pytest.raises(WriterClosed):
        writer.add(telemetry_rows(250, 1))
    reader = connect(chserver.url, database=migrated)
    try:
        assert counts(reader, migrated) == (250, 250, 250)
    finally:
        reader.close()


def test_spool_is_bounded_refuses_loudly_and_replays_in_a_later_run(
    chserver: ServerProc, migrated: str, tmp_path: Path
) -> None:
    target = Target(dead_url(), migrated)
    writer = BatchedWriter(
        target,
        "telemetry",
        COLS,
        max_rows=50,
        max_delay_s=0.1,
        spool_dir=tmp_path,
        max_spool_bytes=40_000,
        retry_initial_s=0.05,
        retry_max_s=0.2,
    )
    accepted = 0
    with pytest.raises(SpoolFull, match="refusing 50 rows"):
        for start in range(0, 100_000, 50):
            writer.add(telemetry_rows(start, 50))
            accepted += 50
    refused_at = accepted
    # Bounded: the spool stays under its limit, memory holds at most one batch.
    assert 0 < writer.stats.spool_bytes <= 40_000
    assert writer.pending_rows <= 50
    assert writer.stats.rows_refused == 50 and writer.stats.rows_added == accepted
    assert "unreachable" in writer.stats.last_error
    with pytest.raises(SpoolFull):  # still full: refused again, nothing accepted
        writer.add(telemetry_rows(refused_at, 1))

    # ClickHouse is back: everything accepted arrives, in order, exactly once.
    target.url = chserver.url
    assert writer.flush(timeout=20)
    assert writer.stats.batches_replayed > 0 and writer.spooled_batches == 0
    writer.add(telemetry_rows(refused_at, 50))
    accepted += 50
    writer.close()
    reader = connect(chserver.url, database=migrated)
    try:
        assert counts(reader, migrated) == (accepted, accepted, accepted)

        # A writer closed while ClickHouse is down leaves its batches spooled; the next
        # writer on the same directory replays them before anything else.
        target.url = dead_url()
        first = BatchedWriter(
            target, "telemetry", COLS, max_rows=40, max_delay_s=0.05, spool_dir=tmp_path
        )
        first.add(telemetry_rows(accepted, 100))
        first.close(timeout=0.3)
        assert first.spooled_batches == 3  # 40 + 40 + 20, all on disk
        target.url = chserver.url
        second = BatchedWriter(
            target, "telemetry", COLS, max_rows=40, max_delay_s=0.05, spool_dir=tmp_path
        )
        assert second.flush(timeout=20)
        second.close()
        assert second.stats.batches_replayed == 3
        total = accepted + 100
        assert counts(reader, migrated) == (total, total, total)
    finally:
        reader.close()


class LostReply:
    """A client whose first `fail` inserts reach the server and commit, but whose
    reply is lost: exactly the case a retry would duplicate without the dedup token."""

    def __init__(self, client: Client, fail: int) -> None:
        self._client = client
        self.fail = fail

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        summary = self._client.insert(*args, **kwargs)
        if self.fail > 0:
            self.fail -= 1
            raise OperationalError("connection reset by peer (reply lost after commit)")
        return summary


def test_a_committed_insert_whose_reply_was_lost_is_not_duplicated(
    chserver: ServerProc, migrated: str, tmp_path: Path
) -> None:
    target = Target(chserver.url, migrated)
    clients: list[LostReply] = []

    def factory() -> Client:
        clients.append(LostReply(target(), fail=1 if not clients else 0))
        return clients[-1]  # type: ignore[return-value]

    writer = BatchedWriter(
        factory,
        "telemetry",
        COLS,
        max_rows=100,
        max_delay_s=0.05,
        spool_dir=tmp_path,
        retry_initial_s=0.01,
    )
    writer.add(telemetry_rows(0, 300))
    assert writer.flush(timeout=20)
    writer.close()
    assert writer.stats.insert_failures == 1 and writer.stats.batches_replayed >= 1
    reader = connect(chserver.url, database=migrated)
    try:
        assert counts(reader, migrated) == (300, 300, 300)
    finally:
        reader.close()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Callable[[], ServerProc]]:
    """Servers on one data dir and one port (restarts look like the same server)."""
    port = free_port()
    started: list[ServerProc] = []

    def start() -> ServerProc:
        server = ServerProc(tmp_path / "data", tmp_path / f"server{len(started)}.log", port=port)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        if server.proc is not None and server.proc.alive():
            server.stop()


def test_clickhouse_stopped_mid_run_every_row_arrives_exactly_once(
    own_server: Callable[[], ServerProc], tmp_path: Path
) -> None:
    server = own_server()
    admin = connect(server.url)
    migrate(admin, "vigil")
    admin.close()
    target = Target(server.url, "vigil")
    writer = BatchedWriter(
        target,
        "telemetry",
        COLS,
        database="vigil",
        max_rows=200,
        max_delay_s=0.1,
        spool_dir=tmp_path / "spool",
        retry_initial_s=0.05,
        retry_max_s=0.3,
    )
    total = 30_000
    stop = threading.Event()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for start in range(0, total, 100):
                writer.add(telemetry_rows(start, 100))
                if stop.wait(0.01):  # about 10k rows/s, so outages fall mid-run
                    return
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_for(lambda: writer.stats.rows_written >= 3_000, 30, "first rows written")
        assert server.stop() == 0  # SIGTERM: a clean stop mid-run
        wait_for(lambda: writer.spooled_batches >= 3, 30, "batches spooled while down")
        server = own_server()  # same data dir, same port
        wait_for(lambda: writer.stats.rows_written >= 15_000, 60, "replay after restart")
        assert server.proc is not None
        server.proc.kill()  # SIGKILL: a crash, possibly between commit and reply
        server.proc.proc.wait(10)  # type: ignore[union-attr]
        wait_for(lambda: writer.spooled_batches >= 3, 30, "batches spooled after the crash")
        server = own_server()
        producer.join(120)
        assert not producer.is_alive() and not errors, errors
        assert writer.flush(timeout=60), writer.stats
    finally:
        stop.set()
        producer.join(10)
        writer.close()
    stats = writer.stats
    assert stats.rows_added == total
    assert stats.batches_spooled >= 6 and stats.batches_replayed >= 6, stats
    assert stats.insert_failures >= 2 and stats.batches_rejected == 0, stats
    reader = connect(server.url, database="vigil")
    try:
        assert counts(reader, "vigil") == (total, total, total)
    finally:
        reader.close()
