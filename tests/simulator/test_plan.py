"""The traffic plan is pure: a seed reproduces it, and each family behaves like itself."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from pipelines.simulator import BOT_LABELS, LABEL_HF_BOT, LABEL_NORMAL, Deployment, Plan, SimConfig
from pipelines.simulator.amm import Pool, amount_out
from pipelines.simulator.plan import PlannedTx, demo_dex_address, derive_account, selector
from pipelines.traffic import DemoTraffic, TrafficConfig

DEP = Deployment(
    chain_id=31337,
    token0="0x" + "11" * 20,
    token1="0x" + "22" * 20,
    pair="0x" + "33" * 20,
    payments="0x" + "44" * 20,
    nodes=tuple(derive_account(1, f"node:{i}").address for i in range(4)),
)
SWAP = selector("swapExactIn(bool,uint256,uint256,address)")


def _plan(seed: int = 1, duration: float = 120.0, **kw: object) -> tuple[Plan, list[PlannedTx]]:
    plan = Plan(SimConfig(seed=seed, duration_s=duration, **kw), DEP)
    return plan, list(plan)


def _key(p: PlannedTx) -> tuple[object, ...]:
    return (round(p.t, 9), p.sender.address, tuple(sorted(p.tx.items())), p.label, p.role)


def test_same_seed_same_traffic_other_seed_other_traffic() -> None:
    _, a = _plan(seed=5, duration=90)
    _, b = _plan(seed=5, duration=90)
    _, c = _plan(seed=6, duration=90)
    assert [_key(p) for p in a] == [_key(p) for p in b]
    assert [_key(p) for p in a] != [_key(p) for p in c]
    assert all(x.t <= y.t for x, y in itertools.pairwise(a))


def test_default_mix_has_every_family_and_bots_wait_for_the_warm_up() -> None:
    plan, txs = _plan()
    labels = Counter(p.label for p in txs)
    assert set(labels) == {LABEL_NORMAL, *BOT_LABELS}
    first_bot = min(p.t for p in txs if p.label != LABEL_NORMAL)
    assert first_bot >= 65.0
    assert set(plan.labels().values()) == {LABEL_NORMAL, *BOT_LABELS}
    # every actor's randomized parameters are on record
    infos = plan.infos()
    arbs = [i.params for i in infos if i.label == "arbitrage_bot"]
    assert len(arbs) == 2 and arbs[0] != arbs[1]


def test_the_hf_bot_is_the_demo_bot() -> None:
    """Same target, call shape, gas and pace as DemoTraffic's bot, from 65 s on."""
    _, txs = _plan(duration=100)
    hf = [p for p in txs if p.label == LABEL_HF_BOT]
    demo = DemoTraffic(
        "http://127.0.0.1:9", TrafficConfig(bot_delay_s=65.0, duration_s=100.0), Path("x")
    )
    ref = [tx for _, _, tx, label in demo.schedule() if label == LABEL_HF_BOT]
    assert hf[0].t == 65.0 and abs(len(hf) - len(ref)) <= 3
    for p, r in zip(hf, ref, strict=False):
        assert p.tx["to"] == r["to"] == demo_dex_address()
        assert str(p.tx["data"])[:10] == str(r["data"])[:10]
        assert len(str(p.tx["data"])) == len(str(r["data"]))
        assert p.tx["gas"] == r["gas"] and abs(p.tx["gasPrice"] - r["gasPrice"]) < 10


def test_humans_look_human() -> None:
    _, txs = _plan(duration=300, bots_start_s=1e9)
    by: dict[str, list[PlannedTx]] = defaultdict(list)
    for p in txs:
        by[p.sender.address].append(p)
    cvs, distinct = [], []
    for ps in by.values():
        gaps = np.diff([p.t for p in ps])
        if len(gaps) >= 20:
            cvs.append(gaps.std() / gaps.mean())
        distinct.append(len({p.tx["to"] for p in ps if p.role == "eth_transfer"}))
        assert all(p.tx["gasPrice"] % 10**8 == 0 for p in ps)  # wallets pick round prices
    assert 0.75 < float(np.median(cvs)) < 1.3  # Poisson arrivals: CV ~ 1
    assert float(np.median(distinct)) >= 3  # several counterparties each
    values = np.array([p.tx["value"] for p in txs if p.role == "eth_transfer"], dtype=float)
    assert values.max() > 20 * np.median(values)  # heavy tail
    roles = Counter(p.role for p in txs)
    assert {"eth_transfer", "token_transfer", "swap", "inference_payment"} <= set(roles)


def test_sandwiches_wrap_a_victim_with_ordered_gas_prices() -> None:
    _, txs = _plan(duration=200, bots_start_s=0)
    n = 0
    for i, p in enumerate(txs):
        if p.role != "front_run":
            continue
        victim, back = txs[i + 1], txs[i + 2]
        assert victim.role == "swap" and victim.label == LABEL_NORMAL and back.role == "back_run"
        assert p.t == victim.t == back.t and p.sender == back.sender != victim.sender
        assert p.tx["gasPrice"] > victim.tx["gasPrice"] > back.tx["gasPrice"]
        assert str(p.tx["data"])[:10] == str(victim.tx["data"])[:10] == SWAP
        n += 1
    assert n >= 5


def test_a_sybil_farm_fans_out_then_its_wallets_act_alike() -> None:
    plan, txs = _plan(duration=200, bots_start_s=0)
    farm = next(a for a in plan.actors if a.label == "sybil")
    funder, wallets = farm.accounts[0], farm.accounts[1:]
    mine = [p for p in txs if p.actor == farm.id]
    fan = [p for p in mine if p.role == "fan_out"]
    assert {p.tx["to"] for p in fan} == {w.address for w in wallets}
    assert all(p.sender == funder for p in fan)
    values = [int(p.tx["value"]) for p in fan]
    assert max(values) - min(values) < 1000  # equal amounts
    last_fan = max(p.t for p in fan)
    acts = [p for p in mine if p.role != "fan_out"]
    assert min(p.t for p in acts) > last_fan
    shapes = {(p.role, p.tx["to"], str(p.tx.get("data", ""))[:10], p.tx["gasPrice"]) for p in acts}
    assert len(shapes) == 3  # claim, consolidate, farm_payment: identical across wallets


def test_wash_ring_passes_tokens_among_its_members_only() -> None:
    plan, txs = _plan(duration=200, bots_start_s=0)
    ring = next(a for a in plan.actors if a.label == "wash_trader")
    members = {a.address.lower() for a in ring.accounts}
    transfers = [p for p in txs if p.actor == ring.id and p.role == "ring_transfer"]
    assert transfers
    for p in transfers:
        to = "0x" + str(p.tx["data"])[10 + 24 : 10 + 64]
        assert to.lower() in members and p.sender.address.lower() in members


def test_amm_mirror_math() -> None:
    pool = Pool(1_000 * 10**18, 2_000 * 10**18)
    out = pool.quote(True, 10**18)
    assert out == amount_out(10**18, 1_000 * 10**18, 2_000 * 10**18) and 1.98e18 < out < 1.995e18
    k0 = pool.reserve0 * pool.reserve1
    pool.swap(True, 10**18)
    assert pool.reserve0 * pool.reserve1 >= k0  # the fee stays in the pool
    direction, amount = pool.input_to_reach(pool.price * 1.01)
    assert direction is False and amount > 0
    p2 = pool.copy()
    p2.swap(direction, amount)
    assert abs(p2.price / (pool.price * 1.01) - 1) < 1e-3
    min_out = int(pool.quote(True, 10**19) * 0.98)
    room = pool.max_front_run(True, 10**19, min_out)
    p3 = pool.copy()
    p3.swap(True, room)
    assert p3.quote(True, 10**19) >= min_out
    p4 = pool.copy()
    p4.swap(True, room + 10**17)
    assert p4.quote(True, 10**19) < min_out


def test_settings_from_toml_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "sim.toml"
    f.write_text(
        "[simulator]\nseed = 9\nbots_start_s = 5.0\n[simulator.humans]\ncount = 3\n"
        "[simulator.sybil]\nfarms = 2\nwallets = [3, 4]\n"
    )
    cfg = SimConfig.load(f, seed=None, speed=3.0)
    assert (cfg.seed, cfg.humans.count, cfg.sybil.farms, cfg.speed) == (9, 3, 2, 3.0)
    plan = Plan(cfg, DEP)
    assert len([a for a in plan.actors if a.label == "sybil"]) == 2
    with pytest.raises(ValueError, match="humans.mix"):
        SimConfig.load(None, humans={"mix": {"eth": 1.0, "teleport": 1.0}})
    base = SimConfig().without_bots()
    assert {a.label for a in Plan(base, DEP).actors} == {LABEL_NORMAL}
