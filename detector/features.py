"""Per-sender transaction-window features: the one definition used by streaming and training.

A sender's recent transactions live in a `SenderWindow` (a small sorted event array that
round-trips through a JSON-able dict, because the streaming worker keeps it in a table).
`update` applies one transaction; `features` turns a window into one row in the order of
`FEATURE_NAMES`; `featurize` does both for a whole batch, vectorised, and gives exactly the
rows that `update` + `features` would give one transaction at a time.

Window semantics (shared by all three): events are kept sorted by timestamp (ties keep
arrival order); after applying a transaction, events older than `window_s` before the newest
timestamp are dropped, then only the newest `max_events` are kept. A transaction whose
`tx_hash` is already in the window changes nothing (redelivery must not count twice).
A window with fewer than MIN_EVENTS events gives only its rate; every other feature is NaN
(missing: detectors impute it as typical).
"""

from __future__ import annotations

import base64
import hashlib
import math
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import numpy as np

from detector.types import Tx

#: Feature order of every row returned here; one line each on what it captures.
FEATURE_NAMES: tuple[str, ...] = (
    "rate_per_min",  # txs in the window per minute (caps at 60 * max_events / window_s)
    "iat_mean_s",  # mean inter-arrival time, seconds: bots send fast
    "iat_cv",  # inter-arrival std / mean: ~1 for Poisson humans, ~0 for timer-driven bots
    "same_block_share",  # share of txs in the same block as the previous one: bursts
    "gas_price_digits",  # mean significant digits of the gas price: wallets round, bots don't
    "gas_price_rel_std",  # gas price std / mean: fixed-price bots show 0, wallets vary
    "recipient_distinct_ratio",  # distinct recipients / txs: bots hammer one contract
    "selector_distinct_ratio",  # distinct 4-byte selectors / txs: bots repeat one call
    "failure_ratio",  # share of reverted txs: spam, failed front-running
    "nonce_irregular_ratio",  # share of steps where nonce != previous + 1: gaps, reuse, replays
    "value_log10_mean",  # log10(1 + mean value in wei): size of the flows
    "zero_value_share",  # share of zero-value txs: pure contract calls
    "value_cv",  # value std / mean: bots send fixed amounts
    "dust_share",  # share of txs moving a non-zero amount below DUST_WEI: dusting spam
    "same_block_repeat_share",  # share of steps repeating the previous call in its block:
    # same block, recipient and selector (sandwich front/back, wash round trips, bursts)
)
N_FEATURES = len(FEATURE_NAMES)

#: Below this many events a window reports only its rate (all other features NaN): ratios
#: and spreads of 1-4 txs are noise, and they made ordinary rare senders look extreme.
MIN_EVENTS = 5

#: Non-zero values below this (1 gwei worth of wei) are dust: no wallet pays that on purpose.
DUST_WEI = 1e9

#: Defaults the pipelines use unless configured otherwise.
DEFAULT_WINDOW_S = 600.0
DEFAULT_MAX_EVENTS = 64

# Columns of the event array inside a SenderWindow (all float64; ints stay exact < 2**53).
_TS, _BLOCK, _NONCE, _GAS, _DIGITS, _VALUE, _TO, _SEL, _STATUS, _HASH = range(10)
N_COLUMNS = 10
_STATE_VERSION = 1  # bump when the columns or their encoding change


def _gas_digits(gas_price_wei: int) -> int:
    """Significant digits of a gas price (same in wei and gwei): 20 gwei -> 1, 1.234567891 -> 10."""
    return len(str(abs(int(gas_price_wei))).rstrip("0"))


def _label_id(label: str) -> int:
    """Stable 32-bit id of an address or selector (case-insensitive); equality is all we need."""
    return zlib.crc32(label.lower().encode())


_HASH_PRIME = 4503599627370449  # largest prime below 2**52: ids stay exact in float64


def _hash_id(tx_hash: str) -> int:
    """Stable 52-bit id of a tx hash, used only to spot redeliveries.

    Hex hashes are reduced modulo a prime (all digits count, so even hand-made sequential
    hashes stay distinct); anything else goes through blake2b.
    """
    if tx_hash[:2] in ("0x", "0X") and tx_hash[2:].isalnum():
        try:
            return int(tx_hash[2:], 16) % _HASH_PRIME
        except ValueError:
            pass
    digest = hashlib.blake2b(tx_hash.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _HASH_PRIME


def _event_rows(txs: Sequence[Tx]) -> np.ndarray:
    """The numbers a window keeps per transaction, (len(txs), N_COLUMNS), built column-wise
    (one cheap pass per field beats one Python call per transaction)."""
    n = len(txs)
    out = np.empty((n, N_COLUMNS), dtype=np.float64)

    def column(name: str) -> Iterator[Any]:
        return map(attrgetter(name), txs)

    out[:, _TS] = np.fromiter(column("timestamp"), np.float64, n)
    if not np.isfinite(out[:, _TS]).all():
        raise ValueError("transaction timestamps must be finite")
    out[:, _BLOCK] = np.fromiter(column("block_number"), np.float64, n)
    out[:, _NONCE] = np.fromiter(column("nonce"), np.float64, n)
    gas_wei = list(column("gas_price_wei"))
    out[:, _GAS] = np.fromiter(gas_wei, np.float64, n) / 1e9
    out[:, _DIGITS] = np.fromiter(map(_gas_digits, gas_wei), np.float64, n)
    out[:, _VALUE] = np.fromiter(column("value_wei"), np.float64, n)
    to, sel = list(column("to")), list(column("selector"))
    ids = {s: _label_id(s) for s in {*to, *sel}}  # recipients and selectors repeat a lot
    out[:, _TO] = np.fromiter(map(ids.__getitem__, to), np.float64, n)
    out[:, _SEL] = np.fromiter(map(ids.__getitem__, sel), np.float64, n)
    out[:, _STATUS] = np.fromiter(map(bool, column("status")), np.float64, n)
    out[:, _HASH] = np.fromiter(map(_hash_id, column("tx_hash")), np.float64, n)
    return out


def _check_params(window_s: float, max_events: int) -> None:
    if not window_s > 0:
        raise ValueError(f"window_s must be > 0, got {window_s!r}")
    if max_events < 1:
        raise ValueError(f"max_events must be >= 1, got {max_events!r}")


@dataclass(frozen=True, eq=False)
class SenderWindow:
    """One sender's recent transactions: `events` is (n, N_COLUMNS), sorted by timestamp.

    Immutable (the array is made read-only) so a state can be shared between the table and
    a batch without copies. `window_s` is kept because the rate feature is per window.
    """

    events: np.ndarray
    window_s: float

    def __post_init__(self) -> None:
        if self.events.ndim != 2 or self.events.shape[1] != N_COLUMNS:
            raise ValueError(f"events must have shape (n, {N_COLUMNS}), got {self.events.shape}")
        self.events.flags.writeable = False

    def __len__(self) -> int:
        return int(self.events.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SenderWindow):
            return NotImplemented
        return self.window_s == other.window_s and np.array_equal(self.events, other.events)

    __hash__ = None  # type: ignore[assignment]

    @property
    def newest_ts(self) -> float:
        """Timestamp of the newest event (NaN for an empty window)."""
        return float(self.events[-1, _TS]) if len(self) else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form for a changelogged table: the event array as base64 of
        little-endian float64 (exact, and ~50x faster to encode than nested float lists)."""
        raw = np.ascontiguousarray(self.events, dtype="<f8").tobytes()
        return {
            "v": _STATE_VERSION,
            "window_s": self.window_s,
            "n": len(self),
            "events": base64.b64encode(raw).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SenderWindow:
        """Inverse of `to_dict`; rejects other versions rather than misreading them."""
        if data.get("v") != _STATE_VERSION:
            raise ValueError(f"unsupported SenderWindow version {data.get('v')!r}")
        raw = base64.b64decode(data["events"], validate=True)
        events = np.frombuffer(raw, dtype="<f8").astype(np.float64).reshape(-1, N_COLUMNS)
        if len(events) != data["n"]:
            raise ValueError(f"SenderWindow dict says n={data['n']}, holds {len(events)}")
        return cls(events=events, window_s=float(data["window_s"]))


def _trim(events: np.ndarray, window_s: float, max_events: int) -> np.ndarray:
    """Drop events older than window_s before the newest, then keep the newest max_events."""
    target = events[-1, _TS] - window_s
    start = int(np.searchsorted(events[:, _TS], target, side="left"))
    return events[max(start, len(events) - max_events) :]


def update(state: SenderWindow | None, tx: Tx, *, window_s: float, max_events: int) -> SenderWindow:
    """Apply one transaction to a sender's window (returns a new window; `state` is untouched).

    Late (out-of-order) transactions are inserted at their timestamp and dropped if already
    outside the window; a tx_hash already in the window returns `state` unchanged.
    """
    _check_params(window_s, max_events)
    row = _event_rows((tx,))[0]
    if state is None or len(state) == 0:
        return SenderWindow(events=row[None, :], window_s=float(window_s))
    events = state.events
    if bool(np.any(events[:, _HASH] == row[_HASH])):
        return state
    pos = int(np.searchsorted(events[:, _TS], row[_TS], side="right"))
    merged = np.concatenate((events[:pos], row[None, :], events[pos:]))
    return SenderWindow(events=_trim(merged, window_s, max_events).copy(), window_s=float(window_s))


def remove(state: SenderWindow, tx_hashes: Iterable[str]) -> SenderWindow:
    """Forget transactions that a chain reorg orphaned: a new window without their events.

    Returns `state` itself when none of them is in it. The remaining events stay within
    the window (dropping events never widens it); events trimmed earlier do not come
    back. A removed tx that is included again later counts again (`update` re-adds it).
    """
    ids = np.fromiter((_hash_id(h) for h in tx_hashes), dtype=np.float64)
    if len(state) == 0 or len(ids) == 0:
        return state
    gone = np.isin(state.events[:, _HASH], ids)
    if not bool(gone.any()):
        return state
    return SenderWindow(events=state.events[~gone].copy(), window_s=state.window_s)


def features(state: SenderWindow) -> np.ndarray:
    """The feature row (order: FEATURE_NAMES) of one window; NaN where undefined."""
    n = len(state)
    return _window_features(
        state.events,
        np.zeros(1, dtype=np.int64),
        np.array([n], dtype=np.int64),
        np.array([state.window_s], dtype=np.float64),
    )[0]


def featurize(
    states: Mapping[str, SenderWindow | None],
    txs: Sequence[Tx],
    *,
    window_s: float,
    max_events: int,
) -> tuple[dict[str, SenderWindow], np.ndarray]:
    """Apply a batch of transactions; row i = features of tx i's sender right after tx i.

    Returns the new windows of the senders in `txs` only (others are unchanged; `states`
    itself is not modified) and an (len(txs), N_FEATURES) array. Senders whose txs arrive
    in timestamp order without redeliveries (the usual case) take a vectorised path; the
    rest replay `update` one tx at a time, so the result always equals the sequential one.
    """
    _check_params(window_s, max_events)
    n = len(txs)
    if n == 0:
        return {}, np.empty((0, N_FEATURES), dtype=np.float64)
    rows = _event_rows(txs)

    # Group by sender (first-appearance order), then lay out one flat event array:
    # for each sender, its prior window's events followed by its batch txs in arrival order.
    gid_of: dict[str, int] = {}
    gids = np.fromiter((gid_of.setdefault(tx.sender, len(gid_of)) for tx in txs), np.int64, n)
    senders = list(gid_of)
    n_groups = len(senders)
    prior = [states.get(s) for s in senders]
    k = np.fromiter((0 if st is None else len(st) for st in prior), np.int64, n_groups)
    nb = np.bincount(gids, minlength=n_groups)
    size = k + nb
    start = np.cumsum(size) - size
    order = np.argsort(gids, kind="stable")
    rows_sorted = rows[order]
    pieces: list[np.ndarray] = []
    b0 = 0
    for st, b1 in zip(prior, np.cumsum(nb).tolist(), strict=True):
        if st is not None:
            pieces.append(st.events)
        pieces.append(rows_sorted[b0:b1])
        b0 = b1
    flat = np.concatenate(pieces)
    g_sorted = gids[order]
    rank = np.arange(n) - np.repeat(np.cumsum(nb) - nb, nb)  # position within its sender
    pos_sorted = start[g_sorted] + k[g_sorted] + rank
    pos = np.empty(n, dtype=np.int64)
    pos[order] = pos_sorted
    ts = flat[:, _TS]

    # Window of each tx, assuming its sender is in order: the newest max_events events with
    # ts >= ts_tx - window_s, found by a vectorised binary search over [lo, pos].
    target = ts[pos] - window_s
    lo = np.maximum(start[gids], pos - max_events + 1)
    hi = pos.copy()
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) >> 1
        ge = ts[mid] >= target
        hi = np.where(active & ge, mid, hi)
        lo = np.where(active & ~ge, mid + 1, lo)
    left = lo

    # Senders needing the sequential replay: a tx older than the one before it, or a
    # tx_hash already present in the window it is applied to.
    out_of_order = (pos > start[gids]) & (ts[pos] < ts[np.maximum(pos - 1, 0)])
    left_sorted = left[order]
    prev_left_sorted = np.where(rank > 0, np.roll(left_sorted, 1), start[g_sorted])
    dup_sorted = _in_range(flat[:, _HASH], rows_sorted[:, _HASH], prev_left_sorted, pos_sorted)
    irregular = np.zeros(n_groups, dtype=bool)
    irregular[gids[out_of_order]] = True
    irregular[g_sorted[dup_sorted]] = True

    new_states: dict[str, SenderWindow] = {}
    lengths = pos - left + 1
    row_window_s = np.full(n, float(window_s))
    extra: list[np.ndarray] = []
    extra_at = flat.shape[0]
    last_sorted = np.cumsum(nb) - 1  # sorted index of each sender's last batch tx
    last_rows = order[last_sorted]
    lo_last, hi_last = left[last_rows].tolist(), (pos[last_rows] + 1).tolist()
    for g, (sender, irr) in enumerate(zip(senders, irregular.tolist(), strict=True)):
        if not irr:
            events = flat[lo_last[g] : hi_last[g]].copy()
            new_states[sender] = SenderWindow(events=events, window_s=float(window_s))
    for g in np.flatnonzero(irregular).tolist():
        st = prior[g]
        for j in order[last_sorted[g] - nb[g] + 1 : last_sorted[g] + 1].tolist():
            st = update(st, txs[j], window_s=window_s, max_events=max_events)
            left[j], lengths[j], row_window_s[j] = extra_at, len(st), st.window_s
            extra.append(st.events)
            extra_at += len(st)
        assert st is not None
        new_states[senders[g]] = st
    all_events = np.concatenate([flat, *extra]) if extra else flat
    return new_states, _window_features(all_events, left, lengths, row_window_s)


def _in_range(
    values: np.ndarray, needles: np.ndarray, lo: np.ndarray, hi_excl: np.ndarray
) -> np.ndarray:
    """For each i: does needles[i] occur in values[lo[i]:hi_excl[i]]? (vectorised)"""
    width = hi_excl - lo
    m = int(width.max()) if len(width) else 0
    if m <= 0:
        return np.zeros(len(needles), dtype=bool)
    offs = np.arange(m)
    valid = offs < width[:, None]
    idx = np.minimum(lo[:, None] + offs, len(values) - 1)
    return np.any((values[idx] == needles[:, None]) & valid, axis=1)


def _msum(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row sums over the masked prefix, accumulated left to right so that the result does
    not depend on how much padding a batch adds (streaming and training rows match exactly)."""
    if x.shape[1] == 0:
        return np.zeros(x.shape[0], dtype=np.float64)
    acc: np.ndarray = np.cumsum(np.where(mask, x, 0.0), axis=1)
    return acc[:, -1]


def _distinct(x: np.ndarray, valid: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Number of distinct values in each row's valid prefix."""
    s = np.sort(np.where(valid, x, np.inf), axis=1)
    changes = np.count_nonzero((s[:, 1:] != s[:, :-1]) & valid[:, 1:], axis=1)
    return np.where(count > 0, 1 + changes, 0).astype(np.float64)


#: Window-length buckets featurised together: every row is padded to its bucket's longest
#: window, not the batch's (most windows are a few events, a bot's are max_events).
_LENGTH_BUCKETS = (8, 16, 32)


def _window_features(
    events: np.ndarray, left: np.ndarray, lengths: np.ndarray, window_s: np.ndarray
) -> np.ndarray:
    """Features of the windows events[left[i] : left[i] + lengths[i]], all rows at once,
    in buckets of similar length. Each row's figures depend on its own events only (the
    sums accumulate left to right, padding adds exact zeros), so bucketing changes no bit."""
    if len(lengths) == 0 or int(lengths.max()) <= _LENGTH_BUCKETS[0]:
        return _window_block(events, left, lengths, window_s)
    out = np.empty((len(left), N_FEATURES), dtype=np.float64)
    bucket = np.searchsorted(np.array(_LENGTH_BUCKETS), lengths)  # 0: <= 8, ..., 3: > 32
    for b in np.unique(bucket).tolist():
        rows = np.flatnonzero(bucket == b)
        out[rows] = _window_block(events, left[rows], lengths[rows], window_s[rows])
    return out


def _window_block(
    events: np.ndarray, left: np.ndarray, lengths: np.ndarray, window_s: np.ndarray
) -> np.ndarray:
    """Features of the windows events[left[i] : left[i] + lengths[i]], padded to the
    longest of them."""
    n_rows = len(left)
    m = max(int(lengths.max()) if n_rows else 0, 1)
    offs = np.arange(m)
    valid = offs < lengths[:, None]
    vgap = valid[:, 1:]
    idx = np.minimum(left[:, None] + offs, max(len(events) - 1, 0))
    ev = events if len(events) else np.zeros((1, N_COLUMNS))

    def col(c: int) -> np.ndarray:
        return ev[:, c][idx]

    cnt = lengths.astype(np.float64)
    ngap = cnt - 1.0
    out = np.empty((n_rows, N_FEATURES), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = col(_TS)
        gaps = ts[:, 1:] - ts[:, :-1]
        iat_mean = _msum(gaps, vgap) / ngap
        iat_std = np.sqrt(_msum((gaps - iat_mean[:, None]) ** 2, vgap) / ngap)
        block = col(_BLOCK)
        same_block_steps = (block[:, 1:] == block[:, :-1]) & vgap
        same_block = np.count_nonzero(same_block_steps, axis=1)
        to, sel = col(_TO), col(_SEL)
        repeat = same_block_steps & (to[:, 1:] == to[:, :-1]) & (sel[:, 1:] == sel[:, :-1])
        nonce = col(_NONCE)
        irregular = np.count_nonzero(((nonce[:, 1:] - nonce[:, :-1]) != 1.0) & vgap, axis=1)
        gas = col(_GAS)
        gas_mean = _msum(gas, valid) / cnt
        gas_std = np.sqrt(_msum((gas - gas_mean[:, None]) ** 2, valid) / cnt)
        value = col(_VALUE)
        value_mean = _msum(value, valid) / cnt
        value_std = np.sqrt(_msum((value - value_mean[:, None]) ** 2, valid) / cnt)

        out[:, 0] = 60.0 * cnt / window_s
        out[:, 1] = np.where(ngap >= 1, iat_mean, np.nan)
        out[:, 2] = np.where(ngap >= 2, np.where(iat_mean > 0, iat_std / iat_mean, 0.0), np.nan)
        out[:, 3] = np.where(ngap >= 1, same_block / ngap, np.nan)
        out[:, 4] = _msum(col(_DIGITS), valid) / cnt
        out[:, 5] = np.where(cnt >= 2, np.where(gas_mean > 0, gas_std / gas_mean, 0.0), np.nan)
        out[:, 6] = _distinct(to, valid, lengths) / cnt
        out[:, 7] = _distinct(sel, valid, lengths) / cnt
        out[:, 8] = np.count_nonzero((col(_STATUS) == 0.0) & valid, axis=1) / cnt
        out[:, 9] = np.where(ngap >= 1, irregular / ngap, np.nan)
        out[:, 10] = np.log10(1.0 + value_mean)
        out[:, 11] = np.count_nonzero((value == 0.0) & valid, axis=1) / cnt
        out[:, 12] = np.where(
            cnt >= 2, np.where(value_mean > 0, value_std / value_mean, 0.0), np.nan
        )
        out[:, 13] = np.count_nonzero((value > 0.0) & (value < DUST_WEI) & valid, axis=1) / cnt
        out[:, 14] = np.where(ngap >= 1, np.count_nonzero(repeat, axis=1) / ngap, np.nan)
    out[lengths < MIN_EVENTS, 1:] = np.nan
    out[lengths == 0] = np.nan  # an empty window (only from a hand-built dict) says nothing
    return out
