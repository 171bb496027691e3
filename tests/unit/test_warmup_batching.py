"""The forest is fitted on the warm-up window, not on whatever the first batch held."""

from __future__ import annotations

from pipelines.scenario_eval import (
    Plan,
    SimConfig,
    offline_deployment,
    plan_blocks,
    replay_blocks,
)


def test_a_backlog_read_in_one_batch_fits_the_same_model_and_raises_the_same_alerts() -> None:
    seed = 4
    plan = Plan(SimConfig(seed=seed, duration_s=150.0), offline_deployment(seed))
    blocks = plan_blocks(plan, seed)
    per_block = replay_blocks(blocks)
    # the whole backlog as one call, as a worker catching up reads it in big batches
    one_batch = replay_blocks({0: [t for b in sorted(blocks) for t in blocks[b]]})
    assert per_block.warmed_up and one_batch.warmed_up
    assert per_block.alerts, "the scenario has bots to alert on"
    assert sorted((a.entity, a.tx_hash) for a in per_block.alerts) == sorted(
        (a.entity, a.tx_hash) for a in one_batch.alerts
    )
    assert per_block.max_score == one_batch.max_score  # the same forest scored every tx
