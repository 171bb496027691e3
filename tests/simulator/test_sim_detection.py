"""The simulator's default traffic keeps the demo scenario: replayed offline through the
real scoring core (1 s blocks), the HF bot is caught soon after it wakes up and no
normal user is alerted, with every other bot family active at the same time."""

from __future__ import annotations

from collections import Counter

import pytest

from pipelines.scenario_eval import T0, offline_deployment, plan_blocks, replay_blocks
from pipelines.simulator import LABEL_HF_BOT, LABEL_NORMAL, Plan, SimConfig


@pytest.mark.parametrize("seed", [1, 12])
def test_default_mix_hf_bot_caught_and_no_normal_user_alerted(seed: int) -> None:
    plan = Plan(SimConfig(seed=seed, duration_s=120.0), offline_deployment(seed))
    labels = plan.labels()
    alerts = replay_blocks(plan_blocks(plan, seed)).alerts
    flagged = Counter(labels.get(a.entity, "?") for a in alerts)
    assert flagged[LABEL_NORMAL] == 0, f"normal users alerted: {flagged}"
    hf = [a.created_at - T0 for a in alerts if labels.get(a.entity) == LABEL_HF_BOT]
    assert hf and min(hf) - 65.0 <= 10.0
    assert len(set(flagged) - {LABEL_HF_BOT}) >= 2  # other families are visible too
