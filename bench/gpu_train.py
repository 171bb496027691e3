"""Prepared GPU check: the tx sequence model, same code on CPU and CUDA, and the speed-up.

1. fixed-step training throughput (samples/s after warm-up, same batch size) on CPU and,
   when present, CUDA; 2. batched scoring throughput (what a worker or inference node does);
3. optionally (--full, default on) the whole default `train_tx_model` run on each device:
   wall time and dev ROC-AUC. Writes a JSON with device names to --out.

Sized to finish well inside 4 minutes on a 16-core + H100 machine (the CPU parts are
bounded by step counts, not epochs). Run from the repository root:

    PYTHONPATH=. python3 bench/gpu_train.py --out "$OUT/gpu_train.json"

Needs torch, pytorch_lightning, torchmetrics, scikit-learn, numpy, joblib and rich (all in
the GPU image); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from models.data.modules import TxDataConfig, TxSequenceDataModule  # noqa: E402
from models.scorers import TxSequenceScorer, make_bundle  # noqa: E402
from models.train import (  # noqa: E402
    TrainConfig,
    TrainHistory,
    build_module,
    device_name,
    train_tx_model,
)

console = Console()


def train_throughput(
    dm: TxSequenceDataModule, cfg: TrainConfig, device: str, steps: int
) -> tuple[dict[str, Any], Any]:
    """Fixed number of optimiser steps, no validation; samples/s after 3 warm-up steps."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module("tx", dm, cfg)
    hist = TrainHistory(warmup_steps=3)
    trainer = pl.Trainer(
        max_steps=steps,
        max_epochs=-1,
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[hist],
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    wall = time.perf_counter() - t0
    dev = trainer.strategy.root_device
    return {
        "device": device_name(dev),
        "steps": int(trainer.global_step),
        "batch_size": cfg.batch_size,
        "samples_per_s": hist.samples_per_s,
        "wall_s": wall,
    }, module


def score_throughput(
    bundle: dict[str, Any],
    x: np.ndarray,
    lengths: np.ndarray,
    device: str,
    batch_size: int,
    repeats: int,
) -> dict[str, Any]:
    scorer = TxSequenceScorer(bundle, device=device, batch_size=batch_size)
    scorer.score(x[:batch_size], lengths[:batch_size])  # warm-up (cuDNN plans, allocator)
    t0 = time.perf_counter()
    for _ in range(repeats):
        scorer.score(x, lengths)
    dt = time.perf_counter() - t0
    return {
        "device": device_name(scorer.device),
        "batch_size": batch_size,
        "sequences": int(len(x) * repeats),
        "seq_per_s": len(x) * repeats / dt,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON results path")
    ap.add_argument("--cpu-steps", type=int, default=40)
    ap.add_argument("--gpu-steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--n-normal", type=int, default=2000)
    ap.add_argument("--n-per-family", type=int, default=400)
    ap.add_argument("--score-rows", type=int, default=16_384)
    ap.add_argument(
        "--full",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the whole default training run on each device",
    )
    ap.add_argument("--cpu-threads", type=int, default=0, help="0: torch's default")
    args = ap.parse_args()
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    t_start = time.perf_counter()
    cuda = torch.cuda.is_available()
    devices = ["cpu", "cuda"] if cuda else ["cpu"]
    result: dict[str, Any] = {
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "cuda_available": cuda,
        "devices": {d: device_name(torch.device(d)) for d in devices},
        "config": {
            "batch_size": args.batch_size,
            "cpu_steps": args.cpu_steps,
            "gpu_steps": args.gpu_steps,
            "n_normal": args.n_normal,
            "n_per_family": args.n_per_family,
        },
    }
    console.print(
        f"devices: {result['devices']}  torch {torch.__version__}, lightning {pl.__version__}"
    )

    data = TxDataConfig(n_normal=args.n_normal, n_per_family=args.n_per_family)
    cfg = TrainConfig(batch_size=args.batch_size)
    t0 = time.perf_counter()
    dm = TxSequenceDataModule(data, batch_size=cfg.batch_size, seed=cfg.seed)
    dm.setup("fit")
    result["data_seconds"] = time.perf_counter() - t0
    console.print(f"data: {len(dm.train_arrays)} train sequences in {result['data_seconds']:.1f}s")

    result["train"] = {}
    module = None
    # CPU baseline at torch's default thread count and at 1 thread (a small GRU is often
    # faster single-threaded): the speed-up is quoted against the better of the two.
    default_threads = torch.get_num_threads()
    by_threads: dict[int, dict[str, Any]] = {}
    for n in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(n)
        with console.status(f"training {args.cpu_steps} steps on cpu, {n} threads"):
            by_threads[n], module = train_throughput(dm, cfg, "cpu", args.cpu_steps)
        console.print(f"train cpu ({n} threads): {by_threads[n]['samples_per_s']:,.0f} samples/s")
    best = max(by_threads, key=lambda n: by_threads[n]["samples_per_s"])
    torch.set_num_threads(best)
    result["cpu_threads"] = best
    result["devices"]["cpu"] = device_name(torch.device("cpu"))
    result["train"]["cpu"] = by_threads[best]
    result["train_cpu_by_threads"] = {str(n): r for n, r in by_threads.items()}
    if cuda:
        with console.status(f"training {args.gpu_steps} steps on cuda"):
            result["train"]["cuda"], module = train_throughput(dm, cfg, "cuda", args.gpu_steps)
        console.print(f"train cuda: {result['train']['cuda']['samples_per_s']:,.0f} samples/s")
        big = TrainConfig(batch_size=4 * args.batch_size)
        dm.batch_size = big.batch_size  # same arrays, larger batches
        with console.status("training on cuda with 4x batch"):
            result["train_cuda_4x_batch"], _ = train_throughput(
                dm, big, "cuda", max(args.gpu_steps // 4, 20)
            )
        dm.batch_size = cfg.batch_size
        console.print(
            f"train cuda 4x batch: {result['train_cuda_4x_batch']['samples_per_s']:,.0f} samples/s"
        )
        result["train_speedup"] = (
            result["train"]["cuda"]["samples_per_s"] / result["train"]["cpu"]["samples_per_s"]
        )

    assert module is not None
    bundle = make_bundle(
        "tx",
        module.net.cpu(),
        class_names=dm.classes,
        feature_names=dm.feature_names,
        max_len=data.max_len,
    )
    a = dm.train_arrays
    reps = int(np.ceil(args.score_rows / len(a)))
    x = np.tile(a.x, (reps, 1, 1))[: args.score_rows]
    lengths = np.tile(a.lengths, reps)[: args.score_rows]
    result["score"] = {}
    for d in devices:
        bs = 1024 if d == "cpu" else 8192
        with console.status(f"scoring on {d}"):
            result["score"][d] = score_throughput(bundle, x, lengths, d, bs, 1 if d == "cpu" else 5)
        console.print(f"score {d}: {result['score'][d]['seq_per_s']:,.0f} seq/s")
    if cuda:
        result["score_speedup"] = (
            result["score"]["cuda"]["seq_per_s"] / result["score"]["cpu"]["seq_per_s"]
        )

    if args.full:
        result["full"] = {}
        for d in devices:
            with (
                console.status(f"full default training run on {d}"),
                tempfile.TemporaryDirectory() as tmp,
            ):
                t0 = time.perf_counter()
                r = train_tx_model(Path(tmp), device=d)
                m = r.meta.metrics
                result["full"][d] = {
                    "device": r.meta.config["trained_on"],
                    "wall_s": time.perf_counter() - t0,
                    "train_seconds": m["train_seconds"],
                    "train_samples_per_s": m["train_samples_per_s"],
                    "epochs": m["epochs_run"],
                    "dev_roc_auc": m.get("dev_roc_auc"),
                    "dev_average_precision": m.get("dev_average_precision"),
                }
            console.print(f"full {d}: {m['train_seconds']:.1f}s, dev AUC {m['dev_roc_auc']:.4f}")
        if cuda:
            result["full_speedup"] = (
                result["full"]["cpu"]["train_seconds"] / result["full"]["cuda"]["train_seconds"]
            )
    result["total_seconds"] = time.perf_counter() - t_start

    t = Table(title="tx sequence model: CPU vs GPU (same code)")
    t.add_column("measure")
    for d in devices:
        t.add_column(result["devices"][d], justify="right")
    if cuda:
        t.add_column("speed-up", justify="right")
    rows = [
        ("train samples/s", "train", "samples_per_s", "train_speedup"),
        ("score seq/s", "score", "seq_per_s", "score_speedup"),
    ]
    if args.full:
        rows.append(("full run train s", "full", "train_seconds", "full_speedup"))
    for label, sect, key, sp in rows:
        cells = [f"{result[sect][d][key]:,.1f}" for d in devices]
        if cuda:
            cells.append(f"{result[sp]:.1f}x")
        t.add_row(label, *cells)
    console.print(t)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float))
    console.print(f"wrote {args.out} in {result['total_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
