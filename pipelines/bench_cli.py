"""`vigil bench ...`: throughput of the transaction pipeline and of the scorers, measured here.

The measuring code lives in the repository's `bench/` scripts (also runnable on their
own); this module loads them by path, shows progress and prints the figures.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Benchmarks: end-to-end pipeline and scorer throughput on this machine.",
)
out = Console()
err = Console(stderr=True)
log = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str) -> ModuleType:
    """A `bench/<name>.py` script as a module (bench/ is not an installed package)."""
    path = BENCH_DIR / f"{name}.py"
    if not path.exists():
        err.print(f"[red]{path} not found[/]: `vigil bench` runs from a source checkout")
        raise typer.Exit(2)
    spec = importlib.util.spec_from_file_location(f"vigil_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module while executing it
    spec.loader.exec_module(mod)
    return mod


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.0f}{unit}" if abs(v) >= 100 else f"{v:.3g}{unit}"
    return f"{v}{unit}"


@app.command("pipeline")
def pipeline(
    events: Annotated[
        int, typer.Option(help="Transactions pre-produced to chain.tx.v1.")
    ] = 100_000,
    naive_events: Annotated[
        int, typer.Option(help="Events the naive Faust agent is measured over (<= --events).")
    ] = 20_000,
    txs_per_block: Annotated[int, typer.Option(help="Transactions per block.")] = 2000,
    senders: Annotated[int, typer.Option(help="Human senders.")] = 3000,
    workers: Annotated[
        int, typer.Option(help="Worker processes sharing the topics (one partition each).")
    ] = 1,
    compression: Annotated[
        str,
        typer.Option(help="Codec of the produced messages: none, gzip, lz4 or zstd (default)."),
    ] = "zstd",
    timeout: Annotated[float, typer.Option(help="Cap on the full-path phase (s).")] = 600.0,
    data_dir: Annotated[
        Path | None, typer.Option(help="Keep data and logs here (default: a temp dir, removed).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Raw consume vs naive Faust agent vs Vigil's full path, on embedded parts started here."""
    from pipelines.settings import KAFKA_COMPRESSIONS

    if compression not in KAFKA_COMPRESSIONS:
        raise typer.BadParameter(
            f"{compression!r}: use one of {', '.join(KAFKA_COMPRESSIONS)}",
            param_hint="--compression",
        )
    pb = _load("pipeline_bench")
    cfg = pb.PipelineBenchConfig(
        events=events,
        naive_events=naive_events,
        txs_per_block=txs_per_block,
        senders=senders,
        workers=workers,
        compression=compression,
        timeout_s=timeout,
        data_dir=data_dir,
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("starting", total=1.0)

        def step(msg: str, frac: float) -> None:
            progress.update(task, description=msg, completed=frac)

        res = pb.run_pipeline_bench(cfg, step)
    d = res.to_dict()
    if as_json:
        out.print_json(json.dumps(d, default=float))
        return
    t = Table(title=f"vigil bench pipeline ({d['events']} txs in {d['messages']} messages)")
    t.add_column("figure")
    t.add_column("value", justify="right")
    for key, unit in (
        ("raw_consume_events_per_s", " tx/s"),
        ("raw_consume_msgs_per_s", " msg/s"),
        ("naive_faust_events_per_s", " ev/s"),
        ("naive_faust_events", " events measured"),
        ("pipeline_events_per_s", " tx/s"),
        ("ratio", " (pipeline/raw)"),
        ("speedup_vs_naive", "x"),
        ("latency_p50_s", " s"),
        ("latency_p99_s", " s"),
        ("latency_alerts", " alerts"),
        ("peak_rss_mb", " MB"),
        ("compression", ""),
        ("message_mb", " MB produced"),
        ("broker_rss_growth_mb", " MB broker memory for them"),
        ("inprocess_events_per_cpu_s", " tx/CPU-s"),
    ):
        t.add_row(key, _fmt(d.get(key), unit))
    out.print(t)
    s = Table(title="CPU share per stage (in-process replay, process_time)")
    s.add_column("stage")
    s.add_column("share", justify="right")
    for k, v in d["stage_cpu_share"].items():
        s.add_row(k, f"{100 * v:.1f}%")
    out.print(s)
    p = Table(title="CPU seconds per process during the full-path phase")
    p.add_column("process")
    p.add_column("CPU s", justify="right")
    for k, v in d["process_cpu_s"].items():
        p.add_row(k, f"{v:.2f}")
    out.print(p)
    for note in d["notes"]:
        out.print(f"[yellow]note:[/] {note}")


@app.command("scoring")
def scoring(
    batch_sizes: Annotated[
        str, typer.Option(help="Comma-separated batch sizes.")
    ] = "1,64,1024,8192",
    device: Annotated[str, typer.Option(help="Sequence model device: cpu | cuda | auto.")] = "cpu",
    min_seconds: Annotated[float, typer.Option(help="Timed seconds per point.")] = 1.0,
    artifact_dir: Annotated[
        Path | None, typer.Option(help="Load the trained tx_sequence artifact from here.")
    ] = None,
    skip_sequence: Annotated[bool, typer.Option(help="Only the isolation forest.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Isolation forest rows/s and sequence model sequences/s by batch size."""
    sb = _load("scoring_bench")
    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError:
        err.print(f"[red]bad --batch-sizes {batch_sizes!r}[/]")
        raise typer.Exit(2) from None
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            err.print("[red]CUDA is not available on this machine[/]")
            raise typer.Exit(2)
    cfg = sb.ScoringBenchConfig(
        batch_sizes=sizes,
        device=device,
        min_seconds=min_seconds,
        artifact_dir=artifact_dir,
        skip_sequence=skip_sequence,
    )
    total = len(sizes) * (1 if skip_sequence else 2)
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("scoring", total=total)
        res = sb.run_scoring_bench(
            cfg, on_point=lambda msg: progress.update(task, advance=1, description=msg)
        )
    d = res.to_dict()
    if as_json:
        out.print_json(json.dumps(d, default=float))
        return
    m = d["machine"]
    t = Table(
        title=f"vigil bench scoring ({m.get('cpus')} CPUs {m.get('cpu_model', '')}, "
        f"Python {m.get('python')})"
    )
    t.add_column("model")
    t.add_column("device")
    t.add_column("batch", justify="right")
    t.add_column("items/s", justify="right")
    t.add_column("ms/batch", justify="right")
    for r in d["iforest"]:
        t.add_row(
            "isolation forest",
            "cpu",
            str(int(r["batch_size"])),
            f"{r['rows_per_s']:,.0f}",
            f"{r['ms_per_batch']:.2f}",
        )
    dev = d["sequence_model"].get("device", device)
    for r in d["sequence"]:
        t.add_row(
            "sequence model",
            dev,
            str(int(r["batch_size"])),
            f"{r['sequences_per_s']:,.0f}",
            f"{r['ms_per_batch']:.2f}",
        )
    out.print(t)
    if d["sequence_model"]:
        out.print(f"sequence model: {d['sequence_model'].get('source')}")
