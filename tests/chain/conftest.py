"""A real ingestion rig: Tansu broker, anvil, the embedded ClickHouse, and a sink.

The sink is the honest downstream: it consumes `chain.tx.v1` and `chain.reorg.v1`
with aiokafka and writes the rows that `pipelines.chain.reorg.chain_message_rows`
builds (the same functions the worker uses) into a `transactions` table created by
the real migrations. Tests then compare `FINAL` totals with the canonical chain
read back from anvil.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from clickhouse_connect.driver import Client

from pipelines.chain.anvil import DEV_ACCOUNTS, start_anvil
from pipelines.chain.reorg import chain_message_rows
from pipelines.procs import ManagedProcess, free_port, port_open
from pipelines.records import TOPIC_CHAIN_REORG, TOPIC_CHAIN_TX
from pipelines.settings import Settings
from pipelines.stack import chserver_argv, tansu_argv
from pipelines.storage.client import connect, ping
from pipelines.storage.schema import TABLE_COLUMNS, migrate

REPO_ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 2


def rpc(url: str, method: str, *params: Any) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    req = urllib.request.Request(  # noqa: S310 - loopback anvil
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
        reply = json.loads(r.read())
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


def rpc_batch(url: str, calls: list[tuple[str, list[Any]]]) -> list[Any]:
    body = json.dumps(
        [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
    )
    req = urllib.request.Request(  # noqa: S310
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310
        replies = sorted(json.loads(r.read()), key=lambda x: x["id"])
    for x in replies:
        if "error" in x:
            raise RuntimeError(str(x["error"]))
    return [x["result"] for x in replies]


_value = itertools.count(1)


def mine_blocks(url: str, n_blocks: int, txs_per_block: int) -> list[str]:
    """Mine `n_blocks` blocks of `txs_per_block` value transfers (automine off while
    doing it); returns the tx hashes sent. Distinct values make sums meaningful."""
    rpc(url, "evm_setAutomine", False)
    sent: list[str] = []
    try:
        for _ in range(n_blocks):
            calls = [
                (
                    "eth_sendTransaction",
                    [
                        {
                            "from": DEV_ACCOUNTS[3 + k % 7][0],
                            "to": DEV_ACCOUNTS[(4 + k) % 10][0],
                            "value": hex(next(_value) * 10**12),
                        }
                    ],
                )
                for k in range(txs_per_block)
            ]
            if calls:
                sent += rpc_batch(url, calls)
            rpc(url, "evm_mine")
    finally:
        rpc(url, "evm_setAutomine", True)
    return sent


def canonical_txs(url: str) -> dict[str, int]:
    """tx hash -> value of every tx on anvil's canonical chain now."""
    head = int(rpc(url, "eth_blockNumber"), 16)
    blocks = rpc_batch(url, [("eth_getBlockByNumber", [hex(n), True]) for n in range(head + 1)])
    return {t["hash"].lower(): int(t["value"], 16) for b in blocks for t in b["transactions"]}


def checkpoint_block(path: Path) -> int:
    """The block of the follower's checkpoint mirror (`<data_dir>/follower/checkpoint.json`):
    everything up to it is published and acknowledged; -1 before the first write."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        return int(json.loads(path.read_text())["block_number"])
    return -1


@dataclass
class ChainSink:
    """Consumes both chain topics from the start and writes `transactions` rows."""

    bootstrap: str
    client: Client  # for queries (one clickhouse-connect client per thread)
    database: str
    url: str
    messages: list[tuple[str, bytes]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        writer = connect(self.url, "default", "", None)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        try:
            tps = [
                TopicPartition(t, p)
                for t in (TOPIC_CHAIN_TX, TOPIC_CHAIN_REORG)
                for p in range(PARTITIONS)
            ]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while not stop.is_set():
                got = await consumer.getmany(timeout_ms=200, max_records=500)
                rows: list[list[Any]] = []
                now = time.time()
                for tp, msgs in got.items():
                    for m in msgs:
                        self.messages.append((tp.topic, m.value))
                        rows += chain_message_rows(tp.topic, m.value, ingested_at=now)
                if rows:
                    await asyncio.to_thread(
                        writer.insert,
                        "transactions",
                        rows,
                        column_names=TABLE_COLUMNS["transactions"],
                        database=self.database,
                    )
        finally:
            await consumer.stop()
            writer.close()

    def final(self) -> dict[str, int]:
        """tx hash -> value, as `FINAL` sees the table (retracted rows hidden)."""
        rows = self.client.query(
            f"SELECT tx_hash, value_wei FROM `{self.database}`.transactions FINAL"
        ).result_rows
        return {str(h): int(v) for h, v in rows}

    def raw_count(self) -> int:
        q = f"SELECT count() FROM `{self.database}`.transactions"
        return int(self.client.query(q).result_rows[0][0])


@dataclass
class Rig:
    kafka: str
    rpc_url: str
    data_dir: Path
    client: Client
    database: str
    anvil: ManagedProcess
    ch_url: str

    def settings(self, **overrides: Any) -> Settings:
        base: dict[str, Any] = dict(
            kafka_bootstrap=self.kafka,
            rpc_url=self.rpc_url,
            data_dir=self.data_dir,
            confirmations=0,
            poll_interval_s=0.1,
        )
        base.update(overrides)
        return Settings(**base)

    def sink(self) -> ChainSink:
        return ChainSink(self.kafka, self.client, self.database, self.ch_url)


async def create_chain_topics(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, PARTITIONS, 1) for t in (TOPIC_CHAIN_TX, TOPIC_CHAIN_REORG)]
        )
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def chserver_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("chain-ch")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = chserver_argv(base / "data", port)
    proc = ManagedProcess("chserver", argv, log_path=base / "server.log", cwd=REPO_ROOT).start()
    try:
        proc.wait_healthy(lambda: ping(url, timeout=0.5), timeout=60)
        yield url
    finally:
        proc.stop()


_db_ids = itertools.count()


@pytest.fixture
def rig(tmp_path: Path, chserver_url: str) -> Iterator[Rig]:
    kport = free_port()
    broker = ManagedProcess(
        "tansu",
        tansu_argv(kport),
        log_path=tmp_path / "tansu.log",
    ).start()
    anvil: ManagedProcess | None = None
    client = connect(chserver_url, "default", "", None)
    database = f"chain_{next(_db_ids)}_{int(time.time() * 1000) % 10**8}"
    try:
        broker.wait_healthy(lambda: port_open("127.0.0.1", kport), timeout=30)
        asyncio.run(create_chain_topics(f"127.0.0.1:{kport}"))
        aport = free_port()
        anvil = start_anvil(aport, log_path=tmp_path / "anvil.log")
        migrate(client, database)
        yield Rig(
            kafka=f"127.0.0.1:{kport}",
            rpc_url=f"http://127.0.0.1:{aport}",
            data_dir=tmp_path / "vigil",
            client=client,
            database=database,
            anvil=anvil,
            ch_url=chserver_url,
        )
    finally:
        with contextlib.suppress(Exception):
            client.command(f"DROP DATABASE IF EXISTS `{database}`")
        client.close()
        if anvil is not None:
            anvil.stop()
        broker.stop()


async def wait_until(cond: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll `cond()` (sync, run in a thread) until true or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(cond)
        if last:
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


class TcpProxy:
    """A loopback TCP forwarder in front of a JSON-RPC endpoint that can be cut and
    restored (an RPC provider going away and coming back on the same address).

    It runs its own event loop in a daemon thread, so sync tests (subprocess followers)
    and async ones (in-process followers) use it alike. `cut()` closes the listening
    socket and every open connection (keep-alive ones too): new connections are refused
    until `restore()` listens on the same port again.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        self._thread.start()
        self.restore()
        return self

    def _do(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def restore(self) -> None:
        async def listen() -> None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

        self._do(listen())

    def cut(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.close()
            self._writers.clear()
            if self._server is not None:
                await self._server.wait_closed()
                self._server = None

        self._do(shutdown())

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self.cut()

        async def drain() -> None:  # let the connection handlers finish (or cancel them)
            me = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not me]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self._do(drain())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()
            self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
