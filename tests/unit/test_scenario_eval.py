"""`vigil eval scenario`: metric arithmetic, a short replay, and the CLI's report files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.eval_cli import _parse_seeds, app
from pipelines.scenario_eval import (
    NODE_FAULTS,
    TxEntity,
    auc,
    family_row,
    prf,
    run_scenarios,
    tx_rows,
)


def test_prf_and_auc_by_hand() -> None:
    assert prf(2, 1, 2) == (2 / 3, 0.5, 2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert prf(0, 0, 3) == (0.0, 0.0, 0.0)
    assert auc([0.9, 0.8], [0.1, 0.85]) == 0.75  # 3 of 4 pairs ranked right
    assert auc([1.0], []) is None
    # AUC: 0.9 beats all three normals, 0.2 beats one -> 4 of 6 pairs
    row = family_row(
        "x", [True, False], [False, False, True], [0.9, 0.2], [0.1, 0.3, 0.8], [3.0], 1
    )
    assert (row.detected, row.false_positives, row.precision, row.recall) == (1, 1, 0.5, 0.5)
    assert row.roc_auc == pytest.approx(4 / 6) and row.ttd_median_s == 3.0


def test_tx_rows_one_vs_normal() -> None:
    ents = [
        TxEntity("a", "hf_bot", 1, 0.9, True, 4.0, 1),
        TxEntity("b", "spammer", 1, 0.5, False, None, 0),
        TxEntity("h1", "normal", 1, 0.4, False, None, 0),
        TxEntity("h2", "normal", 1, 0.6, True, 1.0, 1),
    ]
    rows = {r.family: r for r in tx_rows(ents)}
    assert rows["hf_bot"].precision == 0.5 and rows["hf_bot"].recall == 1.0
    assert rows["spammer"].recall == 0.0 and rows["spammer"].roc_auc == 0.5
    assert rows["all bots"].entities == 2 and "wash_trader" not in rows


def test_short_replay_values_in_range_and_no_honest_slash() -> None:
    r = run_scenarios((101,), 100.0, honest_nodes=6, nodes_per_fault=2, node_steps=30)
    assert r.tx_families and {row.family for row in r.node_faults} == set(NODE_FAULTS)
    for row in (*r.tx_families, *r.node_faults):
        for v in (row.precision, row.recall, row.f1):
            assert 0.0 <= v <= 1.0
        assert row.roc_auc is None or 0.0 <= row.roc_auc <= 1.0
        assert row.ttd_median_s is None or math.isfinite(row.ttd_median_s)
    assert r.honest_slash_proposals == 0
    assert r.normal_entities > 0 and r.honest_nodes == 6


def test_cli_writes_markdown_and_pngs(tmp_path: Path) -> None:
    assert _parse_seeds("101-103,7") == (101, 102, 103, 7)
    out = tmp_path / "reports"
    res = CliRunner().invoke(
        app,
        ["scenario", "--seeds", "101", "--duration", "90", "--out", str(out)]
        + ["--nab-data", str(tmp_path / "no-nab")],
    )
    assert res.exit_code == 0, res.output
    md = (out / "scenario.md").read_text()
    assert "hf_bot" in md and "slash proposals against honest nodes" in md
    assert (out / "scenario_roc.png").read_bytes()[:4] == b"\x89PNG"
