"""Fixtures for the storage tests: the embedded ClickHouse server as a real subprocess."""

from __future__ import annotations

import http.client
import itertools
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from clickhouse_connect.driver import Client

from pipelines.procs import ManagedProcess, free_port
from pipelines.stack import chserver_argv
from pipelines.storage.client import connect, ping

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServerProc:
    """One `python -m pipelines.storage.chserver` child on a data dir."""

    data_dir: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProc:
        argv = chserver_argv(self.data_dir, self.port)
        self.proc = ManagedProcess("chserver", argv, log_path=self.log_path, cwd=REPO_ROOT)
        self.proc.start()
        self.proc.wait_healthy(lambda: ping(self.url, timeout=0.5), timeout=60)
        return self

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None and self.proc.proc is not None
        self.proc.stop(timeout=20)
        return self.proc.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="session")
def chserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    base = tmp_path_factory.mktemp("chserver")
    server = ServerProc(base / "data", base / "server.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProc]]:
    """Factory for extra servers (restart tests); all are stopped at teardown."""
    started: list[ServerProc] = []

    def _make(data_dir: Path | None = None) -> ServerProc:
        n = len(started)
        server = ServerProc(data_dir or tmp_path / "data", tmp_path / f"server{n}.log").start()
        started.append(server)
        return server

    yield _make
    for server in started:
        if server.proc is not None and server.proc.alive():
            server.stop()


@pytest.fixture
def client(chserver: ServerProc) -> Iterator[Client]:
    c = connect(chserver.url, "default", "", None)
    try:
        yield c
    finally:
        c.close()


_db_counter = itertools.count()


@pytest.fixture
def db(client: Client, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database per test, dropped afterwards."""
    name = f"t{next(_db_counter)}_{request.node.name}"
    name = "".join(ch if ch.isalnum() else "_" for ch in name)[:60]
    client.command(f"CREATE DATABASE IF NOT EXISTS `{name}`")
    try:
        yield name
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{name}`")


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def raw_http(
    url: str,
    method: str = "POST",
    path: str = "/",
    params: Mapping[str, str] | None = None,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    encode_chunked: bool = False,
) -> RawResponse:
    """One plain HTTP request, no client-side decoding: sees exactly what the server sent."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        target = path + ("?" + urllib.parse.urlencode(params) if params else "")
        payload: object = body
        if encode_chunked and body is not None:
            payload = iter([body[: len(body) // 2], body[len(body) // 2 :]])
        conn.request(
            method,
            target,
            body=payload,  # type: ignore[arg-type]
            headers=dict(headers or {}),
            encode_chunked=encode_chunked,
        )
        resp = conn.getresponse()
        return RawResponse(resp.status, dict(resp.getheaders()), resp.read())
    finally:
        conn.close()
