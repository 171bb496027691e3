"""The committed dashboards are exactly the builders' output and all use the
provisioned data source."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from dashboards.build import DATASOURCE_FILE, JSON_DIR, PROVIDER_FILE, ROOT, check, render
from dashboards.cli import app
from dashboards.definitions import all_dashboards
from dashboards.model import DATASOURCE_TYPE


def test_committed_files_are_what_vigil_dashboards_build_writes(tmp_path: Path) -> None:
    assert check() == [], "run `vigil dashboards build` and commit the result"
    result = CliRunner().invoke(app, ["build", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert built == sorted(Path(rel) for rel in render())
    for rel in built:
        assert (tmp_path / rel).read_text() == (ROOT / rel).read_text(), rel
    # A hand edit is caught.
    edited = tmp_path / JSON_DIR / f"{all_dashboards()[0].uid}.json"
    edited.write_text(edited.read_text().replace('"Alerts"', '"Alerts!"', 1))
    assert check(tmp_path) == [f"{JSON_DIR}/{edited.name}: differs from the builders' output"]
    (tmp_path / JSON_DIR / "stray.json").write_text("{}")
    assert f"{JSON_DIR}/stray.json: not produced by any builder" in check(tmp_path)
    result = CliRunner().invoke(app, ["build", "--check", "--out", str(tmp_path)])
    assert result.exit_code == 1


def test_every_panel_and_variable_names_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load((ROOT / DATASOURCE_FILE).read_text())["datasources"]
    assert len(provisioned) == 1
    uid, kind = provisioned[0]["uid"], provisioned[0]["type"]
    assert kind == DATASOURCE_TYPE == "grafana-clickhouse-datasource"
    provider = yaml.safe_load((ROOT / PROVIDER_FILE).read_text())["providers"][0]
    assert provider["type"] == "file" and provider["folderUid"] == "vigil"
    uids = set()
    for path in sorted((ROOT / JSON_DIR).glob("*.json")):
        doc = json.loads(path.read_text())
        uids.add(doc["uid"])
        assert doc["panels"], path
        for panel in doc["panels"]:
            assert panel["datasource"] == {"type": kind, "uid": uid}, (path.name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"] == {"type": kind, "uid": uid}
                assert target["rawSql"].strip() and target["editorType"] == "sql"
        for var in doc["templating"]["list"]:
            if var["type"] == "query":
                assert var["datasource"] == {"type": kind, "uid": uid}
        ids = [p["id"] for p in doc["panels"]]
        assert len(ids) == len(set(ids))
        for p in doc["panels"]:  # the layout stays inside Grafana's 24 columns
            assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
    assert uids == {d.uid for d in all_dashboards()}


def test_the_soc_dashboards_and_their_variables_exist() -> None:
    titles = {d.title for d in all_dashboards()}
    assert titles == {
        "Vigil / SOC overview",
        "Vigil / Bots and sybils",
        "Vigil / Node health and reputation",
        "Vigil / Enforcement and governance",
        "Vigil / Pipeline health",
    }
    used = set().union(*({v.name for v in d.variables} for d in all_dashboards()))
    assert used == {"chain", "node", "category", "severity"}
