"""The transaction agent's state log: deltas, chunking, crash-cut batches, markers."""

from __future__ import annotations

import numpy as np

from detector.features import FEATURE_NAMES
from detector.types import Tx
from pipelines.txstate import (
    PartitionState,
    encode_delta,
    encode_marker,
    encode_snapshot,
    from_warm_entries,
    replay,
    warm_entry,
)


def _window(n: int) -> dict[str, object]:
    return {"v": 1, "window_s": 30.0, "n": n, "events": "A" * (n * 100)}


def test_a_batch_round_trips_through_the_log() -> None:
    chunks = encode_delta(
        "b1",
        {"0xa": [10.0, _window(1)], "0xb": [12.0, _window(2)]},
        {"0xa": {"streak": 2}},
        [],
        applied_offset=41,
    )
    r = replay([*chunks, encode_marker("m")], "m")
    assert r.found_marker
    assert r.state.windows == {"0xa": _window(1), "0xb": _window(2)}
    assert r.state.seen == {"0xa": 10.0, "0xb": 12.0}
    assert r.state.alerts == {"0xa": {"streak": 2}}
    assert r.state.applied_offset == 41


def test_a_large_batch_is_split_into_chunks_under_the_limit() -> None:
    windows = {f"0x{i:040x}": [float(i), _window(20)] for i in range(200)}
    chunks = encode_delta("big", windows, {}, [], applied_offset=7, max_bytes=20_000)
    assert len(chunks) > 10
    assert all(len(c) < 25_000 for c in chunks)
    r = replay([*chunks, encode_marker("m")], "m")
    assert len(r.state.windows) == 200
    assert r.state.applied_offset == 7


def test_a_batch_cut_short_by_a_crash_is_dropped_whole() -> None:
    """Applying part of a batch and then reprocessing the batch would count its txs twice
    for some senders: chunks without their batch's last chunk must not be applied."""
    first = encode_delta("b1", {"0xa": [1.0, _window(1)]}, {}, [], applied_offset=5)
    windows = {f"0x{i:040x}": [2.0, _window(20)] for i in range(50)}
    cut = encode_delta("b2", windows, {}, [], applied_offset=9, max_bytes=10_000)[:-1]
    r = replay([*first, *cut, encode_marker("m")], "m")
    assert set(r.state.windows) == {"0xa"}
    assert r.state.applied_offset == 5
    assert r.discarded_chunks == len(cut)


def test_replay_stops_at_its_own_marker_and_skips_others() -> None:
    """Everything acknowledged before recovery precedes the recovering worker's marker;
    what follows it belongs to a later writer."""
    a = encode_delta("b1", {"0xa": [1.0, _window(1)]}, {}, [], applied_offset=1)
    b = encode_delta("b2", {"0xb": [2.0, _window(1)]}, {}, [], applied_offset=2)
    c = encode_delta("b3", {"0xc": [3.0, _window(1)]}, {}, [], applied_offset=3)
    r = replay([*a, encode_marker("old"), *b, encode_marker("mine"), *c], "mine")
    assert set(r.state.windows) == {"0xa", "0xb"}
    assert r.state.applied_offset == 2


def test_later_deltas_win_and_evictions_remove_windows() -> None:
    a = encode_delta("b1", {"0xa": [1.0, _window(1)], "0xb": [1.0, _window(1)]}, {}, [], 1)
    b = encode_delta("b2", {"0xa": [100.0, _window(3)]}, {}, ["0xb"], 2)
    r = replay([*a, *b, encode_marker("m")], "m")
    assert r.state.windows == {"0xa": _window(3)}
    assert r.state.seen == {"0xa": 100.0}


def test_expired_lists_idle_windows_at_most_once_per_horizon() -> None:
    st = PartitionState()
    st.apply({"0xa": [0.0, _window(1)], "0xb": [95.0, _window(1)]}, {}, [])
    assert st.expired(100.0, 60.0) == ["0xa"]
    assert st.expired(110.0, 60.0) == []  # checked again only a horizon later
    assert st.expired(170.0, 60.0) == ["0xa", "0xb"]


def _tx(i: int, t: float) -> Tx:
    return Tx(
        tx_hash=f"0x{i:064x}",
        sender=f"0x{i % 5:040x}",
        to=f"0x{99:040x}",
        value_wei=10**30 + i,  # beyond 64 bits: kept exact
        gas_price_wei=2**70,
        gas=21_000,
        nonce=i,
        selector="",
        status=1,
        block_number=i,
        timestamp=t,
    )


def test_warm_up_entries_round_trip_and_clear_once_scored() -> None:
    txs = [_tx(i, 100.0 + i) for i in range(4)]
    rows = np.array([[1.0, np.nan], [2.0, 3.0], [np.nan, np.nan], [0.5, 0.25]])
    entries = [warm_entry(t, r) for t, r in zip(txs, rows, strict=True)]
    a = encode_delta("b1", {}, {}, [], 3, warm=entries[:2])
    b = encode_delta("b2", {}, {}, [], 4, warm=entries[2:], max_bytes=200)
    r = replay([*a, *b, encode_marker("m")], "m")
    back_txs, back_rows = from_warm_entries(r.state.warm)
    assert back_txs == txs
    np.testing.assert_array_equal(back_rows, rows)
    done = encode_delta("b3", {}, {}, [], 5, warm_done=True)
    assert replay([*a, *b, *done, encode_marker("m")], "m").state.warm == []


def test_core_restore_buffers_before_the_fit_and_scores_after() -> None:
    from pipelines.scoring import ScoringConfig, TxScoringCore, fit_model

    cfg = ScoringConfig(warmup_rows=20)
    txs = [_tx(i, 1000.0 + i) for i in range(3)]
    rows = np.random.default_rng(0).normal(size=(3, len(FEATURE_NAMES)))
    core = TxScoringCore(cfg)
    assert core.restore(txs, rows) == []  # no model yet: back into the warm-up buffer
    assert core._warm_txs == txs and core._stream_start == 1000.0

    core.model = fit_model(np.random.default_rng(1).normal(size=(64, len(FEATURE_NAMES))), cfg)
    scored = core.restore(txs, rows)  # fitted meanwhile: scored now, once
    assert [s.tx for s in scored] == txs
    assert all(np.isfinite(s.score) for s in scored)


def test_a_replay_from_a_snapshot_needs_nothing_older() -> None:
    """Recovery seeks to the latest snapshot's first chunk: it must rebuild the state
    alone, and what follows it applies on top; chunks of a cut snapshot change nothing."""
    a = encode_delta("b1", {"0xa": [1.0, _window(1)], "0xb": [2.0, _window(2)]}, {}, [], 4)
    b = encode_delta("b2", {"0xa": [3.0, _window(3)]}, {"0xa": {"streak": 1}}, ["0xb"], 6)
    full = replay([*a, *b, encode_marker("m")], "m").state
    snap = encode_snapshot("s1", full, max_bytes=300)
    assert len(snap) > 1
    c = encode_delta("b3", {"0xc": [9.0, _window(1)]}, {}, [], 8)
    r = replay([*snap, *c, encode_marker("m")], "m")
    assert r.snapshots == 1 and r.deltas == 1
    assert r.state.windows == {"0xa": _window(3), "0xc": _window(1)}
    assert r.state.seen == {"0xa": 3.0, "0xc": 9.0}
    assert r.state.alerts == {"0xa": {"streak": 1}}
    assert r.state.applied_offset == 8
    # the same log read from its start ends in the same state
    whole = replay([*a, *b, *snap, *c, encode_marker("m")], "m").state
    assert (whole.windows, whole.alerts, whole.applied_offset) == (
        r.state.windows,
        r.state.alerts,
        r.state.applied_offset,
    )
    cut = replay([*a, *b, *snap[:-1], encode_marker("m")], "m")
    assert cut.state.windows == full.windows and cut.snapshots == 0
