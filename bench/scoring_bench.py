"""Scoring throughput: isolation forest rows/s and sequence model sequences/s by batch size.

    .venv/bin/python bench/scoring_bench.py [--batch-sizes 1,64,1024,8192] [--device cpu|cuda]
    .venv/bin/vigil bench scoring ...            # the same, as a CLI command

What is timed:
- isolation forest: `detector.iforest.IsolationForestDetector.score` (imputation plus
  sklearn `score_samples`), the exact call `TxScoringCore.process` makes, on the
  forest configuration the worker fits (100 trees, 256 samples per tree) fitted on
  synthetic feature rows shaped like `detector.features.FEATURE_NAMES`. Always CPU.
- sequence model: `models.scorers.TxSequenceScorer.score` (host -> device copy, the
  net's forward pass, softmax, device -> host copy) on padded (batch, max_len, features)
  arrays. With `--artifact-dir` the trained `tx_sequence` artifact there is loaded;
  otherwise a net of the default training size (hidden 64) is built with untrained
  weights (throughput does not depend on the weights' values). Vectorising windows is
  not included.

Each point repeats the call until `--min-seconds` of wall time (at least 3 calls) after
one untimed warm-up call; figures are printed, never asserted.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_BATCH_SIZES = (1, 64, 1024, 8192)


@dataclass
class ScoringBenchConfig:
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES
    device: str = "cpu"  # cpu | cuda | auto (sequence model only; the forest is CPU)
    min_seconds: float = 1.0
    fit_rows: int = 4096
    max_len: int = 64
    artifact_dir: Path | None = None
    seed: int = 0
    skip_sequence: bool = False


@dataclass
class ScoringResult:
    machine: dict[str, Any] = field(default_factory=dict)
    iforest: list[dict[str, float]] = field(default_factory=list)
    sequence: list[dict[str, float]] = field(default_factory=list)
    sequence_model: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "iforest": self.iforest,
            "sequence": self.sequence,
            "sequence_model": self.sequence_model,
        }


def machine_info() -> dict[str, Any]:
    import os

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def time_call(
    fn: Callable[[], Any], min_seconds: float, sync: Callable[[], None]
) -> tuple[int, float]:
    """(calls, seconds): one warm-up call, then repeat until `min_seconds` (>= 3 calls)."""
    fn()
    sync()
    calls = 0
    start = time.perf_counter()
    while True:
        fn()
        calls += 1
        sync()
        elapsed = time.perf_counter() - start
        if calls >= 3 and elapsed >= min_seconds:
            return calls, elapsed


def _no_sync() -> None:
    return None


def bench_iforest(
    cfg: ScoringBenchConfig, on_point: Callable[[str], None] | None = None
) -> list[dict[str, float]]:
    from detector.features import FEATURE_NAMES
    from detector.iforest import IsolationForestDetector

    rng = np.random.default_rng(cfg.seed)
    d = len(FEATURE_NAMES)
    train = rng.lognormal(0.0, 1.0, size=(cfg.fit_rows, d))
    forest = IsolationForestDetector(n_estimators=100, max_samples=256, seed=cfg.seed).fit(train)
    out = []
    for bs in cfg.batch_sizes:
        x = rng.lognormal(0.0, 1.0, size=(bs, d))

        def call(x: np.ndarray = x) -> Any:
            return forest.score(x)

        calls, secs = time_call(call, cfg.min_seconds, _no_sync)
        out.append(
            {
                "batch_size": float(bs),
                "rows_per_s": calls * bs / secs,
                "ms_per_batch": 1000.0 * secs / calls,
            }
        )
        if on_point is not None:
            on_point(f"iforest batch {bs}")
    return out


def _sequence_scorer(cfg: ScoringBenchConfig, batch: int) -> tuple[Any, dict[str, Any]]:
    from models.data.events import N_TX_EVENT_FEATURES
    from models.nets import NetConfig, SequenceClassifier
    from models.scorers import TX_ARTIFACT, TxSequenceScorer, load_scorer, make_bundle

    if cfg.artifact_dir is not None:
        scorer = load_scorer(cfg.artifact_dir, TX_ARTIFACT, device=cfg.device, batch_size=batch)
        meta = scorer.meta
        return scorer, {
            "source": f"artifact {cfg.artifact_dir} ({meta.version if meta else '?'})",
            "max_len": scorer.max_len,
            "features": scorer.n_features,
        }
    import torch

    torch.manual_seed(cfg.seed)
    classes = ("normal", "bot_a", "bot_b", "bot_c")
    net = SequenceClassifier(NetConfig(in_dim=N_TX_EVENT_FEATURES, n_classes=len(classes)))
    bundle = make_bundle(
        "tx",
        net,
        class_names=classes,
        feature_names=[f"f{i}" for i in range(N_TX_EVENT_FEATURES)],
        max_len=cfg.max_len,
    )
    scorer = TxSequenceScorer(bundle, device=cfg.device, batch_size=batch)
    return scorer, {
        "source": "untrained net of the default training size (hidden 64, 1 GRU layer)",
        "max_len": cfg.max_len,
        "features": N_TX_EVENT_FEATURES,
        "parameters": sum(p.numel() for p in net.parameters()),
    }


def bench_sequence(
    cfg: ScoringBenchConfig, on_point: Callable[[str], None] | None = None
) -> tuple[list[dict[str, float]], dict[str, Any]]:
    import torch

    rng = np.random.default_rng(cfg.seed)
    out = []
    info: dict[str, Any] = {}
    for bs in cfg.batch_sizes:
        scorer, info = _sequence_scorer(cfg, bs)
        x = rng.normal(size=(bs, scorer.max_len, scorer.n_features)).astype(np.float32)
        lengths = rng.integers(1, scorer.max_len + 1, size=bs)

        def sync(dev: Any = scorer.device) -> None:
            if dev.type == "cuda":
                torch.cuda.synchronize()

        def call(s: Any = scorer, x: np.ndarray = x, n: np.ndarray = lengths) -> Any:
            return s.score(x, n)

        calls, secs = time_call(call, cfg.min_seconds, sync)
        info["device"] = str(scorer.device)
        out.append(
            {
                "batch_size": float(bs),
                "sequences_per_s": calls * bs / secs,
                "ms_per_batch": 1000.0 * secs / calls,
            }
        )
        if on_point is not None:
            on_point(f"sequence batch {bs} on {scorer.device}")
    return out, info


def run_scoring_bench(
    cfg: ScoringBenchConfig, on_point: Callable[[str], None] | None = None
) -> ScoringResult:
    res = ScoringResult(machine=machine_info())
    res.iforest = bench_iforest(cfg, on_point)
    if not cfg.skip_sequence:
        res.sequence, res.sequence_model = bench_sequence(cfg, on_point)
    return res


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)))
    p.add_argument("--device", default="cpu")
    p.add_argument("--min-seconds", type=float, default=1.0)
    p.add_argument("--artifact-dir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    a = p.parse_args(argv)
    cfg = ScoringBenchConfig(
        batch_sizes=[int(b) for b in a.batch_sizes.split(",")],
        device=a.device,
        min_seconds=a.min_seconds,
        artifact_dir=a.artifact_dir,
    )
    res = run_scoring_bench(cfg, on_point=lambda s: print(s, file=sys.stderr))
    text = json.dumps(res.to_dict(), indent=2)
    print(text)
    if a.json is not None:
        a.json.write_text(text)


if __name__ == "__main__":
    main()
