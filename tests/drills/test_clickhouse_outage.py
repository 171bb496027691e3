"""Drill: ClickHouse goes away for a while (SIGTERM), the stream does not stop.

While the server is down the worker keeps consuming: `Sink` hands rows to
`BatchedWriter`, which spools them to `<data_dir>/spool/` (fsynced files) and
replays them, oldest first and with dedup tokens, once the server answers again on
the same port and data dir. Afterwards every produced tx is stored and scored
exactly once, the spool is empty, nothing was rejected, and the worker's memory
stayed bounded (spooled rows live on disk, not in RAM).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.drills.conftest import DrillStack, TxPlan, rss_kb, wait_for

pytestmark = pytest.mark.integration

OUTAGE_S = 20.0


def spooled(spool: Path) -> list[Path]:
    return [p for p in spool.rglob("*.batch.json") if "rejected" not in p.parts]


def test_clickhouse_outage_rows_spooled_then_delivered_once(
    drill_stack: DrillStack,
) -> None:
    st = drill_stack
    plan = TxPlan(senders=8, per_block=40)
    worker = st.start_worker()
    spool = st.settings("worker").data_dir / "spool"
    st.produce(plan.blocks(40))
    wait_for(lambda: st.health()["warming_up"] == 0, 90, "the model to be fitted")
    st.wait_stored(len(plan.produced), timeout=90)
    rss_before = rss_kb(worker.pid)

    assert st.stop_clickhouse() is not None  # SIGTERM: the server exits
    down_at = time.monotonic()
    before = st.health()["txs"]
    max_spooled, rss_peak = 0, rss_before
    while time.monotonic() - down_at < OUTAGE_S:  # the chain keeps producing
        st.produce(plan.blocks(4))
        time.sleep(1.0)
        max_spooled = max(max_spooled, len(spooled(spool)))
        rss_peak = max(rss_peak, rss_kb(worker.pid))
    during = st.health()["txs"] - before
    assert worker.alive(), st.worker_log()[-3000:]
    assert max_spooled > 0, "nothing was spooled while ClickHouse was down"
    assert during > 0, "the worker stopped consuming while ClickHouse was down"

    st.start_clickhouse()  # same data dir, same port
    outage_s = time.monotonic() - down_at
    t0 = time.monotonic()
    st.wait_stored(len(plan.produced), timeout=120)
    recover_s = time.monotonic() - t0
    wait_for(lambda: not spooled(spool), 30, "the spool to drain")
    st.assert_exactly_once(plan.produced)
    rejected = list(spool.rglob("rejected/*"))
    assert not rejected, f"ClickHouse rejected spooled batches: {rejected[:3]}"
    rss_after = rss_kb(worker.pid)
    assert rss_peak < rss_before + 200_000, (rss_before, rss_peak)  # < +200 MB

    print(
        f"\nClickHouse outage drill: down {outage_s:.1f}s, worker processed {during} txs "
        f"meanwhile, up to {max_spooled} spool files; all {len(plan.produced)} txs stored "
        f"once {recover_s:.1f}s after the restart; RSS {rss_before // 1024} -> peak "
        f"{rss_peak // 1024} -> {rss_after // 1024} MB"
    )
