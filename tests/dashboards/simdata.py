"""A simulator run loaded into ClickHouse: every table the dashboards read gets rows.

Transaction side: the demo traffic plan (`DemoTraffic.schedule`, pure given the seed)
replayed offline through the real scoring core, exactly as `tests/unit/
test_demo_detection.py` does -- human senders plus a high-frequency bot that gets
caught. Around it, deterministic node-side data: four inference nodes with telemetry,
spot-check challenges and reputation (node-3 is the faulty one), incidents and
enforcement actions for the alerts, pipeline health samples and a few dead letters.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from clickhouse_connect.driver import Client
from eth_utils import keccak

from detector.features import FEATURE_NAMES
from detector.policy import EntityAlertState
from detector.types import Tx
from pipelines.scoring import Alert, ScoredTx, ScoringConfig, TxScoringCore
from pipelines.settings import Settings
from pipelines.storage import rows
from pipelines.storage.schema import TABLE_COLUMNS, migrate
from pipelines.traffic import DemoTraffic, TrafficConfig

CHAIN_ID = 31337
NODES = ("node-0", "node-1", "node-2", "node-3")
FAULTY = "node-3"


@dataclass
class SimRun:
    start: dt.datetime
    end: dt.datetime
    counts: dict[str, int] = field(default_factory=dict)
    bot: str = ""


def _ts(start: dt.datetime, seconds: float) -> dt.datetime:
    return start + dt.timedelta(seconds=seconds)


def simulate_chain(
    seed: int, duration_s: float
) -> tuple[list[Tx], list[ScoredTx], list[Alert], str]:
    """Demo traffic in 1 s blocks through the scoring core (times are seconds from 0)."""
    traffic = DemoTraffic(
        "http://127.0.0.1:9",
        TrafficConfig(seed=seed, bot_delay_s=65.0, duration_s=duration_s),
        Path("unused"),
    )
    blocks: dict[int, list[Tx]] = {}
    nonces: dict[str, int] = {}
    for i, (t, acct, tx, _label) in enumerate(traffic.schedule()):
        b = int(t) + 1
        sender = acct.address.lower()
        nonce = nonces.get(sender, 0)
        nonces[sender] = nonce + 1
        data = str(tx.get("data", ""))
        blocks.setdefault(b, []).append(
            Tx(
                tx_hash="0x" + keccak(text=f"{seed}:{i}").hex(),
                sender=sender,
                to=str(tx["to"]).lower(),
                value_wei=int(tx["value"]),  # type: ignore[call-overload]
                gas_price_wei=int(tx["gasPrice"]),  # type: ignore[call-overload]
                gas=int(tx["gas"]),  # type: ignore[call-overload]
                nonce=nonce,
                selector=data[:10],
                status=0 if i % 97 == 0 else 1,
                block_number=b,
                timestamp=float(b),
            )
        )
    core = TxScoringCore(ScoringConfig.from_settings(Settings()))
    states: dict[str, Any] = {}
    alert_states: dict[str, EntityAlertState] = {}
    txs: list[Tx] = []
    scored: list[ScoredTx] = []
    alerts: list[Alert] = []
    for b in sorted(blocks):
        batch = blocks[b]
        senders = {t.sender for t in batch}
        r = core.process(
            batch,
            {s: states.get(s) for s in senders},
            {s: alert_states[s] for s in senders if s in alert_states},
        )
        states.update(r.states)
        alert_states.update(r.alert_states)
        txs += batch
        scored += r.scored
        alerts += r.alerts
    return txs, scored, alerts, traffic.bot.address.lower()


def _shift_tx(tx: Tx, start: dt.datetime) -> Tx:
    return dataclasses.replace(tx, timestamp=start.timestamp() + tx.timestamp)


def load_simulation(client: Client, database: str, start: dt.datetime, seed: int = 11) -> SimRun:
    """Migrate `database` and fill it with one simulator run beginning at `start`."""
    migrate(client, database)
    duration = 300.0
    rng = np.random.default_rng(seed)
    txs, scored, alerts, bot = simulate_chain(seed, duration)
    base = start.timestamp()
    run = SimRun(start=start, end=_ts(start, duration + 5), bot=bot)
    data: dict[str, list[list[Any]]] = {}

    data["transactions"] = [
        [
            t.tx_hash,
            t.block_number,
            "0x" + keccak(text=f"block:{t.block_number}").hex(),
            _ts(start, t.timestamp),
            i,
            t.sender,
            t.to,
            t.value_wei,
            t.gas_price_wei,
            t.gas,
            t.nonce,
            t.selector,
            t.status,
            1,
            _ts(start, t.timestamp + 0.4),
            2,
            0,
            CHAIN_ID,
        ]
        for i, t in enumerate(txs)
    ]
    shifted = [ScoredTx(_shift_tx(s.tx, start), s.score, s.threshold, s.features) for s in scored]
    data["scores"] = rows.score_rows(
        shifted, model_version="tx-iforest-sim", feature_names=list(FEATURE_NAMES), scored_at=base
    )
    data["features"] = [
        [
            s.tx.sender,
            "tx",
            _ts(start, s.tx.timestamp),
            30.0,
            {n: float(v) for n, v in zip(FEATURE_NAMES, s.features, strict=True) if np.isfinite(v)},
            "tx-iforest-sim",
        ]
        for s in scored[::10]
    ]

    # Alerts: the scoring core's (the bot), plus node-side and sybil alerts.
    all_alerts = [dataclasses.replace(a, created_at=base + a.created_at) for a in alerts]
    extra = [
        ("sybil", "medium", "funding_fanout", txs[5].sender, 120.0),
        ("node_latency", "high", "telemetry_rules", FAULTY, 150.0),
        ("spot_check", "critical", "challenge", FAULTY, 200.0),
        ("node_latency", "low", "telemetry_rules", "node-1", 240.0),
    ]
    for i, (category, severity, detector, entity, at) in enumerate(extra):
        doc = json.dumps({"entity": entity, "category": category, "i": i}, sort_keys=True)
        h = "0x" + keccak(text=doc).hex()
        all_alerts.append(
            Alert(
                h[2:34],
                entity,
                category,
                severity,
                detector,
                0.9,
                0.7,
                h,
                doc,
                "{}",
                "",
                0,
                base + at,
            )
        )
    data["alerts"] = [[*r, CHAIN_ID] for r in rows.alert_rows(all_alerts)]
    data["evidence"] = rows.evidence_rows(all_alerts)

    # Enforcement: throttle for the bot and the sybil funder, a slash proposal for the
    # faulty node, one dry run.
    actions = []
    for a in all_alerts:
        kind = "propose_slash" if a.category == "spot_check" else "throttle"
        if a.category == "node_latency":
            continue
        status = "dry_run" if a.category == "sybil" else "mined"
        tx_hash = "" if status == "dry_run" else "0x" + keccak(text=f"act:{a.alert_id}").hex()
        actions.append(
            [
                a.evidence_hash,
                kind,
                a.entity,
                tx_hash,
                1000,
                status,
                dt.datetime.fromtimestamp(a.created_at + 4.0, tz=dt.UTC),
                CHAIN_ID,
            ]
        )
    data["actions"] = actions

    # Incidents: one per (entity, category).
    statuses = {
        "bot": "open",
        "sybil": "resolved",
        "spot_check": "escalated",
        "node_latency": "contested",
    }
    groups: dict[tuple[str, str], list[Alert]] = {}
    for a in all_alerts:
        groups.setdefault((a.entity, a.category), []).append(a)
    data["incidents"] = []
    for (entity, category), group in sorted(groups.items()):
        first, last = min(a.created_at for a in group), max(a.created_at for a in group)
        worst = max(group, key=lambda a: ["low", "medium", "high", "critical"].index(a.severity))
        iid = "inc-" + keccak(text=f"{entity}:{category}").hex()[:16]
        for version, status in enumerate(("open", statuses[category])):  # two versions
            data["incidents"].append(
                [
                    iid,
                    entity,
                    category,
                    worst.severity,
                    status,
                    dt.datetime.fromtimestamp(first, tz=dt.UTC),
                    dt.datetime.fromtimestamp(last, tz=dt.UTC),
                    len(group),
                    sorted({a.detector for a in group}),
                    group[0].evidence_hash,
                    CHAIN_ID,
                    dt.datetime.fromtimestamp(last + version, tz=dt.UTC),
                ]
            )

    # Node side.
    telemetry, challenges, reputation = [], [], []
    for n, node in enumerate(NODES):
        faulty = node == FAULTY
        for k in range(int(duration / 2)):
            at = 2.0 * k + n * 0.1
            spike = faulty and 140 <= at <= 220
            telemetry.append(
                [
                    node,
                    "batch",
                    _ts(start, at),
                    float(rng.normal(400 if spike else 60, 10)),
                    8,
                    int(rng.integers(200, 400)) if not spike else 20,
                    int(rng.integers(0, 4)),
                    int(spike and k % 3 == 0),
                    "cuda",
                    float(rng.uniform(0.5, 0.9)),
                    20_000.0,
                ]
            )
            if k % 5 == 0:
                telemetry.append(
                    [
                        node,
                        "heartbeat",
                        _ts(start, at + 0.05),
                        0.0,
                        0,
                        0,
                        0,
                        0,
                        "cuda",
                        float(rng.uniform(0.5, 0.9)),
                        20_000.0,
                    ]
                )
        for k in range(int(duration / 30)):
            passed = not (faulty and k % 2 == 1)
            challenges.append(
                [
                    node,
                    f"ch-{node}-{k}",
                    _ts(start, 30.0 * k + 5 + n),
                    int(passed),
                    0.999 if passed else 0.62,
                ]
            )
        for k in range(int(duration / 60) + 1):
            penalty = 0.35 if faulty and k >= 2 else 0.0
            components = {"latency": penalty / 2, "spot_checks": penalty / 2, "uptime": 0.0}
            reputation.append(
                [
                    node,
                    _ts(start, 60.0 * k),
                    round(1.0 - penalty, 4),
                    components,
                    "spot-check failures" if penalty else "",
                ]
            )
    data["telemetry"], data["challenges"], data["reputation"] = telemetry, challenges, reputation

    health = []
    for k in range(int(duration / 10) + 1):
        when = _ts(start, 10.0 * k)
        health += [
            [when, "follower", "f-0", "head_lag_blocks", float(k % 4)],
            [when, "worker", "w-0", "events_per_s", float(rng.uniform(8, 14))],
            [when, "worker", "w-0", "consumer_lag_s", float(rng.uniform(0.1, 1.5))],
            [when, "worker", "w-0", "errors", float(k % 7 == 0)],
            [when, "writer", "w-0", "spool_batches", 0.0 if k % 9 else 2.0],
        ]
    data["pipeline_health"] = health
    data["dlq"] = [
        ["chain.tx.v1", 0, 100 + k, "invalid json", '{"broken": ', _ts(start, 50.0 + 40 * k)]
        for k in range(5)
    ]

    extra_cols = {"transactions": ["chain_id"], "alerts": ["chain_id"], "actions": ["chain_id"]}
    for table, table_rows in data.items():
        client.insert(
            table,
            table_rows,
            column_names=TABLE_COLUMNS[table] + extra_cols.get(table, []),
            database=database,
        )
        run.counts[table] = len(table_rows)
    return run
