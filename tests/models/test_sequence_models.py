"""Sequence models (issue 5): artifacts, determinism, scorers, held-out quality vs iforest.

Tiny data and nets so the whole file runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from detector import features as F
from models import registry
from models.cli import app as train_app
from models.cli import eval_app
from models.data.events import (
    N_TELEMETRY_CHANNELS,
    TELEMETRY_CHANNELS,
    TX_EVENT_FEATURES,
    bucket_telemetry,
    tx_event_vectors,
)
from models.data.modules import (
    TelemetryDataConfig,
    TxDataConfig,
    TxSequenceDataModule,
    build_tx_split,
)
from models.data.telemetry import NODE_FAMILIES, generate_node_sequences
from models.data.tx import TX_FAMILIES, generate_tx_entities
from models.evaluation.sequence import compare
from models.nets import SequenceClassifier
from models.scorers import (
    TELEMETRY_ARTIFACT,
    TX_ARTIFACT,
    TelemetrySequenceScorer,
    TxSequenceScorer,
    load_scorer,
)
from models.train import TrainConfig, train_telemetry_model, train_tx_model

ROOT = Path(__file__).resolve().parents[2]
TX_DATA = TxDataConfig(n_normal=400, n_per_family=80, max_len=48, seed=3)
TEL_DATA = TelemetryDataConfig(n_normal=800, n_per_family=160, n_steps=40, seed=3)
TINY = TrainConfig(epochs=10, batch_size=64, hidden=32, lr=5e-3, seed=7)


@pytest.fixture(scope="module", autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)  # tiny nets: one thread is fastest, and no spin-waits on a busy box


@pytest.fixture(scope="module")
def tx_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    train_tx_model(root, data=TX_DATA, train=TINY, device="cpu")
    return root


@pytest.fixture(scope="module")
def tel_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tel_artifacts")
    train = TrainConfig(epochs=15, batch_size=64, hidden=32, lr=5e-3, seed=7)
    train_telemetry_model(root, data=TEL_DATA, train=train, device="cpu")
    return root


# ----------------------------------------------------------------------------- data


def test_generators_are_seeded_and_splits_disjoint() -> None:
    counts = {f: 3 for f in TX_FAMILIES}
    a = generate_tx_entities(counts, seed=5, split="train")
    b = generate_tx_entities(counts, seed=5, split="train")
    assert [e.txs for e in a] == [e.txs for e in b]
    assert {e.family for e in a} == set(TX_FAMILIES)
    ids = {
        s: {e.address for e in generate_tx_entities(counts, seed=5, split=s)}
        for s in ("train", "dev", "heldout")
    }
    assert not ids["heldout"] & (ids["train"] | ids["dev"])
    for e in a:  # every sender's txs are its own, in time order, nonces never go down
        ts = [t.timestamp for t in e.txs]
        assert ts == sorted(ts) and all(t.sender == e.address for t in e.txs)
        assert 8 <= len(e.txs) <= 64
    nodes = generate_node_sequences({f: 2 for f in NODE_FAMILIES}, seed=5, split="heldout")
    again = generate_node_sequences({f: 2 for f in NODE_FAMILIES}, seed=5, split="heldout")
    assert all(np.array_equal(n.steps, m.steps) for n, m in zip(nodes, again, strict=True))
    assert all(n.steps.shape == (60, N_TELEMETRY_CHANNELS) for n in nodes)


def test_tx_vectors_come_from_the_streaming_window() -> None:
    """Offline sequences equal what a worker's SenderWindow holds after update() per tx."""
    ent = generate_tx_entities({"sandwich": 1}, seed=1, split="train")[0]
    state = None
    for tx in ent.txs:
        state = F.update(state, tx, window_s=1e15, max_events=64)
    assert state is not None
    a = build_tx_split(TxDataConfig(), "train", counts={"sandwich": 1}, seed=1)
    v = tx_event_vectors(state.events)
    assert v.shape == (len(ent.txs), len(TX_EVENT_FEATURES))
    assert np.array_equal(a.x[0, : a.lengths[0]], v)
    same_block = v[:, TX_EVENT_FEATURES.index("same_block")]
    assert same_block.sum() > 0  # sandwiches put front- and back-run in one block


def test_bucket_telemetry_builds_steps() -> None:
    recs = [
        {"kind": "heartbeat", "ts": 1.0, "queue_depth": 0, "gpu_util": 10.0},
        {
            "kind": "batch",
            "ts": 2.0,
            "latency_ms": 20.0,
            "batch_size": 4,
            "tokens": 400,
            "queue_depth": 2,
            "errors": 0,
            "gpu_util": 50.0,
        },
        {
            "kind": "batch",
            "ts": 3.0,
            "latency_ms": 40.0,
            "batch_size": 2,
            "tokens": 100,
            "queue_depth": 0,
            "errors": 0,
            "gpu_util": 70.0,
        },
        {
            "kind": "batch",
            "ts": 12.0,
            "latency_ms": 0.0,
            "batch_size": 2,
            "tokens": 0,
            "queue_depth": 0,
            "errors": 1,
            "gpu_util": 0.0,
        },
    ]
    steps = bucket_telemetry(recs, [(15.0, 900)], start_ts=0.0, step_s=10.0, n_steps=3)
    col = {c: i for i, c in enumerate(TELEMETRY_CHANNELS)}
    assert steps.shape == (3, N_TELEMETRY_CHANNELS)
    assert steps[0, col["batches"]] == 2 and steps[0, col["tokens"]] == 500
    assert steps[0, col["latency_ms"]] == 30.0 and steps[0, col["batch_size"]] == 3.0
    assert steps[1, col["errors"]] == 1 and steps[1, col["claimed_tokens"]] == 900
    assert steps[:, col["heartbeat_gap_s"]].tolist() == [9.0, 19.0, 29.0]


# ------------------------------------------------------------------- nets / modules


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_plain_modules_are_apart_from_lightning() -> None:
    assert "pytorch_lightning" not in _imports(ROOT / "models" / "nets.py")
    assert "pytorch_lightning" not in _imports(ROOT / "models" / "scorers.py")
    for path in (ROOT / "models").rglob("*.py"):
        assert "pipelines" not in _imports(path), f"{path} imports pipelines"
    import pytorch_lightning as pl

    assert not isinstance(SequenceClassifier, pl.LightningModule)
    assert issubclass(SequenceClassifier, torch.nn.Module)


# ---------------------------------------------------------------------- artifacts


def test_artifact_records_config_metrics_fingerprint(tx_root: Path) -> None:
    bundle, meta = registry.load(tx_root, TX_ARTIFACT)
    assert meta.config["kind"] == "tx"
    assert meta.config["data"] == TX_DATA.to_dict()
    assert meta.config["train"]["seed"] == TINY.seed
    assert meta.config["net"]["hidden"] == TINY.hidden
    assert meta.config["class_names"] == list(TX_FAMILIES)
    assert meta.config["trained_on"].startswith("cpu")
    for k in ("dev_roc_auc", "dev_average_precision", "train_seconds", "train_samples_per_s"):
        assert np.isfinite(meta.metrics[k]), k
    dm = TxSequenceDataModule(TX_DATA)
    assert meta.data_fingerprint == dm.train_arrays.fingerprint()
    vdir = tx_root / TX_ARTIFACT / meta.version
    ckpt = torch.load(vdir / "lightning.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["hidden"] == TINY.hidden
    assert ckpt["hyper_parameters"]["class_names"] == list(TX_FAMILIES)
    history = json.loads((vdir / "history.json").read_text())
    assert len(history) == TINY.epochs and "val_auroc" in history[-1]
    assert set(bundle["state_dict"]) >= {"encoder.feature_mean", "encoder.feature_std"}


def test_training_is_seeded_and_deterministic(tmp_path: Path) -> None:
    data = TxDataConfig(n_normal=40, n_per_family=8, max_len=24, seed=4)
    train = TrainConfig(epochs=2, batch_size=16, hidden=16, seed=5)
    a = train_tx_model(tmp_path / "a", data=data, train=train, device="cpu")
    b = train_tx_model(tmp_path / "b", data=data, train=train, device="cpu")
    assert a.meta.version == b.meta.version  # same config + same data fingerprint
    assert a.meta.data_fingerprint == b.meta.data_fingerprint
    first, _ = registry.load(tmp_path / "a", TX_ARTIFACT)
    second, _ = registry.load(tmp_path / "b", TX_ARTIFACT)
    for k, v in first["state_dict"].items():
        assert np.array_equal(v, second["state_dict"][k]), k
    other = train_tx_model(
        tmp_path / "c",
        data=data,
        train=TrainConfig(epochs=2, batch_size=16, hidden=16, seed=6),
        device="cpu",
    )
    assert other.meta.version != a.meta.version


# ------------------------------------------------------------------------- scorers


def test_scorer_batches_and_shapes(tx_root: Path) -> None:
    scorer = load_scorer(tx_root, TX_ARTIFACT)
    assert isinstance(scorer, TxSequenceScorer)
    ents = generate_tx_entities({f: 2 for f in TX_FAMILIES}, seed=9, split="heldout")
    windows = [F.featurize({}, e.txs, window_s=1e15, max_events=64)[0][e.address] for e in ents]
    s = scorer.score_windows([*windows, np.empty((0, F.N_COLUMNS))])
    assert s.shape == (len(ents) + 1,) and np.isnan(s[-1])
    assert np.all((s[:-1] >= 0) & (s[:-1] <= 1))
    assert np.allclose(scorer.score_txs([e.txs for e in ents]), s[:-1])
    x, lengths = scorer.vectorise_windows(windows)
    assert x.shape == (len(ents), scorer.max_len, len(TX_EVENT_FEATURES))
    p = scorer.predict_proba(x, lengths)
    assert p.shape == (len(ents), len(TX_FAMILIES)) and np.allclose(p.sum(1), 1, atol=1e-5)
    small = TxSequenceScorer.load(tx_root, TX_ARTIFACT, batch_size=3)
    assert np.allclose(small.score(x, lengths), s[:-1], atol=1e-5)  # batching is invisible
    assert len(scorer.explain(x, lengths)) == len(ents)
    with pytest.raises(ValueError):
        scorer.score(x[:, :, :5], lengths)


def test_telemetry_scorer(tel_root: Path) -> None:
    scorer = load_scorer(tel_root, TELEMETRY_ARTIFACT)
    assert isinstance(scorer, TelemetrySequenceScorer)
    nodes = generate_node_sequences(
        {f: 2 for f in NODE_FAMILIES}, seed=9, split="heldout", n_steps=40
    )
    s = scorer.score_steps([n.steps for n in nodes])
    assert s.shape == (len(nodes),) and np.all((s >= 0) & (s <= 1))


# -------------------------------------------------------------- held-out comparison


def test_tx_model_beats_iforest_on_heldout(tx_root: Path) -> None:
    c = compare("tx", tx_root, heldout_seed=11, n_normal=400, n_per_family=80)
    seq, forest = c.overall["sequence"], c.overall["iforest"]
    assert seq.roc_auc >= 0.9, c.overall
    assert seq.roc_auc > forest.roc_auc and seq.average_precision > forest.average_precision
    assert set(c.per_family) == set(TX_FAMILIES[1:])
    for f in ("hf_bot", "spam"):
        assert c.per_family[f]["sequence"].roc_auc >= 0.9, (f, c.per_family[f])


def test_telemetry_model_beats_iforest_on_heldout(tel_root: Path) -> None:
    c = compare("telemetry", tel_root, heldout_seed=11, n_normal=300, n_per_family=60)
    seq, forest = c.overall["sequence"], c.overall["iforest"]
    assert seq.roc_auc >= 0.85, c.overall
    assert seq.roc_auc > forest.roc_auc


# ----------------------------------------------------------------------------- CLI


def test_cli_trains_and_evaluates(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(
        train_app,
        [
            "tx",
            "--out",
            str(tmp_path),
            "--epochs",
            "1",
            "--n-normal",
            "40",
            "--n-per-family",
            "8",
            "--device",
            "cpu",
            "--exclude",
            "wash",
        ],
    )
    assert r.exit_code == 0, r.output
    _, meta = registry.load(tmp_path, TX_ARTIFACT)
    assert "wash" not in meta.config["data"]["families"]
    out = tmp_path / "cmp.json"
    r = runner.invoke(
        eval_app, ["sequence", "tx", "--artifacts", str(tmp_path), "--json-out", str(out)]
    )
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())[0]
    assert "wash" in got["per_family"] and "wash" not in got["trained_families"]
