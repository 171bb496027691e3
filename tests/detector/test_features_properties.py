"""Property tests: arbitrary tx sequences (late, duplicated, extreme) never break the windows,
and the vectorised batch path always equals one-at-a-time updates."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.features import N_COLUMNS, N_FEATURES, SenderWindow, features, featurize, update
from detector.types import Tx

HASHES = [f"0x{i:064x}" for i in range(40)] + ["dup", "0xnot-hex", ""]

txs_strategy = st.builds(
    Tx,
    tx_hash=st.sampled_from(HASHES),  # small pool: redeliveries happen often
    sender=st.sampled_from(["0xa", "0xb", "0xc"]),
    to=st.sampled_from(["", "0xr1", "0xR1", "0xr2", "0xr3"]),
    value_wei=st.integers(0, 2**256 - 1),
    gas_price_wei=st.integers(0, 2**64),
    gas=st.integers(0, 30_000_000),
    nonce=st.integers(0, 2**40),
    selector=st.sampled_from(["", "0xa9059cbb", "0x095ea7b3"]),
    status=st.sampled_from([0, 1]),
    block_number=st.integers(0, 10**9),
    timestamp=st.floats(0.0, 5_000.0, allow_nan=False),  # any order: late txs included
)
params = dict(
    txs=st.lists(txs_strategy, max_size=60),
    window_s=st.floats(1.0, 3_000.0),
    max_events=st.integers(1, 40),  # windows in every length bucket of `_window_features`
)


def sequential(txs: list[Tx], window_s: float, max_events: int):
    states: dict[str, SenderWindow] = {}
    rows = []
    for t in txs:
        states[t.sender] = update(states.get(t.sender), t, window_s=window_s, max_events=max_events)
        rows.append(features(states[t.sender]))
    return states, np.array(rows).reshape(len(txs), N_FEATURES)


@settings(deadline=None, max_examples=150, database=None)
@given(**params)
def test_windows_stay_valid_and_features_finite_or_nan(txs, window_s, max_events) -> None:
    states, X = sequential(txs, window_s, max_events)
    assert not np.isinf(X).any()
    for w in states.values():
        ev = w.events
        assert 1 <= len(w) <= max_events and ev.shape[1] == N_COLUMNS
        assert (np.diff(ev[:, 0]) >= 0).all(), "sorted by time"
        assert ev[0, 0] >= ev[-1, 0] - window_s, "nothing older than the window"
        assert len(np.unique(ev[:, -1])) == len(w), "no tx counted twice"
        assert SenderWindow.from_dict(json.loads(json.dumps(w.to_dict()))) == w


@settings(deadline=None, max_examples=150, database=None)
@given(split=st.integers(0, 60), **params)
def test_featurize_equals_sequential_updates(txs, window_s, max_events, split) -> None:
    seq_states, seq_X = sequential(txs, window_s, max_events)
    first, X1 = featurize({}, txs[:split], window_s=window_s, max_events=max_events)
    second, X2 = featurize(first, txs[split:], window_s=window_s, max_events=max_events)
    assert np.array_equal(np.concatenate([X1, X2]), seq_X, equal_nan=True)
    assert {**first, **second} == seq_states


@settings(deadline=None, max_examples=150, database=None)
@given(
    ts=st.lists(st.sampled_from([0.0, 1.0, 2.5, 3.0, 40.0, 41.0, 700.0]), max_size=60),
    split=st.integers(0, 60),
    **params,
)
def test_featurize_equals_sequential_updates_in_time_order(
    txs, ts, window_s, max_events, split
) -> None:
    """Mostly in-order traffic (the vectorised path), with ties and some redeliveries."""
    ts = sorted(ts)[: len(txs)]
    txs = [t.__class__(**{**_fields(t), "timestamp": x}) for t, x in zip(txs, ts, strict=False)]
    seq_states, seq_X = sequential(txs, window_s, max_events)
    first, X1 = featurize({}, txs[:split], window_s=window_s, max_events=max_events)
    second, X2 = featurize(first, txs[split:], window_s=window_s, max_events=max_events)
    assert np.array_equal(np.concatenate([X1, X2]), seq_X, equal_nan=True)
    assert {**first, **second} == seq_states


def _fields(t: Tx) -> dict:
    return {f: getattr(t, f) for f in Tx.__dataclass_fields__}


def test_long_and_short_windows_in_one_batch_equal_sequential_updates() -> None:
    """One batch with windows of every length up to 64 (each length bucket of the
    vectorised path, side by side): the same bits as one-at-a-time updates."""
    rng = np.random.default_rng(0)
    txs = [
        Tx(
            tx_hash=f"0x{s:02x}{i:062x}",
            sender=f"0x{s:x}",
            to=f"0xr{int(rng.integers(0, 4))}",
            value_wei=int(rng.integers(0, 10**18)),
            gas_price_wei=int(rng.integers(10**9, 10**11)),
            gas=21_000,
            nonce=i,
            selector="0xa9059cbb",
            status=int(rng.integers(0, 2)),
            block_number=int(t) // 2,
            timestamp=float(t),
        )
        for s, n in enumerate((80, 40, 20, 12, 5, 2))  # final windows of 64, 40, ... 2
        for i, t in enumerate(np.sort(rng.uniform(0, 100, n)).tolist())
    ]
    txs.sort(key=lambda t: t.timestamp)
    seq_states, seq_X = sequential(txs, 3_000.0, 64)
    states, X = featurize({}, txs, window_s=3_000.0, max_events=64)
    assert sorted(len(w) for w in states.values()) == [2, 5, 12, 20, 40, 64]
    assert np.array_equal(X, seq_X, equal_nan=True) and states == seq_states
