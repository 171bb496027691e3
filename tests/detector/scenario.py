"""Synthetic chain traffic for the detector tests: Poisson humans and one timer-driven bot.

Humans: Poisson arrivals with per-sender rates, heavy-tailed values (a third are zero-value
contract calls), favourite recipients, wallet-rounded gas prices, occasional failures.
Bot: one tx every `bot_period_s` from `bot_start_s` on, an exact computed gas price, one
recipient, one selector, a fixed value. This is the demo's scenario in miniature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.types import Tx

GENESIS_TS = 1_700_000_000.0
BLOCK_TIME_S = 2.0
BOT = "0x" + "b0" * 20
ROUND_GAS_GWEI = (1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0, 20.0, 25.0, 30.0)
SELECTORS = ("0xa9059cbb", "0x095ea7b3", "0x23b872dd", "0x38ed1739", "0x7ff36ab5")


@dataclass(frozen=True)
class Scenario:
    txs: list[Tx]  # sorted by timestamp
    is_bot: np.ndarray  # per tx
    bot_start_s: float


def _addr(prefix: str, i: int) -> str:
    return "0x" + prefix + f"{i:038x}"


def simulate(
    seed: int,
    *,
    n_humans: int = 50,
    duration_s: float = 4 * 3600.0,
    bot_start_s: float = 2 * 3600.0,
    bot_period_s: float = 2.0,
    bot_gas_price_wei: int = 1_234_567_891,
) -> Scenario:
    rng = np.random.default_rng(seed)
    pool = [_addr("c0", i) for i in range(200)]
    rows: list[tuple[float, str, str, int, int, str, int]] = []
    for h in range(n_humans):
        sender = _addr("a0", h)
        mean_gap = float(np.exp(rng.uniform(np.log(30.0), np.log(600.0))))
        n = int(rng.poisson(duration_s / mean_gap)) + 1
        ts = np.sort(rng.uniform(0.0, duration_s, n))
        favourites = rng.choice(len(pool), size=int(rng.integers(3, 20)), replace=False)
        weights = 1.0 / np.arange(1, len(favourites) + 1)
        gas_choices = rng.choice(ROUND_GAS_GWEI, size=3)
        for t in ts:
            to = pool[int(rng.choice(favourites, p=weights / weights.sum()))]
            if rng.random() < 0.35:
                value, selector = 0, str(rng.choice(SELECTORS))
            else:
                value = int(10 ** rng.uniform(14, 19) * rng.pareto(1.5) + 1)
                selector = "" if rng.random() < 0.7 else str(rng.choice(SELECTORS))
            gas = int(float(rng.choice(gas_choices)) * 1e9)
            status = 0 if rng.random() < 0.02 else 1
            rows.append((float(t), sender, to, value, gas, selector, status))
    for t in np.arange(bot_start_s, duration_s, bot_period_s):
        rows.append((float(t), BOT, pool[7], 10**16, bot_gas_price_wei, SELECTORS[3], 1))
    rows.sort(key=lambda r: r[0])
    nonces: dict[str, int] = {}
    txs = []
    for i, (t, sender, to, value, gas, selector, status) in enumerate(rows):
        nonce = nonces.get(sender, 0)
        nonces[sender] = nonce + 1
        txs.append(
            Tx(
                tx_hash=f"0x{seed:08x}{i:056x}",
                sender=sender,
                to=to,
                value_wei=value,
                gas_price_wei=gas,
                gas=21_000 if not selector else 120_000,
                nonce=nonce,
                selector=selector,
                status=status,
                block_number=int(t // BLOCK_TIME_S),
                timestamp=GENESIS_TS + BLOCK_TIME_S * (t // BLOCK_TIME_S),
            )
        )
    is_bot = np.array([tx.sender == BOT for tx in txs])
    return Scenario(txs=txs, is_bot=is_bot, bot_start_s=bot_start_s)
