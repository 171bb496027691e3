"""`remove`: a reorg's orphaned transactions stop counting in a sender's window."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.features import SenderWindow, features, featurize, remove, update
from detector.types import Tx

W, M = 600.0, 64


def _tx(i: int, t: float, *, sender: str = "0xa", value: int = 10**18) -> Tx:
    return Tx(
        tx_hash=f"0x{i:064x}",
        sender=sender,
        to=f"0x{i % 3:040x}",
        value_wei=value,
        gas_price_wei=2 * 10**9 + i,
        gas=21_000,
        nonce=i,
        selector="",
        status=1,
        block_number=100 + i,
        timestamp=t,
    )


def _window(txs: list[Tx]) -> SenderWindow:
    st_: SenderWindow | None = None
    for tx in txs:
        st_ = update(st_, tx, window_s=W, max_events=M)
    assert st_ is not None
    return st_


def test_removing_orphaned_txs_equals_never_having_seen_them() -> None:
    txs = [_tx(i, 1_000.0 + 7 * i) for i in range(12)]
    orphaned = {txs[4].tx_hash, txs[9].tx_hash, txs[11].tx_hash}
    full = _window(txs)
    kept = _window([t for t in txs if t.tx_hash not in orphaned])
    after = remove(full, orphaned)
    assert after == kept
    assert np.array_equal(features(after), features(kept), equal_nan=True)


def test_nothing_to_remove_returns_the_same_state_and_input_is_untouched() -> None:
    full = _window([_tx(i, 1_000.0 + i) for i in range(6)])
    before = full.events.copy()
    assert remove(full, ["0x" + "ff" * 32, "not-a-hash"]) is full
    assert remove(full, []) is full
    out = remove(full, [f"0x{2:064x}"])
    assert len(out) == 5 and np.array_equal(full.events, before)


def test_a_removed_tx_counts_again_when_reincluded() -> None:
    txs = [_tx(i, 1_000.0 + i) for i in range(6)]
    full = _window(txs)
    gone = remove(full, [txs[5].tx_hash])
    back = update(gone, txs[5], window_s=W, max_events=M)
    assert back == full
    # without the removal, redelivery would have been ignored (dedup by hash)
    assert update(full, txs[5], window_s=W, max_events=M) is full


def test_removal_round_trips_through_the_table_form() -> None:
    full = _window([_tx(i, 1_000.0 + i) for i in range(8)])
    out = remove(SenderWindow.from_dict(full.to_dict()), [f"0x{3:064x}"])
    assert SenderWindow.from_dict(out.to_dict()) == out


@settings(max_examples=150, deadline=None)
@given(
    times=st.lists(st.floats(0.0, 500.0, allow_nan=False), min_size=1, max_size=30),
    drop=st.sets(st.integers(0, 29)),
)
def test_remove_matches_the_window_built_without_the_removed_txs(
    times: list[float], drop: set[int]
) -> None:
    txs = [_tx(i, t) for i, t in enumerate(sorted(times))]  # in order, no trimming (W big)
    full = featurize({}, txs, window_s=W, max_events=M)[0]["0xa"]
    hashes = [txs[i].tx_hash for i in drop if i < len(txs)]
    kept = [t for t in txs if t.tx_hash not in set(hashes)]
    out = remove(full, hashes)
    if kept:
        assert out == featurize({}, kept, window_s=W, max_events=M)[0]["0xa"]
    else:
        assert len(out) == 0
