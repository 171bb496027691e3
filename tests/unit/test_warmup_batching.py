"""The forest is fitted on the warm-up window, not on whatever the first batch held."""

from __future__ import annotations

from typing import Any

from detector.policy import EntityAlertState
from pipelines.scenario_eval import Plan, SimConfig, offline_deployment, plan_blocks
from pipelines.scoring import Alert, ScoringConfig, TxScoringCore


def _run(blocks: dict[int, list[Any]], per_call: int) -> tuple[TxScoringCore, list[Alert]]:
    """Feed the blocks `per_call` at a time, as a worker reading a backlog in batches."""
    core = TxScoringCore(ScoringConfig(warmup_rows=300))
    states: dict[str, Any] = {}
    alert_states: dict[str, EntityAlertState] = {}
    alerts: list[Alert] = []
    order = sorted(blocks)
    for i in range(0, len(order), per_call):
        txs = [t for b in order[i : i + per_call] for t in blocks[b]]
        senders = {t.sender for t in txs}
        r = core.process(
            txs,
            {s: states.get(s) for s in senders},
            {s: alert_states[s] for s in senders if s in alert_states},
        )
        states.update(r.states)
        alert_states.update(r.alert_states)
        alerts += r.alerts
    return core, alerts


def test_a_backlog_read_in_one_batch_fits_the_same_model_and_raises_the_same_alerts() -> None:
    seed = 4
    plan = Plan(SimConfig(seed=seed, duration_s=150.0), offline_deployment(seed))
    blocks = plan_blocks(plan, seed)
    small, alerts_small = _run(blocks, per_call=1)
    big, alerts_big = _run(blocks, per_call=len(blocks))  # the whole backlog at once
    assert small.model is not None and big.model is not None
    assert small.model.data_fingerprint == big.model.data_fingerprint
    assert small.model.warmup_rows == big.model.warmup_rows
    assert alerts_small, "the scenario has bots to alert on"
    assert sorted((a.entity, a.tx_hash) for a in alerts_small) == sorted(
        (a.entity, a.tx_hash) for a in alerts_big
    )
