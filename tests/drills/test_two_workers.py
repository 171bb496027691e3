"""Drill: two workers share the partitions (same app id), one is `kill -9`ed.

Every topic has 2 partitions; each worker has its own data dir (spool, model). After
the kill, the group rebalances and the survivor takes over the dead worker's
partitions from their last committed offsets: every produced tx is stored exactly
once. Scores are keyed by (tx_hash, model_version) and each worker fits its own model
on the partitions it saw during warm-up, so txs that the survivor replays are scored
again under its model version: no tx is unscored, but some get one score row per
model (measured and reported, see docs/operating.md).
"""

from __future__ import annotations

import time

import pytest

from tests.drills.conftest import DrillStack, TxPlan, wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("drill_stack", [2], indirect=True, ids=["partitions=2"])
def test_survivor_takes_over_partitions_of_killed_worker(
    drill_stack: DrillStack,
) -> None:
    st = drill_stack
    plan = TxPlan(senders=8, per_block=40)
    w1 = st.start_worker("w1")
    st.start_worker("w2")
    st.produce(plan.blocks(40))
    wait_for(
        lambda: st.health("w1")["txs"] > 0 and st.health("w2")["txs"] > 0,
        120,
        "both workers to own a partition",
    )
    st.produce(plan.blocks(40))
    wait_for(
        lambda: st.health("w1")["txs"] + st.health("w2")["txs"] >= 2400,
        120,
        "the workers to be mid-stream",
    )
    w1_done, w2_before = st.health("w1")["txs"], st.health("w2")["txs"]
    w1.kill()
    killed_at = time.monotonic()
    st.produce(plan.blocks(10))

    st.wait_stored(len(plan.produced), timeout=150)
    takeover_s = time.monotonic() - killed_at
    n, u, s = st.tx_counts()
    assert (n, u) == (len(plan.produced), len(plan.produced))
    missing = set(plan.produced) - {
        r[0] for r in st.query("SELECT tx_hash FROM transactions FINAL")
    }
    assert not missing
    ((scored_txs, multi),) = st.query(
        "SELECT uniqExact(tx_hash), countIf(c > 1) FROM "
        "(SELECT tx_hash, count() AS c FROM scores FINAL GROUP BY tx_hash)"
    )
    assert scored_txs == len(plan.produced)  # every tx scored, none lost
    versions = st.query("SELECT model_version, count() FROM scores FINAL GROUP BY model_version")
    w2_after = st.health("w2")["txs"]
    assert w2_after - w2_before > 0
    print(
        f"\ntwo-worker drill: {len(plan.produced)} txs; w1 {w1_done} + w2 {w2_before} before "
        f"the kill; w2 then processed {w2_after - w2_before}; all stored once "
        f"{takeover_s:.1f}s after the kill; {multi} txs have a score row per model version "
        f"({len(versions)} versions: {versions})"
    )
