"""The tx sequence model inside `TxScoringCore`: loaded from the registry, one batched score
per sender and batch, recorded as `scores` rows, a hit is soft evidence; off changes nothing.

The artifact is a randomly initialised net saved through the registry (no training: fast);
thresholds pick whether its scores hit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from detector.policy import AlertPolicy
from detector.types import Tx
from models import registry
from models.data.events import N_TX_EVENT_FEATURES, TX_EVENT_FEATURES
from models.data.tx import TX_FAMILIES
from models.nets import NetConfig, SequenceClassifier
from models.scorers import TX_ARTIFACT, calibrated_threshold, make_bundle
from pipelines.scenario_eval import (
    TxEntity,
    render_markdown,
    run_scenarios,
    sequence_comparison,
    sequence_markdown,
)
from pipelines.scoring import (
    SEQUENCE_DETECTOR_NAME,
    SEQUENCE_VERSION_PREFIX,
    BatchResult,
    ScoringConfig,
    SequenceModelMissing,
    TxScoringCore,
)
from pipelines.settings import Settings
from pipelines.storage import rows
from pipelines.storage.schema import TABLE_COLUMNS

SENDERS = ("0xaaa", "0xbbb", "0xccc")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Small nets on a shared CPU: more torch threads only spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tx sequence artifact (dev quantiles stored, as training does)."""
    torch.manual_seed(0)
    net = SequenceClassifier(NetConfig(in_dim=N_TX_EVENT_FEATURES, n_classes=6, hidden=8))
    bundle = make_bundle(
        "tx", net, class_names=TX_FAMILIES, feature_names=TX_EVENT_FEATURES, max_len=64
    )
    root = tmp_path_factory.mktemp("seq")
    registry.save(
        root,
        TX_ARTIFACT,
        bundle,
        config={"kind": "tx", "trained_on": "random"},
        metrics={"dev_normal_q99": 0.4, "dev_normal_q999": 0.5},
    )
    return root


def _blocks(n: int = 90) -> list[list[Tx]]:
    """One 1 s block per second; every sender sends one tx per block (two in block 50)."""
    out = []
    for b in range(n):
        txs = [
            Tx(
                tx_hash=f"0x{b:04x}{i:02x}",
                sender=s,
                to="0xdex",
                value_wei=10**15 * (1 + b % 3),
                gas_price_wei=20 * 10**9,
                gas=21000,
                nonce=b,
                selector="",
                status=1,
                block_number=b,
                timestamp=1000.0 + b,
            )
            for i, s in enumerate(SENDERS)
        ]
        if b == 50:
            txs.append(replace(txs[0], tx_hash="0xlate", nonce=10_000, timestamp=1000.5 + b))
        out.append(txs)
    return out


def _cfg(**kw: object) -> ScoringConfig:
    """Forest hits impossible (huge margin) and no rules: only the sequence can alert."""
    return replace(
        ScoringConfig(
            warmup_rows=40,
            rules=None,
            fanout=None,
            policy=AlertPolicy(min_consecutive=3, evidence_window=4, model_margin=1e9),
        ),
        **kw,  # type: ignore[arg-type]
    )


def _run(core: TxScoringCore) -> list[BatchResult]:
    states: dict = {}
    alert_states: dict = {}
    out = []
    for txs in _blocks():
        senders = {t.sender for t in txs}
        r = core.process(
            txs, {s: states.get(s) for s in senders}, {s: alert_states.get(s) for s in senders}
        )
        states.update(r.states)
        alert_states.update(r.alert_states)
        out.append(r)
    return out


def test_sequence_rows_once_per_sender_on_its_newest_tx(artifacts: Path) -> None:
    core = TxScoringCore(_cfg(sequence_model_dir=artifacts, sequence_device="cpu"))
    assert core.sequence is not None
    assert core.sequence_threshold == 0.5  # the artifact's stored 0.1 % dev-FPR quantile
    results = _run(core)
    first = next(i for i, r in enumerate(results) if r.sequence)
    assert first == 7  # 8 events in the window (sequence_min_events)
    for r in results[first:]:
        assert sorted(s.tx.sender for s in r.sequence) == sorted(SENDERS)
    late = {s.tx.sender: s.tx.tx_hash for s in results[50].sequence}
    assert late["0xaaa"] == "0xlate"  # the sender's newest tx of the batch
    recorded = rows.sequence_score_rows(results[50].sequence, scored_at=2000.0)
    assert len(recorded) == 3 and all(len(r) == len(TABLE_COLUMNS["scores"]) for r in recorded)
    version = core.sequence_version
    assert version.startswith(SEQUENCE_VERSION_PREFIX) and len(version) > len(
        SEQUENCE_VERSION_PREFIX
    )
    for row, sq in zip(recorded, results[50].sequence, strict=True):
        assert row[0] == sq.tx.tx_hash and row[6] == version
        assert 0.0 <= row[4] <= 1.0 and row[5] == 0.5
        assert json.loads(row[7]) == {"window_events": sq.events, "looks_like": sq.looks_like}


def test_sequence_hit_is_evidence_and_lands_in_the_alert(artifacts: Path) -> None:
    hit = TxScoringCore(
        _cfg(sequence_model_dir=artifacts, sequence_device="cpu", sequence_threshold=1e-9)
    )
    alerts = [a for r in _run(hit) for a in r.alerts]
    assert {a.entity for a in alerts} == set(SENDERS)
    assert {a.detector for a in alerts} == {SEQUENCE_DETECTOR_NAME}
    doc = json.loads(alerts[0].evidence)
    assert doc["sequence"]["model_version"] == hit.sequence_version
    assert doc["sequence"]["score"] >= doc["sequence"]["threshold"] == 1e-9
    # the same model under a threshold it never reaches: scored, never evidence
    never = TxScoringCore(
        _cfg(sequence_model_dir=artifacts, sequence_device="cpu", sequence_threshold=1.5)
    )
    results = _run(never)
    assert any(r.sequence for r in results) and not [a for r in results for a in r.alerts]


def test_off_by_default_changes_nothing(artifacts: Path) -> None:
    s = Settings()
    assert s.sequence_model_dir is None
    cfg = ScoringConfig.from_settings(s)
    assert cfg.sequence_model_dir is None
    base = _cfg(policy=AlertPolicy(min_consecutive=3, evidence_window=4))  # forest can alert
    off = _run(TxScoringCore(base))
    assert all(r.sequence == [] for r in off)
    assert rows.sequence_score_rows([], scored_at=0.0) == []
    again = _run(TxScoringCore(replace(base, sequence_model_dir=None)))
    assert [a.evidence_hash for r in off for a in r.alerts] == [
        a.evidence_hash for r in again for a in r.alerts
    ]
    assert all("sequence" not in json.loads(a.evidence) for r in off for a in r.alerts)


def test_missing_artifact_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SequenceModelMissing, match="vigil train tx --out"):
        TxScoringCore(_cfg(sequence_model_dir=tmp_path / "empty"))


def test_settings_read_the_sequence_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_SEQUENCE_MODEL_DIR", "/models")
    monkeypatch.setenv("VIGIL_SEQUENCE_DEVICE", "cuda")
    cfg = ScoringConfig.from_settings(Settings())
    assert cfg.sequence_model_dir == Path("/models") and cfg.sequence_device == "cuda"
    monkeypatch.setenv("VIGIL_SEQUENCE_DEVICE", "tpu")
    with pytest.raises(ValueError):
        Settings()


def test_calibrated_threshold_fallbacks() -> None:
    meta = registry.ArtifactMeta("x", "v", 0.0, {}, {"dev_normal_q99": 0.3})
    assert calibrated_threshold(meta) == 0.3
    assert calibrated_threshold(None) == 0.5


def test_comparison_arithmetic_and_markdown() -> None:
    def ent(label: str, forest: float, seq: float, hist: float = -math.inf) -> TxEntity:
        return TxEntity("e", label, 1, forest, False, None, 0, seq, hist)

    dev = [ent("normal", 0.1 * i, 0.1 * i) for i in range(10)]  # 99 % quantile: 0.9
    held = [
        ent("normal", 0.5, 0.2),
        ent("normal", 0.95, 0.1),
        ent("hf_bot", 0.99, -math.inf),  # never sequence-scored: ranks last
        ent("spammer", 0.2, 0.97, 0.97),
    ]
    c = sequence_comparison(
        held, dev, artifact="v", trained_on="cpu", dev_seeds=(1,), live_threshold=0.5
    )
    by = {r.family: r for r in c.rows}
    assert c.thresholds["forest"] == pytest.approx(0.9) and c.heldout_fpr["forest"] == 0.5
    assert by["hf_bot"].roc_auc["forest"] == 1.0 and by["hf_bot"].roc_auc["sequence"] == 0.0
    assert by["spammer"].recall == {"forest": 0.0, "sequence": 1.0, "sequence_history": 1.0}
    assert by["hf_bot"].sequence_scored == 0 and by["all bots"].entities == 2
    md = "\n".join(sequence_markdown(c))
    assert "| spammer | 1 | 1 | 0.000 | 1.000 | 1.000 | 0.00 | 1.00 | 1.00 |" in md
    assert "--sequence-artifacts" in "\n".join(sequence_markdown(None))


def test_short_replay_with_the_sequence_model(artifacts: Path) -> None:
    r = run_scenarios(
        (101,),
        60.0,
        honest_nodes=2,
        nodes_per_fault=1,
        node_steps=10,
        sequence_artifacts=artifacts,
        dev_seeds=(1,),
    )
    assert r.sequence is not None and r.sequence.artifact
    assert r.sequence.normal_sequence_scored > 0
    assert "isolation forest vs tx sequence model" in render_markdown(r)
