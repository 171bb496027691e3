"""One embedded ClickHouse server loaded with a simulator run, shared by these tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from clickhouse_connect.driver import Client

from pipelines.storage.client import connect
from tests.dashboards.simdata import SimRun, load_simulation
from tests.storage.conftest import ServerProc

DATABASE = "vigil_sim"


@dataclass
class SimStore:
    url: str
    database: str
    run: SimRun
    client: Client


@pytest.fixture(scope="session")
def sim_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimStore]:
    base = tmp_path_factory.mktemp("dash-chserver")
    server = ServerProc(base / "data", base / "server.log").start()
    client = connect(server.url, database=None)
    try:
        # An hour ago, so "the last 24 h" (vigil report's default) holds the whole run.
        start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
        run = load_simulation(client, DATABASE, start)
        reader = connect(server.url, database=DATABASE)
        try:
            yield SimStore(server.url, DATABASE, run, reader)
        finally:
            reader.close()
    finally:
        client.close()
        server.stop()
