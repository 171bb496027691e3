"""`vigil report` on the simulator run: the key panels become PNG charts, a
self-contained HTML report and a markdown report, from the dashboards' own SQL."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dashboards.definitions import all_dashboards
from pipelines.report import app, parse_duration, pick_interval
from tests.dashboards.conftest import SimStore

pytestmark = pytest.mark.integration


def test_durations_and_intervals() -> None:
    assert parse_duration("24h") == dt.timedelta(hours=24)
    assert parse_duration("90m") == dt.timedelta(minutes=90)
    assert parse_duration("7d") == dt.timedelta(days=7)
    with pytest.raises(ValueError):
        parse_duration("yesterday")
    assert pick_interval(dt.timedelta(hours=1)) == 60  # never finer than the rollups
    assert pick_interval(dt.timedelta(hours=24)) == 900
    assert pick_interval(dt.timedelta(days=7)) == 7200


def test_report_since_24h_writes_png_html_and_markdown(sim_store: SimStore, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            "--since",
            "24h",
            "--out",
            str(out),
            "--clickhouse-url",
            sim_store.url,
            "--database",
            sim_store.database,
        ],
    )
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    pngs = sorted((out / "panels").glob("*.png"))

    key_series = [p for d in all_dashboards() for p in d.panels if p.key and p.kind == "timeseries"]
    assert len(pngs) == len(key_series) >= 5  # every key chart had data to draw
    assert all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)

    # Self-contained: charts embedded, no external references.
    assert html.count("data:image/png;base64,") == len(pngs)
    assert not re.search(r"""(src|href)=['"]https?:""", html)
    for d in all_dashboards():
        title = d.title.removeprefix("Vigil / ")
        assert f"<h2>{title}</h2>" in html and f"## {title}" in md
        for p in d.panels:
            if p.key and p.kind != "stat":
                assert f"<h3>{p.title}</h3>" in html and f"### {p.title}" in md
    assert "Query failed" not in html and "No data in this range" not in md
    # The numbers are the simulator's: the caught bot is in the alerts table.
    assert sim_store.run.bot in html and sim_store.run.bot in md
    for png in pngs:
        assert f"](panels/{png.name})" in md


def test_report_of_an_empty_range_says_so(sim_store: SimStore, tmp_path: Path) -> None:
    until = (sim_store.run.start - dt.timedelta(days=3)).isoformat()
    result = CliRunner().invoke(
        app,
        [
            "--since",
            "1h",
            "--until",
            until,
            "--out",
            str(tmp_path),
            "--clickhouse-url",
            sim_store.url,
            "--database",
            sim_store.database,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "No data in this range" in (tmp_path / "report.md").read_text()
    assert not list((tmp_path / "panels").glob("*.png"))
