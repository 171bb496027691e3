"""The demo scenario, replayed offline through the real scoring core (1 s blocks).

Same traffic plan as `vigil demo` (DemoTraffic.schedule is pure given the seed), same
scoring configuration as the defaults: the bot must be caught within seconds of
waking up, and no human sender may be alerted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_utils import keccak

from detector.policy import EntityAlertState
from detector.types import Tx
from pipelines.scoring import ScoringConfig, TxScoringCore
from pipelines.settings import Settings
from pipelines.traffic import DemoTraffic, TrafficConfig


def _blocks(seed: int, duration: float, bot_delay: float) -> tuple[dict[int, list[Tx]], str]:
    tr = DemoTraffic(
        "http://127.0.0.1:9",
        TrafficConfig(seed=seed, bot_delay_s=bot_delay, duration_s=duration),
        Path("unused"),
    )
    blocks: dict[int, list[Tx]] = {}
    nonces: dict[str, int] = {}
    for i, (t, acct, tx, _label) in enumerate(tr.schedule()):
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
                gas_price_wei=int(tx["gasPrice"]),
                gas=int(tx["gas"]),  # type: ignore[call-overload]
                nonce=nonce,
                selector=data[:10],
                status=1,
                block_number=b,
                timestamp=1_700_000_000.0 + b,
            )
        )
    return blocks, tr.bot.address.lower()


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_demo_bot_is_caught_quickly_and_no_human_is_alerted(seed: int) -> None:
    bot_delay = 65.0
    blocks, bot = _blocks(seed, duration=140.0, bot_delay=bot_delay)
    core = TxScoringCore(ScoringConfig.from_settings(Settings()))
    states: dict = {}
    alert_states: dict[str, EntityAlertState] = {}
    alerts = []
    for b in sorted(blocks):
        txs = blocks[b]
        senders = {t.sender for t in txs}
        r = core.process(
            txs,
            {s: states.get(s) for s in senders},
            {s: alert_states[s] for s in senders if s in alert_states},
        )
        states.update(r.states)
        alert_states.update(r.alert_states)
        alerts += r.alerts
    assert not core.warming_up
    flagged = {a.entity for a in alerts}
    assert flagged == {bot}, f"humans alerted: {flagged - {bot}}"
    first = min(a.created_at for a in alerts) - 1_700_000_000.0
    assert first - bot_delay <= 10.0  # seconds from the bot's first tx to its alert
    assert len(alerts) == 1  # cooldown: one bot, one alert
    assert alerts[0].severity == "high"  # persistent and clear: enough to throttle
