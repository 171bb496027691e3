"""Seeded synthetic per-address transaction sequences for six behaviour families.

Pure (no I/O, no pipelines): training data for the tx sequence model and the held-out
scenarios of its evaluation. Every entity draws its own parameters, so no two bots of a
family look alike, and the normal population is deliberately heterogeneous (casual users,
active traders, wallets with exact EIP-1559 gas prices) so that no single feature separates
it from the bots.

Generative assumptions (a 2 s block chain; amounts in wei, gas prices in wei):
- normal (70 %): sessions of Poisson activity (within-session gaps 8 s - 15 min) separated
  by exponential pauses (10 min - 2 days); transfers to a personal contact list and calls
  to a few favourite popular contracts (Zipf); values typed by hand (1-2 significant
  digits) most of the time; gas either round legacy prices or base fee + round tip; 0-5 %
  failures. The other 30 % are honest look-alikes of the bot families: scheduled DCA buys
  (near-exact period, fixed contract and amount: timer-like), NFT collectors (buy/list on a
  marketplace: wash-like, but prices vary by item) and quest doers (the same protocol tasks
  every few days: sybil-like, but with human delays, skips and reordering).
- hf_bot: timer-driven (fixed interval 0.5-300 s with 0-30 % jitter), Poisson, or every k
  blocks; 1-3 targets, 1-2 selectors; fixed precise, base-fee-tracking or round gas; mostly
  zero value; 0-30 % failures; occasional pauses.
- sandwich: opportunities every 3-300 blocks; a front-run (higher, precise gas) and a
  back-run (lower gas) in the same block through the bot's contract or a DEX router; failed
  front-runs (5-40 %) often drop the back-run; some solo arbitrage txs.
- sybil: farms of 4-24 addresses run one scripted cycle (3-7 steps: approve, deposit, claim,
  bridge, sweep to a collector) with scripted delays and 2-60 % jitter, repeated every
  4 h - 3 days; farm-wide gas rule.
- wash: pairs trading through one marketplace: alternating buy/list at a near-constant price
  (0.05-20 ETH, 0.5-8 % drift per trade), gamma cadence (2 min - 6 h, cv 0.2-1), occasional direct
  repayments to the partner.
- spam: dust to fresh addresses (1-10^6 wei) or zero-value token calls (address poisoning),
  Poisson every 0.5-30 s, minimal gas, 0-50 % failures, nonce replacements/gaps.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from detector import features as F
from detector.types import Tx
from models.data.common import GENERATOR_TAG_TX, SequenceArrays, Split, entity_rng
from models.data.events import N_TX_EVENT_FEATURES, pad_sequences, tx_event_vectors

TX_FAMILIES: tuple[str, ...] = ("normal", "hf_bot", "sandwich", "sybil", "wash", "spam")
FAMILY_IDS = {f: i for i, f in enumerate(TX_FAMILIES)}

GWEI = 10**9
ETH = 10**18
BLOCK_TIME_S = 2.0
GENESIS_TS = 1_700_000_000.0
_WORLD = 0xFFFF
_FARM = 0xFA53
_PAIR = 0x9A15
_CHUNK = 256  # entities per featurize call (bounds the window matrices' memory)


@dataclass(frozen=True)
class TxEntity:
    """One address: its family (label) and its transactions in time order."""

    address: str
    family: str
    txs: tuple[Tx, ...]


@dataclass(frozen=True)
class _World:
    """Popular contracts shared by everyone in one split (DEX routers, tokens, markets)."""

    contracts: tuple[str, ...]
    selectors: tuple[tuple[str, ...], ...]
    weights: np.ndarray
    base_phase: float


def _addr(rng: np.random.Generator) -> str:
    return "0x" + rng.bytes(20).hex()


def _sel(rng: np.random.Generator) -> str:
    return "0x" + rng.bytes(4).hex()


def _world(seed: int, split: Split) -> _World:
    rng = entity_rng(GENERATOR_TAG_TX, seed, split, _WORLD)
    n = 40
    contracts = tuple(_addr(rng) for _ in range(n))
    selectors = tuple(tuple(_sel(rng) for _ in range(int(rng.integers(1, 5)))) for _ in range(n))
    w = 1.0 / np.arange(1, n + 1) ** 1.1
    return _World(contracts, selectors, w / w.sum(), float(rng.uniform(0, 2 * math.pi)))


def _base_fee_wei(world: _World, t: float, rng: np.random.Generator) -> int:
    """Smooth daily/hourly base fee with per-block noise: exact, many-digit wei amounts."""
    g = 0.05 * math.exp(
        0.5 * math.sin(2 * math.pi * t / 86_400 + world.base_phase)
        + 0.2 * math.sin(2 * math.pi * t / 3_600)
    )
    return int(g * GWEI * (1.0 + 0.05 * rng.standard_normal()) + rng.integers(0, 10**6))


def _human_value(rng: np.random.Generator, scale_eth: float) -> int:
    """Amounts typed by hand: mostly 1-2 significant digits, sometimes exact ('max')."""
    v = float(rng.lognormal(math.log(scale_eth), 1.0))
    u = rng.random()
    if u < 0.7:
        digits = int(rng.integers(1, 3))
        e = math.floor(math.log10(v))
        v = round(v / 10**e, digits - 1) * 10**e
        return max(int(round(v * 10**4)), 1) * 10**14
    if u < 0.9:
        return int(round(v * 10**4)) * 10**14
    return int(v * ETH) + int(rng.integers(0, 10**12))


def _human_gas(world: _World, rng: np.random.Generator, t: float, precise: bool) -> int:
    base = _base_fee_wei(world, t, rng)
    if precise:
        return base + int(rng.choice([1, 1, 2, 3])) * GWEI // 10
    return max(int(round(base / (GWEI // 100))), 1) * (GWEI // 100) * int(rng.choice([1, 2]))


@dataclass
class _Draft:
    """Fields of one planned tx before nonce, block and hash are assigned."""

    t: float
    to: str
    value: int
    gas_price: int
    gas: int
    selector: str
    ok: bool
    nonce_step: int = 1
    same_block_as_prev: bool = False


def _normal(rng: np.random.Generator, world: _World, n: int, t0: float) -> list[_Draft]:
    """A human; 30 % are look-alikes of the bot families (see _normal_* below)."""
    style = rng.choice(["casual", "trader", "dca", "nft", "quester"], p=[0.45, 0.25, 0.1, 0.1, 0.1])
    if style == "dca":
        return _normal_dca(rng, world, n, t0)
    if style == "nft":
        return _normal_nft(rng, world, n, t0)
    if style == "quester":
        return _normal_quester(rng, world, n, t0)
    trader = style == "trader"
    lo_gap, hi_gap = (600.0, 4 * 3600.0) if trader else (3600.0, 2 * 86_400.0)
    lo_iat, hi_iat = (8.0, 180.0) if trader else (30.0, 900.0)
    session_gap = math.exp(rng.uniform(math.log(lo_gap), math.log(hi_gap)))
    iat = math.exp(rng.uniform(math.log(lo_iat), math.log(hi_iat)))
    mean_session = rng.uniform(3, 15) if trader else rng.uniform(1.5, 6)
    p_call = rng.uniform(0.1, 0.9)
    precise = rng.random() < 0.5
    contacts = [_addr(rng) for _ in range(int(rng.integers(2, 20)))]
    cw = 1.0 / np.arange(1, len(contacts) + 1)
    favs = rng.choice(len(world.contracts), size=int(rng.integers(2, 9)), p=world.weights)
    p_fail = rng.uniform(0, 0.05)
    scale = math.exp(rng.uniform(math.log(0.005), math.log(3.0)))
    out: list[_Draft] = []
    t = t0
    for k in range(n):
        if k:
            t += rng.exponential(session_gap if rng.random() < 1 / mean_session else iat)
        gas_price = _human_gas(world, rng, t, precise)
        if rng.random() < p_call:
            c = int(favs[min(int(rng.zipf(1.6)) - 1, len(favs) - 1)])
            sel = str(rng.choice(world.selectors[c]))
            value = 0 if rng.random() < 0.6 else _human_value(rng, scale)
            gas = int(rng.integers(45_000, 300_000))
            out.append(_Draft(t, world.contracts[c], value, gas_price, gas, sel, True))
        else:
            to = contacts[int(rng.choice(len(contacts), p=cw / cw.sum()))]
            out.append(_Draft(t, to, _human_value(rng, scale), gas_price, 21_000, "", True))
        out[-1].ok = rng.random() >= p_fail
    return out


def _normal_dca(rng: np.random.Generator, world: _World, n: int, t0: float) -> list[_Draft]:
    """Scheduled buys (a wallet's recurring order: fixed contract, selector, round amount,
    near-exact period of 4 h - 1 week) mixed with manual transfers: timer-like, but human."""
    period = float(rng.choice([4 * 3600.0, 12 * 3600.0, 86_400.0, 7 * 86_400.0]))
    c = int(rng.choice(len(world.contracts), p=world.weights))
    sel = str(rng.choice(world.selectors[c]))
    amount = _human_value(rng, math.exp(rng.uniform(math.log(0.01), math.log(1.0))))
    p_manual = rng.uniform(0.05, 0.4)
    precise = rng.random() < 0.7
    contacts = [_addr(rng) for _ in range(int(rng.integers(1, 6)))]
    out: list[_Draft] = []
    t, next_buy = t0, t0
    for _ in range(n):
        if rng.random() < p_manual:
            t = t + rng.exponential(period / 3)
            gp = _human_gas(world, rng, t, precise)
            to = contacts[int(rng.integers(len(contacts)))]
            out.append(_Draft(t, to, _human_value(rng, 0.1), gp, 21_000, "", True))
            continue
        next_buy += period * (1 + 0.002 * rng.standard_normal())
        t = max(t, next_buy)
        gp = _human_gas(world, rng, t, precise)
        out.append(_Draft(t, world.contracts[c], amount, gp, 180_000, sel, rng.random() > 0.02))
    return sorted(out, key=lambda d: d.t)


def _normal_nft(rng: np.random.Generator, world: _World, n: int, t0: float) -> list[_Draft]:
    """A collector: buys, lists and cancels on one or two marketplaces, prices varying by
    item (unlike wash trading's near-constant price), human sessions."""
    markets = [int(i) for i in rng.choice(15, size=int(rng.integers(1, 3)), replace=False)]
    sels = {m: [_sel(rng) for _ in range(3)] for m in markets}
    scale = math.exp(rng.uniform(math.log(0.02), math.log(5.0)))
    session_gap = math.exp(rng.uniform(math.log(1800.0), math.log(86_400.0)))
    iat = math.exp(rng.uniform(math.log(20.0), math.log(600.0)))
    precise = rng.random() < 0.5
    out: list[_Draft] = []
    t = t0
    for k in range(n):
        if k:
            t += rng.exponential(session_gap if rng.random() < 0.3 else iat)
        m = markets[int(rng.integers(len(markets)))]
        action = int(rng.choice(3, p=[0.45, 0.45, 0.1]))
        value = _human_value(rng, scale) if action == 0 else 0
        gp = _human_gas(world, rng, t, precise)
        out.append(
            _Draft(
                t,
                world.contracts[m],
                value,
                gp,
                int(rng.integers(60_000, 250_000)),
                sels[m][action],
                rng.random() > 0.03,
            )
        )
    return out


def _normal_quester(rng: np.random.Generator, world: _World, n: int, t0: float) -> list[_Draft]:
    """One person doing protocol 'quests' (the same few tasks every few days, like a sybil
    script) but with human delays, skips and reordering."""
    k = int(rng.integers(3, 7))
    tasks = []
    for _ in range(k):
        c = int(rng.choice(len(world.contracts), p=world.weights))
        tasks.append((world.contracts[c], str(rng.choice(world.selectors[c]))))
    step_mean = math.exp(rng.uniform(math.log(30.0), math.log(900.0)))
    cycle_mean = math.exp(rng.uniform(math.log(86_400.0), math.log(5 * 86_400.0)))
    precise = rng.random() < 0.5
    out: list[_Draft] = []
    t = t0
    i = 0
    while len(out) < n:
        t += rng.exponential(step_mean)
        if i == 0:
            t += rng.exponential(cycle_mean)
        if rng.random() < 0.2:
            i = int(rng.integers(k))
        to, sel = tasks[i]
        value = 0 if rng.random() < 0.7 else _human_value(rng, 0.05)
        gp = _human_gas(world, rng, t, precise)
        out.append(
            _Draft(t, to, value, gp, int(rng.integers(50_000, 250_000)), sel, rng.random() > 0.03)
        )
        i = (i + 1) % k
    return out


def _hf_bot(rng: np.random.Generator, world: _World, n: int, t0: float) -> list[_Draft]:
    mode = rng.choice(["timer", "poisson", "blocks"], p=[0.55, 0.25, 0.2])
    interval = math.exp(rng.uniform(math.log(0.5), math.log(300.0)))
    jitter = rng.uniform(0, 0.3)
    every_blocks = int(rng.integers(1, 6))
    own = rng.random() < 0.5
    n_t = int(rng.integers(1, 4))
    targets = (
        [_addr(rng) for _ in range(n_t)]
        if own
        else [world.contracts[int(i)] for i in rng.choice(len(world.contracts), n_t)]
    )
    sels = [_sel(rng) for _ in range(int(rng.integers(1, 3)))]
    gas_mode = rng.choice(["fixed_precise", "tracking", "round"], p=[0.4, 0.4, 0.2])
    fixed_gas = int(rng.uniform(0.02, 2.0) * GWEI) + int(rng.integers(0, GWEI // 1000))
    tip = int(rng.integers(1, 10**7))
    value_mode = rng.choice(["zero", "fixed", "random"], p=[0.7, 0.15, 0.15])
    fixed_value = int(rng.uniform(0.001, 1.0) * ETH)
    p_fail = rng.uniform(0, 0.3)
    gas_limit = int(rng.integers(60_000, 400_000))
    out: list[_Draft] = []
    t = t0
    for k in range(n):
        if k:
            if mode == "timer":
                t += max(interval * (1 + jitter * rng.standard_normal()), 0.05)
            elif mode == "poisson":
                t += rng.exponential(interval)
            else:
                t += every_blocks * BLOCK_TIME_S
            if rng.random() < 0.03:
                t += rng.exponential(20 * interval)
        if gas_mode == "fixed_precise":
            gp = fixed_gas
        elif gas_mode == "tracking":
            gp = _base_fee_wei(world, t, rng) + tip
        else:
            gp = max(int(round(fixed_gas / (GWEI // 100))), 1) * (GWEI // 100)
        if value_mode == "zero":
            value = 0
        elif value_mode == "fixed":
            value = fixed_value
        else:
            value = int(rng.integers(10**12, 10**17))
        to = targets[int(rng.integers(len(targets)))]
        sel = sels[int(rng.integers(len(sels)))]
        out.append(_Draft(t, to, value, gp, gas_limit, sel, rng.random() >= p_fail))
    return out


def _sandwich(rng: np.random.Generator, world: _World, n: int, t0: float) -> list[_Draft]:
    gap_blocks = math.exp(rng.uniform(math.log(3.0), math.log(300.0)))
    own = rng.random() < 0.6
    router = _addr(rng) if own else world.contracts[int(rng.integers(0, 5))]
    front_sel, back_sel = _sel(rng), (_sel(rng) if rng.random() < 0.5 else None)
    p_fail = rng.uniform(0.05, 0.4)
    p_drop_back = rng.uniform(0.3, 1.0)
    p_solo = rng.uniform(0.0, 0.3)
    eth_front = rng.random() < 0.3
    gas_limit = int(rng.integers(150_000, 500_000))
    out: list[_Draft] = []
    t = t0
    while len(out) < n:
        if out:
            t += max(1.0, rng.exponential(gap_blocks)) * BLOCK_TIME_S
        victim_gas = _base_fee_wei(world, t, rng) + int(rng.integers(1, 30)) * GWEI // 100
        if rng.random() < p_solo:
            gp = victim_gas + int(rng.integers(1, GWEI // 10))
            out.append(_Draft(t, router, 0, gp, gas_limit, front_sel, rng.random() >= p_fail / 2))
            continue
        front_gas = int(victim_gas * rng.uniform(1.01, 1.3)) + int(rng.integers(1, 10**6))
        value = int(rng.uniform(0.05, 20.0) * ETH) if eth_front else 0
        ok = rng.random() >= p_fail
        out.append(_Draft(t, router, value, front_gas, gas_limit, front_sel, ok))
        if ok or rng.random() >= p_drop_back:
            back_gas = victim_gas - int(rng.integers(1, max(victim_gas // 50, 2)))
            out.append(
                _Draft(
                    t,
                    router,
                    0,
                    back_gas,
                    gas_limit,
                    back_sel or front_sel,
                    ok,
                    same_block_as_prev=True,
                )
            )
    return out[:n]


def _sybil(
    world: _World, farm_rng: np.random.Generator, rng: np.random.Generator, n: int, t0: float
) -> list[_Draft]:
    """`farm_rng` draws the farm's script (same for every member); `rng` the member's noise."""
    k = int(farm_rng.integers(3, 8))
    steps = []
    collector = _addr(farm_rng)
    for i in range(k):
        if i == k - 1:
            steps.append((collector, "", "sweep"))
            continue
        c = int(farm_rng.choice(len(world.contracts), p=world.weights))
        sel = str(farm_rng.choice(world.selectors[c]))
        steps.append((world.contracts[c], sel, str(farm_rng.choice(["zero", "round", "tiny"]))))
    delays = np.exp(farm_rng.uniform(math.log(5.0), math.log(1800.0), size=k))
    cycle = math.exp(farm_rng.uniform(math.log(4 * 3600.0), math.log(3 * 86_400.0)))
    jitter = farm_rng.uniform(0.02, 0.6)
    precise_gas = farm_rng.random() < 0.5
    round_amount = int(farm_rng.choice([1, 2, 5, 10, 50])) * 10**15
    gas_limits = farm_rng.integers(50_000, 250_000, size=k)
    skip = rng.uniform(0.0, 0.15)  # members skip steps now and then
    out: list[_Draft] = []
    t = t0 + rng.uniform(0, cycle)
    i = int(rng.integers(0, k))  # windows start anywhere in the cycle
    while len(out) < n:
        to, sel, rule = steps[i]
        t += delays[i] * max(0.05, 1 + jitter * rng.standard_normal())
        if i == k - 1:
            t += cycle * max(0.1, 1 + jitter * rng.standard_normal())
        if rng.random() >= skip:
            if rule == "zero":
                value = 0
            elif rule == "round":
                value = round_amount
            elif rule == "tiny":
                value = int(rng.integers(1, 100)) * 10**12
            else:
                value = int(rng.uniform(0.001, 0.2) * ETH)
            gp = _human_gas(world, rng, t, precise_gas)
            gas = 21_000 if sel == "" else int(gas_limits[i])
            out.append(_Draft(t, to, value, gp, gas, sel, rng.random() >= 0.02))
        i = (i + 1) % k
    return out


def _wash(
    world: _World,
    pair_rng: np.random.Generator,
    rng: np.random.Generator,
    n: int,
    t0: float,
    partner: str,
) -> list[_Draft]:
    c = int(pair_rng.integers(0, 15))
    market = world.contracts[c]
    buy_sel, list_sel = _sel(pair_rng), _sel(pair_rng)
    price = math.exp(pair_rng.uniform(math.log(0.05), math.log(20.0)))
    mean_gap = math.exp(pair_rng.uniform(math.log(120.0), math.log(6 * 3600.0)))
    cv = pair_rng.uniform(0.2, 1.0)
    drift = pair_rng.uniform(0.005, 0.08)
    shape = 1.0 / cv**2
    precise = rng.random() < 0.5
    p_repay = rng.uniform(0.0, 0.25)
    out: list[_Draft] = []
    t = t0
    buy = rng.random() < 0.5
    for k in range(n):
        if k:
            t += rng.gamma(shape, mean_gap / shape)
        price *= math.exp(drift * rng.standard_normal())
        gp = _human_gas(world, rng, t, precise)
        if rng.random() < p_repay:
            v = int(round(price * rng.uniform(0.9, 1.1), 3) * 10**3) * 10**15
            out.append(_Draft(t, partner, v, gp, 21_000, "", True))
            continue
        if buy:
            value = int(round(price, 4) * 10**4) * 10**14
            out.append(
                _Draft(
                    t,
                    market,
                    value,
                    gp,
                    int(rng.integers(120_000, 200_000)),
                    buy_sel,
                    rng.random() >= 0.03,
                )
            )
        else:
            out.append(_Draft(t, market, 0, gp, int(rng.integers(60_000, 90_000)), list_sel, True))
        buy = not buy
    return out


def _spam(rng: np.random.Generator, world: _World, n: int, t0: float) -> list[_Draft]:
    direct = rng.random() < 0.5
    iat = math.exp(rng.uniform(math.log(0.5), math.log(30.0)))
    p_new = rng.uniform(0.7, 1.0)
    tokens = [world.contracts[int(i)] for i in rng.choice(len(world.contracts), 3)]
    tsel = _sel(rng)
    p_fail = rng.uniform(0, 0.5)
    p_nonce = rng.uniform(0, 0.1)
    minimal_exact = rng.random() < 0.5
    dust_round = rng.random() < 0.3
    recent: list[str] = []
    out: list[_Draft] = []
    t = t0
    for k in range(n):
        if k:
            t += rng.exponential(iat)
        base = _base_fee_wei(world, t, rng)
        gp = base + 1 if minimal_exact else max(base // GWEI, 1) * GWEI
        if direct:
            if not recent or rng.random() < p_new:
                recent.append(_addr(rng))
            to = recent[-1] if rng.random() < p_new else str(rng.choice(recent))
            value = 10 ** int(rng.integers(0, 7)) if dust_round else int(rng.integers(1, 10**6))
            d = _Draft(t, to, value, gp, 21_000, "", rng.random() >= p_fail)
        else:
            to = tokens[int(rng.integers(len(tokens)))]
            d = _Draft(
                t, to, 0, gp, int(rng.integers(40_000, 70_000)), tsel, rng.random() >= p_fail
            )
        u = rng.random()
        if u < p_nonce:
            d.nonce_step = 0 if u < p_nonce / 2 else 2
        out.append(d)
    return out


def _to_txs(address: str, drafts: list[_Draft], rng: np.random.Generator, tag: str) -> list[Tx]:
    """Assign block numbers (2 s blocks), block timestamps, nonces and hashes."""
    nonce = int(rng.integers(0, 500))
    txs: list[Tx] = []
    last_block = -1
    for k, d in enumerate(drafts):
        block = int((d.t - GENESIS_TS) // BLOCK_TIME_S)
        if d.same_block_as_prev and last_block >= 0:
            block = last_block
        block = max(block, last_block)
        if k:
            nonce += d.nonce_step
        h = hashlib.blake2b(f"{tag}:{k}".encode(), digest_size=32).hexdigest()
        txs.append(
            Tx(
                tx_hash="0x" + h,
                sender=address,
                to=d.to,
                value_wei=d.value,
                gas_price_wei=max(d.gas_price, 1),
                gas=d.gas,
                nonce=nonce,
                selector=d.selector,
                status=1 if d.ok else 0,
                block_number=block,
                timestamp=GENESIS_TS + block * BLOCK_TIME_S,
            )
        )
        last_block = block
    return txs


def generate_tx_entities(
    counts: Mapping[str, int],
    *,
    seed: int,
    split: Split,
    min_len: int = 8,
    max_len: int = 64,
) -> list[TxEntity]:
    """Entities per family (`counts`: family -> how many); window lengths uniform in
    [min_len, max_len] for every family, so the length itself tells nothing."""
    if not 2 <= min_len <= max_len:
        raise ValueError("need 2 <= min_len <= max_len")
    unknown = set(counts) - set(TX_FAMILIES)
    if unknown:
        raise ValueError(f"unknown tx families {sorted(unknown)}; known: {TX_FAMILIES}")
    world = _world(seed, split)
    out: list[TxEntity] = []
    for family in TX_FAMILIES:
        fid = FAMILY_IDS[family]
        farm_left, farm_id = 0, 0
        for i in range(int(counts.get(family, 0))):
            rng = entity_rng(GENERATOR_TAG_TX, seed, split, fid, i)
            n = int(rng.integers(min_len, max_len + 1))
            t0 = GENESIS_TS + rng.uniform(0, 30 * 86_400.0)
            address = _addr(rng)
            if family == "normal":
                drafts = _normal(rng, world, n, t0)
            elif family == "hf_bot":
                drafts = _hf_bot(rng, world, n, t0)
            elif family == "sandwich":
                drafts = _sandwich(rng, world, n, t0)
            elif family == "sybil":
                if farm_left <= 0:  # start a new farm: its script is drawn from farm_id
                    farm_id = i
                    farm_left = int(
                        entity_rng(GENERATOR_TAG_TX, seed, split, _FARM, farm_id, 1).integers(4, 25)
                    )
                farm_left -= 1
                script_rng = entity_rng(GENERATOR_TAG_TX, seed, split, _FARM, farm_id)
                drafts = _sybil(world, script_rng, rng, n, t0)
            elif family == "wash":
                pair_rng = entity_rng(GENERATOR_TAG_TX, seed, split, _PAIR, i // 2)
                partner = (
                    "0x"
                    + hashlib.blake2b(
                        f"{seed}:{split}:{i // 2}:{1 - i % 2}".encode(), digest_size=20
                    ).hexdigest()
                )
                address = (
                    "0x"
                    + hashlib.blake2b(
                        f"{seed}:{split}:{i // 2}:{i % 2}".encode(), digest_size=20
                    ).hexdigest()
                )
                drafts = _wash(world, pair_rng, rng, n, t0, partner)
            else:
                drafts = _spam(rng, world, n, t0)
            txs = _to_txs(address, drafts[:n], rng, f"{seed}:{split}:{family}:{i}")
            out.append(TxEntity(address=address, family=family, txs=tuple(txs)))
    return out


def tx_arrays(
    entities: list[TxEntity], *, max_len: int = 64, classes: tuple[str, ...] = TX_FAMILIES
) -> SequenceArrays:
    """Model inputs (per-tx vectors of each sender's window) and isolation-forest rows.

    Both come from one `detector.features.featurize` pass over the same events: the
    sequence model sees the window's events, the forest sees the window's feature row.
    Entities whose family is not in `classes` are refused (label ids must be stable).
    """
    idx = {c: i for i, c in enumerate(classes)}
    missing = {e.family for e in entities} - set(idx)
    if missing:
        raise ValueError(f"families {sorted(missing)} not in classes {classes}")
    seqs: list[np.ndarray] = []
    rows = np.empty((len(entities), F.N_FEATURES), dtype=np.float64)
    for c0 in range(0, len(entities), _CHUNK):
        chunk = entities[c0 : c0 + _CHUNK]
        txs = [tx for e in chunk for tx in e.txs]
        states, feats = F.featurize({}, txs, window_s=1e15, max_events=max_len)
        last = np.cumsum([len(e.txs) for e in chunk]) - 1
        rows[c0 : c0 + len(chunk)] = feats[last]
        seqs.extend(tx_event_vectors(states[e.address].events) for e in chunk)
    x, lengths = pad_sequences(seqs, max_len, N_TX_EVENT_FEATURES)
    return SequenceArrays(
        x=x,
        lengths=lengths,
        labels=np.array([idx[e.family] for e in entities], dtype=np.int64),
        families=tuple(e.family for e in entities),
        ids=tuple(e.address for e in entities),
        window_features=rows,
    )
