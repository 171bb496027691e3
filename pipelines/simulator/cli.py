"""`vigil simulate`: labelled traffic against an RPC URL (an embedded anvil by default).

Registered by the CLI as `app.command("simulate")(simulate_command)`. Without
`--rpc-url` it starts its own anvil for the run (and stops it afterwards); with
one, it drives that chain (anvil balances via `anvil_setBalance`, other chains via
`funder_private_key` in `--sim-config`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from pipelines.simulator.config import SimConfig
from pipelines.simulator.labels import ClickHouseLabels
from pipelines.simulator.plan import PlannedTx
from pipelines.simulator.runner import SimStats, SimulationError, Simulator

log = logging.getLogger(__name__)
console = Console(stderr=True)


@contextlib.contextmanager
def _embedded_anvil(block_time: float, log_dir: Path) -> Iterator[str]:
    from pipelines.chain.anvil import running_anvil
    from pipelines.procs import free_port

    port = free_port()
    with running_anvil(port, block_time=block_time, log_path=log_dir / "anvil.log"):
        yield f"http://127.0.0.1:{port}"


def run_simulation(
    rpc_url: str,
    cfg: SimConfig,
    out_dir: Path,
    *,
    clickhouse: ClickHouseLabels | None = None,
    progress: bool = True,
) -> SimStats:
    """Set up and run `cfg` against `rpc_url` with a progress display; Ctrl-C stops it."""
    bar = Progress(
        TextColumn("[bold]simulate[/]"),
        BarColumn(),
        TextColumn("{task.fields[t]}"),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
    )
    task = bar.add_task("simulate", total=cfg.duration_s, t="", counts="setting up")

    def on_sent(p: PlannedTx) -> None:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(sim.stats.sent.items()))
        bar.update(task, completed=p.t, t=f"t={p.t:.0f}s", counts=counts)

    sim = Simulator(rpc_url, cfg, out_dir, clickhouse=clickhouse, on_sent=on_sent)
    old = signal.signal(signal.SIGINT, lambda *_: sim.request_stop())
    try:
        with bar:
            sim.setup()
            stats = sim.run()
    finally:
        signal.signal(signal.SIGINT, old)
        sim.stop()
    summary = {
        "sent": dict(stats.sent),
        "errors": stats.errors,
        "max_behind_s": round(stats.max_behind_s, 3),
        "deployment": dataclasses.asdict(sim.deployment) if sim.deployment else {},
        "run_id": sim.run_id,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return stats


def simulate_command(
    rpc_url: Annotated[
        str | None, typer.Option(help="JSON-RPC endpoint; default: start an embedded anvil.")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Plan seconds to simulate (default: until Ctrl-C).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Same seed + settings = same traffic.")] = 1,
    speed: Annotated[float, typer.Option(help="Plan seconds per wall second.")] = 1.0,
    bots_start: Annotated[
        float | None, typer.Option(help="Seconds before bots wake up (default 65).")
    ] = None,
    sim_config: Annotated[
        Path | None, typer.Option(help="TOML file with simulator settings (mix, rates).")
    ] = None,
    out_dir: Annotated[
        Path, typer.Option(help="Where labels.json, tx_labels.jsonl, actors.json go.")
    ] = Path(".vigil/simulate"),
    clickhouse_url: Annotated[
        str | None, typer.Option(help="Also write labels to this ClickHouse (sim_labels).")
    ] = None,
    clickhouse_database: str = "vigil",
    block_time: Annotated[float, typer.Option(help="Embedded anvil's block time.")] = 1.0,
    log_level: str = "warning",
) -> None:
    """Generate labelled traffic: humans, payers and bot families (see `pipelines.simulator`)."""
    logging.basicConfig(level=log_level.upper(), format="%(name)s: %(message)s")
    try:
        cfg = SimConfig.load(
            sim_config, seed=seed, duration_s=duration, speed=speed, bots_start_s=bots_start
        )
    except ValueError as e:
        console.print(f"[red]invalid simulator settings:[/] {e}")
        raise typer.Exit(2) from None
    ch = ClickHouseLabels(clickhouse_url, clickhouse_database) if clickhouse_url else None
    try:
        with contextlib.ExitStack() as stack:
            url = rpc_url or stack.enter_context(_embedded_anvil(block_time, out_dir))
            stats = run_simulation(url, cfg, out_dir, clickhouse=ch)
    except SimulationError as e:
        console.print(f"[red]simulation failed:[/] {e}")
        raise typer.Exit(1) from None
    console.print(
        f"sent {stats.total} txs ({', '.join(f'{k}: {v}' for k, v in sorted(stats.sent.items()))}),"
        f" {stats.errors} send errors; labels in {out_dir}"
    )
