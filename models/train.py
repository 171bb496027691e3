"""Train the sequence models with Lightning and store them as versioned artifacts.

Same code on GPU and CPU (`device="auto"` picks CUDA when present). Each artifact version
directory holds `model.joblib` (the serving bundle, see models.scorers), `meta.json`
(config incl. net/train/data config and the device, metrics on the dev split, data
fingerprint), `lightning.ckpt` (full Lightning checkpoint, hyperparameters included) and
`history.json` (per-epoch metrics).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from sklearn.metrics import average_precision_score, roc_auc_score

from models import registry
from models.data.common import SequenceArrays
from models.data.modules import (
    SequenceDataModule,
    TelemetryDataConfig,
    TelemetryDataModule,
    TxDataConfig,
    TxSequenceDataModule,
)
from models.lightning import SequenceClassifierModule
from models.scorers import (
    DEV_THRESHOLD_QUANTILES,
    TELEMETRY_ARTIFACT,
    TX_ARTIFACT,
    make_bundle,
    resolve_device,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and net size; recorded in the artifact config."""

    epochs: int = 15
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    hidden: int = 64
    conv_kernel: int = 5
    gru_layers: int = 1
    dropout: float = 0.1
    seed: int = 0
    max_steps: int = -1  # > 0 stops after this many optimiser steps (benchmarks)


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced: the artifact's metadata and where it lives."""

    meta: registry.ArtifactMeta
    path: Path
    history: list[dict[str, float]]


class TrainHistory(Callback):
    """Per-epoch logged metrics plus step timing (samples/s excludes the first steps)."""

    def __init__(self, warmup_steps: int = 3) -> None:
        self.epochs: list[dict[str, float]] = []
        self.warmup_steps = warmup_steps
        self.step_times: list[float] = []
        self.samples = 0

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self.step_times.append(time.perf_counter())
        if len(self.step_times) > self.warmup_steps + 1:
            self.samples += len(batch[0])

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        row = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row["epoch"] = float(trainer.current_epoch)
        self.epochs.append(row)

    @property
    def samples_per_s(self) -> float:
        """Training throughput after warm-up (NaN when too few steps ran)."""
        if len(self.step_times) <= self.warmup_steps + 1:
            return float("nan")
        dt = self.step_times[-1] - self.step_times[self.warmup_steps]
        return self.samples / dt if dt > 0 else float("nan")


def _accelerator(device: str) -> str:
    return {"auto": "auto", "cpu": "cpu", "cuda": "gpu", "gpu": "gpu"}[device]


def device_name(device: torch.device) -> str:
    """Human-readable device, e.g. 'cuda:NVIDIA H100 80GB HBM3' or 'cpu:16 threads'."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{torch.get_num_threads()} threads"


@torch.inference_mode()
def _dev_scores(module: SequenceClassifierModule, a: SequenceArrays) -> np.ndarray:
    net = module.net.to("cpu").eval()
    out = []
    for i in range(0, len(a), 1024):
        logits = net(torch.from_numpy(a.x[i : i + 1024]), torch.from_numpy(a.lengths[i : i + 1024]))
        out.append(net.anomaly_score(logits).numpy())
    return np.concatenate(out).astype(np.float64)


def _dev_metrics(scores: np.ndarray, a: SequenceArrays, normal: str) -> dict[str, float]:
    y = a.is_anomaly
    m: dict[str, float] = {}
    if 0 < y.sum() < len(y):
        m["dev_roc_auc"] = float(roc_auc_score(y, scores))
        m["dev_average_precision"] = float(average_precision_score(y, scores))
    fam = np.asarray(a.families)
    normal_scores = scores[fam == normal]
    if len(normal_scores):
        # thresholds a worker applies without dev data (models.scorers.calibrated_threshold)
        for key, q in DEV_THRESHOLD_QUANTILES.items():
            m[key] = float(np.quantile(normal_scores, q))
    for f in sorted(set(a.families) - {normal}):
        sel = (fam == normal) | (fam == f)
        ys = (fam[sel] == f).astype(int)
        if 0 < ys.sum() < len(ys):
            m[f"dev_roc_auc_{f}"] = float(roc_auc_score(ys, scores[sel]))
    return m


def build_module(kind: str, dm: SequenceDataModule, train: TrainConfig) -> SequenceClassifierModule:
    """A fresh LightningModule sized for `dm`, with its normalisation statistics set."""
    dm.setup("fit")
    module = SequenceClassifierModule(
        in_dim=len(dm.feature_names),
        n_classes=len(dm.classes),
        class_names=list(dm.classes),
        feature_names=list(dm.feature_names),
        kind=kind,
        hidden=train.hidden,
        conv_kernel=train.conv_kernel,
        gru_layers=train.gru_layers,
        dropout=train.dropout,
        lr=train.lr,
        weight_decay=train.weight_decay,
        class_weights=dm.class_weights(),
    )
    module.net.encoder.set_normalization(*dm.feature_stats())
    return module


def fit_sequence_model(
    kind: str,
    dm: SequenceDataModule,
    data_config: dict[str, Any],
    out_root: Path,
    *,
    train: TrainConfig,
    device: str = "auto",
    progress: bool = False,
    callbacks: list[Callback] | None = None,
    name: str | None = None,
) -> TrainResult:
    """Fit one model on a DataModule and save it; shared by both public entry points."""
    pl.seed_everything(train.seed, workers=True, verbose=False)
    t_data = time.perf_counter()
    dm.setup("fit")
    data_s = time.perf_counter() - t_data
    module = build_module(kind, dm, train)
    target = resolve_device(device)
    history = TrainHistory()
    cbs: list[Callback] = [history, *(callbacks or [])]
    if progress:
        from pytorch_lightning.callbacks import RichProgressBar

        cbs.append(RichProgressBar(leave=True))
    deterministic = target.type == "cpu"  # cuDNN's packed GRU backward has no deterministic path
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    trainer = pl.Trainer(
        max_epochs=train.epochs,
        max_steps=train.max_steps,
        accelerator=_accelerator(device),
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=deterministic,
        callbacks=cbs,
    )
    try:
        with warnings.catch_warnings():
            # in-memory tensors: loader worker processes would only add start-up time
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            t0 = time.perf_counter()
            trainer.fit(module, datamodule=dm)
            train_s = time.perf_counter() - t0
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    used = trainer.strategy.root_device
    scores = _dev_scores(module, dm.dev_arrays)
    metrics = _dev_metrics(scores, dm.dev_arrays, dm.classes[0])
    metrics.update(
        train_seconds=train_s,
        data_seconds=data_s,
        train_samples_per_s=history.samples_per_s,
        epochs_run=float(trainer.current_epoch),
        steps_run=float(trainer.global_step),
        n_train=float(len(dm.train_arrays)),
        n_dev=float(len(dm.dev_arrays)),
    )
    if history.epochs:
        metrics["final_train_loss"] = history.epochs[-1].get("train_loss", float("nan"))
    max_len = int(dm.train_arrays.x.shape[1])
    bundle = make_bundle(
        kind, module.net, class_names=dm.classes, feature_names=dm.feature_names, max_len=max_len
    )
    config = {
        "kind": kind,
        "net": module.net_config.to_dict(),
        "train": asdict(train),
        "data": data_config,
        "class_names": list(dm.classes),
        "feature_names": list(dm.feature_names),
        "vector_version": bundle["vector_version"],
        "max_len": max_len,
        "trained_on": device_name(used),
        "torch": torch.__version__,
        "lightning": pl.__version__,
    }
    artifact = name or (TX_ARTIFACT if kind == "tx" else TELEMETRY_ARTIFACT)
    meta = registry.save(
        Path(out_root),
        artifact,
        bundle,
        config=config,
        metrics=metrics,
        data_fingerprint=dm.train_arrays.fingerprint(),
    )
    vdir = Path(out_root) / artifact / meta.version
    trainer.save_checkpoint(vdir / "lightning.ckpt")
    (vdir / "history.json").write_text(json.dumps(history.epochs, indent=1))
    log.info(
        "saved %s %s: dev AUC %.4f in %.1fs on %s",
        artifact,
        meta.version,
        metrics.get("dev_roc_auc", float("nan")),
        train_s,
        config["trained_on"],
    )
    return TrainResult(meta=meta, path=vdir, history=history.epochs)


def train_tx_model(
    out_root: Path,
    *,
    data: TxDataConfig | None = None,
    train: TrainConfig | None = None,
    device: str = "auto",
    progress: bool = False,
    name: str | None = None,
) -> TrainResult:
    """Per-address tx sequences -> bot/sybil probability (artifact `tx_sequence`)."""
    data = data or TxDataConfig()
    train = train or TrainConfig()
    dm = TxSequenceDataModule(data, batch_size=train.batch_size, seed=train.seed)
    return fit_sequence_model(
        "tx", dm, data.to_dict(), out_root, train=train, device=device, progress=progress, name=name
    )


def train_telemetry_model(
    out_root: Path,
    *,
    data: TelemetryDataConfig | None = None,
    train: TrainConfig | None = None,
    device: str = "auto",
    progress: bool = False,
    name: str | None = None,
) -> TrainResult:
    """Per-node telemetry sequences -> fault (anomaly) score (artifact `telemetry_sequence`)."""
    data = data or TelemetryDataConfig()
    train = train or TrainConfig()
    dm = TelemetryDataModule(data, batch_size=train.batch_size, seed=train.seed)
    return fit_sequence_model(
        "telemetry",
        dm,
        data.to_dict(),
        out_root,
        train=train,
        device=device,
        progress=progress,
        name=name,
    )
