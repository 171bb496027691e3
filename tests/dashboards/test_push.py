"""`vigil dashboards push` against a local server implementing the Grafana HTTP API
endpoints it calls: auth header, payloads, and idempotency (no duplicates, no writes
when nothing changed)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from grafana_client.client import GrafanaUnauthorizedError
from typer.testing import CliRunner

from dashboards.cli import app
from dashboards.definitions import all_dashboards
from dashboards.model import DATASOURCE_UID
from dashboards.provisioning import ClickHouseTarget
from dashboards.push import push_dashboards

TOKEN = "glsa_test_token"


@dataclass
class FakeGrafana:
    """State and request log of the fake; behaves like Grafana on conflicts."""

    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None, Any]] = field(default_factory=list)
    next_id: int = 1

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _a, _b in self.requests if m in ("POST", "PUT", "DELETE")]

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if m := re.fullmatch(r"/api/datasources/uid/([\w-]+)", path):
            uid = m.group(1)
            if uid not in self.datasources:
                return 404, {"message": "Data source not found"}
            if method == "GET":
                stored = dict(self.datasources[uid])
                stored.pop("secureJsonData", None)
                return 200, {**stored, "secureJsonFields": {"password": True}}
            if method == "PUT":
                self.datasources[uid] = {**body, "id": self.datasources[uid]["id"]}
                return 200, {"message": "Datasource updated"}
        if path == "/api/datasources" and method == "POST":
            if body["uid"] in self.datasources or any(
                d["name"] == body["name"] for d in self.datasources.values()
            ):
                return 409, {"message": "data source with the same name already exists"}
            self.datasources[body["uid"]] = {**body, "id": self.next_id, "readOnly": False}
            self.next_id += 1
            return 200, {"message": "Datasource added", "id": self.next_id - 1}
        if (m := re.fullmatch(r"/api/folders/([\w-]+)", path)) and method == "GET":
            f = self.folders.get(m.group(1))
            return (200, f) if f else (404, {"message": "folder not found"})
        if path == "/api/folders" and method == "POST":
            if body["uid"] in self.folders:
                return 409, {"message": "a folder with the same name already exists"}
            self.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"], "id": 7}
            return 200, self.folders[body["uid"]]
        if m := re.fullmatch(r"/api/dashboards/uid/([\w-]+)", path):
            found = self.dashboards.get(m.group(1))
            if found is None:
                return 404, {"message": "Dashboard not found"}
            return 200, {"dashboard": found["dashboard"], "meta": {"folderUid": found["folder"]}}
        if path == "/api/dashboards/db" and method == "POST":
            dash = body["dashboard"]
            old = self.dashboards.get(dash["uid"])
            if old is not None and not body.get("overwrite"):
                return 412, {"message": "The dashboard has been changed by someone else"}
            version = 1 if old is None else old["dashboard"]["version"] + 1
            dash_id = self.next_id if old is None else old["dashboard"]["id"]
            self.next_id += old is None
            self.dashboards[dash["uid"]] = {
                "dashboard": {**dash, "id": dash_id, "version": version},
                "folder": body.get("folderUid"),
            }
            return 200, {"status": "success", "uid": dash["uid"], "version": version}
        return 404, {"message": f"no such endpoint {method} {path}"}


@pytest.fixture
def grafana() -> Iterator[tuple[str, FakeGrafana]]:
    fake = FakeGrafana()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            auth = self.headers.get("Authorization")
            fake.requests.append((self.command, self.path, auth, body))
            if auth != f"Bearer {TOKEN}":
                status, reply = 401, {"message": "Unauthorized"}
            else:
                status, reply = fake.handle(self.command, self.path.split("?")[0], body)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", fake
    finally:
        server.shutdown()
        server.server_close()


def test_push_creates_then_is_idempotent(grafana: tuple[str, FakeGrafana]) -> None:
    url, fake = grafana
    target = ClickHouseTarget(host="clickhouse.internal", user="grafana", password="s3cret")
    first = push_dashboards(url, TOKEN, target)
    assert (first.datasource, first.folder) == ("created", "created")
    assert sorted(first.dashboards_created) == sorted(d.uid for d in all_dashboards())
    assert all(auth == f"Bearer {TOKEN}" for _m, _p, auth, _b in fake.requests)

    ds_posts = [b for m, p, _a, b in fake.requests if (m, p) == ("POST", "/api/datasources")]
    assert len(ds_posts) == 1
    ds = ds_posts[0]
    assert ds["uid"] == DATASOURCE_UID and ds["type"] == "grafana-clickhouse-datasource"
    assert ds["jsonData"]["host"] == "clickhouse.internal" and ds["jsonData"]["port"] == 8123
    assert ds["jsonData"]["username"] == "grafana" and ds["jsonData"]["protocol"] == "http"
    assert ds["secureJsonData"] == {"password": "s3cret"}
    posts = [b for m, p, _a, b in fake.requests if (m, p) == ("POST", "/api/dashboards/db")]
    for body, dashboard in zip(posts, all_dashboards(), strict=True):
        assert body["folderUid"] == "vigil" and body["overwrite"] is True
        assert body["dashboard"] == {**dashboard.to_json(), "id": None}

    # Same target without the password: nothing to write at all.
    before = len(fake.writes())
    second = push_dashboards(
        url, TOKEN, ClickHouseTarget(host="clickhouse.internal", user="grafana")
    )
    assert (second.datasource, second.folder) == ("unchanged", "unchanged")
    assert second.dashboards_created == second.dashboards_updated == []
    assert len(second.dashboards_unchanged) == len(all_dashboards())
    assert len(fake.writes()) == before
    assert len(fake.datasources) == 1 and len(fake.folders) == 1
    assert len(fake.dashboards) == len(all_dashboards())
    assert all(d["dashboard"]["version"] == 1 for d in fake.dashboards.values())

    # A changed target updates the one data source in place.
    third = push_dashboards(url, TOKEN, ClickHouseTarget(host="ch2", user="grafana"))
    assert third.datasource == "updated" and len(fake.datasources) == 1
    assert fake.datasources[DATASOURCE_UID]["jsonData"]["host"] == "ch2"
    assert ("PUT", f"/api/datasources/uid/{DATASOURCE_UID}") in fake.writes()


def test_push_refuses_a_wrong_token(grafana: tuple[str, FakeGrafana]) -> None:
    url, fake = grafana
    with pytest.raises(GrafanaUnauthorizedError):
        push_dashboards(url, "wrong", ClickHouseTarget())
    assert not fake.datasources and not fake.dashboards


def test_push_command(grafana: tuple[str, FakeGrafana]) -> None:
    url, fake = grafana
    result = CliRunner().invoke(
        app,
        ["push", "--grafana-url", url, "--clickhouse-host", "ch"],
        env={"GRAFANA_TOKEN": TOKEN},
    )
    assert result.exit_code == 0, result.output
    assert "data source created" in result.output and "5 created" in result.output
    again = CliRunner().invoke(
        app, ["push", "--grafana-url", url, "--token", TOKEN, "--clickhouse-host", "ch"]
    )
    assert "0 created, 0 updated, 5 unchanged" in again.output
