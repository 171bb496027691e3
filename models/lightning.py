"""LightningModule around `models.nets.SequenceClassifier`: loss, metrics, optimiser.

Kept apart from the net so that serving needs only the plain module and its state dict.
`save_hyperparameters()` puts the full net config, class and feature names in every
Lightning checkpoint, so a checkpoint alone says what it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

from models.nets import NetConfig, SequenceClassifier

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class SequenceClassifierModule(pl.LightningModule):
    """Trains family logits with (optionally weighted) cross-entropy; validates the
    anomaly score (1 - P(normal)) with ROC-AUC and average precision, the numbers that
    matter for alerting."""

    class_weights: torch.Tensor | None

    def __init__(
        self,
        *,
        in_dim: int,
        n_classes: int,
        class_names: Sequence[str],
        feature_names: Sequence[str],
        kind: str,
        hidden: int = 64,
        conv_kernel: int = 5,
        gru_layers: int = 1,
        dropout: float = 0.1,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net_config = NetConfig(
            in_dim=in_dim,
            n_classes=n_classes,
            hidden=hidden,
            conv_kernel=conv_kernel,
            gru_layers=gru_layers,
            dropout=dropout,
        )
        self.net = SequenceClassifier(self.net_config)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.val_auroc = BinaryAUROC()
        self.val_ap = BinaryAveragePrecision()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x, lengths)
        return out

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, weight=self.class_weights)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, lengths, y = batch
        loss = self._loss(self(x, lengths), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, lengths, y = batch
        logits = self(x, lengths)
        self.log("val_loss", self._loss(logits, y), on_epoch=True, batch_size=len(y))
        score = SequenceClassifier.anomaly_score(logits)
        target = (y != 0).long()
        self.val_auroc.update(score, target)
        self.val_ap.update(score, target)

    def on_validation_epoch_end(self) -> None:
        self.log("val_auroc", self.val_auroc.compute(), prog_bar=True)
        self.log("val_ap", self.val_ap.compute())
        self.val_auroc.reset()
        self.val_ap.reset()

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(
            self.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.hparams["lr"], total_steps=total, pct_start=0.2
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
