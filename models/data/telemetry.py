"""Seeded synthetic per-node telemetry sequences: honest nodes and five fault families.

Pure (no I/O). One row per `STEP_S` seconds with the channels of
`models.data.events.TELEMETRY_CHANNELS`, i.e. what `bucket_telemetry` makes of a node's
`node.telemetry.v1` records plus its on-chain usage claims.

Generative assumptions (every parameter drawn per node):
- honest: request rate 0.05-40 req/s with a slow sine swing (up to +-80 %), idle stretches
  and honest load surges (x2-4 for a few steps); batches of up to 8-64 requests; latency =
  per-batch overhead (3-30 ms) + per-1k-token cost (2-40 ms on GPUs, 40-250 ms on the 15 %
  of CPU nodes, whose gpu_util is 0) with 15 % log-normal noise; gpu_util follows busy time
  (x0.6-1.0, +-5 points); queue builds when busy > 70 %; 0-1 % failed batches and, rarely,
  an honest one-step error blip; heartbeats every 5 s with a 1 % miss chance; usage settled
  every 30-120 s equals served tokens, while telemetry loses 0-5 % of batch records (so an
  honest claim ratio is 1.00-1.05).
- faults start at a random step (30 % from the first step, else within the first 70 %):
  slow (+30-400 ms per batch, throughput and queue suffer, GPU not busier); flaky (bursts of
  3 s - half a 20-120 s period in which 20-100 % of batches fail); lazy (10-90 % of requests
  skip the model: their tokens are claimed on-chain but no batch, latency or GPU work is
  seen); offline (heartbeats stop; half of them also stop serving); overclaim (claims x1.15-3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from models.data.common import GENERATOR_TAG_TELEMETRY, SequenceArrays, Split, entity_rng
from models.data.events import (
    N_TELEMETRY_CHANNELS,
    N_TELEMETRY_STEP_FEATURES,
    T_BATCH_SIZE,
    T_BATCHES,
    T_CLAIMED,
    T_ERRORS,
    T_GPU,
    T_HB_GAP,
    T_LATENCY,
    T_QUEUE,
    T_TOKENS,
    pad_sequences,
    telemetry_step_vectors,
)

NODE_FAMILIES: tuple[str, ...] = ("honest", "slow", "flaky", "lazy", "offline", "overclaim")
NODE_FAMILY_IDS = {f: i for i, f in enumerate(NODE_FAMILIES)}
STEP_S = 10.0
HEARTBEAT_S = 5.0


@dataclass(frozen=True)
class NodeSequence:
    """One node's telemetry steps (T, N_TELEMETRY_CHANNELS), its family and fault onset."""

    node_id: str
    family: str
    steps: np.ndarray
    onset: int  # first faulty step (len(steps) for honest nodes)


def _node(rng: np.random.Generator, family: str, n_steps: int) -> tuple[np.ndarray, int]:
    T = n_steps
    t = np.arange(T)
    cpu = rng.random() < 0.15
    overhead = rng.uniform(3, 30)
    per_k = rng.uniform(40, 250) if cpu else rng.uniform(2, 40)
    max_batch = int(rng.choice([8, 16, 32, 64]))
    wait_s = rng.uniform(0.01, 0.05)
    tok_mean = math.exp(rng.uniform(math.log(30), math.log(500)))
    util_scale = rng.uniform(0.6, 1.0)
    p_err = rng.uniform(0, 0.01)
    drop = rng.uniform(0, 0.05)
    settle_every = int(round(rng.uniform(30, 120) / STEP_S))

    base = math.exp(rng.uniform(math.log(0.05), math.log(40)))
    swing = rng.uniform(0, 0.8) * np.sin(2 * np.pi * t / rng.uniform(20, 200) + rng.uniform(0, 6))
    rate = base * (1 + swing)
    if rng.random() < 0.3:  # honest surge
        s0 = int(rng.integers(0, T))
        rate[s0 : s0 + int(rng.integers(2, 8))] *= rng.uniform(2, 4)
    if rng.random() < 0.2:  # honest idle stretch
        s0 = int(rng.integers(0, T))
        rate[s0 : s0 + int(rng.integers(3, 15))] *= 0.02

    if family == "honest":
        onset = T
    elif rng.random() < 0.3:
        onset = 0
    else:
        onset = int(rng.integers(1, max(int(0.7 * T), 2)))
    on = t >= onset

    requests = rng.poisson(rate * STEP_S).astype(np.float64)
    lazy_share = np.zeros(T)
    if family == "lazy":
        lazy_share[on] = rng.uniform(0.1, 0.9)
    lazy_req = rng.binomial(requests.astype(np.int64), lazy_share).astype(np.float64)
    real_req = requests - lazy_req
    bs = np.clip(1 + rate * wait_s * rng.uniform(0.5, 2.0), 1, max_batch)
    batches = np.ceil(real_req / bs)
    bs_obs = np.where(batches > 0, real_req / np.maximum(batches, 1), 0.0)
    tokens_per_req = tok_mean * np.exp(0.3 * rng.standard_normal(T))
    real_tokens = real_req * tokens_per_req
    lazy_tokens = lazy_req * tokens_per_req
    per_batch_tokens = np.where(batches > 0, real_tokens / np.maximum(batches, 1), 0.0)
    latency = (overhead + per_k * per_batch_tokens / 1000.0) * np.exp(0.15 * rng.standard_normal(T))
    compute_ms = latency.copy()
    if family == "slow":
        latency = latency + np.where(on, rng.uniform(30, 400), 0.0)
    busy = batches * latency / (STEP_S * 1000.0)
    queue = np.where(busy > 0.7, rng.poisson(np.maximum(busy - 0.7, 0) * 60), 0) + rng.poisson(
        0.5 * np.minimum(rate * wait_s, 5.0)
    )

    failed = rng.binomial(batches.astype(np.int64), p_err).astype(np.float64)
    if rng.random() < 0.05:  # honest one-step error blip
        s = int(rng.integers(0, T))
        failed[s] += rng.integers(1, 4)
    if family == "flaky":
        period = rng.uniform(20, 120)
        burst = rng.uniform(3, period / 2)
        fail_p = rng.uniform(0.2, 1.0)
        phase = rng.uniform(0, period)
        in_burst = ((t * STEP_S + phase) % period) < burst
        hit = on & (in_burst | (rng.random(T) < burst / period))
        extra = rng.binomial(batches.astype(np.int64), np.where(hit, fail_p, 0.0))
        failed = failed + extra
    failed = np.minimum(failed, batches)
    ok_batches = batches - failed
    ok_share = np.where(batches > 0, ok_batches / np.maximum(batches, 1), 0.0)
    served_tokens = real_tokens * ok_share + lazy_tokens
    seen = rng.binomial(ok_batches.astype(np.int64), 1 - drop).astype(np.float64)
    seen_share = np.where(ok_batches > 0, seen / np.maximum(ok_batches, 1), 0.0)
    tele_tokens = real_tokens * ok_share * seen_share

    gpu = (
        0.0 * busy
        if cpu
        else np.clip(
            100 * np.minimum(batches * compute_ms / (STEP_S * 1000.0), 1.0) * util_scale
            + 5 * rng.standard_normal(T),
            0,
            100,
        )
    )

    # heartbeats: every 5 s with 1 % misses; offline nodes stop at onset
    hb_times = np.arange(0.0, T * STEP_S, HEARTBEAT_S) + rng.uniform(0, HEARTBEAT_S)
    hb_times = hb_times[rng.random(len(hb_times)) >= 0.01]
    dark = False
    if family == "offline":
        hb_times = hb_times[hb_times < onset * STEP_S]
        dark = rng.random() < 0.5
    ends = (t + 1) * STEP_S
    k = np.searchsorted(hb_times, ends)
    last = np.where(k > 0, hb_times[np.maximum(k - 1, 0)] if len(hb_times) else 0.0, 0.0)
    hb_gap = ends - np.where(k > 0, last, -rng.uniform(0, HEARTBEAT_S))

    claimed = np.zeros(T)
    factor = rng.uniform(1.15, 3.0) if family == "overclaim" else 1.0
    pending = 0.0
    phase = int(rng.integers(0, settle_every))
    for i in range(T):
        pending += served_tokens[i] * (factor if i >= onset else 1.0)
        if (i + phase) % settle_every == 0 and pending > 0:
            claimed[i] = round(pending)
            pending = 0.0

    steps = np.zeros((T, N_TELEMETRY_CHANNELS))
    steps[:, T_BATCHES] = seen
    steps[:, T_LATENCY] = np.where(seen > 0, latency, 0.0)
    steps[:, T_BATCH_SIZE] = np.where(seen > 0, bs_obs, 0.0)
    steps[:, T_TOKENS] = np.round(tele_tokens)
    steps[:, T_QUEUE] = queue
    steps[:, T_ERRORS] = failed
    steps[:, T_GPU] = gpu
    steps[:, T_HB_GAP] = hb_gap
    steps[:, T_CLAIMED] = claimed
    if dark:
        off = t >= onset
        steps[off, T_BATCHES] = steps[off, T_LATENCY] = steps[off, T_BATCH_SIZE] = 0.0
        steps[off, T_TOKENS] = steps[off, T_QUEUE] = steps[off, T_ERRORS] = 0.0
        steps[off, T_GPU] = 0.0
        steps[off, T_CLAIMED] = 0.0
    return steps, onset


def generate_node_sequences(
    counts: Mapping[str, int], *, seed: int, split: Split, n_steps: int = 60
) -> list[NodeSequence]:
    """`counts[family]` nodes per family, each `n_steps` steps of STEP_S seconds."""
    unknown = set(counts) - set(NODE_FAMILIES)
    if unknown:
        raise ValueError(f"unknown node families {sorted(unknown)}; known: {NODE_FAMILIES}")
    if n_steps < 4:
        raise ValueError("n_steps must be >= 4")
    out: list[NodeSequence] = []
    for family in NODE_FAMILIES:
        fid = NODE_FAMILY_IDS[family]
        for i in range(int(counts.get(family, 0))):
            rng = entity_rng(GENERATOR_TAG_TELEMETRY, seed, split, fid, i)
            steps, onset = _node(rng, family, n_steps)
            node_id = f"node-{split}-{seed}-{fid}-{i}"
            out.append(NodeSequence(node_id=node_id, family=family, steps=steps, onset=onset))
    return out


#: Names of `telemetry_window_features` columns (the isolation forest's view of a window).
TELEMETRY_WINDOW_FEATURES: tuple[str, ...] = tuple(
    f"{stat}_{name}"
    for name in (
        "log_batches",
        "log_latency_ms",
        "log_batch_size",
        "log_tokens",
        "log_queue_depth",
        "error_share",
        "gpu_util",
        "log_heartbeat_gap_s",
        "log_ms_per_ktoken",
        "log_tokens_per_util",
    )
    for stat in ("mean", "std", "max")
) + ("final_claim_ratio", "share_steps_with_batches")
_SUMMARY_COLS = (0, 1, 2, 3, 4, 6, 7, 8, 10, 11)


def telemetry_window_features(steps: np.ndarray) -> np.ndarray:
    """Per-window summary row (order: TELEMETRY_WINDOW_FEATURES) of one node's steps."""
    v = telemetry_step_vectors(steps).astype(np.float64)
    cols = v[:, _SUMMARY_COLS]
    stats = np.stack((cols.mean(0), cols.std(0), cols.max(0)), axis=1).reshape(-1)
    return np.concatenate((stats, [v[-1, 12], v[:, 13].mean()]))


def telemetry_arrays(
    nodes: list[NodeSequence], *, classes: tuple[str, ...] = NODE_FAMILIES
) -> SequenceArrays:
    """Model inputs and isolation-forest rows of the same windows."""
    idx = {c: i for i, c in enumerate(classes)}
    missing = {n.family for n in nodes} - set(idx)
    if missing:
        raise ValueError(f"families {sorted(missing)} not in classes {classes}")
    max_len = max((len(n.steps) for n in nodes), default=1)
    x, lengths = pad_sequences(
        [telemetry_step_vectors(n.steps) for n in nodes], max_len, N_TELEMETRY_STEP_FEATURES
    )
    rows = np.array([telemetry_window_features(n.steps) for n in nodes], dtype=np.float64)
    return SequenceArrays(
        x=x,
        lengths=lengths,
        labels=np.array([idx[n.family] for n in nodes], dtype=np.int64),
        families=tuple(n.family for n in nodes),
        ids=tuple(n.node_id for n in nodes),
        window_features=rows.reshape(len(nodes), len(TELEMETRY_WINDOW_FEATURES)),
    )
