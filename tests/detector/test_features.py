"""Unit tests of the per-sender window and its features."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detector.features import (
    FEATURE_NAMES,
    MIN_EVENTS,
    N_FEATURES,
    SenderWindow,
    features,
    featurize,
    update,
)
from detector.types import Tx

W = 600.0
M = 64
T0 = 1_700_000_000.0
F = {name: i for i, name in enumerate(FEATURE_NAMES)}


def tx(i: int, t: float, *, sender: str = "0xs", **kw) -> Tx:
    fields = dict(
        tx_hash=f"0x{i:064x}",
        sender=sender,
        to="0xr",
        value_wei=10**17,
        gas_price_wei=20 * 10**9,
        gas=21_000,
        nonce=i,
        selector="",
        status=1,
        block_number=int(t // 2),
        timestamp=t,
    )
    fields.update(kw)
    return Tx(**fields)  # type: ignore[arg-type]


def run(txs: list[Tx], *, window_s: float = W, max_events: int = M) -> SenderWindow:
    st = None
    for t in txs:
        st = update(st, t, window_s=window_s, max_events=max_events)
    assert st is not None
    return st


def bot_stream(n: int = 100) -> list[Tx]:
    """Every 2 s, an exact computed gas price, one recipient, one selector, a fixed value."""
    return [
        tx(i, T0 + 2.0 * i, to="0xpool", gas_price_wei=1_234_567_891, selector="0x38ed1739")
        for i in range(n)
    ]


def human_stream(seed: int = 0, n: int = 100) -> list[Tx]:
    """Poisson arrivals (mean 30 s), round wallet gas prices, varied recipients and values."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.cumsum(rng.exponential(30.0, n))
    return [
        tx(
            i,
            float(t),
            to=f"0xr{rng.integers(12)}",
            gas_price_wei=int(rng.choice([1.5, 2, 5, 20]) * 10**9),
            value_wei=int(10 ** rng.uniform(15, 19)),
            selector=str(rng.choice(["", "0xa9059cbb", "0x095ea7b3"])),
        )
        for i, t in enumerate(ts)
    ]


def test_feature_names_are_unique_and_match_rows() -> None:
    assert len(set(FEATURE_NAMES)) == N_FEATURES == 15
    assert features(run(bot_stream(10))).shape == (N_FEATURES,)


def test_bot_and_human_streams_differ_clearly() -> None:
    bot = features(run(bot_stream()))
    human = features(run(human_stream()))
    assert bot[F["iat_mean_s"]] == 2.0
    assert bot[F["iat_cv"]] == 0.0 and human[F["iat_cv"]] > 0.5
    assert bot[F["gas_price_digits"]] == 10.0 and human[F["gas_price_digits"]] <= 2.0
    assert bot[F["gas_price_rel_std"]] < 1e-9
    assert bot[F["recipient_distinct_ratio"]] == 1 / M
    assert human[F["recipient_distinct_ratio"]] > 0.2
    assert bot[F["selector_distinct_ratio"]] == 1 / M
    assert bot[F["value_cv"]] < 1e-9 and human[F["value_cv"]] > 0.5
    assert bot[F["rate_per_min"]] > 3 * human[F["rate_per_min"]]
    assert bot[F["nonce_irregular_ratio"]] == 0.0
    assert bot[F["same_block_share"]] == 0.0


def test_gas_price_digits() -> None:
    def digits(gas: int) -> float:
        st = run([tx(i, T0 + i, gas_price_wei=gas) for i in range(MIN_EVENTS)])
        return float(features(st)[F["gas_price_digits"]])

    assert digits(20 * 10**9) == 1
    assert digits(1_500_000_000) == 2
    assert digits(1_234_567_891) == 10
    assert digits(0) == 0


def test_small_windows_report_only_their_rate() -> None:
    row = features(run(bot_stream(MIN_EVENTS - 1)))
    assert row[0] == 60.0 * (MIN_EVENTS - 1) / W
    assert np.isnan(row[1:]).all()
    assert np.isfinite(features(run(bot_stream(MIN_EVENTS)))).all()


def test_window_evicts_old_events_relative_to_newest() -> None:
    st = run([tx(0, T0), tx(1, T0 + 10), tx(2, T0 + 100), tx(3, T0 + 700)])
    assert list(st.events[:, 0] - T0) == [100.0, 700.0]  # >= newest - window_s is kept
    st = run([tx(i, T0 + i) for i in range(10)], max_events=4)
    assert list(st.events[:, 0] - T0) == [6.0, 7.0, 8.0, 9.0]


def test_duplicate_tx_is_not_counted_twice() -> None:
    txs = bot_stream(8)
    once = run(txs)
    twice = run(txs + txs[3:6])
    assert twice == once and len(twice) == 8
    states, X = featurize({}, txs + [txs[7], txs[2]], window_s=W, max_events=M)
    assert states["0xs"] == once
    assert np.array_equal(X[8], X[7]) and np.array_equal(X[9], X[7])


def test_out_of_order_tx_is_inserted_in_time_and_too_late_is_dropped() -> None:
    txs = bot_stream(8)
    late = run(txs[:3] + txs[4:] + [txs[3]])
    assert late == run(txs)
    stale = tx(99, T0 - 1000.0)
    assert run(txs + [stale]) == run(txs)


def test_to_dict_round_trips_through_json() -> None:
    st = run(human_stream(n=40))
    back = SenderWindow.from_dict(json.loads(json.dumps(st.to_dict())))
    assert back == st
    assert np.array_equal(features(back), features(st), equal_nan=True)


def test_from_dict_rejects_unknown_version_and_truncated_events() -> None:
    with pytest.raises(ValueError):
        SenderWindow.from_dict({"v": 99, "window_s": W, "n": 0, "events": ""})
    d = run(bot_stream(6)).to_dict()
    with pytest.raises(ValueError):
        SenderWindow.from_dict({**d, "n": 7})


def test_empty_window_from_a_dict_gives_a_missing_row() -> None:
    empty = SenderWindow.from_dict({"v": 1, "window_s": W, "n": 0, "events": ""})
    assert len(empty) == 0 and np.isnan(features(empty)).all()
    new, X = featurize({"0xs": empty}, bot_stream(MIN_EVENTS), window_s=W, max_events=M)
    assert new["0xs"] == run(bot_stream(MIN_EVENTS))


def test_windows_are_immutable_and_update_is_pure() -> None:
    st = run(bot_stream(5))
    before = st.events.copy()
    update(st, tx(50, T0 + 3.0), window_s=W, max_events=M)
    assert np.array_equal(st.events, before)
    with pytest.raises(ValueError):
        st.events[0, 0] = 0.0


def test_featurize_matches_sequential_updates_across_batches() -> None:
    rng = np.random.default_rng(3)
    txs = sorted(
        [tx(i, T0 + float(rng.uniform(0, 3000)), sender=f"0xs{i % 7}") for i in range(600)],
        key=lambda t: t.timestamp,
    )
    seq_states: dict[str, SenderWindow] = {}
    seq_rows = []
    for t in txs:
        seq_states[t.sender] = update(seq_states.get(t.sender), t, window_s=W, max_events=32)
        seq_rows.append(features(seq_states[t.sender]))
    states: dict[str, SenderWindow | None] = {}
    rows = []
    for b in range(0, len(txs), 128):
        new, X = featurize(states, txs[b : b + 128], window_s=W, max_events=32)
        states.update(new)
        rows.append(X)
    assert np.array_equal(np.concatenate(rows), np.array(seq_rows), equal_nan=True)
    assert states == seq_states


def test_featurize_leaves_inputs_alone_and_returns_only_batch_senders() -> None:
    st = run(bot_stream(6))
    states = {"0xs": st, "0xother": st}
    new, X = featurize(states, [tx(77, T0 + 100.0)], window_s=W, max_events=M)
    assert set(new) == {"0xs"} and states["0xs"] is st and len(st) == 6
    assert X.shape == (1, N_FEATURES)
    new, X = featurize(states, [], window_s=W, max_events=M)
    assert new == {} and X.shape == (0, N_FEATURES)


@pytest.mark.parametrize(
    "kw", [{"window_s": 0.0, "max_events": 4}, {"window_s": 1.0, "max_events": 0}]
)
def test_bad_parameters_are_rejected(kw) -> None:
    with pytest.raises(ValueError):
        update(None, tx(0, T0), **kw)
    with pytest.raises(ValueError):
        featurize({}, [tx(0, T0)], **kw)
