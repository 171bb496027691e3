"""Shared pieces of the synthetic data: split seeding and the padded array bundle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from models.registry import fingerprint

Split = Literal["train", "dev", "heldout"]

#: Each split draws from its own SeedSequence branch, so for any integer seed the held-out
#: entities are never the ones used in training or development (and never depend on them).
SPLIT_IDS: dict[str, int] = {"train": 0, "dev": 1, "heldout": 2}

GENERATOR_TAG_TX = 0x7478  # "tx"
GENERATOR_TAG_TELEMETRY = 0x746C  # "tl"


def entity_rng(tag: int, seed: int, split: Split, *parts: int) -> np.random.Generator:
    """RNG of one entity (or one group): independent of how many others are generated."""
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    return np.random.default_rng([tag, seed, SPLIT_IDS[split], *parts])


@dataclass(frozen=True)
class SequenceArrays:
    """Right-padded sequences with labels; what DataModules, scorers and evaluation share.

    `x` is (N, T, D) float32, `lengths` (N,), `labels` (N,) class index (0 = normal/honest),
    `families` the class name per row, `ids` the entity (address or node id), and
    `window_features` the per-entity summary row the isolation forest sees (same events).
    """

    x: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    families: tuple[str, ...]
    ids: tuple[str, ...]
    window_features: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def is_anomaly(self) -> np.ndarray:
        return (self.labels != 0).astype(np.int64)

    def fingerprint(self) -> str:
        """Hash of exactly what a model is trained on (inputs, lengths, labels)."""
        return fingerprint(
            np.concatenate(
                (
                    self.x.reshape(len(self), -1).astype(np.float64),
                    self.lengths[:, None].astype(np.float64),
                    self.labels[:, None].astype(np.float64),
                ),
                axis=1,
            )
        )
