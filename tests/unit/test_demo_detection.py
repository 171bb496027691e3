"""The demo scenario, replayed offline through the real scoring core (1 s blocks).

Same traffic plan as `vigil demo` (DemoTraffic.schedule is pure given the seed), same
scoring configuration as the defaults: the bot must be caught within seconds of
waking up, and no human sender may be alerted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.types import Tx
from pipelines.scenario_eval import replay_blocks, to_blocks
from pipelines.traffic import DemoTraffic, TrafficConfig


def _blocks(seed: int, duration: float, bot_delay: float) -> tuple[dict[int, list[Tx]], str]:
    tr = DemoTraffic(
        "http://127.0.0.1:9",
        TrafficConfig(seed=seed, bot_delay_s=bot_delay, duration_s=duration),
        Path("unused"),
    )
    planned = ((t, acct.address, tx) for t, acct, tx, _label in tr.schedule())
    return to_blocks(planned, seed), tr.bot.address.lower()


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_demo_bot_is_caught_quickly_and_no_human_is_alerted(seed: int) -> None:
    bot_delay = 65.0
    blocks, bot = _blocks(seed, duration=140.0, bot_delay=bot_delay)
    res = replay_blocks(blocks)
    alerts = res.alerts
    assert res.warmed_up
    flagged = {a.entity for a in alerts}
    assert flagged == {bot}, f"humans alerted: {flagged - {bot}}"
    first = min(a.created_at for a in alerts) - 1_700_000_000.0
    assert first - bot_delay <= 10.0  # seconds from the bot's first tx to its alert
    assert len(alerts) == 1  # cooldown: one bot, one alert
    assert alerts[0].severity == "high"  # persistent and clear: enough to throttle
