"""Reliability drills on the real embedded parts, started one by one.

Each drill gets its own Tansu broker, embedded ClickHouse (`python -m
pipelines.storage.chserver`, restartable on the same data dir and port) and one or
more Faust workers (`python -m pipelines.cli worker`) as subprocesses. There is no
chain: the drills produce `chain.tx.v1` messages themselves, exactly as the
follower would (`build_batches`-shaped `TxBatchRecord`s keyed by sender shard), except
the RPC outage drill, which adds anvil and the real follower.

Every stack runs with secrets set: ClickHouse requires a password and the workers (and
follower) get a monitor private key, both random per stack. When the stack stops, no
log of any part may contain either (`DrillStack.assert_no_secrets_in_logs`), so every
drill, outages and hostile input included, is also a secret-leak check.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipelines.chain.follower import N_SHARDS, shard_of
from pipelines.procs import ManagedProcess, free_port, port_open
from pipelines.records import SCHEMA_VERSION, TOPIC_CHAIN_TX, TxBatchRecord, TxRecord
from pipelines.settings import Settings
from pipelines.stack import chserver_argv, create_topics, settings_env, tansu_argv
from pipelines.storage.client import connect, ping
from pipelines.storage.schema import migrate
from tests.integration.stackrun import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
BLOCK_T0 = 1_700_000_000.0


def _http_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback
        return dict(json.loads(r.read()))


def rss_kb(pid: int) -> int:
    """Resident set size of one process (kB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ------------------------------------------------------------------ transactions


def sender(i: int) -> str:
    return f"0x{0xA11CE000 + i:040x}"


def tx_hash(n: int) -> str:
    return f"0x{n:064x}"


@dataclass
class TxPlan:
    """A deterministic stream of blocks: `per_block` txs from `senders` senders per block."""

    senders: int = 24
    per_block: int = 24
    next_block: int = 1
    next_tx: int = 1
    produced: list[str] = field(default_factory=list)

    def blocks(self, n: int) -> list[tuple[bytes, bytes]]:
        """The next `n` blocks as (key, value) messages, one per sender shard per block."""
        out: list[tuple[bytes, bytes]] = []
        for _ in range(n):
            b = self.next_block
            self.next_block += 1
            groups: dict[int, list[TxRecord]] = {}
            for j in range(self.per_block):
                s = sender((b * 7 + j) % self.senders)
                h = tx_hash(self.next_tx)
                self.next_tx += 1
                self.produced.append(h)
                groups.setdefault(shard_of(s, N_SHARDS), []).append(
                    TxRecord(
                        tx_hash=h,
                        sender=s,
                        to=sender(1000 + j % 3),
                        value_wei=str(10**15 * (1 + j)),
                        gas_price_wei=10**9,
                        gas=21_000,
                        nonce=b,
                        selector="",
                        status=1,
                        tx_index=j,
                    )
                )
            for shard, txs in sorted(groups.items()):
                rec = TxBatchRecord(
                    schema_version=SCHEMA_VERSION,
                    chain_id=31337,
                    block_number=b,
                    block_hash=tx_hash(10**12 + b),
                    parent_hash=tx_hash(10**12 + b - 1),
                    block_time=BLOCK_T0 + b,
                    confirmed=True,
                    shard=shard,
                    txs=txs,
                    version=1,
                )
                out.append((str(shard).encode(), rec.dumps()))
        return out


# -------------------------------------------------------------------------- stack


@dataclass
class DrillStack:
    root: Path
    partitions: int = 1
    kafka_port: int = field(default_factory=free_port)
    ch_port: int = field(default_factory=free_port)
    broker: ManagedProcess | None = None
    ch: ManagedProcess | None = None
    workers: list[ManagedProcess] = field(default_factory=list)
    others: list[ManagedProcess] = field(default_factory=list)  # anvil, follower: stopped first
    worker_ports: dict[str, int] = field(default_factory=dict)
    # Secrets of this stack (random, never a default): ClickHouse's password and the
    # monitor key handed to every worker and follower. No log may ever contain them.
    ch_password: str = field(default_factory=lambda: "drill-" + secrets.token_hex(12))
    monitor_key: str = field(default_factory=lambda: "0x" + secrets.token_hex(32))
    _ch_starts: int = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def ch_url(self) -> str:
        return f"http://127.0.0.1:{self.ch_port}"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    # --- parts ------------------------------------------------------------------

    def start(self) -> DrillStack:
        self.broker = ManagedProcess(
            "tansu",
            tansu_argv(self.kafka_port),
            log_path=self.logs / "tansu.log",
        ).start()
        self.broker.wait_healthy(lambda: port_open("127.0.0.1", self.kafka_port), timeout=30)
        asyncio.run(create_topics(self.bootstrap, self.partitions))
        self.start_clickhouse()
        client = connect(self.ch_url, "default", self.ch_password, None)
        migrate(client, "vigil")
        client.close()
        return self

    def start_clickhouse(self) -> None:
        self._ch_starts += 1
        self.ch = ManagedProcess(
            "clickhouse",
            chserver_argv(self.root / "clickhouse", self.ch_port),
            log_path=self.logs / f"clickhouse-{self._ch_starts}.log",
            env={"VIGIL_CLICKHOUSE_PASSWORD": self.ch_password},
            cwd=REPO_ROOT,
        ).start()
        self.ch.wait_healthy(lambda: ping(self.ch_url, timeout=0.5), timeout=90)

    def stop_clickhouse(self) -> int | None:
        """SIGTERM the ClickHouse server (as an operator or orchestrator would)."""
        assert self.ch is not None and self.ch.proc is not None
        self.ch.stop(timeout=30)
        return self.ch.proc.returncode

    def settings(self, name: str, **overrides: Any) -> Settings:
        port = self.worker_ports.setdefault(name, free_port())
        base: dict[str, Any] = dict(
            embedded=False,  # the random monitor key is not a dev key: no demo exemption
            data_dir=self.root / name,
            kafka_bootstrap=self.bootstrap,
            clickhouse_url=self.ch_url,
            clickhouse_password=self.ch_password,
            rpc_url=f"http://127.0.0.1:{free_port()}",  # no chain unless a drill adds one
            node_registry_address=None,
            monitor_private_key=self.monitor_key,
            topic_partitions=self.partitions,
            worker_web_port=port,
            warmup_rows=50,
            state_snapshot_every=10,  # recovery starts from a snapshot in every drill
            seed=7,
        )
        base.update(overrides)
        return Settings(**base)

    def start_worker(self, name: str = "worker", timeout: float = 120) -> ManagedProcess:
        """One Faust worker (same app id for all); returns once /health answers."""
        s = self.settings(name)
        # `vigil worker` on a fresh data dir fails (Faust creates <data_dir>/faust without
        # parents), so the drill creates it as `vigil up` does.
        s.data_dir.mkdir(parents=True, exist_ok=True)
        w = ManagedProcess(
            name,
            [sys.executable, "-m", "pipelines.cli", "worker"],
            log_path=self.logs / f"{name}.log",
            env=settings_env(s),
            cwd=REPO_ROOT,
        ).start()
        self.workers.append(w)
        w.wait_healthy(lambda: bool(self.health(name)), timeout=timeout)
        return w

    def health(self, name: str = "worker") -> dict[str, Any]:
        return _http_json(f"http://127.0.0.1:{self.worker_ports[name]}/health")

    def worker_log(self, name: str = "worker") -> str:
        p = self.logs / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def start_follower(self, name: str = "follower", **overrides: Any) -> ManagedProcess:
        """`vigil follow` (the real block follower) as a subprocess; `overrides` set its
        settings (at least `rpc_url`). Returns once it runs; the caller checks progress."""
        s = self.settings(name, **overrides)
        f = ManagedProcess(
            name,
            [sys.executable, "-m", "pipelines.cli", "follow"],
            log_path=self.logs / f"{name}.log",
            env=settings_env(s),
            cwd=REPO_ROOT,
        ).start()
        self.others.append(f)
        return f

    def stop(self) -> None:
        for p in [*reversed(self.others), *reversed(self.workers), self.ch, self.broker]:
            if p is not None:
                p.stop(timeout=15)

    def assert_no_secrets_in_logs(self) -> None:
        """No log of any part (workers, follower, ClickHouse, broker, anvil) contains the
        ClickHouse password or the monitor key, in any spelling."""
        key = self.monitor_key.lower().removeprefix("0x")
        needles = {
            self.ch_password: "the ClickHouse password",
            key: "the monitor key",
            key.upper(): "the monitor key",
        }
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace")
            leaked = sorted({what for n, what in needles.items() if n in text})
            assert not leaked, f"{log.name} contains {' and '.join(leaked)}"

    # --- Kafka ------------------------------------------------------------------

    def produce(
        self, messages: Iterable[tuple[bytes | None, bytes | None]], topic: str = TOPIC_CHAIN_TX
    ) -> int:
        msgs = list(messages)

        async def run() -> None:
            p = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                linger_ms=5,
                max_request_size=8 * 1024 * 1024,
            )
            await p.start()
            try:
                futs = [await p.send(topic, key=k, value=v) for k, v in msgs]
                await asyncio.gather(*futs)
            finally:
                await p.stop()

        asyncio.run(run())
        return len(msgs)

    def consume_all(self, topic: str, expect: int, timeout: float = 60) -> list[Any]:
        """Read `topic` from the start until `expect` messages or `timeout`."""

        async def run() -> list[Any]:
            c = AIOKafkaConsumer(
                topic,
                bootstrap_servers=self.bootstrap,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                group_id=None,
            )
            await c.start()
            out: list[Any] = []
            try:
                deadline = time.monotonic() + timeout
                while len(out) < expect and time.monotonic() < deadline:
                    got = await c.getmany(timeout_ms=1000, max_records=5000)
                    for msgs in got.values():
                        out.extend(msgs)
            finally:
                await c.stop()
            return out

        return asyncio.run(run())

    # --- ClickHouse ---------------------------------------------------------------

    def query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        c = connect(self.ch_url, "default", self.ch_password, "vigil")
        try:
            return [tuple(r) for r in c.query(sql, parameters=params or None).result_rows]
        finally:
            c.close()

    def tx_counts(self) -> tuple[int, int, int]:
        """(rows FINAL, distinct tx hashes FINAL, scores FINAL)."""
        ((n, u),) = self.query("SELECT count(), uniqExact(tx_hash) FROM transactions FINAL")
        ((s,),) = self.query("SELECT count() FROM scores FINAL")
        return int(n), int(u), int(s)

    def wait_stored(self, expect: int, timeout: float) -> tuple[int, int, int]:
        """Wait until `expect` txs are stored and scored (then a little longer, so late
        duplicates would show)."""
        got = wait_for(
            lambda: (c := self.tx_counts())[1] >= expect and c[2] >= expect and c,
            timeout,
            f"{expect} txs stored and scored",
            every=1.0,
        )
        time.sleep(2)
        return got if self.tx_counts() == got else self.tx_counts()

    def assert_exactly_once(self, produced: list[str]) -> None:
        n, u, s = self.tx_counts()
        assert (n, u, s) == (len(produced), len(produced), len(produced)), (n, u, s)
        stored = {r[0] for r in self.query("SELECT tx_hash FROM transactions FINAL")}
        missing = set(produced) - stored
        assert not missing, f"{len(missing)} txs missing, e.g. {sorted(missing)[:3]}"
        assert not stored - set(produced)
        ((dup,),) = self.query(
            "SELECT count() FROM (SELECT tx_hash FROM scores FINAL GROUP BY tx_hash "
            "HAVING count() > 1)"
        )
        assert dup == 0, f"{dup} txs scored more than once (several model versions?)"


@pytest.fixture
def drill_stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DrillStack]:
    """A fresh broker + ClickHouse (1 partition per topic; parametrize indirectly for
    more). Logs stay in `<tmp_path>/logs/`; `VIGIL_DRILL_LOGS=1` prints their tails."""
    stack = DrillStack(tmp_path, partitions=getattr(request, "param", 1))
    try:
        yield stack.start()
    finally:
        stack.stop()
        if os.environ.get("VIGIL_DRILL_LOGS"):
            for log in sorted(stack.logs.glob("*.log")):
                print(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}")
    stack.assert_no_secrets_in_logs()  # after every drill: outages and bad input leak nothing
