"""Per-step input vectors of the sequence models: one definition for training and streaming.

Transactions: the vectoriser reads the event array of a `detector.features.SenderWindow`
(the state the streaming worker already keeps per sender), so a Faust worker scores the
sequence model on exactly the events it holds, with no second per-sender state. Offline,
`tx_windows` builds the same arrays from plain `Tx` lists through `detector.features`.
Only relations between consecutive events are used (same block, same recipient, new
selector, ...), never raw address or selector ids: ids differ between the synthetic world
and the chain, relations carry over.

Telemetry: `bucket_telemetry` turns raw `node.telemetry.v1` records (plus on-chain usage
claims) into fixed time steps of TELEMETRY_CHANNELS; `telemetry_step_vectors` turns those
steps into model inputs. The synthetic generator produces steps directly, so both paths
meet at the step array.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from detector import features as F
from detector.types import Tx

# Columns of SenderWindow.events (private to detector.features; reading them here fails
# loudly if that layout changes, and detector bumps its state version when it does).
W_TS, W_BLOCK, W_NONCE, W_GAS, W_DIGITS = F._TS, F._BLOCK, F._NONCE, F._GAS, F._DIGITS
W_VALUE, W_TO, W_SEL, W_STATUS = F._VALUE, F._TO, F._SEL, F._STATUS

#: Bump when the per-tx vector changes: artifacts record it and scorers refuse a mismatch.
TX_VECTOR_VERSION = 1

#: One line each on what a per-transaction input captures.
TX_EVENT_FEATURES: tuple[str, ...] = (
    "log_dt_s",  # log1p(seconds since the sender's previous tx): cadence, timers
    "is_first",  # first event of the window (dt and deltas undefined)
    "same_block",  # same block as the previous tx: sandwiches, bursts
    "log_block_delta",  # log1p(blocks since the previous tx)
    "nonce_step_one",  # nonce = previous + 1: the ordinary case
    "nonce_irregular",  # gap or reuse: replacements, nonce races
    "log_gas_gwei",  # log1p(gas price in gwei)
    "gas_digits",  # significant digits of the gas price / 10: wallets round, bots don't
    "gas_log_ratio",  # log(gas / previous gas), clipped: front-run high, back-run low
    "gas_same",  # exactly the previous gas price: fixed-price bots
    "log10_value",  # log10(1 + value in wei) / 10
    "value_zero",  # pure contract call or token transfer
    "value_same",  # exactly the previous non-zero value: scripted amounts
    "value_roundness",  # trailing decimal zeros of the wei value / 18: humans type 0.1 ETH
    "failed",  # reverted
    "contract_call",  # has a 4-byte selector
    "to_new",  # recipient not seen earlier in the window: spam fan-out
    "to_same",  # same recipient as the previous tx
    "selector_same",  # same selector as the previous tx
    "selector_new",  # selector not seen earlier in the window
    "to_distinct_ratio",  # distinct recipients so far / txs so far
)
N_TX_EVENT_FEATURES = len(TX_EVENT_FEATURES)

_EMPTY_ID = float(zlib.crc32(b""))  # detector's id of '' (plain transfer / creation)
_WINDOW_ALL = 1e15  # seconds: a window that never drops an event by age


def _seen_before(ids: np.ndarray) -> np.ndarray:
    """For each position: did the same id occur earlier in the array?"""
    _, first = np.unique(ids, return_index=True)
    seen = np.ones(len(ids), dtype=bool)
    seen[first] = False
    return seen


def _trailing_zeros(value: np.ndarray) -> np.ndarray:
    """Trailing decimal zeros of non-negative wei amounts held as float64 (0 for 0)."""
    out = np.zeros(len(value), dtype=np.float64)
    alive = value > 0
    for k in range(1, 19):
        alive &= np.fmod(value, 10.0**k) == 0
        out[alive] = k
    return out


def tx_event_vectors(events: np.ndarray) -> np.ndarray:
    """(n, N_TX_EVENT_FEATURES) float32 inputs for one sender's window events, oldest first."""
    ev = np.asarray(events, dtype=np.float64)
    if ev.ndim != 2 or ev.shape[1] != F.N_COLUMNS:
        raise ValueError(f"expected SenderWindow events (n, {F.N_COLUMNS}), got {ev.shape}")
    n = ev.shape[0]
    out = np.zeros((n, N_TX_EVENT_FEATURES), dtype=np.float64)
    if n == 0:
        return out.astype(np.float32)
    ts, block, nonce = ev[:, W_TS], ev[:, W_BLOCK], ev[:, W_NONCE]
    gas, value = ev[:, W_GAS], ev[:, W_VALUE]
    to, sel = ev[:, W_TO], ev[:, W_SEL]
    has_prev = np.arange(n) > 0

    def prev(a: np.ndarray) -> np.ndarray:
        return np.concatenate((a[:1], a[:-1]))

    with np.errstate(divide="ignore", invalid="ignore"):
        dt = np.where(has_prev, np.maximum(ts - prev(ts), 0.0), 0.0)
        dblock = np.where(has_prev, np.maximum(block - prev(block), 0.0), 0.0)
        step = nonce - prev(nonce)
        gas_ratio = np.log(np.maximum(gas, 1e-9) / np.maximum(prev(gas), 1e-9))
    out[:, 0] = np.log1p(dt)
    out[:, 1] = ~has_prev
    out[:, 2] = has_prev & (dblock == 0)
    out[:, 3] = np.log1p(dblock)
    out[:, 4] = has_prev & (step == 1)
    out[:, 5] = has_prev & (step != 1)
    out[:, 6] = np.log1p(np.maximum(gas, 0.0))
    out[:, 7] = ev[:, W_DIGITS] / 10.0
    out[:, 8] = np.where(has_prev, np.clip(gas_ratio, -3.0, 3.0), 0.0)
    out[:, 9] = has_prev & (gas == prev(gas))
    out[:, 10] = np.log10(1.0 + np.maximum(value, 0.0)) / 10.0
    out[:, 11] = value == 0
    out[:, 12] = has_prev & (value == prev(value)) & (value > 0)
    out[:, 13] = _trailing_zeros(np.maximum(value, 0.0)) / 18.0
    out[:, 14] = ev[:, W_STATUS] == 0
    out[:, 15] = sel != _EMPTY_ID
    out[:, 16] = ~_seen_before(to) & has_prev
    out[:, 17] = has_prev & (to == prev(to))
    out[:, 18] = has_prev & (sel == prev(sel))
    out[:, 19] = ~_seen_before(sel) & has_prev
    out[:, 20] = np.cumsum(~_seen_before(to)) / np.arange(1, n + 1)
    return out.astype(np.float32)


def tx_windows(txs: Sequence[Tx], *, max_events: int) -> dict[str, F.SenderWindow]:
    """Per-sender windows holding each sender's newest `max_events` txs (no age limit).

    The same `detector.features.featurize` the worker uses, so offline sequences are
    byte-for-byte the windows a worker would hold after seeing these txs.
    """
    states, _ = F.featurize({}, txs, window_s=_WINDOW_ALL, max_events=max_events)
    return states


def pad_sequences(
    seqs: Sequence[np.ndarray], max_len: int, n_features: int
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to (N, max_len, n_features) float32 + lengths; longer ones keep the newest."""
    x = np.zeros((len(seqs), max_len, n_features), dtype=np.float32)
    lengths = np.zeros(len(seqs), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-max_len:]
        x[i, : len(s)] = s
        lengths[i] = len(s)
    return x, lengths


# ------------------------------------------------------------------------- telemetry

#: Bump when a telemetry channel or step vector changes.
TELEMETRY_VECTOR_VERSION = 1

#: Raw per-step channels (one row per `step_s` seconds of one node).
TELEMETRY_CHANNELS: tuple[str, ...] = (
    "batches",  # serving batches reported in the step
    "latency_ms",  # mean batch latency (0 without batches)
    "batch_size",  # mean batch size (0 without batches)
    "tokens",  # tokens served in the step, per telemetry
    "queue_depth",  # mean queue depth reported
    "errors",  # failed batches
    "gpu_util",  # mean GPU utilisation, percent (0 on CPU nodes)
    "heartbeat_gap_s",  # seconds since the last heartbeat, at the end of the step
    "claimed_tokens",  # usage the node settled on-chain in the step (cross-stream join)
)
N_TELEMETRY_CHANNELS = len(TELEMETRY_CHANNELS)
(T_BATCHES, T_LATENCY, T_BATCH_SIZE, T_TOKENS, T_QUEUE, T_ERRORS, T_GPU, T_HB_GAP, T_CLAIMED) = (
    range(N_TELEMETRY_CHANNELS)
)

TELEMETRY_STEP_FEATURES: tuple[str, ...] = (
    "log_batches",
    "log_latency_ms",
    "log_batch_size",
    "log_tokens",
    "log_queue_depth",
    "log_errors",
    "error_share",  # failed / (failed + ok) batches
    "gpu_util",  # / 100
    "log_heartbeat_gap_s",
    "log_claimed_tokens",
    "log_ms_per_ktoken",  # latency per 1k tokens of a batch: slow nodes
    "log_tokens_per_util",  # tokens per GPU-percent: lazy nodes serve without computing
    "claim_ratio_cum",  # log((1 + claimed so far) / (1 + served so far)): overclaim, lazy
    "has_batches",
)
N_TELEMETRY_STEP_FEATURES = len(TELEMETRY_STEP_FEATURES)


def telemetry_step_vectors(steps: np.ndarray) -> np.ndarray:
    """(T, N_TELEMETRY_STEP_FEATURES) float32 inputs from (T, N_TELEMETRY_CHANNELS) steps."""
    s = np.asarray(steps, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != N_TELEMETRY_CHANNELS:
        raise ValueError(f"expected (T, {N_TELEMETRY_CHANNELS}) telemetry steps, got {s.shape}")
    s = np.where(np.isfinite(s), np.maximum(s, 0.0), 0.0)
    batches, tokens, errors = s[:, T_BATCHES], s[:, T_TOKENS], s[:, T_ERRORS]
    out = np.empty((s.shape[0], N_TELEMETRY_STEP_FEATURES), dtype=np.float64)
    out[:, 0] = np.log1p(batches)
    out[:, 1] = np.log1p(s[:, T_LATENCY])
    out[:, 2] = np.log1p(s[:, T_BATCH_SIZE])
    out[:, 3] = np.log1p(tokens)
    out[:, 4] = np.log1p(s[:, T_QUEUE])
    out[:, 5] = np.log1p(errors)
    out[:, 6] = errors / np.maximum(batches + errors, 1.0)
    out[:, 7] = s[:, T_GPU] / 100.0
    out[:, 8] = np.log1p(s[:, T_HB_GAP])
    out[:, 9] = np.log1p(s[:, T_CLAIMED])
    per_batch_tokens = tokens / np.maximum(batches, 1.0)
    out[:, 10] = np.where(
        batches > 0, np.log1p(1000.0 * s[:, T_LATENCY] / np.maximum(per_batch_tokens, 1.0)), 0.0
    )
    out[:, 11] = np.log1p(tokens) - np.log1p(s[:, T_GPU])
    out[:, 12] = np.log1p(np.cumsum(s[:, T_CLAIMED])) - np.log1p(np.cumsum(tokens))
    out[:, 13] = batches > 0
    return out.astype(np.float32)


def _field(rec: Any, name: str) -> Any:
    return rec[name] if isinstance(rec, Mapping) else getattr(rec, name)


def bucket_telemetry(
    records: Iterable[Any],
    claims: Iterable[tuple[float, float]],
    *,
    start_ts: float,
    step_s: float,
    n_steps: int,
    last_heartbeat_ts: float | None = None,
) -> np.ndarray:
    """Raw telemetry records of one node -> (n_steps, N_TELEMETRY_CHANNELS) steps.

    `records` are `node.telemetry.v1` values (mappings or objects with kind, ts, latency_ms,
    batch_size, tokens, queue_depth, errors, gpu_util); `claims` are (ts, units) usage
    settlements of the node seen on-chain. Steps cover [start_ts, start_ts + n_steps*step_s);
    records outside are ignored. A batch record with errors > 0 counts as failed batches.
    The heartbeat gap at a step's end counts from `last_heartbeat_ts` (the newest heartbeat
    before `start_ts`, if known; else from `start_ts`).
    """
    if step_s <= 0 or n_steps < 1:
        raise ValueError("step_s must be > 0 and n_steps >= 1")
    out = np.zeros((n_steps, N_TELEMETRY_CHANNELS), dtype=np.float64)
    sums = np.zeros((n_steps, 4))  # latency, batch size, queue, gpu util (sums)
    counts = np.zeros((n_steps, 2))  # ok batches, all records (for queue/gpu means)
    heartbeats: list[float] = []
    for rec in records:
        ts = float(_field(rec, "ts"))
        i = math.floor((ts - start_ts) / step_s)
        if not 0 <= i < n_steps:
            continue
        kind = str(_field(rec, "kind"))
        sums[i, 2] += float(_field(rec, "queue_depth"))
        sums[i, 3] += float(_field(rec, "gpu_util"))
        counts[i, 1] += 1
        if kind == "heartbeat":
            heartbeats.append(ts)
            continue
        errors = int(_field(rec, "errors"))
        if errors > 0:
            out[i, T_ERRORS] += errors
            continue
        out[i, T_BATCHES] += 1
        out[i, T_TOKENS] += float(_field(rec, "tokens"))
        sums[i, 0] += float(_field(rec, "latency_ms"))
        sums[i, 1] += float(_field(rec, "batch_size"))
        counts[i, 0] += 1
    for ts, units in claims:
        i = math.floor((float(ts) - start_ts) / step_s)
        if 0 <= i < n_steps:
            out[i, T_CLAIMED] += float(units)
    ok = np.maximum(counts[:, 0], 1.0)
    seen = np.maximum(counts[:, 1], 1.0)
    out[:, T_LATENCY] = sums[:, 0] / ok
    out[:, T_BATCH_SIZE] = sums[:, 1] / ok
    out[:, T_QUEUE] = sums[:, 2] / seen
    out[:, T_GPU] = sums[:, 3] / seen
    ends = start_ts + step_s * np.arange(1, n_steps + 1)
    hb = np.sort(np.asarray(heartbeats, dtype=np.float64))
    last_before = start_ts if last_heartbeat_ts is None else float(last_heartbeat_ts)
    k = np.searchsorted(hb, ends, side="left")  # heartbeats strictly before each step end
    newest = np.where(k > 0, hb[np.maximum(k - 1, 0)] if len(hb) else last_before, last_before)
    out[:, T_HB_GAP] = ends - newest
    return out
