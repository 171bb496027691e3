"""The simulator against a real anvil: contracts deploy, traffic lands as planned, the
sandwiches are sandwiches on chain, and labels reach the files and ClickHouse."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from typer import Typer
from typer.testing import CliRunner
from web3 import Web3

from pipelines.chain.anvil import running_anvil
from pipelines.procs import free_port
from pipelines.simulator import BOT_LABELS, LABEL_NORMAL, ClickHouseLabels, SimConfig, Simulator
from pipelines.simulator.cli import simulate_command
from pipelines.storage.client import connect

pytestmark = pytest.mark.integration


def test_simulation_on_anvil_lands_labelled_traffic(tmp_path: Path, chserver_url: str) -> None:
    port = free_port()
    with running_anvil(port, block_time=1.0, log_path=tmp_path / "anvil.log"):
        url = f"http://127.0.0.1:{port}"
        cfg = SimConfig(seed=4, duration_s=24.0, speed=2.0, bots_start_s=2.0)
        ch = ClickHouseLabels(chserver_url, "simtest")
        sim = Simulator(url, cfg, tmp_path / "out", clickhouse=ch, run_id="run-1")
        dep = sim.setup()
        stats = sim.run()
        sim.stop()
        w3 = Web3(Web3.HTTPProvider(url))
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        lines = [json.loads(x) for x in (tmp_path / "out" / "tx_labels.jsonl").open()]
        receipts = {
            x["tx_hash"]: w3.eth.wait_for_transaction_receipt(x["tx_hash"], timeout=30)
            for x in lines
        }
        code = w3.eth.get_code(Web3.to_checksum_address(dep.pair))
    assert stats.errors == 0 and set(stats.sent) == {LABEL_NORMAL, *BOT_LABELS}
    assert len(code) > 100
    traffic = [x for x in lines if x["role"] not in ("deploy", "mint", "approve", "add_liquidity")]
    assert len(traffic) == stats.total
    failed = Counter(x["label"] for x in traffic if receipts[x["tx_hash"]]["status"] != 1)
    normal = sum(1 for x in traffic if x["label"] == LABEL_NORMAL)
    assert failed[LABEL_NORMAL] <= 0.05 * normal, failed
    assert all(receipts[x["tx_hash"]]["status"] == 1 for x in lines if x not in traffic)
    # on chain, each sandwich is front-run, victim, back-run in one block, in that order
    by_block: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for x in traffic:
        r = receipts[x["tx_hash"]]
        by_block[r["blockNumber"]].append((r["transactionIndex"], x["role"]))
    fronts = wrapped = 0
    for items in by_block.values():
        roles = [role for _, role in sorted(items)]
        for i, role in enumerate(roles):
            if role == "front_run":
                fronts += 1
                rest = roles[i + 1 :]
                wrapped += "swap" in rest and "back_run" in rest[rest.index("swap") :]
    assert fronts >= 3 and wrapped >= 0.8 * fronts
    labels = json.loads((tmp_path / "out" / "labels.json").read_text())
    assert set(labels.values()) == {LABEL_NORMAL, *BOT_LABELS}
    client = connect(chserver_url, "default", "", None)
    try:
        rows: dict[str, int] = dict(
            client.query(  # type: ignore[arg-type]
                "SELECT entity_kind, count() FROM simtest.sim_labels FINAL "
                "WHERE run_id = 'run-1' GROUP BY entity_kind"
            ).result_rows
        )
    finally:
        client.close()
    assert rows == {"address": len(labels) + 1, "tx": len(lines)}  # + the infra deployer


def test_vigil_simulate_runs_on_its_own_anvil_by_default(tmp_path: Path) -> None:
    app = Typer()
    app.command()(simulate_command)
    out = tmp_path / "sim"
    result = CliRunner().invoke(
        app,
        [
            "--duration",
            "6",
            "--speed",
            "3",
            "--bots-start",
            "1",
            "--seed",
            "2",
            "--out-dir",
            str(out),
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == 0 and summary["sent"][LABEL_NORMAL] > 10
    assert (out / "actors.json").is_file() and (out / "anvil.log").is_file()


def test_vigil_simulate_reports_an_unreachable_endpoint(tmp_path: Path) -> None:
    app = Typer()
    app.command()(simulate_command)
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["--rpc-url", url, "--out-dir", str(tmp_path)])
    assert result.exit_code == 1 and "cannot reach the JSON-RPC endpoint" in result.output
