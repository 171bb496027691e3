"""The simulator's default traffic keeps the demo scenario: replayed offline through the
real scoring core (1 s blocks), the HF bot is caught soon after it wakes up and no
normal user is alerted, with every other bot family active at the same time."""

from __future__ import annotations

from collections import Counter

import pytest
from eth_utils import keccak

from detector.policy import EntityAlertState
from detector.types import Tx
from pipelines.scoring import ScoringConfig, TxScoringCore
from pipelines.settings import Settings
from pipelines.simulator import LABEL_HF_BOT, LABEL_NORMAL, Deployment, Plan, SimConfig
from pipelines.simulator.plan import derive_account

T0 = 1_700_000_000.0


def _blocks(plan: Plan, seed: int) -> dict[int, list[Tx]]:
    blocks: dict[int, list[Tx]] = {}
    nonces: Counter[str] = Counter()
    for i, p in enumerate(plan):
        b = int(p.t) + 1
        sender = p.sender.address.lower()
        data = str(p.tx.get("data", ""))
        blocks.setdefault(b, []).append(
            Tx(
                tx_hash="0x" + keccak(text=f"{seed}:{i}").hex(),
                sender=sender,
                to=str(p.tx.get("to", "")).lower(),
                value_wei=int(p.tx["value"]),
                gas_price_wei=int(p.tx["gasPrice"]),
                gas=int(p.tx["gas"]),
                nonce=nonces[sender],
                selector=data[:10] if len(data) >= 10 else "",
                status=1,
                block_number=b,
                timestamp=T0 + b,
            )
        )
        nonces[sender] += 1
    return blocks


@pytest.mark.parametrize("seed", [1, 12])
def test_default_mix_hf_bot_caught_and_no_normal_user_alerted(seed: int) -> None:
    dep = Deployment(
        chain_id=31337,
        token0="0x" + "11" * 20,
        token1="0x" + "22" * 20,
        pair="0x" + "33" * 20,
        payments="0x" + "44" * 20,
        nodes=tuple(derive_account(seed, f"node:{i}").address for i in range(4)),
    )
    plan = Plan(SimConfig(seed=seed, duration_s=120.0), dep)
    labels = plan.labels()
    blocks = _blocks(plan, seed)
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
    flagged = Counter(labels.get(a.entity, "?") for a in alerts)
    assert flagged[LABEL_NORMAL] == 0, f"normal users alerted: {flagged}"
    hf = [a.created_at - T0 for a in alerts if labels.get(a.entity) == LABEL_HF_BOT]
    assert hf and min(hf) - 65.0 <= 10.0
    assert len(set(flagged) - {LABEL_HF_BOT}) >= 2  # other families are visible too
