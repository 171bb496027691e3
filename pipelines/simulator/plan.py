"""The traffic plan: who sends what, when, and with which ground-truth label.

Pure given (settings, seed, deployment): nothing here touches the chain, so a seed
reproduces a run exactly, tests can replay a plan through the detectors offline, and
the sender (`runner.py`) only signs and sends. Each actor draws from its own random
stream (seeded by run seed, family and index), so adding a bot does not change what
the others do.

Actors and what makes them what they are:
- humans: Poisson arrivals (per-user rate), heavy-tailed values, a few regular
  contacts plus occasional new counterparties, round gas prices from a wallet, a
  mix of ETH and token transfers, AMM swaps (with a slippage tolerance) and
  inference payments through `SimInferencePayments`;
- hf_bot: the demo's bot, byte-for-byte the same call shape as `DemoTraffic`;
- arbitrage bots: trade the pool back to a drifting reference price, precise gas;
- sandwich bots: on a victim's swap, front-run (higher gas price) with the largest
  trade the victim's slippage tolerates (times an aggressiveness), back-run after;
- sybil farms: a funder fans out equal amounts to fresh wallets, which then claim the
  token airdrop, consolidate it back to the funder and pay the same node identical
  amounts in lockstep;
- wash rings: members pass the same token amount around the ring and round-trip swaps;
- spammers: dust (a few wei of ETH or token units) to users and random addresses at
  the lowest gas price.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from pipelines.simulator.amm import Pool
from pipelines.simulator.config import (
    LABEL_ARBITRAGE,
    LABEL_HF_BOT,
    LABEL_NORMAL,
    LABEL_SANDWICH,
    LABEL_SPAM,
    LABEL_SYBIL,
    LABEL_WASH,
    SimConfig,
)

GWEI = 10**9
ETH = 10**18
TOKEN = 10**18
MAX_UINT = 2**256 - 1

#: Gas limits per call kind: a wallet pads an estimate; these bases cover the real use.
GAS = {
    "eth": 21_000,
    "token": 60_000,
    "swap": 120_000,
    "pay": 130_000,
    "claim": 90_000,
    "approve": 60_000,
    "mint": 80_000,
    "liquidity": 200_000,
    "deploy": 3_000_000,
    "hf": 60_000,
}


def selector(signature: str) -> str:
    return "0x" + keccak(text=signature)[:4].hex()


def calldata(signature: str, types: Sequence[str], args: Sequence[Any]) -> str:
    return selector(signature) + abi_encode(list(types), list(args)).hex()


def derive_account(seed: int, tag: str) -> LocalAccount:
    """Deterministic throwaway account of this run (never holds real value)."""
    acct: LocalAccount = Account.from_key(keccak(text=f"vigil-sim:{seed}:{tag}"))
    return acct


def demo_dex_address() -> str:
    """The address the demo's HF bot calls (same as `DemoTraffic.bot_target`)."""
    return to_checksum_address("0x" + keccak(text="demo-dex").hex()[:40])


@dataclass(frozen=True)
class Deployment:
    """Addresses and starting state of the simulator's contracts on the chain."""

    chain_id: int
    token0: str  # VGL
    token1: str  # USDx
    pair: str
    payments: str
    nodes: tuple[str, ...]
    reserve0: int = 1_000_000 * TOKEN
    reserve1: int = 2_000_000 * TOKEN
    claim_amount: int = 1_000 * TOKEN
    demo_dex: str = field(default_factory=demo_dex_address)


@dataclass(frozen=True)
class PlannedTx:
    """One transaction to send `t` plan-seconds after the start (nonce/chain id added
    by the sender)."""

    t: float
    sender: LocalAccount
    tx: dict[str, Any]  # to, value, gas, gasPrice, data
    label: str
    actor: str
    role: str


@dataclass
class ActorInfo:
    """Ground truth about one actor, for the label outputs."""

    actor: str
    label: str
    addresses: list[str]
    params: dict[str, Any]


@dataclass
class SetupNeeds:
    """What the chain must hold before the plan runs."""

    eth: dict[str, int] = field(default_factory=dict)  # address -> wei
    mints: list[tuple[str, str, int]] = field(default_factory=list)  # token, to, amount
    approvals: list[tuple[LocalAccount, str, str]] = field(default_factory=list)  # acct, token

    def add_eth(self, address: str, wei: int) -> None:
        self.eth[address] = self.eth.get(address, 0) + wei


def _rng(seed: int, family: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, int.from_bytes(keccak(text=family)[:4], "big"), index])


def _u(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def _fresh_address(rng: np.random.Generator) -> str:
    return to_checksum_address("0x" + rng.bytes(20).hex())


def _swap_data(zero_for_one: bool, amount_in: int, min_out: int, to: str) -> str:
    return calldata(
        "swapExactIn(bool,uint256,uint256,address)",
        ["bool", "uint256", "uint256", "address"],
        [zero_for_one, amount_in, min_out, to],
    )


def _transfer_data(to: str, amount: int) -> str:
    return calldata("transfer(address,uint256)", ["address", "uint256"], [to, amount])


def _pay_data(node: str, units: int) -> str:
    return calldata("pay(address,uint64)", ["address", "uint64"], [node, units])


# --------------------------------------------------------------------------- world


class World:
    """What actors share: the pool mirror, the reference price, the sandwich bots."""

    def __init__(self, cfg: SimConfig, dep: Deployment) -> None:
        self.cfg = cfg
        self.dep = dep
        self.pool = Pool(dep.reserve0, dep.reserve1)
        self.ref_price = self.pool.price
        self._ref_t = 0.0
        self._ref_rng = _rng(cfg.seed, "reference-price", 0)
        self.sandwichers: list[SandwichBot] = []
        self.user_addresses: list[str] = []

    def reference_at(self, t: float) -> float:
        """A geometric random walk, advanced to `t` (deterministic in call order)."""
        dt = max(0.0, t - self._ref_t)
        if dt > 0:
            sigma = self.cfg.arbitrage.volatility_bps_per_s / 1e4
            self.ref_price *= math.exp(sigma * math.sqrt(dt) * float(self._ref_rng.normal()))
            self._ref_t = t
        return self.ref_price

    def victim_swap(
        self, t: float, victim: PlannedTx, zero_for_one: bool, amount_in: int, min_out: int
    ) -> list[PlannedTx]:
        """A human's swap as it lands: maybe sandwiched (front, victim, back)."""
        for bot in self.sandwichers:
            attack = bot.attack(t, victim, zero_for_one, amount_in, min_out, self.pool)
            if attack is not None:
                front, back = attack
                self.pool.swap(zero_for_one, amount_in)
                back_in = int(back.tx["_amount_in"])
                self.pool.swap(not zero_for_one, back_in)
                return [front, victim, _clean(back)]
        self.pool.swap(zero_for_one, amount_in)
        return [victim]


def _clean(p: PlannedTx) -> PlannedTx:
    tx = {k: v for k, v in p.tx.items() if not k.startswith("_")}
    return PlannedTx(p.t, p.sender, tx, p.label, p.actor, p.role)


# --------------------------------------------------------------------------- actors


class Actor:
    """Something that sends transactions over time."""

    label: str = LABEL_NORMAL

    def __init__(self, actor_id: str, accounts: list[LocalAccount]) -> None:
        self.id = actor_id
        self.accounts = accounts
        self.params: dict[str, Any] = {}

    def first(self) -> float | None:
        """Plan time of the first step (None: never)."""
        raise NotImplementedError

    def step(self, t: float, world: World) -> tuple[list[PlannedTx], float | None]:
        """Transactions at `t` and the time of the next step (None: done)."""
        raise NotImplementedError

    def setup(self, needs: SetupNeeds, dep: Deployment) -> None:
        """Balances and approvals this actor needs before the plan runs."""

    def info(self) -> ActorInfo:
        return ActorInfo(
            self.id, self.label, [a.address.lower() for a in self.accounts], self.params
        )

    def _tx(self, t: float, sender: LocalAccount, role: str, **tx: Any) -> PlannedTx:
        return PlannedTx(t, sender, tx, self.label, self.id, role)


class Human(Actor):
    label = LABEL_NORMAL

    def __init__(self, index: int, cfg: SimConfig, dep: Deployment) -> None:
        super().__init__(f"human-{index}", [derive_account(cfg.seed, f"human:{index}")])
        h = cfg.humans
        self.cfg, self.dep = cfg, dep
        self.rng = _rng(cfg.seed, "human", index)
        rng = self.rng
        self.rate = h.rate_per_s * math.exp(
            float(rng.normal(0, h.rate_spread)) - h.rate_spread**2 / 2
        )
        kinds = sorted(h.mix)
        w = np.array([h.mix[k] * float(rng.gamma(4.0, 0.25)) for k in kinds])
        self.kinds, self.weights = kinds, w / w.sum()
        prices = list(h.gas_price_gwei)
        self.gas_prices = [int(p * GWEI) for p in rng.choice(prices, size=2)]
        self.gas_mult = float(rng.uniform(1.1, 1.5))
        self.slippage = _u(rng, h.slippage)
        self.contacts: list[str] = []
        self.node_pref = rng.permutation(len(dep.nodes))
        self.params = {
            "rate_per_s": round(self.rate, 4),
            "mix": {k: round(float(x), 3) for k, x in zip(kinds, self.weights, strict=True)},
            "slippage": round(self.slippage, 4),
        }

    @property
    def address(self) -> str:
        return str(self.accounts[0].address)

    def choose_contacts(self, everyone: Sequence[str]) -> None:
        lo, hi = self.cfg.humans.contacts
        k = min(len(everyone) - 1, int(self.rng.integers(lo, hi + 1)))
        others = [a for a in everyone if a != self.address]
        if k > 0 and others:
            self.contacts = list(self.rng.choice(others, size=k, replace=False))

    def first(self) -> float:
        return float(self.rng.exponential(1 / self.rate))

    def _gas(self, kind: str) -> int:
        return int(GAS[kind] * self.gas_mult / 1000 + 1) * 1000

    def _counterparty(self) -> str:
        if not self.contacts or self.rng.random() < self.cfg.humans.new_counterparty_share:
            return _fresh_address(self.rng)
        # a few contacts get most of the transfers (Zipf-like preference)
        w = 1.0 / np.arange(1, len(self.contacts) + 1)
        return str(self.rng.choice(self.contacts, p=w / w.sum()))

    def step(self, t: float, world: World) -> tuple[list[PlannedTx], float]:
        rng = self.rng
        kind = str(rng.choice(self.kinds, p=self.weights))
        gp = int(rng.choice(self.gas_prices))
        me = self.accounts[0]
        nxt = t + float(rng.exponential(1 / self.rate))
        if kind == "eth":
            value = int(min(rng.pareto(1.5) + 0.001, 50.0) * ETH * 0.01)
            tx = self._tx(
                t,
                me,
                "eth_transfer",
                to=self._counterparty(),
                value=value,
                gas=GAS["eth"],
                gasPrice=gp,
            )
            return [tx], nxt
        if kind == "token":
            token = self.dep.token0 if rng.random() < 0.5 else self.dep.token1
            amount = int(float(rng.lognormal(math.log(50), 1.2)) * TOKEN)
            data = _transfer_data(self._counterparty(), amount)
            tx = self._tx(
                t,
                me,
                "token_transfer",
                to=token,
                value=0,
                gas=self._gas("token"),
                gasPrice=gp,
                data=data,
            )
            return [tx], nxt
        if kind == "pay":
            node = self.dep.nodes[
                int(self.node_pref[min(int(rng.geometric(0.6)) - 1, len(self.dep.nodes) - 1)])
            ]
            units = 1 + int(rng.lognormal(math.log(500), 0.8))
            tx = self._tx(
                t,
                me,
                "inference_payment",
                to=self.dep.payments,
                value=units * self.cfg.price_per_unit_wei,
                gas=self._gas("pay"),
                gasPrice=gp,
                data=_pay_data(node, units),
            )
            return [tx], nxt
        # swap: a potential sandwich victim
        zero_for_one = bool(rng.random() < 0.5)
        reserve_in = world.pool.reserve0 if zero_for_one else world.pool.reserve1
        share = min(0.01, float(rng.lognormal(math.log(0.0002), 1.0)))
        amount_in = max(1, int(reserve_in * share))
        min_out = int(world.pool.quote(zero_for_one, amount_in) * (1 - self.slippage))
        victim = self._tx(
            t,
            me,
            "swap",
            to=self.dep.pair,
            value=0,
            gas=self._gas("swap"),
            gasPrice=gp,
            data=_swap_data(zero_for_one, amount_in, min_out, me.address),
        )
        return world.victim_swap(t, victim, zero_for_one, amount_in, min_out), nxt

    def setup(self, needs: SetupNeeds, dep: Deployment) -> None:
        needs.add_eth(self.address, 1_000 * ETH)
        for token in (dep.token0, dep.token1):
            needs.mints.append((token, self.address, 50_000 * TOKEN))
            needs.approvals.append((self.accounts[0], token, LABEL_NORMAL))


class HfBot(Actor):
    """The demo's high-frequency bot (same shape as `pipelines.traffic.DemoTraffic`)."""

    label = LABEL_HF_BOT

    def __init__(self, cfg: SimConfig, dep: Deployment) -> None:
        super().__init__("hf-bot-0", [derive_account(cfg.seed, "hf-bot:0")])
        self.cfg, self.dep = cfg, dep
        self.rng = _rng(cfg.seed, "hf-bot", 0)
        self.params = {"interval_s": cfg.hf_bot.interval_s, "target": dep.demo_dex}

    def first(self) -> float:
        return self.cfg.bots_start_s

    def step(self, t: float, world: World) -> tuple[list[PlannedTx], float]:
        data = "0x38ed1739" + keccak(text=str(self.rng.integers(1 << 30))).hex()[:64]
        tx = self._tx(
            t,
            self.accounts[0],
            "hf_call",
            to=self.dep.demo_dex,
            value=0,
            gas=GAS["hf"],
            gasPrice=2_345_678_901 + int(self.rng.integers(0, 7)),
            data=data,
        )
        jitter = float(self.rng.uniform(0.9, 1.1))
        return [tx], t + self.cfg.hf_bot.interval_s * jitter

    def setup(self, needs: SetupNeeds, dep: Deployment) -> None:
        needs.add_eth(self.accounts[0].address, 1_000 * ETH)


class ArbitrageBot(Actor):
    label = LABEL_ARBITRAGE

    def __init__(self, index: int, cfg: SimConfig, dep: Deployment) -> None:
        super().__init__(f"arbitrage-{index}", [derive_account(cfg.seed, f"arbitrage:{index}")])
        a = cfg.arbitrage
        self.cfg = cfg
        self.dep = dep
        self.rng = rng = _rng(cfg.seed, "arbitrage", index)
        self.interval = _u(rng, a.interval_s)
        self.threshold = _u(rng, a.threshold_bps) / 1e4
        self.max_share = _u(rng, a.max_trade_share)
        self.gas_price = 2 * GWEI + int(rng.integers(1, 10**8))
        self.start = cfg.bots_start_s + float(rng.uniform(0, 5))
        self.params = {
            "interval_s": round(self.interval, 3),
            "threshold_bps": round(self.threshold * 1e4, 2),
            "max_trade_share": round(self.max_share, 5),
            "gas_price_wei": self.gas_price,
        }

    def first(self) -> float:
        return self.start

    def step(self, t: float, world: World) -> tuple[list[PlannedTx], float]:
        rng = self.rng
        nxt = t + self.interval * float(rng.uniform(0.8, 1.2))
        ref = world.reference_at(t)
        pool = world.pool
        if abs(pool.price / ref - 1.0) <= self.threshold:
            return [], nxt
        zero_for_one, amount = pool.input_to_reach(ref)
        reserve_in = pool.reserve0 if zero_for_one else pool.reserve1
        amount = min(amount, int(reserve_in * self.max_share))
        out = pool.quote(zero_for_one, amount)
        if amount <= 0 or out <= 0:
            return [], nxt
        pool.swap(zero_for_one, amount)
        me = self.accounts[0]
        tx = self._tx(
            t,
            me,
            "arbitrage_swap",
            to=self.dep.pair,
            value=0,
            gas=GAS["swap"],
            gasPrice=self.gas_price + int(rng.integers(0, 1000)),
            data=_swap_data(zero_for_one, amount, int(out * 0.999), me.address),
        )
        return [tx], nxt

    def setup(self, needs: SetupNeeds, dep: Deployment) -> None:
        needs.add_eth(self.accounts[0].address, 1_000 * ETH)
        for token in (dep.token0, dep.token1):
            needs.mints.append((token, self.accounts[0].address, 400_000 * TOKEN))
            needs.approvals.append((self.accounts[0], token, self.label))


class SandwichBot(Actor):
    label = LABEL_SANDWICH

    def __init__(self, index: int, cfg: SimConfig, dep: Deployment) -> None:
        s = cfg.sandwich
        accounts = [derive_account(cfg.seed, f"sandwich:{index}:{j}") for j in range(s.accounts)]
        super().__init__(f"sandwich-{index}", accounts)
        self.cfg, self.dep = cfg, dep
        self.rng = rng = _rng(cfg.seed, "sandwich", index)
        self.p_attack = _u(rng, s.attack_probability)
        self.aggressiveness = _u(rng, s.aggressiveness)
        self.min_share = _u(rng, s.min_victim_share)
        self.bump = int(rng.integers(GWEI, 3 * GWEI)) + int(rng.integers(1, 10**6))
        self.start = cfg.bots_start_s
        self._last = [-math.inf] * len(accounts)
        self.params = {
            "attack_probability": round(self.p_attack, 3),
            "aggressiveness": round(self.aggressiveness, 3),
            "min_victim_share": self.min_share,
            "gas_bump_wei": self.bump,
            "accounts": len(accounts),
        }

    def first(self) -> None:
        return None  # reacts to victims only

    def step(self, t: float, world: World) -> tuple[list[PlannedTx], float | None]:
        return [], None

    def attack(
        self,
        t: float,
        victim: PlannedTx,
        zero_for_one: bool,
        amount_in: int,
        min_out: int,
        pool: Pool,
    ) -> tuple[PlannedTx, PlannedTx] | None:
        """Front and back transactions around `victim`, applied to `pool` for the front;
        None when this bot passes (too early, too small, unlucky draw, no room, busy)."""
        if t < self.start or self.rng.random() > self.p_attack:
            return None
        k = int(np.argmin(self._last))
        if t - self._last[k] < self.cfg.sandwich.cooldown_s:
            return None
        reserve_in = pool.reserve0 if zero_for_one else pool.reserve1
        if amount_in < reserve_in * self.min_share:
            return None
        room = pool.max_front_run(zero_for_one, amount_in, min_out)
        front_in = min(int(room * self.aggressiveness), reserve_in // 20)
        if front_in <= 0:
            return None
        got = pool.swap(zero_for_one, front_in)
        if got <= 0:
            return None
        self._last[k] = t
        me = self.accounts[k]
        vgp = int(victim.tx["gasPrice"])
        front = self._tx(
            t,
            me,
            "front_run",
            to=self.dep.pair,
            value=0,
            gas=GAS["swap"],
            gasPrice=vgp + self.bump,
            data=_swap_data(zero_for_one, front_in, 0, me.address),
        )
        back = self._tx(
            t,
            me,
            "back_run",
            to=self.dep.pair,
            value=0,
            gas=GAS["swap"],
            gasPrice=max(GWEI, vgp - int(self.rng.integers(1, 10**6))),
            data=_swap_data(not zero_for_one, got, 0, me.address),
            _amount_in=got,
        )
        return front, back

    def setup(self, needs: SetupNeeds, dep: Deployment) -> None:
        for a in self.accounts:
            needs.add_eth(a.address, 1_000 * ETH)
            for token in (dep.token0, dep.token1):
                needs.mints.append((token, a.address, 500_000 * TOKEN))
                needs.approvals.append((a, token, self.label))


class SybilFarm(Actor):
    """Scripted: fan-out, then every wallet claims, consolidates and pays in lockstep."""

    label = LABEL_SYBIL

    def __init__(self, index: int, cfg: SimConfig, dep: Deployment) -> None:
        s = cfg.sybil
        rng = _rng(cfg.seed, "sybil", index)
        n = int(rng.integers(s.wallets[0], s.wallets[1] + 1))
        funder = derive_account(cfg.seed, f"sybil:{index}:funder")
        wallets = [derive_account(cfg.seed, f"sybil:{index}:wallet:{j}") for j in range(n)]
        super().__init__(f"sybil-{index}", [funder, *wallets])
        self.cfg, self.dep, self.rng = cfg, dep, rng
        self.start = cfg.bots_start_s + float(rng.uniform(0, s.start_spread_s))
        self.fanout_interval = _u(rng, s.fanout_interval_s)
        self.rounds = int(rng.integers(s.rounds[0], s.rounds[1] + 1))
        self.round_interval = _u(rng, s.round_interval_s)
        self.gas_price = 3 * GWEI + int(rng.integers(1, 10**8))
        self.seed_value = int(float(rng.uniform(0.02, 0.1)) * ETH)
        self.node = dep.nodes[int(rng.integers(len(dep.nodes)))]
        self.units = int(rng.integers(50, 500))
        self.params = {
            "wallets": n,
            "funder": funder.address.lower(),
            "rounds": self.rounds,
            "round_interval_s": round(self.round_interval, 3),
            "seed_value_wei": self.seed_value,
            "gas_price_wei": self.gas_price,
        }
        self._script = self._build()
        self._pos = 0

    def _build(self) -> list[PlannedTx]:
        rng = self.rng
        funder, wallets = self.accounts[0], self.accounts[1:]
        out: list[PlannedTx] = []
        t = self.start
        for w in wallets:  # fan-out: equal amounts, one after the other
            value = self.seed_value + int(rng.integers(0, 1000))
            out.append(
                self._tx(
                    t,
                    funder,
                    "fan_out",
                    to=w.address,
                    value=value,
                    gas=GAS["eth"],
                    gasPrice=self.gas_price,
                )
            )
            t += self.fanout_interval * float(rng.uniform(0.95, 1.05))
        gas = dict(gas=GAS["claim"], gasPrice=self.gas_price, value=0)
        claim = selector("claim()")
        back = _transfer_data(funder.address, self.dep.claim_amount)
        pay_data = _pay_data(self.node, self.units)
        pay_value = self.units * self.cfg.price_per_unit_wei
        base = t + float(rng.uniform(1.0, 3.0))
        for j, w in enumerate(wallets):  # the same script per wallet, slightly staggered
            t0 = base + 0.05 * j + float(rng.uniform(0, 0.2))
            out.append(self._tx(t0, w, "claim", to=self.dep.token0, data=claim, **gas))
            t1 = t0 + 2.0 + float(rng.uniform(0, 0.3))
            out.append(self._tx(t1, w, "consolidate", to=self.dep.token0, data=back, **gas))
            for r in range(self.rounds):
                tr = t1 + self.round_interval * (r + 1) + float(rng.uniform(0, 0.3))
                out.append(
                    self._tx(
                        tr,
                        w,
                        "farm_payment",
                        to=self.dep.payments,
                        value=pay_value,
                        gas=GAS["pay"],
                        gasPrice=self.gas_price,
                        data=pay_data,
                    )
                )
        out.sort(key=lambda p: p.t)  # stable: one wallet's txs keep their order
        return out

    def first(self) -> float | None:
        return self._script[0].t if self._script else None

    def step(self, t: float, world: World) -> tuple[list[PlannedTx], float | None]:
        batch = []
        while self._pos < len(self._script) and self._script[self._pos].t <= t:
            batch.append(self._script[self._pos])
            self._pos += 1
        nxt = self._script[self._pos].t if self._pos < len(self._script) else None
        return batch, nxt

    def setup(self, needs: SetupNeeds, dep: Deployment) -> None:
        # only the funder is funded from outside; the wallets get their ETH on chain
        needs.add_eth(self.accounts[0].address, 100 * ETH)


class WashRing(Actor):
    label = LABEL_WASH

    def __init__(self, index: int, cfg: SimConfig, dep: Deployment) -> None:
        w = cfg.wash
        rng = _rng(cfg.seed, "wash", index)
        k = int(rng.integers(w.members[0], w.members[1] + 1))
        members = [derive_account(cfg.seed, f"wash:{index}:{j}") for j in range(k)]
        super().__init__(f"wash-{index}", members)
        self.cfg, self.dep, self.rng = cfg, dep, rng
        self.interval = _u(rng, w.interval_s)
        self.amount = int(float(rng.uniform(1_000, 5_000)) * TOKEN)
        self.gas_price = 2 * GWEI + int(rng.integers(1, 10**8))
        self.start = cfg.bots_start_s + float(rng.uniform(0, 5))
        self._turn = 0
        self.params = {
            "members": k,
            "interval_s": round(self.interval, 3),
            "amount": self.amount,
            "gas_price_wei": self.gas_price,
        }

    def first(self) -> float:
        return self.start

    def step(self, t: float, world: World) -> tuple[list[PlannedTx], float]:
        rng = self.rng
        k = len(self.accounts)
        src = self.accounts[self._turn % k]
        dst = self.accounts[(self._turn + 1) % k]
        self._turn += 1
        nxt = t + self.interval * float(rng.uniform(0.9, 1.1))
        gp = self.gas_price + int(rng.integers(0, 100))
        amount = self.amount + int(rng.integers(0, 10**6))
        if rng.random() >= self.cfg.wash.swap_share:
            tx = self._tx(
                t,
                src,
                "ring_transfer",
                to=self.dep.token0,
                value=0,
                gas=GAS["token"],
                gasPrice=gp,
                data=_transfer_data(dst.address, amount),
            )
            return [tx], nxt
        # round trip: buy token1 with token0, sell all of it back
        pool = world.pool
        got = pool.swap(True, amount)
        pool.swap(False, got)
        buy = self._tx(
            t,
            src,
            "wash_buy",
            to=self.dep.pair,
            value=0,
            gas=GAS["swap"],
            gasPrice=gp,
            data=_swap_data(True, amount, 0, src.address),
        )
        sell = self._tx(
            t,
            src,
            "wash_sell",
            to=self.dep.pair,
            value=0,
            gas=GAS["swap"],
            gasPrice=gp,
            data=_swap_data(False, got, 0, src.address),
        )
        return [buy, sell], nxt

    def setup(self, needs: SetupNeeds, dep: Deployment) -> None:
        for a in self.accounts:
            needs.add_eth(a.address, 100 * ETH)
            needs.mints.append((dep.token0, a.address, 200_000 * TOKEN))
            needs.mints.append((dep.token1, a.address, 200_000 * TOKEN))
            needs.approvals.append((a, dep.token0, self.label))
            needs.approvals.append((a, dep.token1, self.label))


class Spammer(Actor):
    label = LABEL_SPAM

    def __init__(self, index: int, cfg: SimConfig, dep: Deployment) -> None:
        super().__init__(f"spam-{index}", [derive_account(cfg.seed, f"spam:{index}")])
        self.cfg, self.dep = cfg, dep
        self.rng = rng = _rng(cfg.seed, "spam", index)
        self.rate = _u(rng, cfg.spam.rate_per_s)
        self.start = cfg.bots_start_s + float(rng.uniform(0, 5))
        self.params = {"rate_per_s": round(self.rate, 3)}

    def first(self) -> float:
        return self.start

    def step(self, t: float, world: World) -> tuple[list[PlannedTx], float]:
        rng = self.rng
        users = world.user_addresses
        target = str(rng.choice(users)) if users and rng.random() < 0.6 else _fresh_address(rng)
        me = self.accounts[0]
        nxt = t + float(rng.exponential(1 / self.rate))
        if rng.random() < self.cfg.spam.token_share:
            data = _transfer_data(target, int(rng.integers(1, 1000)))
            tx = self._tx(
                t,
                me,
                "token_dust",
                to=self.dep.token1,
                value=0,
                gas=GAS["token"],
                gasPrice=GWEI,
                data=data,
            )
        else:
            tx = self._tx(
                t,
                me,
                "eth_dust",
                to=target,
                value=int(rng.integers(1, 1000)),
                gas=GAS["eth"],
                gasPrice=GWEI,
            )
        return [tx], nxt

    def setup(self, needs: SetupNeeds, dep: Deployment) -> None:
        needs.add_eth(self.accounts[0].address, 100 * ETH)
        needs.mints.append((dep.token1, self.accounts[0].address, 1_000 * TOKEN))


# ---------------------------------------------------------------------------- plan


class Plan:
    """All actors of a run and their merged, time-ordered transactions."""

    def __init__(self, cfg: SimConfig, dep: Deployment) -> None:
        self.cfg = cfg
        self.dep = dep
        self.world = World(cfg, dep)
        self.humans = [Human(i, cfg, dep) for i in range(cfg.humans.count)]
        everyone = [h.address for h in self.humans]
        for h in self.humans:
            h.choose_contacts(everyone)
        self.world.user_addresses = everyone
        self.actors: list[Actor] = list(self.humans)
        if cfg.hf_bot.enabled:
            self.actors.append(HfBot(cfg, dep))
        self.actors += [ArbitrageBot(i, cfg, dep) for i in range(cfg.arbitrage.count)]
        sandwich = [SandwichBot(i, cfg, dep) for i in range(cfg.sandwich.count)]
        self.world.sandwichers = sandwich
        self.actors += sandwich
        self.actors += [SybilFarm(i, cfg, dep) for i in range(cfg.sybil.farms)]
        self.actors += [WashRing(i, cfg, dep) for i in range(cfg.wash.rings)]
        self.actors += [Spammer(i, cfg, dep) for i in range(cfg.spam.spammers)]
        self._iterated = False

    def infos(self) -> list[ActorInfo]:
        return [a.info() for a in self.actors]

    def labels(self) -> dict[str, str]:
        """address -> label for every actor's address (labels.json)."""
        return {addr: a.label for a in self.actors for addr in a.info().addresses}

    def setup_needs(self) -> SetupNeeds:
        needs = SetupNeeds()
        for a in self.actors:
            a.setup(needs, self.dep)
        return needs

    def __iter__(self) -> Iterator[PlannedTx]:
        """The plan, in time order; endless unless `duration_s` is set. Iterate once."""
        if self._iterated:
            raise RuntimeError("a Plan is iterated once; build a new one to replay")
        self._iterated = True
        seq = itertools.count()
        heap: list[tuple[float, int, int]] = []
        for i, a in enumerate(self.actors):
            t0 = a.first()
            if t0 is not None:
                heapq.heappush(heap, (t0, next(seq), i))
        end = self.cfg.duration_s
        while heap:
            t, _, i = heapq.heappop(heap)
            if end is not None and t > end:
                return
            txs, nxt = self.actors[i].step(t, self.world)
            yield from txs
            if nxt is not None:
                heapq.heappush(heap, (max(nxt, t), next(seq), i))
