"""Start-up, shutdown and persistence of the embedded server, and the client's retries."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from pipelines.procs import free_port
from pipelines.storage.client import StorageUnavailable, connect, wait_ready
from pipelines.storage.schema import TABLE_COLUMNS, migrate
from tests.storage.conftest import ServerProc

pytestmark = pytest.mark.integration


def test_data_survives_a_restart(make_server: Callable[..., ServerProc], tmp_path: Path) -> None:
    first = make_server(tmp_path / "data")
    assert "ready on" in first.log_text()
    client = connect(first.url, "default", "", None)
    migrate(client, "vigil")
    row = ["0xdead", "0xs", 7, "2024-01-01 00:00:00", 0.5, 0.4, "m", "{}", "2024-01-01 00:00:01"]
    client.insert("scores", [row], column_names=TABLE_COLUMNS["scores"], database="vigil")
    client.close()
    assert first.stop() == 0, first.log_text()  # SIGTERM -> clean exit
    assert "stopped" in first.log_text()

    second = make_server(tmp_path / "data")  # same dir: the engine lock was released
    client = connect(second.url, "default", "", "vigil")
    try:
        assert client.query("SELECT tx_hash, block_number FROM scores").result_rows == [
            ("0xdead", 7)
        ]
        assert migrate(client, "vigil") == []
        row[0], row[2] = "0xbeef", 8
        client.insert("scores", [row], column_names=TABLE_COLUMNS["scores"])
    finally:
        client.close()
    assert second.proc is not None
    second.proc.kill()  # a crash: acknowledged inserts must survive it too

    third = make_server(tmp_path / "data")
    client = connect(third.url, "default", "", "vigil")
    try:
        got = client.query("SELECT tx_hash FROM scores FINAL ORDER BY tx_hash").result_rows
        assert got == [("0xbeef",), ("0xdead",)]
    finally:
        client.close()


def test_connect_names_the_url_when_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match=url):
        connect(url, "default", "", None, retry_for=0.5)
    with pytest.raises(StorageUnavailable, match=url):
        wait_ready(url, timeout=0.5)
    assert time.monotonic() - started < 10


def test_connect_does_not_retry_server_errors(chserver: ServerProc) -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseError) as err:
        connect(chserver.url, "default", "wrong", None, retry_for=30)
    assert not isinstance(err.value, StorageUnavailable)
    assert time.monotonic() - started < 10
    with pytest.raises(ValueError):
        connect("ftp://nowhere", "default", "", None)


def test_wait_ready_and_database_selection(chserver: ServerProc) -> None:
    wait_ready(chserver.url, timeout=5)
    client = connect(chserver.url.removeprefix("http://"), "default", "", "system")
    try:
        assert client.command("SELECT currentDatabase()") == "system"
    finally:
        client.close()
