"""Typer sub-apps for the sequence models; `pipelines.cli` mounts them.

- `app` -> `vigil train`: `vigil train tx`, `vigil train telemetry`
- `eval_app` -> `vigil eval`: `vigil eval sequence`

Imports nothing from pipelines (import rule). Heavy imports (torch, Lightning) happen
inside the commands so that `vigil --help` stays fast.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train the sequence models (GPU when present, CPU otherwise; same code).",
)
eval_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Evaluate detectors on held-out labelled scenarios.",
)
console = Console(stderr=True)


@app.callback()
def _train_group() -> None:
    """Train the sequence models (GPU when present, CPU otherwise; same code)."""


@eval_app.callback()
def _eval_group() -> None:
    """Evaluate detectors on held-out labelled scenarios."""


OutOpt = Annotated[Path, typer.Option("--out", help="Artifact root (versioned per model).")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda")]
ThreadsOpt = Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's).")]
DEFAULT_ROOT = Path(".vigil/models")


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _summary(title: str, result: Any) -> None:
    meta = result.meta
    t = Table(title=title, show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("artifact", f"{meta.name} {meta.version}")
    t.add_row("path", str(result.path))
    t.add_row("trained on", str(meta.config["trained_on"]))
    t.add_row("data fingerprint", meta.data_fingerprint)
    m = meta.metrics
    t.add_row("train / dev entities", f"{m['n_train']:.0f} / {m['n_dev']:.0f}")
    t.add_row("epochs / steps", f"{m['epochs_run']:.0f} / {m['steps_run']:.0f}")
    t.add_row("train time", f"{m['train_seconds']:.1f} s ({m['train_samples_per_s']:.0f} seq/s)")
    t.add_row(
        "dev ROC-AUC / AP",
        f"{m.get('dev_roc_auc', float('nan')):.4f} / "
        f"{m.get('dev_average_precision', float('nan')):.4f}",
    )
    for k in sorted(m):
        if k.startswith("dev_roc_auc_"):
            t.add_row(f"  dev AUC {k.removeprefix('dev_roc_auc_')}", f"{m[k]:.4f}")
    Console().print(t)


def _families(all_families: tuple[str, ...], exclude: list[str]) -> tuple[str, ...]:
    bad = set(exclude) - set(all_families[1:])
    if bad:
        raise typer.BadParameter(f"cannot exclude {sorted(bad)}; choose from {all_families[1:]}")
    return tuple(f for f in all_families if f not in exclude)


@app.command("tx")
def train_tx(
    out: OutOpt = DEFAULT_ROOT,
    epochs: int = 15,
    batch_size: int = 128,
    hidden: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    n_normal: Annotated[int, typer.Option(help="Normal addresses in the training split.")] = 2000,
    n_per_family: Annotated[int, typer.Option(help="Addresses per anomalous family.")] = 400,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Leave a family out of training (repeatable).")
    ] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Per-address transaction sequences -> bot/sybil probability."""
    _train(
        "tx",
        out=out,
        epochs=epochs,
        batch_size=batch_size,
        hidden=hidden,
        lr=lr,
        seed=seed,
        n_normal=n_normal,
        n_per_family=n_per_family,
        exclude=exclude or [],
        device=device,
        threads=threads,
    )


@app.command("telemetry")
def train_telemetry(
    out: OutOpt = DEFAULT_ROOT,
    epochs: int = 15,
    batch_size: int = 128,
    hidden: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    n_normal: Annotated[int, typer.Option(help="Honest nodes in the training split.")] = 2000,
    n_per_family: Annotated[int, typer.Option(help="Nodes per fault family.")] = 400,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Leave a fault out of training (repeatable).")
    ] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Per-node telemetry sequences -> fault (anomaly) score."""
    _train(
        "telemetry",
        out=out,
        epochs=epochs,
        batch_size=batch_size,
        hidden=hidden,
        lr=lr,
        seed=seed,
        n_normal=n_normal,
        n_per_family=n_per_family,
        exclude=exclude or [],
        device=device,
        threads=threads,
    )


def _train(
    kind: str,
    *,
    out: Path,
    epochs: int,
    batch_size: int,
    hidden: int,
    lr: float,
    seed: int,
    n_normal: int,
    n_per_family: int,
    exclude: list[str],
    device: str,
    threads: int | None,
) -> None:
    """One training run of the `kind` sequence model, with a rich summary at the end."""
    import torch

    from models.data.modules import TelemetryDataConfig, TxDataConfig
    from models.data.telemetry import NODE_FAMILIES
    from models.data.tx import TX_FAMILIES
    from models.train import TrainConfig, train_telemetry_model, train_tx_model

    _quiet_lightning()
    if threads:
        torch.set_num_threads(threads)
    train = TrainConfig(epochs=epochs, batch_size=batch_size, hidden=hidden, lr=lr, seed=seed)
    if kind == "tx":
        tx_data = TxDataConfig(
            n_normal=n_normal,
            n_per_family=n_per_family,
            families=_families(TX_FAMILIES, exclude),
            seed=seed,
        )
        result = train_tx_model(out, data=tx_data, train=train, device=device, progress=True)
        _summary("tx sequence model", result)
    else:
        node_data = TelemetryDataConfig(
            n_normal=n_normal,
            n_per_family=n_per_family,
            families=_families(NODE_FAMILIES, exclude),
            seed=seed,
        )
        result = train_telemetry_model(
            out, data=node_data, train=train, device=device, progress=True
        )
        _summary("telemetry sequence model", result)


@eval_app.command("sequence")
def eval_sequence(
    kind: Annotated[str, typer.Argument(help="tx | telemetry | both")] = "both",
    artifacts: Annotated[Path, typer.Option(help="Artifact root.")] = DEFAULT_ROOT,
    heldout_seed: Annotated[int, typer.Option(help="Seed of the held-out split.")] = 1,
    n_normal: Annotated[
        int | None, typer.Option(help="Held-out normals (default: as trained).")
    ] = None,
    n_per_family: Annotated[int | None, typer.Option(help="Held-out per family.")] = None,
    fpr: Annotated[float, typer.Option(help="Dev false-positive rate for thresholds.")] = 0.01,
    name: Annotated[str | None, typer.Option(help="Artifact name (default per kind).")] = None,
    json_out: Annotated[Path | None, typer.Option(help="Write the comparison JSON here.")] = None,
    markdown_out: Annotated[Path | None, typer.Option(help="Write markdown tables here.")] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Sequence model vs isolation forest (and a GBM on window features), held-out data."""
    import torch

    from models.evaluation.sequence import compare, to_markdown

    if kind not in ("tx", "telemetry", "both"):
        raise typer.BadParameter("kind must be tx, telemetry or both")
    if threads:
        torch.set_num_threads(threads)
    kinds = ["tx", "telemetry"] if kind == "both" else [kind]
    results, md = [], []
    for k in kinds:
        with console.status(f"{k}: starting") as status:
            c = compare(
                k,  # type: ignore[arg-type]
                artifacts,
                heldout_seed=heldout_seed,
                n_normal=n_normal,
                n_per_family=n_per_family,
                target_fpr=fpr,
                name=name,
                progress=lambda msg, k=k: status.update(f"{k}: {msg}"),  # type: ignore[misc]
            )
        results.append(c)
        md.append(to_markdown(c))
        t = Table(title=f"{k}: held-out ROC-AUC / AP (seed {heldout_seed})")
        t.add_column("family")
        for d in c.overall:
            t.add_column(d, justify="right")
        for f, per in c.per_family.items():
            label = f if f in c.trained_families else f"{f} (unseen)"
            t.add_row(
                label,
                *(f"{per[d].roc_auc:.3f} / {per[d].average_precision:.3f}" for d in c.overall),
            )
        t.add_row(
            "[bold]all",
            *(f"{o.roc_auc:.3f} / {o.average_precision:.3f}" for o in c.overall.values()),
        )
        t.add_row(
            "P / R @thr", *(f"{o.precision:.2f} / {o.recall:.2f}" for o in c.overall.values())
        )
        Console().print(t)
        console.print(
            f"{k}: {c.n_heldout} held-out entities in {c.seconds:.1f}s; sequence "
            f"scorer {c.sequence_scoring_per_s:,.0f} seq/s on CPU"
        )
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps([c.to_dict() for c in results], indent=1))
    if markdown_out:
        markdown_out.parent.mkdir(parents=True, exist_ok=True)
        markdown_out.write_text("\n".join(md))
