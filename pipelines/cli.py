"""`vigil` command line: the embedded stack, the worker, the follower and tools."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from pipelines.settings import ConfigError, Settings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Vigil: streaming security monitor for decentralized AI inference.",
)
console = Console(stderr=True)
out = Console()
log = logging.getLogger("vigil")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file.")]


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


def _settings(config: Path | None, *, clickhouse: bool = False) -> Settings:
    """The settings, or exit 2 saying what is wrong; `clickhouse` for a command that holds
    the data in ClickHouse (its login is checked before anything starts)."""
    try:
        settings = Settings.load(config)
        if clickhouse:
            settings.clickhouse_login()
        return settings
    except (ConfigError, ValueError) as e:
        console.print(f"[red]invalid settings:[/] {e}")
        raise typer.Exit(2) from None


@app.command()
def up(
    data_dir: Annotated[Path, typer.Option(help="State directory.")] = Path(".vigil"),
    duration: Annotated[
        float | None, typer.Option(help="Run this many seconds, then stop.")
    ] = None,
    summary_json: Annotated[Path | None, typer.Option(help="Write the run summary here.")] = None,
    traffic: Annotated[str, typer.Option(help="simulate | demo | none")] = "simulate",
    nodes: Annotated[int, typer.Option(help="Local inference nodes (plus a gateway).")] = 0,
    faulty_nodes: Annotated[
        str, typer.Option(help="Faults among them, e.g. lazy:1,overclaim:1.")
    ] = "",
    seed: int = 1,
    log_level: str = "warning",
) -> None:
    """Start the embedded stack (broker, anvil, ClickHouse, worker, follower)."""
    from pipelines.stack import StackError, StackOptions, run_up

    _logging(log_level)
    try:
        summary = run_up(
            StackOptions(
                data_dir=data_dir,
                traffic=traffic,
                seed=seed,
                nodes=nodes,
                faulty_nodes=faulty_nodes,
            ),
            duration,
            summary_json,
            console,
        )
    except StackError as e:
        console.print(f"[red]stack failed:[/] {e}")
        raise typer.Exit(1) from None
    _print_summary(summary)


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="State directory.")] = Path(".vigil"),
    duration: float = 150.0,
) -> None:
    """The main job: the embedded stack with labelled traffic (humans, bot families) and
    three inference nodes (one lazy, one overclaiming), then a summary of what was caught
    and which contract calls were made."""
    up(
        data_dir=data_dir,
        duration=duration,
        summary_json=data_dir / "summary.json",
        traffic="simulate",
        seed=1,
        log_level="warning",
        nodes=3,
        faulty_nodes="lazy:1,overclaim:1",
    )


def _short(h: str) -> str:
    return h if len(h) <= 14 else f"{h[:10]}…"


def _print_summary(s: dict[str, Any]) -> None:
    if not s:
        return
    t = Table(title="Vigil run summary", show_header=False)
    t.add_row("transactions ingested", str(s["transactions_ingested"]))
    t.add_row("transactions scored", str(s["transactions_scored"]))
    t.add_row("alerts", ", ".join(f"{k}: {v}" for k, v in s["alerts"].items()) or "none")
    t.add_row("dead letters", str(s.get("dead_letters", 0)))
    for label, m in s.get("detection", {}).items():
        t.add_row(f"detection {label}", f"precision {m['precision']:.2f}, recall {m['recall']:.2f}")
    out.print(t)
    if s["actions"]:
        acts = Table(title="Contract calls made (full hashes in the summary JSON)")
        for col in ("action", "target", "ground truth", "tx", "status"):
            acts.add_column(col, no_wrap=True)
        for a in s["actions"]:
            acts.add_row(
                a["kind"],
                _short(a["target"]),
                a.get("label", ""),
                _short(a["tx_hash"]),
                a["status"],
            )
        out.print(acts)
    if not s["actions"]:
        out.print("[yellow]no enforcement action was taken[/]")


@app.command()
def worker(config: ConfigOpt = None, log_level: str = "info") -> None:
    """Run one Faust worker (settings from VIGIL_* / --config)."""
    from pipelines.app import run_worker

    settings = _settings(config, clickhouse=True)
    sys.argv = [sys.argv[0]]  # Faust's Worker parses argv itself
    run_worker(settings, loglevel=log_level)


@app.command()
def follow(config: ConfigOpt = None, log_level: str = "info") -> None:
    """Follow the chain and publish transactions to Kafka until stopped."""
    from pipelines.chain.follower import FollowerError, RpcUnavailable, run_follower

    _logging(log_level)
    settings = _settings(config)
    try:
        stats = asyncio.run(run_follower(settings))
    except (RpcUnavailable, FollowerError) as e:
        console.print(f"[red]follower failed:[/] {e}")
        raise typer.Exit(1) from None
    console.print(json.dumps(stats, default=str))


@app.command()
def backfill(
    start: Annotated[int, typer.Option("--from", help="First block (inclusive).")],
    end: Annotated[int, typer.Option("--to", help="Last block (inclusive).")],
    config: ConfigOpt = None,
    log_level: str = "warning",
) -> None:
    """Publish a block range with the follower's own code path (idempotent downstream)."""
    from pipelines.chain.follower import FollowerError, RpcUnavailable
    from pipelines.chain.follower import backfill as run_backfill

    _logging(log_level)
    settings = _settings(config)
    if end < start:
        console.print("[red]--to must not be below --from[/]")
        raise typer.Exit(2)
    try:
        stats = asyncio.run(run_backfill(settings, start, end))
    except (RpcUnavailable, FollowerError) as e:
        console.print(f"[red]backfill failed:[/] {e}")
        raise typer.Exit(1) from None
    out.print_json(json.dumps(stats, default=str))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
    help="The bundled inference node: `vigil node serve|register|gateway|load ...` "
    "(settings from VIGIL_NODE_* / VIGIL_GATEWAY_*; see `vigil node --help`).",
)
def node(ctx: typer.Context) -> None:
    from inference_node.__main__ import main as node_main

    raise typer.Exit(node_main(list(ctx.args)))


@app.command()
def api(config: ConfigOpt = None, log_level: str = "info") -> None:
    """Serve the reputation / SOC API (FastAPI, OpenAPI docs at /docs)."""
    from pipelines.api import serve_api

    _logging(log_level)
    serve_api(_settings(config, clickhouse=True))


@app.command()
def settings(config: ConfigOpt = None) -> None:
    """Print the effective settings (secrets masked)."""
    s = _settings(config)
    out.print_json(s.model_dump_json())


def _register_subcommands() -> None:
    """Sub-apps that live beside the code they drive."""
    from dashboards.cli import app as dashboards_app
    from models.cli import app as train_app
    from pipelines.bench_cli import app as bench_app
    from pipelines.eval_cli import app as eval_app
    from pipelines.report import report_command
    from pipelines.simulator.cli import simulate_command
    from pipelines.storage.cluster import app as storage_app

    app.add_typer(eval_app, name="eval", help="Measure detectors on labelled data.")
    app.add_typer(train_app, name="train", help="Train sequence models (GPU when present).")
    app.add_typer(bench_app, name="bench", help="Benchmarks: pipeline and scorer throughput.")
    app.add_typer(dashboards_app, name="dashboards", help="Build or push Grafana dashboards.")
    app.add_typer(storage_app, name="storage", help="ClickHouse DDL and read-only user SQL.")
    app.command("report")(report_command)
    app.command("simulate", help="Labelled traffic (humans + bot families) against a chain.")(
        simulate_command
    )


_register_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
