"""`vigil bench scoring` runs end to end with tiny sizes (figures printed, never asserted)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from pipelines.bench_cli import app


def test_bench_scoring_runs_and_prints_figures() -> None:
    result = CliRunner().invoke(
        app, ["scoring", "--batch-sizes", "1,8", "--min-seconds", "0.01", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [int(r["batch_size"]) for r in data["iforest"]] == [1, 8]
    assert [int(r["batch_size"]) for r in data["sequence"]] == [1, 8]
    assert all(r["rows_per_s"] > 0 for r in data["iforest"])
    assert data["machine"]["python"]


def test_bench_scoring_table() -> None:
    result = CliRunner().invoke(
        app, ["scoring", "--batch-sizes", "4", "--min-seconds", "0.01", "--skip-sequence"]
    )
    assert result.exit_code == 0, result.output
    assert "isolation forest" in result.stdout
