"""End-to-end transaction pipeline benchmark on the embedded parts, started and stopped here.

    .venv/bin/vigil bench pipeline [--events 100000] [--naive-events 20000] [--json]
    .venv/bin/python bench/pipeline_bench.py [--events N]         # same, without the CLI

Phases (one run, same broker, same data):

0. Data: `--events` synthetic transactions in blocks of `--txs-per-block` (2 s apart in
   block time) from `--senders` humans plus a few high-rate bots that start after the
   warm-up; grouped per block by sender shard (`pipelines.chain.follower.build_batches`,
   16 shards) and pre-produced to `chain.tx.v1` exactly as the follower encodes them.
1. Raw: a bare aiokafka consumer (no group, no decode) reads every message: msgs/s, txs/s.
2. Naive Faust: a minimal Faust app (own app id, own topic with ONE tx per message as a
   `faust.Record`) whose agent iterates the events and updates a Table per event; it is
   measured over `--naive-events` events (first event to last), never extrapolated.
3. Full path: the real worker (`python -m pipelines.cli worker`, embedded settings,
   warm-up 300 rows) against chserver; events/s = N / (first `ingested_at` in
   `transactions` -> the poll that saw all N transactions and N scores). Peak RSS is the
   worker's VmHWM; CPU seconds per process come from /proc/<pid>/stat over the phase.
4. Detection latency: afterwards, live blocks (block time = wall time, 2 s apart) with
   fresh bots are produced; latency = produce time of the tx an alert names -> the poll
   (every 100 ms) in which that alert row is first visible in ClickHouse.
5. Per-stage CPU: the agent's body (decode, state load, featurize, forest score,
   policy/alerts, row building, state store) runs in this process over the same
   messages with `time.process_time` counters (no Kafka, no ClickHouse I/O).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.settings import KafkaCompression

log = logging.getLogger(__name__)

NAIVE_TOPIC = "bench.naive.tx.v1"
N_SHARDS = 16
_REPO = Path(__file__).resolve().parents[1]


@dataclass
class PipelineBenchConfig:
    events: int = 100_000
    naive_events: int = 20_000
    txs_per_block: int = 2000
    senders: int = 3000
    bots: int = 10
    bot_txs_per_block: int = 10
    block_interval_s: float = 2.0
    warmup_rows: int = 300
    live_blocks: int = 8
    live_txs_per_block: int = 500
    live_bots: int = 10
    partitions: int = 1
    #: Codec of every message the bench produces, as `Settings.kafka_compression` spells
    #: it (its default, what the follower writes); the workers' setting for their topics.
    compression: KafkaCompression = "zstd"
    workers: int = 1  # worker processes; topics get max(partitions, workers) partitions
    seed: int = 1
    timeout_s: float = 600.0
    naive_timeout_s: float = 180.0
    data_dir: Path | None = None
    keep_data: bool = False


@dataclass
class PipelineResult:
    figures: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    process_cpu_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.figures,
            "stage_cpu_share": self.stages,
            "process_cpu_s": self.process_cpu_s,
            "notes": self.notes,
        }


# ----------------------------------------------------------------------------- data


def _addr(rng: random.Random) -> str:
    return f"0x{rng.getrandbits(160):040x}"


def make_blocks(
    cfg: PipelineBenchConfig,
    *,
    n_txs: int,
    t0: float,
    first_block: int = 1_000_000,
    bots_from: int | None = None,
) -> list[tuple[dict[str, Any], list[Any]]]:
    """Blocks of realistic-looking txs: (header mapping, [Tx]) with ~`n_txs` txs in all."""
    from detector.types import Tx

    rng = random.Random(cfg.seed)
    humans = [_addr(rng) for _ in range(cfg.senders)]
    activity = [rng.lognormvariate(0.0, 0.7) for _ in humans]
    bots = [_addr(rng) for _ in range(cfg.bots)]
    contracts = [_addr(rng) for _ in range(300)]
    pair = _addr(rng)
    selectors = ["", "0xa9059cbb", "0x095ea7b3", "0x38ed1739", "0x7ff36ab5", "0x23b872dd"]
    nonces: dict[str, int] = {}
    blocks = []
    made = 0
    per_block = cfg.txs_per_block
    n_blocks = max(1, -(-n_txs // per_block))
    if bots_from is None:  # after the worker has fitted its model (one window + 2 blocks)
        bots_from = min(max(n_blocks - 5, 1), int(30.0 / cfg.block_interval_s) + 2)
    parent = f"0x{rng.getrandbits(256):064x}"
    for b in range(n_blocks):
        number = first_block + b
        ts = t0 + b * cfg.block_interval_s
        size = min(per_block, n_txs - made)
        n_bot = cfg.bots * cfg.bot_txs_per_block if b >= bots_from else 0
        n_bot = min(n_bot, size // 2)
        txs = []
        picks = rng.choices(humans, weights=activity, k=size - n_bot)
        for s in picks:
            sel = rng.choice(selectors)
            nonce = nonces.get(s, rng.randrange(0, 500))
            nonces[s] = nonce + 1
            txs.append(
                Tx(
                    tx_hash=f"0x{rng.getrandbits(256):064x}",
                    sender=s,
                    to=rng.choice(contracts) if sel else _addr(rng),
                    value_wei=rng.randrange(10**15, 10**19) if not sel else 0,
                    gas_price_wei=int(20e9 * rng.lognormvariate(0.0, 0.3)),
                    gas=21_000 if not sel else rng.randrange(45_000, 300_000),
                    nonce=nonce,
                    selector=sel,
                    status=0 if rng.random() < 0.02 else 1,
                    block_number=number,
                    timestamp=float(int(ts)),
                )
            )
        for k in range(n_bot):
            s = bots[k % cfg.bots]
            nonce = nonces.get(s, 0)
            nonces[s] = nonce + 1
            txs.append(
                Tx(
                    tx_hash=f"0x{rng.getrandbits(256):064x}",
                    sender=s,
                    to=pair,
                    value_wei=10**17,
                    gas_price_wei=31_000_000_000,
                    gas=180_000,
                    nonce=nonce,
                    selector="0x38ed1739",
                    status=1,
                    block_number=number,
                    timestamp=float(int(ts)),
                )
            )
        rng.shuffle(txs)
        h = f"0x{rng.getrandbits(256):064x}"
        blocks.append(
            ({"number": number, "hash": h, "parentHash": parent, "timestamp": int(ts)}, txs)
        )
        parent = h
        made += size
    return blocks


def encode_blocks(
    blocks: Sequence[tuple[dict[str, Any], list[Any]]],
) -> list[tuple[bytes, bytes, int]]:
    """(key, value, n_txs) `chain.tx.v1` messages, encoded as the follower does."""
    from pipelines.chain.follower import build_batches

    out = []
    for header, txs in blocks:
        for shard, rec in build_batches(
            header, txs, list(range(len(txs))), chain_id=31337, confirmed=True, n_shards=N_SHARDS
        ):
            out.append((str(shard).encode(), rec.dumps(), len(rec.txs)))
    return out


# ------------------------------------------------------------------------ processes


def _cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def _status_mb(pid: int, field_name: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _peak_rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmHWM")


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - loopback health URL
        return bool(r.status == 200)


def _events_taken(port: int) -> int:
    """Events a worker has taken from its topics so far (its /health counter)."""
    url = f"http://127.0.0.1:{port}/health"
    with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - loopback health URL
        return int(json.loads(r.read()).get("events", 0))


async def _produce(
    bootstrap: str, topic: str, msgs: Sequence[tuple[bytes, bytes]], compression: str | None
) -> float:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_request_size=8 * 1024 * 1024,
        compression_type=compression,
    )
    await producer.start()
    try:
        start = time.perf_counter()
        futures = [await producer.send(topic, key=k, value=v) for k, v in msgs]
        await asyncio.gather(*futures)
        return time.perf_counter() - start
    finally:
        await producer.stop()


async def _raw_consume(
    bootstrap: str, topic: str, n_msgs: int, timeout: float
) -> tuple[int, float]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    try:
        seen = 0
        start = time.perf_counter()
        while seen < n_msgs and time.perf_counter() - start < timeout:
            got = await consumer.getmany(timeout_ms=500, max_records=100_000)
            seen += sum(len(v) for v in got.values())
        return seen, time.perf_counter() - start
    finally:
        await consumer.stop()


async def _create_topic(bootstrap: str, name: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        await admin.close()


# ---------------------------------------------------------------------- naive Faust


@functools.cache
def _naive_tx_record() -> Any:
    """The naive agent's one-tx-per-message Record (Faust imported only when used)."""
    import faust

    class NaiveTx(faust.Record, serializer="json", namespace="bench.naive.tx"):
        tx_hash: str
        sender: str
        to: str
        value_wei: str
        gas_price_wei: int
        gas: int
        nonce: int
        selector: str
        status: int
        block_number: int
        timestamp: float

    return NaiveTx


def naive_worker_main() -> None:
    """The reference a newcomer would write: one tx per message, Table update per event."""
    import faust

    bootstrap = os.environ["NAIVE_BOOTSTRAP"]
    target = int(os.environ["NAIVE_TARGET"])
    out = Path(os.environ["NAIVE_OUT"])

    NaiveTx = _naive_tx_record()
    app = faust.App(
        "vigil-bench-naive",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        autodiscover=False,
        topic_partitions=1,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=int(os.environ["NAIVE_WEB_PORT"]),
        datadir=os.environ["NAIVE_DATADIR"],
    )
    topic = app.topic(NAIVE_TOPIC, value_type=NaiveTx, partitions=1)
    stats = app.Table("naive-sender-stats", partitions=1)
    state = {"n": 0, "t0": 0.0}

    def write(done: bool) -> None:
        now = time.perf_counter()
        out.write_text(
            json.dumps({"events": state["n"], "seconds": now - state["t0"], "done": done})
        )

    @app.agent(topic)
    async def per_event(stream: Any) -> None:
        async for tx in stream:
            if state["n"] == 0:
                state["t0"] = time.perf_counter()
            s = stats.get(tx.sender) or {"n": 0, "gas": 0, "last": 0.0, "value": "0"}
            stats[tx.sender] = {
                "n": s["n"] + 1,
                "gas": s["gas"] + tx.gas,
                "last": tx.timestamp,
                "value": str(int(s["value"]) + int(tx.value_wei)),
            }
            state["n"] += 1
            if state["n"] % 1000 == 0 or state["n"] >= target:
                write(state["n"] >= target)

    from faust.worker import Worker

    sys.argv = [sys.argv[0]]
    Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False).execute_from_commandline()


def naive_messages(
    blocks: Sequence[tuple[dict[str, Any], list[Any]]], n: int
) -> list[tuple[bytes, bytes]]:

    NaiveTx = _naive_tx_record()
    out: list[tuple[bytes, bytes]] = []
    for _, txs in blocks:
        for t in txs:
            if len(out) >= n:
                return out
            rec = NaiveTx(
                tx_hash=t.tx_hash,
                sender=t.sender,
                to=t.to,
                value_wei=str(t.value_wei),
                gas_price_wei=t.gas_price_wei,
                gas=t.gas,
                nonce=t.nonce,
                selector=t.selector,
                status=t.status,
                block_number=t.block_number,
                timestamp=t.timestamp,
            )
            out.append((t.sender.encode(), rec.dumps()))
    return out


# -------------------------------------------------------------------- stage profile


def stage_profile(
    messages: Sequence[bytes], warmup_rows: int, seed: int, batch_size: int = 256
) -> tuple[dict[str, float], float]:
    """CPU seconds per stage of the score-transactions body, in this process: the same
    steps as the agent's `score_group`, on groups of `batch_size` messages, with the
    worker's garbage-collector settings."""
    import gc

    import numpy as np

    import pipelines.scoring as scoring
    from detector.features import FEATURE_NAMES, SenderWindow
    from detector.iforest import IsolationForestDetector
    from detector.policy import EntityAlertState
    from pipelines.app import state_changes, tune_gc
    from pipelines.chain.reorg import inclusion_rows
    from pipelines.records import decode_tx_batch
    from pipelines.storage import rows
    from pipelines.txstate import PartitionState, encode_delta

    cpu: dict[str, float] = dict.fromkeys(
        (
            "decode",
            "state_load",
            "featurize",
            "forest_score",
            "policy_alerts",
            "rows",
            "state_store",
        ),
        0.0,
    )
    fit = {"s": 0.0, "in": 0.0}
    real_featurize, real_fit = scoring.featurize, scoring.fit_model

    def timed_featurize(*a: Any, **k: Any) -> Any:
        t = time.process_time()
        try:
            return real_featurize(*a, **k)
        finally:
            cpu["featurize"] += time.process_time() - t

    def timed_fit(*a: Any, **k: Any) -> Any:
        t = time.process_time()
        fit["in"] = 1.0
        try:
            return real_fit(*a, **k)
        finally:
            fit["in"] = 0.0
            fit["s"] += time.process_time() - t

    real_score = IsolationForestDetector.score

    def timed_score(self: IsolationForestDetector, x: np.ndarray) -> np.ndarray:
        t = time.process_time()
        try:
            return real_score(self, x)
        finally:
            if not fit["in"]:  # the threshold's scoring inside a fit counts as fitting
                cpu["forest_score"] += time.process_time() - t

    setattr(scoring, "featurize", timed_featurize)  # noqa: B010 - timing wrappers, restored below
    setattr(scoring, "fit_model", timed_fit)  # noqa: B010
    setattr(IsolationForestDetector, "score", timed_score)  # noqa: B010
    thresholds = gc.get_threshold()
    tune_gc()
    try:
        cfg = scoring.ScoringConfig(warmup_rows=warmup_rows, seed=seed)
        core = scoring.TxScoringCore(cfg)
        st = PartitionState()
        for i in range(0, len(messages), batch_size):
            t = time.process_time()
            group = [decode_tx_batch(raw) for raw in messages[i : i + batch_size]]
            cpu["decode"] += time.process_time() - t
            t = time.process_time()
            txs = [tx for b in group for tx in b.txs]
            senders = {tx.sender for tx in txs}
            states = {
                s: SenderWindow.from_dict(d) if (d := st.windows.get(s)) else None for s in senders
            }
            prev = {s: EntityAlertState.from_dict(st.alerts.get(s)) for s in senders}
            cpu["state_load"] += time.process_time() - t
            before = cpu["featurize"], cpu["forest_score"], fit["s"]
            t = time.process_time()
            result = core.process(txs, states, prev)
            total = time.process_time() - t
            cpu["policy_alerts"] += (
                total
                - (cpu["featurize"] - before[0])
                - (cpu["forest_score"] - before[1])
                - (fit["s"] - before[2])
            )
            t = time.process_time()
            now = time.time()
            [r for b in group for r in inclusion_rows(b, ingested_at=now)]
            rows.score_rows(
                result.scored,
                model_version="bench",
                feature_names=list(FEATURE_NAMES),
                scored_at=now,
            )
            rows.alert_rows(result.alerts)
            rows.evidence_rows(result.alerts)
            cpu["rows"] += time.process_time() - t
            t = time.process_time()
            windows, changed, _ = state_changes(txs, result, st)
            encode_delta("bench", windows, changed, [], i)
            st.apply(windows, changed, [])
            cpu["state_store"] += time.process_time() - t
    finally:
        setattr(scoring, "featurize", real_featurize)  # noqa: B010
        setattr(scoring, "fit_model", real_fit)  # noqa: B010
        setattr(IsolationForestDetector, "score", real_score)  # noqa: B010
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    return cpu, fit["s"]


# ---------------------------------------------------------------------------- run


@contextlib.contextmanager
def _workdir(cfg: PipelineBenchConfig) -> Iterator[Path]:
    if cfg.data_dir is not None:
        d = cfg.data_dir.resolve()
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        yield d
        return
    d = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    try:
        yield d
    finally:
        if not cfg.keep_data:
            shutil.rmtree(d, ignore_errors=True)


def _pct(xs: Sequence[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def run_pipeline_bench(
    cfg: PipelineBenchConfig, step: Callable[[str, float], None] | None = None
) -> PipelineResult:
    """Run every phase; `step(description, fraction_done)` reports progress."""
    from pydantic import SecretStr
    from web3 import Web3

    from pipelines.chain.anvil import DEV_ACCOUNTS, start_anvil
    from pipelines.chain.contracts import compile_project, deploy_node_registry
    from pipelines.procs import ManagedProcess, free_port, port_open
    from pipelines.settings import Settings, kafka_client_codec
    from pipelines.stack import chserver_argv, create_topics, settings_env, tansu_argv
    from pipelines.storage.client import connect, wait_ready
    from pipelines.storage.schema import migrate

    def say(msg: str, frac: float) -> None:
        log.info("%s", msg)
        if step is not None:
            step(msg, frac)

    res = PipelineResult()
    fig = res.figures
    procs: list[ManagedProcess] = []
    with _workdir(cfg) as d:
        logs = d / "logs"
        try:
            say("starting the Tansu broker", 0.01)
            kport = free_port()
            broker = ManagedProcess(
                "tansu",
                tansu_argv(kport),
                log_path=logs / "tansu.log",
            ).start()
            procs.append(broker)
            broker.wait_healthy(lambda: port_open("127.0.0.1", kport), timeout=30)
            bootstrap = f"127.0.0.1:{kport}"
            asyncio.run(create_topics(bootstrap, max(cfg.partitions, cfg.workers)))
            asyncio.run(_create_topic(bootstrap, NAIVE_TOPIC))

            say(f"generating {cfg.events} transactions", 0.03)
            # at least ~25 blocks (50 s of block time) so that the worker's 30 s windows
            # fill and the forest is fitted whatever --events is
            cfg = dataclasses.replace(
                cfg, txs_per_block=max(50, min(cfg.txs_per_block, cfg.events // 25))
            )
            n_blocks = max(1, -(-cfg.events // cfg.txs_per_block))
            t0 = float(int(time.time() - n_blocks * cfg.block_interval_s))
            blocks = make_blocks(cfg, n_txs=cfg.events, t0=t0)
            msgs = encode_blocks(blocks)
            n_txs = sum(n for _, _, n in msgs)
            n_msgs = len(msgs)
            fig.update(events=n_txs, messages=n_msgs, blocks=len(blocks))
            say(f"producing {n_msgs} messages ({n_txs} txs) to chain.tx.v1", 0.06)
            codec = kafka_client_codec(cfg.compression)
            rss0 = _status_mb(broker.pid, "VmRSS")
            secs = asyncio.run(
                _produce(bootstrap, "chain.tx.v1", [(k, v) for k, v, _ in msgs], codec)
            )
            # what holding these messages costs the broker (Tansu keeps every batch in
            # memory, compressed as produced): its resident memory before and after
            fig["compression"] = cfg.compression
            fig["broker_rss_growth_mb"] = _status_mb(broker.pid, "VmRSS") - rss0
            fig["message_mb"] = sum(len(v) for _, v, _ in msgs) / 1e6
            fig["produce_events_per_s"] = n_txs / secs
            fig["message_bytes_mean"] = statistics.fmean(len(v) for _, v, _ in msgs)

            n_naive = min(cfg.naive_events, n_txs)
            say(f"producing {n_naive} one-tx messages for the naive agent", 0.1)
            naive_msgs = naive_messages(blocks, n_naive)
            asyncio.run(_produce(bootstrap, NAIVE_TOPIC, naive_msgs, codec))

            say("raw consume (bare aiokafka)", 0.15)
            seen, secs = asyncio.run(_raw_consume(bootstrap, "chain.tx.v1", n_msgs, cfg.timeout_s))
            raw_eps = n_txs * (seen / n_msgs) / secs
            fig.update(
                raw_consume_msgs_per_s=seen / secs,
                raw_consume_events_per_s=raw_eps,
                raw_consume_seconds=secs,
            )

            say(f"naive Faust agent over {n_naive} events", 0.2)
            naive_out = d / "naive.json"
            naive = ManagedProcess(
                "naive",
                [sys.executable, str(Path(__file__).resolve()), "naive-worker"],
                log_path=logs / "naive.log",
                env={
                    "NAIVE_BOOTSTRAP": bootstrap,
                    "NAIVE_TARGET": str(n_naive),
                    "NAIVE_OUT": str(naive_out),
                    "NAIVE_WEB_PORT": str(free_port()),
                    "NAIVE_DATADIR": str(d / "naive"),
                },
            ).start()
            procs.append(naive)
            deadline = time.monotonic() + cfg.naive_timeout_s
            got: dict[str, Any] = {}
            while time.monotonic() < deadline and naive.alive():
                if naive_out.exists():
                    with contextlib.suppress(ValueError):
                        got = json.loads(naive_out.read_text())
                    if got.get("done"):
                        break
                    say(f"naive Faust agent: {got.get('events', 0)}/{n_naive} events", 0.2)
                time.sleep(0.5)
            naive.stop()
            procs.remove(naive)
            if got.get("events", 0) > 1 and got.get("seconds", 0) > 0:
                fig["naive_faust_events"] = got["events"]
                fig["naive_faust_events_per_s"] = got["events"] / got["seconds"]
                if not got.get("done"):
                    res.notes.append(
                        f"naive agent stopped at its {cfg.naive_timeout_s:.0f} s cap after "
                        f"{got['events']} events; rate measured over those events"
                    )
            else:
                fig["naive_faust_events_per_s"] = None
                res.notes.append("naive agent processed no events (see naive.log)")

            say("starting chserver and the Vigil worker", 0.3)
            cport = free_port()
            ch = ManagedProcess(
                "clickhouse",
                chserver_argv(d / "clickhouse", cport),
                log_path=logs / "clickhouse.log",
            ).start()
            procs.append(ch)
            ch_url = f"http://127.0.0.1:{cport}"
            ch.wait_healthy(lambda: _http_ok(f"{ch_url}/ping"), timeout=60)
            wait_ready(ch_url, timeout=30)
            # the enforce agent needs a chain: anvil with the registry (actions are dry-run)
            aport = free_port()
            anvil = start_anvil(aport, log_path=logs / "anvil.log")
            procs.append(anvil)
            rpc = f"http://127.0.0.1:{aport}"
            registry = deploy_node_registry(
                Web3(Web3.HTTPProvider(rpc)),
                DEV_ACCOUNTS[0][1],
                monitor=DEV_ACCOUNTS[1][0],
                governance=DEV_ACCOUNTS[2][0],
                challenge_period_blocks=600,
                min_stake_wei=10**18,
                artifact=compile_project()["NodeRegistry"],
            )
            (d / "vigil").mkdir(parents=True, exist_ok=True)
            settings = Settings(
                embedded=True,
                data_dir=d / "vigil",
                kafka_bootstrap=bootstrap,
                rpc_url=rpc,
                clickhouse_url=ch_url,
                node_registry_address=registry,
                monitor_private_key=SecretStr(DEV_ACCOUNTS[1][1]),
                dry_run=True,
                kafka_compression=cfg.compression,
                topic_partitions=max(cfg.partitions, cfg.workers),
                worker_web_port=free_port(),
                warmup_rows=cfg.warmup_rows,
                seed=cfg.seed,
            )
            client = connect(ch_url, "default", "", None)
            migrate(client, settings.clickhouse_database)
            client.close()
            db = settings.clickhouse_database
            q = connect(ch_url, "default", "", db)
            workers = []
            for i in range(cfg.workers):  # same app id: Faust splits the partitions
                name = "worker" if cfg.workers == 1 else f"worker{i + 1}"
                ws = settings.model_copy(
                    update={"data_dir": d / name, "worker_web_port": free_port()}
                )
                ws.data_dir.mkdir(parents=True, exist_ok=True)
                w = ManagedProcess(
                    name,
                    [sys.executable, "-m", "pipelines.cli", "worker", "--log-level", "warning"],
                    log_path=logs / f"{name}.log",
                    env=settings_env(ws),
                ).start()
                procs.append(w)
                workers.append((w, ws.worker_web_port))
            cpu0 = {p.name: _cpu_s(p.pid) for p in procs}
            for w, port in workers:
                w.wait_healthy(partial(_http_ok, f"http://127.0.0.1:{port}/health"), timeout=120)
            say("full path: waiting for every transaction in ClickHouse", 0.35)
            start = time.monotonic()
            done_at = None
            began_at = None  # first poll at which a worker had taken an event
            n_tx = n_sc = 0
            while time.monotonic() - start < cfg.timeout_s:
                for w, _ in workers:
                    if not w.alive():
                        raise RuntimeError(f"{w.name} died; see {logs / (w.name + '.log')}")
                if began_at is None and any(_events_taken(port) for _, port in workers):
                    began_at = time.time()
                n_tx = int(q.query("SELECT count() FROM transactions").result_rows[0][0])
                n_sc = int(q.query("SELECT count() FROM scores").result_rows[0][0])
                say(
                    f"full path: {n_tx}/{n_txs} transactions, {n_sc} scores",
                    0.35 + 0.4 * n_tx / n_txs,
                )
                if n_tx >= n_txs and n_sc >= n_txs:
                    done_at = time.time()
                    break
                time.sleep(0.1)
            cpu1 = {p.name: _cpu_s(p.pid) for p in procs}
            if done_at is None:
                res.notes.append(f"full path timed out: {n_tx} txs, {n_sc} scores in ClickHouse")
            # From the first poll that saw a worker take an event: the first batch's
            # processing counts (the rows' `ingested_at` is stamped after it).
            first = began_at or time.time()
            end = done_at or time.time()
            fig["pipeline_seconds"] = end - first
            fig["pipeline_events_per_s"] = min(n_tx, n_sc) / (end - first)
            fig["alerts_backlog"] = int(q.query("SELECT count() FROM alerts").result_rows[0][0])
            res.process_cpu_s = {k: round(cpu1[k] - cpu0[k], 2) for k in cpu0}

            say("detection latency: live blocks with fresh bots", 0.8)
            lat = _live_latency(cfg, bootstrap, q, blocks, n_txs)
            fig["latency_alerts"] = len(lat)
            fig["latency_p50_s"] = _pct(lat, 0.5)
            fig["latency_p99_s"] = _pct(lat, 0.99)
            fig["peak_rss_mb"] = max(_peak_rss_mb(w.pid) for w, _ in workers)
            fig["workers"] = cfg.workers
            q.close()
        finally:
            for p in reversed(procs):
                p.stop()

    say("per-stage CPU profile (in process)", 0.9)
    stages, fit_s = stage_profile([v for _, v, _ in msgs], cfg.warmup_rows, cfg.seed)
    total = sum(stages.values())
    res.stages = {k: round(v / total, 4) for k, v in stages.items()}
    fig["inprocess_events_per_cpu_s"] = n_txs / total
    fig["inprocess_fit_cpu_s"] = fit_s
    raw = fig.get("raw_consume_events_per_s") or 0.0
    pipe = fig.get("pipeline_events_per_s") or 0.0
    naive_eps = fig.get("naive_faust_events_per_s")
    fig["ratio"] = pipe / raw if raw else None
    fig["speedup_vs_naive"] = pipe / naive_eps if naive_eps else None
    say("done", 1.0)
    return res


def _live_latency(
    cfg: PipelineBenchConfig,
    bootstrap: str,
    q: Any,
    backlog: Sequence[tuple[dict[str, Any], list[Any]]],
    backlog_txs: int,
) -> list[float]:
    """Produce live blocks with fresh bots; seconds from produce to alert row visible."""
    import dataclasses

    live_cfg = dataclasses.replace(
        cfg,
        seed=cfg.seed,  # same humans (same rng stream), fresh bots below
        bots=cfg.live_bots,
        txs_per_block=cfg.live_txs_per_block,
        bot_txs_per_block=cfg.bot_txs_per_block,
    )
    first_number = int(backlog[-1][0]["number"]) + 1
    base = make_blocks(
        live_cfg,
        n_txs=cfg.live_blocks * cfg.live_txs_per_block,
        t0=time.time(),
        first_block=first_number,
        bots_from=0,
    )
    # fresh bot addresses (make_blocks draws the same humans and bots for a seed)
    rng = random.Random(cfg.seed + 99)
    produced: dict[str, float] = {}
    seen_alerts: set[str] = {r[0] for r in q.query("SELECT alert_id FROM alerts").result_rows}
    latencies: list[float] = []
    live_total = 0

    async def go() -> None:
        nonlocal live_total
        from aiokafka import AIOKafkaProducer

        from pipelines.chain.follower import build_batches
        from pipelines.settings import kafka_client_codec

        fresh: dict[str, str] = {}
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=0,
            compression_type=kafka_client_codec(cfg.compression),
        )
        await producer.start()
        try:
            next_at = time.time()
            for header, txs in base:
                while time.time() < next_at:
                    await asyncio.sleep(0.02)
                    _poll()
                now = time.time()
                hdr = {**header, "timestamp": int(now)}
                out = []
                for t in txs:
                    s = t.sender
                    if (t.selector and t.value_wei == 10**17) or s in fresh:
                        s = fresh.setdefault(s, _addr(rng))
                    out.append(dataclasses.replace(t, sender=s, timestamp=float(int(now))))
                live_total += len(out)
                futs = []
                for shard, rec in build_batches(
                    hdr,
                    out,
                    list(range(len(out))),
                    chain_id=31337,
                    confirmed=True,
                    n_shards=N_SHARDS,
                ):
                    futs.append(
                        await producer.send(
                            "chain.tx.v1", key=str(shard).encode(), value=rec.dumps()
                        )
                    )
                await asyncio.gather(*futs)
                sent = time.time()
                for t in out:
                    produced[t.tx_hash] = sent
                next_at = now + cfg.block_interval_s
            until = time.time() + 10.0
            while time.time() < until:
                await asyncio.sleep(0.1)
                _poll()
        finally:
            await producer.stop()

    def _poll() -> None:
        now = time.time()
        for alert_id, tx_hash in q.query("SELECT alert_id, tx_hash FROM alerts").result_rows:
            if alert_id in seen_alerts:
                continue
            seen_alerts.add(alert_id)
            if tx_hash in produced:
                latencies.append(now - produced[tx_hash])

    asyncio.run(go())
    return latencies


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "naive-worker":
        sys.path.insert(0, str(_REPO))
        naive_worker_main()
        return
    sys.path.insert(0, str(_REPO))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--naive-events", type=int, default=20_000)
    p.add_argument("--data-dir", type=Path, default=None, help="keep logs and data here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    res = run_pipeline_bench(
        PipelineBenchConfig(events=a.events, naive_events=a.naive_events, data_dir=a.data_dir)
    )
    print(json.dumps(res.to_dict(), indent=2, default=float))


if __name__ == "__main__":
    main()
