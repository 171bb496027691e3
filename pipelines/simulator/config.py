"""Simulator settings: the traffic mix, the rates and each bot family's knobs.

Why ranges instead of values: every bot instance draws its own parameters (interval,
gas style, thresholds, sizes) uniformly from its family's range, from the run's
seed, so two arbitrage bots never look identical and a detector cannot key on one
constant. The same seed and settings always give the same plan.

Loaded from defaults, a TOML file (`vigil simulate --config sim.toml`, tables named
like the fields below) and keyword overrides.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Ground-truth labels. `normal` covers humans, inference payers and sandwich victims;
#: `infra` (deployer, faucet) is recorded per transaction but left out of labels.json.
LABEL_NORMAL = "normal"
LABEL_HF_BOT = "hf_bot"  # the demo's high-frequency bot (same label as DemoTraffic)
LABEL_ARBITRAGE = "arbitrage_bot"
LABEL_SANDWICH = "sandwich_bot"
LABEL_SYBIL = "sybil"
LABEL_WASH = "wash_trader"
LABEL_SPAM = "spammer"
LABEL_INFRA = "infra"
BOT_LABELS = (LABEL_HF_BOT, LABEL_ARBITRAGE, LABEL_SANDWICH, LABEL_SYBIL, LABEL_WASH, LABEL_SPAM)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Range = tuple[float, float]


def _check_range(r: Range, name: str) -> None:
    if not 0 <= r[0] <= r[1]:
        raise ValueError(f"{name} must be a (low, high) pair with 0 <= low <= high, got {r}")


class HumansConfig(_Model):
    """Normal users: Poisson arrivals, heavy-tailed values, a few regular contacts."""

    count: int = Field(40, ge=0)
    rate_per_s: float = Field(0.25, gt=0, description="Mean Poisson rate per user.")
    rate_spread: float = Field(0.3, ge=0, description="Lognormal sigma of per-user rates.")
    #: Action mix (relative weights): ETH transfer, token transfer, AMM swap, inference payment.
    mix: dict[str, float] = Field(
        default_factory=lambda: {"eth": 0.55, "token": 0.15, "swap": 0.15, "pay": 0.15}
    )
    contacts: tuple[int, int] = (3, 8)
    new_counterparty_share: float = Field(0.1, ge=0, le=1)
    gas_price_gwei: tuple[float, ...] = (2, 2, 3, 3, 5, 10)
    slippage: Range = (0.005, 0.03)  # tolerance each victim-to-be accepts on swaps

    @model_validator(mode="after")
    def _check(self) -> HumansConfig:
        unknown = set(self.mix) - {"eth", "token", "swap", "pay"}
        if unknown or not any(v > 0 for v in self.mix.values()):
            raise ValueError(f"humans.mix needs positive weights of eth/token/swap/pay: {self.mix}")
        _check_range(self.slippage, "humans.slippage")
        return self


class HfBotConfig(_Model):
    """The demo's bot: one call shape at a steady, fast rate (kept identical to DemoTraffic)."""

    enabled: bool = True
    interval_s: float = Field(0.4, gt=0)


class ArbitrageConfig(_Model):
    """Bots that trade the AMM back to a drifting reference price whenever it deviates."""

    count: int = Field(2, ge=0)
    interval_s: Range = (0.6, 2.0)
    threshold_bps: Range = (5.0, 30.0)
    max_trade_share: Range = (0.002, 0.01)  # of the pool's reserve, per trade
    volatility_bps_per_s: float = Field(8.0, ge=0)  # reference price random walk


class SandwichConfig(_Model):
    """Bots that front-run and back-run victims' swaps in the same block."""

    count: int = Field(1, ge=0)
    attack_probability: Range = (0.5, 0.9)
    aggressiveness: Range = (0.5, 0.95)  # share of the largest front-run the victim tolerates
    min_victim_share: Range = (0.00005, 0.0002)  # smallest victim swap, share of reserve
    #: Each bot rotates over several EOAs (as MEV bots do): one account's front- and
    #: back-run are nonce-ordered, so a second attack from it in the same block could
    #: not wrap its victim. Each account attacks at most once per `cooldown_s`.
    accounts: int = Field(4, ge=1)
    cooldown_s: float = Field(2.0, ge=0)


class SybilConfig(_Model):
    """Farms: one funder fans out to fresh wallets that then claim, consolidate, act alike."""

    farms: int = Field(1, ge=0)
    wallets: tuple[int, int] = (12, 24)
    start_spread_s: float = Field(20.0, ge=0)
    fanout_interval_s: Range = (0.15, 0.4)
    rounds: tuple[int, int] = (3, 6)  # identical inference payments per wallet after claiming
    round_interval_s: Range = (4.0, 8.0)


class WashConfig(_Model):
    """Rings of colluding addresses passing the same tokens around and round-tripping swaps."""

    rings: int = Field(1, ge=0)
    members: tuple[int, int] = (2, 4)
    interval_s: Range = (1.5, 4.0)
    swap_share: float = Field(0.3, ge=0, le=1)


class SpamConfig(_Model):
    """Dusting: tiny ETH and token amounts to many addresses, at the lowest gas price."""

    spammers: int = Field(1, ge=0)
    rate_per_s: Range = (0.8, 2.0)
    token_share: float = Field(0.3, ge=0, le=1)


class SimConfig(_Model):
    """Everything a simulation run needs besides the RPC endpoint."""

    seed: int = 1
    duration_s: float | None = Field(None, gt=0, description="None: until stopped.")
    speed: float = Field(1.0, gt=0, description="Plan seconds per wall second (2 = twice as fast).")
    #: Every bot family wakes up this late (the detector warms up on normal traffic first,
    #: as in the demo, whose bot starts after 65 s).
    bots_start_s: float = Field(65.0, ge=0)
    humans: HumansConfig = Field(default_factory=HumansConfig)
    hf_bot: HfBotConfig = Field(default_factory=HfBotConfig)
    arbitrage: ArbitrageConfig = Field(default_factory=ArbitrageConfig)
    sandwich: SandwichConfig = Field(default_factory=SandwichConfig)
    sybil: SybilConfig = Field(default_factory=SybilConfig)
    wash: WashConfig = Field(default_factory=WashConfig)
    spam: SpamConfig = Field(default_factory=SpamConfig)
    nodes: int = Field(4, ge=1, description="Inference nodes users pay (fresh addresses).")
    price_per_unit_wei: int = Field(10**12, gt=0)
    funder_private_key: str | None = Field(
        None,
        description="Funds the run on chains without anvil_setBalance; "
        "on anvil, balances are set directly.",
        repr=False,
    )

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> SimConfig:
        """Defaults < TOML file < keyword overrides (None values are ignored)."""
        data: dict[str, Any] = {}
        if path is not None:
            if not path.is_file():
                raise ValueError(f"simulator config {path} not found")
            with open(path, "rb") as f:
                data = tomllib.load(f)
            data = data.get("simulator", data)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(data)

    def without_bots(self) -> SimConfig:
        """Only normal users (a baseline run)."""
        return self.model_copy(
            update={
                "hf_bot": HfBotConfig(enabled=False),
                "arbitrage": ArbitrageConfig(count=0),
                "sandwich": SandwichConfig(count=0),
                "sybil": SybilConfig(farms=0),
                "wash": WashConfig(rings=0),
                "spam": SpamConfig(spammers=0),
            }
        )
