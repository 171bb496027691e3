"""LightningDataModules over the synthetic generators (train and dev splits only).

The held-out split is never built here: evaluation builds it itself from the `heldout`
seed branch, so no training code path can touch it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from models.data.common import SequenceArrays, Split
from models.data.events import TELEMETRY_STEP_FEATURES, TX_EVENT_FEATURES
from models.data.telemetry import NODE_FAMILIES, generate_node_sequences, telemetry_arrays
from models.data.tx import TX_FAMILIES, generate_tx_entities, tx_arrays


@dataclass(frozen=True)
class TxDataConfig:
    """How much tx data to generate; `families` lists the classes present in training
    (drop one to test generalisation to an unseen family)."""

    n_normal: int = 2000
    n_per_family: int = 400
    families: tuple[str, ...] = TX_FAMILIES
    min_len: int = 8
    max_len: int = 64
    seed: int = 0
    dev_fraction: float = 0.5

    def counts(self, split: Split) -> dict[str, int]:
        scale = self.dev_fraction if split == "dev" else 1.0
        return {
            f: max(1, round((self.n_normal if f == "normal" else self.n_per_family) * scale))
            for f in self.families
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["families"] = list(self.families)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TxDataConfig:
        return cls(**{**d, "families": tuple(d["families"])})


@dataclass(frozen=True)
class TelemetryDataConfig:
    """How much node telemetry to generate (`families`: classes present in training)."""

    n_normal: int = 2000
    n_per_family: int = 400
    families: tuple[str, ...] = NODE_FAMILIES
    n_steps: int = 60
    seed: int = 0
    dev_fraction: float = 0.5

    def counts(self, split: Split) -> dict[str, int]:
        scale = self.dev_fraction if split == "dev" else 1.0
        return {
            f: max(1, round((self.n_normal if f == "honest" else self.n_per_family) * scale))
            for f in self.families
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["families"] = list(self.families)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TelemetryDataConfig:
        return cls(**{**d, "families": tuple(d["families"])})


def build_tx_split(
    cfg: TxDataConfig, split: Split, counts: dict[str, int] | None = None, seed: int | None = None
) -> SequenceArrays:
    """Arrays of one split (labels always indexed by TX_FAMILIES)."""
    ents = generate_tx_entities(
        counts if counts is not None else cfg.counts(split),
        seed=cfg.seed if seed is None else seed,
        split=split,
        min_len=cfg.min_len,
        max_len=cfg.max_len,
    )
    return tx_arrays(ents, max_len=cfg.max_len, classes=TX_FAMILIES)


def build_telemetry_split(
    cfg: TelemetryDataConfig,
    split: Split,
    counts: dict[str, int] | None = None,
    seed: int | None = None,
) -> SequenceArrays:
    """Arrays of one split (labels always indexed by NODE_FAMILIES)."""
    nodes = generate_node_sequences(
        counts if counts is not None else cfg.counts(split),
        seed=cfg.seed if seed is None else seed,
        split=split,
        n_steps=cfg.n_steps,
    )
    return telemetry_arrays(nodes, classes=NODE_FAMILIES)


@dataclass
class _Splits:
    train: SequenceArrays | None = None
    dev: SequenceArrays | None = None


class SequenceDataModule(pl.LightningDataModule):
    """Train/dev loaders over SequenceArrays; subclasses say how a split is built."""

    classes: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = ()

    def __init__(self, *, batch_size: int = 128, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.seed = seed
        self._splits = _Splits()

    def build(self, split: Split) -> SequenceArrays:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self._splits.train is None:
            self._splits.train = self.build("train")
            self._splits.dev = self.build("dev")

    @property
    def train_arrays(self) -> SequenceArrays:
        self.setup()
        assert self._splits.train is not None
        return self._splits.train

    @property
    def dev_arrays(self) -> SequenceArrays:
        self.setup()
        assert self._splits.dev is not None
        return self._splits.dev

    def feature_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of each input over the real (unpadded) training steps."""
        a = self.train_arrays
        mask = np.arange(a.x.shape[1])[None, :] < a.lengths[:, None]
        real = a.x[mask].astype(np.float64)
        return torch.from_numpy(real.mean(0)).float(), torch.from_numpy(real.std(0)).float()

    def class_weights(self) -> list[float]:
        """Balanced weights for the classes present (absent classes get 1: unused)."""
        counts = np.bincount(self.train_arrays.labels, minlength=len(self.classes))
        present = counts > 0
        w = np.ones(len(self.classes))
        w[present] = counts.sum() / (present.sum() * counts[present])
        return [float(v) for v in w]

    @staticmethod
    def _dataset(a: SequenceArrays) -> TensorDataset:
        return TensorDataset(
            torch.from_numpy(a.x), torch.from_numpy(a.lengths), torch.from_numpy(a.labels)
        )

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self._dataset(self.train_arrays),
            batch_size=self.batch_size,
            shuffle=True,
            generator=g,
            num_workers=0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self._dataset(self.dev_arrays), batch_size=max(self.batch_size, 512), num_workers=0
        )


class TxSequenceDataModule(SequenceDataModule):
    """Per-address tx sequences of the synthetic families."""

    classes = TX_FAMILIES

    def __init__(self, data: TxDataConfig, *, batch_size: int = 128, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        self.save_hyperparameters({"data": data.to_dict(), "batch_size": batch_size, "seed": seed})
        self.data = data
        self.feature_names = TX_EVENT_FEATURES

    def build(self, split: Split) -> SequenceArrays:
        return build_tx_split(self.data, split)


class TelemetryDataModule(SequenceDataModule):
    """Per-node telemetry step sequences of honest and faulty nodes."""

    classes = NODE_FAMILIES

    def __init__(self, data: TelemetryDataConfig, *, batch_size: int = 128, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        self.save_hyperparameters({"data": data.to_dict(), "batch_size": batch_size, "seed": seed})
        self.data = data
        self.feature_names = TELEMETRY_STEP_FEATURES

    def build(self, split: Split) -> SequenceArrays:
        return build_telemetry_split(self.data, split)
