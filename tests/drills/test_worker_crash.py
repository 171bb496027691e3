"""Drill: the Faust worker is `kill -9`ed mid-stream and restarted.

Kafka delivers at least once (offsets are committed after processing, every few
seconds), so the restarted worker is handed again what it processed but did not commit.
The worker's state log (pipelines/txstate.py) records the highest source offset whose
effects are fully written; the restarted worker recovers its per-sender state from that
log (reading up to its own marker, never trusting the broker's end offsets) and skips
what was already applied. ClickHouse's ReplacingMergeTree keys (`transactions` by
tx_hash, `scores` by (tx_hash, model_version)) would hide a replay from `FINAL` readers
anyway. The drill checks exactly-once storage and scoring of every produced transaction
and that every stored feature row equals a crash-free run's: per-sender state recovered
exactly.
"""

from __future__ import annotations

import json
import math
import time

import pytest

from detector.features import FEATURE_NAMES, featurize
from pipelines.records import decode_tx_batch
from tests.drills.conftest import DrillStack, TxPlan, wait_for

pytestmark = pytest.mark.integration


def offline_features(messages: list[bytes], window_s: float = 30.0) -> dict[str, list[float]]:
    """What the worker should have stored for each tx had it never crashed: the same
    pure `featurize` over the same messages, in order (one partition)."""
    states: dict = {}
    out: dict[str, list[float]] = {}
    for raw in messages:
        batch = decode_tx_batch(raw)
        senders = {t.sender for t in batch.txs}
        new, rows = featurize(
            {s: states.get(s) for s in senders}, batch.txs, window_s=window_s, max_events=64
        )
        states.update(new)
        for tx, row in zip(batch.txs, rows, strict=True):
            out[tx.tx_hash] = [float(v) for v in row]
    return out


def _same(a: list[float], b: list[float | None]) -> bool:
    for x, y in zip(a, b, strict=True):
        if y is None:
            if math.isfinite(x):
                return False
        elif not math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9):
            return False
    return True


class Recorded:
    """The drill's block stream, with every message kept for the crash-free replay."""

    def __init__(self, st: DrillStack) -> None:
        self.st = st
        self.plan = TxPlan(senders=8, per_block=40)
        self.messages: list[bytes] = []

    def produce(self, blocks: int) -> None:
        msgs = self.plan.blocks(blocks)
        self.messages.extend(v for _, v in msgs)
        self.st.produce(msgs)

    def features_differ(self) -> list[str]:
        """Txs whose stored feature row differs from a crash-free offline run's."""
        expect = offline_features(self.messages)
        stored = {
            r[0]: json.loads(r[1])
            for r in self.st.query("SELECT tx_hash, features FROM scores FINAL")
        }
        return [
            tx
            for tx, row in expect.items()
            if not _same(row, [stored[tx].get(n) for n in FEATURE_NAMES])
        ]


def test_kill9_mid_stream_every_tx_stored_and_scored_once(
    drill_stack: DrillStack,
) -> None:
    st = drill_stack
    rec = Recorded(st)
    plan, produce = rec.plan, rec.produce
    worker = st.start_worker()
    produce(40)  # 30 s of block time fills the windows, then 50 steady rows fit the forest
    wait_for(lambda: st.health()["warming_up"] == 0, 90, "the model to be fitted")
    before_kill = len(plan.produced)
    produce(60)  # ~480 more messages: the worker is busy with these when it dies
    wait_for(lambda: st.health()["txs"] >= before_kill + 800, 90, "the worker to be mid-stream")
    seen = st.health()["txs"]
    worker.kill()  # SIGKILL the process group: no commit, no flush, no goodbye
    killed_at = time.monotonic()
    stored_at_kill = st.tx_counts()[1]
    produce(10)  # the stream goes on while no worker runs
    assert stored_at_kill < len(plan.produced), "the kill came too late to be mid-stream"

    st.start_worker()
    restart_s = time.monotonic() - killed_at
    t0 = time.monotonic()
    st.wait_stored(len(plan.produced), timeout=150)
    catch_up_s = time.monotonic() - t0
    st.assert_exactly_once(plan.produced)
    versions = st.query("SELECT DISTINCT model_version FROM scores FINAL")
    assert len(versions) == 1, f"the restart refitted the model: {versions}"
    h = st.health()
    assert h["dlq"] == 0

    # Per-sender state after the restart: the stored features equal a crash-free run's.
    differ = rec.features_differ()
    tx_block = {tx: i // plan.per_block + 1 for i, tx in enumerate(plan.produced)}
    differ_blocks = sorted({tx_block[tx] for tx in differ})
    replayed = h["txs"] - (len(plan.produced) - seen)  # processed by the new worker
    print(
        f"\nkill -9 drill: {len(plan.produced)} txs, {seen} processed before the kill, "
        f"{stored_at_kill} stored; new worker processed {h['txs']} (replayed ~{replayed}); "
        f"restart {restart_s:.1f}s, catch-up {catch_up_s:.1f}s; "
        f"{len(differ)} txs with features != crash-free run "
        f"in blocks {differ_blocks[:3]}..{differ_blocks[-3:]}; kill around block "
        f"{seen // plan.per_block + 1}"
    )
    assert not differ, f"{len(differ)} txs scored from state that the restart got wrong"


def test_kill9_during_warm_up_loses_no_scores(drill_stack: DrillStack) -> None:
    """The forest is fitted only after a warm-up; txs that arrive before are buffered
    unscored (their offsets already committed). The state log keeps them, so a worker
    killed before the fit scores them after the restart, once, from the same features."""
    st = drill_stack
    rec = Recorded(st)
    plan, produce = rec.plan, rec.produce
    worker = st.start_worker()
    produce(25)  # 25 s of block time: the 30 s windows are still filling, no fit yet
    wait_for(lambda: st.health()["txs"] >= len(plan.produced), 90, "the warm-up batches")
    assert st.health()["warming_up"] == 1
    time.sleep(4)  # past Faust's commit interval: the buffered txs' offsets are committed
    worker.kill()
    assert st.tx_counts()[2] == 0, "nothing is scored before the fit"

    st.start_worker()
    produce(30)
    st.wait_stored(len(plan.produced), timeout=150)
    st.assert_exactly_once(plan.produced)
    differ = rec.features_differ()
    assert not differ, f"{len(differ)} txs scored from state that the restart got wrong"
