"""The enforcer against a real anvil chain: exactly once across crashes, governance
veto and execution, throttle/unthrottle, retries, dry run and refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from detector.evidence import evidence_hash
from detector.policy import ActionKind, ActionLadder, EnforcementState, Incident, Severity
from pipelines.chain.contracts import decode_custom_error
from pipelines.chain.enforcer import (
    ActionResult,
    EnforcementError,
    EnforcementRejected,
    NonceManager,
)
from tests.enforcement.conftest import CHALLENGE_BLOCKS, ETH, Chain

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing catches it."""


def ev() -> str:
    return "0x" + os.urandom(32).hex()


def monitor_nonce(chain: Chain, block: str = "latest") -> int:
    return int(
        chain.w3.eth.get_transaction_count(Account.from_key(chain.monitor_key).address, block)
    )  # type: ignore[arg-type]


def test_propose_slash_exactly_once_across_a_crash_before_recording(chain: Chain) -> None:
    node = chain.register_node(10 * ETH)
    h = ev()
    before = chain.registry.functions.proposalCount().call()
    nonce0 = monitor_nonce(chain)

    first = chain.enforcer()
    real_wait = first.w3.eth.wait_for_transaction_receipt

    def crash_after_send(*a: Any, **kw: Any) -> Any:
        real_wait(*a, **kw)  # mined...
        raise Crash  # ...but the process dies before anything is recorded

    first.w3.eth.wait_for_transaction_receipt = crash_after_send  # type: ignore[method-assign]
    with pytest.raises(Crash):
        first.propose_slash(node, 2 * ETH, h)
    assert chain.registry.functions.proposalCount().call() == before + 1

    restarted = chain.enforcer()
    again = restarted.propose_slash(node, 2 * ETH, h)
    assert again.status == "already_onchain"
    assert again.kind == "slash_proposal" and again.proposal_id == before
    assert again.tx_hash.startswith("0x") and again.block_number > 0
    assert restarted.propose_slash(node, 3 * ETH, h).tx_hash == again.tx_hash
    assert chain.registry.functions.proposalCount().call() == before + 1
    assert monitor_nonce(chain) == nonce0 + 1  # one transaction in all
    p = restarted.proposal(before)
    assert (p.node, p.amount_wei, p.evidence_hash, p.state) == (node, 2 * ETH, h, "pending")
    # the evidence is spent for every action kind, not just slashes
    assert restarted.throttle(node, 1, chain.block + 10, h).status == "already_onchain"
    assert chain.registry.functions.throttleOf(node).call() == [0, 0]


_CHILD = """
import json, logging, sys
from eth_account import Account
from web3 import Web3
from pipelines.chain.enforcer import Enforcer
url, address, abi_path, key, node, amount, ev = sys.argv[1:]
logging.basicConfig(level=logging.INFO)
w3 = Web3(Web3.HTTPProvider(url))
reg = w3.eth.contract(address=address, abi=json.load(open(abi_path)))
print("decided", flush=True)
Enforcer(w3, reg, Account.from_key(key), receipt_timeout_s=600).propose_slash(node, int(amount), ev)
print("recorded", flush=True)
"""


def test_killed_worker_between_decided_and_mined_leads_to_one_action(
    chain: Chain, tmp_path: Path
) -> None:
    """A real enforcement process is SIGKILLed with its transaction still in the mempool;
    the restarted enforcer waits for that transaction instead of sending another."""
    node = chain.register_node(10 * ETH)
    h = ev()
    abi_path = tmp_path / "abi.json"
    abi_path.write_text(json.dumps(chain.artifact.abi))
    before = chain.registry.functions.proposalCount().call()
    nonce0 = monitor_nonce(chain)
    chain.automine(False)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, chain.url, chain.address, str(abi_path)]
        + [chain.monitor_key, node, str(ETH), h],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while monitor_nonce(chain, "pending") == nonce0:
            assert child.poll() is None, child.stdout.read() if child.stdout else ""
            assert time.monotonic() < deadline, "the child never sent its transaction"
            time.sleep(0.1)
        child.kill()  # decided and sent, not mined, nothing recorded
        child.wait(timeout=10)
        assert chain.registry.functions.proposalCount().call() == before

        timer = threading.Timer(1.0, chain.mine)
        timer.start()
        result = chain.enforcer(sleep=time.sleep).propose_slash(node, ETH, h)
        timer.join()
    finally:
        if child.poll() is None:
            child.kill()
        chain.mine()
        chain.automine(True)
    assert result.status == "already_onchain" and result.proposal_id == before
    assert chain.registry.functions.proposalCount().call() == before + 1
    assert monitor_nonce(chain) == nonce0 + 1
    tx = chain.w3.eth.get_transaction(result.tx_hash)  # type: ignore[arg-type]
    assert tx["nonce"] == nonce0


def test_governance_veto_stops_a_slash(chain: Chain) -> None:
    node = chain.register_node(10 * ETH)
    enf = chain.enforcer()
    h = ev()
    r = enf.propose_slash(node, 4 * ETH, h)
    assert r.status == "mined" and r.proposal_id is not None
    assert enf.chain_view(node).stake_available_wei == 6 * ETH
    f = chain.registry.functions
    chain.governance(f.veto(r.proposal_id))
    p = enf.proposal(r.proposal_id)
    assert p.state == "vetoed"
    assert enf.chain_view(node).stake_available_wei == 10 * ETH
    chain.mine(CHALLENGE_BLOCKS + 1)
    with pytest.raises(Exception) as info:
        f.executeSlash(r.proposal_id).call({"from": Account.from_key(chain.governance_key).address})
    decoded = decode_custom_error(chain.artifact.abi, getattr(info.value, "data", None))
    assert decoded is not None and decoded[0] == "ProposalNotPending"
    assert f.nodeInfo(node).call()[1] == 10 * ETH  # stake untouched
    # the vetoed evidence cannot be reused for another proposal
    assert enf.propose_slash(node, ETH, h).status == "already_onchain"
    assert f.proposalCount().call() == r.proposal_id + 1


def test_governance_executes_a_slash_after_the_challenge_period(chain: Chain) -> None:
    node = chain.register_node(10 * ETH)
    enf = chain.enforcer()
    r = enf.propose_slash(node, 3 * ETH, ev())
    assert r.proposal_id is not None
    p = enf.proposal(r.proposal_id)
    assert p.challenge_end_block == r.block_number + CHALLENGE_BLOCKS
    chain.mine(p.challenge_end_block - chain.block)  # next block is end + 1
    chain.governance(chain.registry.functions.executeSlash(r.proposal_id))
    assert enf.proposal(r.proposal_id).state == "executed"
    assert chain.registry.functions.nodeInfo(node).call()[1] == 7 * ETH
    assert enf.chain_view(node).stake_available_wei == 7 * ETH


def test_ladder_throttles_escalates_and_unthrottles_on_chain(chain: Chain) -> None:
    bot = str(Account.create().address)
    enf = chain.enforcer()
    ladder = ActionLadder(cooldown_s=60, recovery_s=600, base_blocks=50)
    state = EnforcementState()

    def inc(at: float, n: int) -> Incident:
        h = evidence_hash({"bot": bot, "n": n})
        return Incident(f"i{n}", bot, "bot", Severity.HIGH, h, at, ("tx_iforest",))

    state, d = ladder.decide(state, inc(1000, 0), enf.chain_view(bot))
    assert d.kind is ActionKind.THROTTLE
    r = enf.apply(d)
    assert r is not None and r.status == "mined" and r.kind == "throttle"
    assert enf.throttle_state(bot) == (1, d.until_block)
    assert enf.apply(d) == ActionResult(
        "throttle", bot, d.evidence_hash, "already_onchain", r.tx_hash, r.block_number
    )

    state, d2 = ladder.decide(state, inc(1100, 1), enf.chain_view(bot))
    assert d2.kind is ActionKind.THROTTLE and d2.level == 2
    assert enf.apply(d2) is not None and enf.throttle_state(bot)[0] == 2

    state, none = ladder.recover(state, bot, 1500, enf.chain_view(bot))
    assert none is None
    state, up = ladder.recover(state, bot, 1800, enf.chain_view(bot))
    assert up is not None and up.kind is ActionKind.UNTHROTTLE
    r_up = enf.apply(up)
    assert r_up is not None and r_up.status == "mined" and r_up.kind == "unthrottle"
    assert enf.throttle_state(bot) == (0, 0)
    assert enf.unthrottle(bot, up.evidence_hash).status == "already_onchain"
    assert enf.find_action(up.evidence_hash) is not None
    assert enf.unthrottle(bot, ev()).status == "not_throttled"
    # relapse after the unthrottle: the ladder remembers, throttle #3 is level 3
    state, d3 = ladder.decide(state, inc(1900, 2), enf.chain_view(bot))
    assert d3.kind is ActionKind.THROTTLE and d3.level == 3
    assert enf.apply(d3) is not None and enf.throttle_state(bot)[0] == 3
    # inside the cooldown: observed, and observing sends nothing
    state, obs = ladder.decide(state, inc(1910, 3), enf.chain_view(bot))
    assert obs.kind is ActionKind.OBSERVE and enf.apply(obs) is None


def test_unauthorised_sender_is_refused_without_retries(chain: Chain) -> None:
    sleeps: list[float] = []
    outsider = chain.enforcer(key=chain.operator_key, sleep=sleeps.append)
    with pytest.raises(EnforcementRejected) as info:
        outsider.throttle(str(Account.create().address), 1, chain.block + 10, ev())
    assert info.value.error == "Unauthorized" and sleeps == []
    node = chain.register_node(2 * ETH)
    with pytest.raises(EnforcementRejected, match="SlashExceedsStake"):
        chain.enforcer().propose_slash(node, 3 * ETH, ev())


def test_transient_errors_are_retried_with_backoff_then_give_up(chain: Chain) -> None:
    sleeps: list[float] = []
    enf = chain.enforcer(sleep=sleeps.append, backoff_s=0.5, max_attempts=3)
    real_send = enf.w3.eth.send_raw_transaction
    failures = {"left": 1}

    def flaky(raw: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("connection reset by peer")
        return real_send(raw)

    enf.w3.eth.send_raw_transaction = flaky  # type: ignore[method-assign]
    bot = str(Account.create().address)
    r = enf.throttle(bot, 1, chain.block + 20, ev())
    assert r.status == "mined" and sleeps == [0.5]

    failures["left"] = 10
    nonce = monitor_nonce(chain)
    with pytest.raises(EnforcementError, match="after 3 attempts"):
        enf.throttle(bot, 2, chain.block + 20, ev())
    assert sleeps == [0.5, 0.5, 1.0]
    assert monitor_nonce(chain) == nonce  # nothing was sent, no nonce burnt
    enf.w3.eth.send_raw_transaction = real_send  # type: ignore[method-assign]
    assert enf.throttle(bot, 2, chain.block + 20, ev()).status == "mined"


def test_concurrent_sends_get_distinct_nonces(chain: Chain) -> None:
    enf = chain.enforcer()
    bots = [str(Account.create().address) for _ in range(4)]
    results: list[ActionResult] = []
    errors: list[BaseException] = []

    def go(bot: str) -> None:
        try:
            results.append(enf.throttle(bot, 1, chain.block + 50, ev()))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(b,)) for b in bots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(r.status for r in results) == ["mined"] * 4
    nonces = {chain.w3.eth.get_transaction(r.tx_hash)["nonce"] for r in results}  # type: ignore[arg-type]
    assert len(nonces) == 4


def test_dry_run_sends_nothing(chain: Chain) -> None:
    enf = chain.enforcer(dry_run=True)
    node = chain.register_node(2 * ETH)
    nonce = monitor_nonce(chain)
    assert enf.propose_slash(node, ETH, ev()).status == "dry_run"
    assert enf.throttle(node, 1, chain.block + 5, ev()).status == "dry_run"
    assert monitor_nonce(chain) == nonce
    view = enf.chain_view(node)
    assert view.is_node and view.stake_available_wei == 2 * ETH and not view.throttled
    assert not enf.chain_view(str(Account.create().address)).is_node


def test_action_log_answers_before_the_event_scan(chain: Chain) -> None:
    enf = chain.enforcer()
    bot = str(Account.create().address)
    h = ev()
    mined = enf.throttle(bot, 1, chain.block + 5, h)

    class Log:
        calls = 0

        def lookup(self, evidence_hash: str) -> ActionResult | None:
            Log.calls += 1
            return mined if evidence_hash == h else None

    enf2 = chain.enforcer(action_log=Log())
    again = enf2.throttle(bot, 1, chain.block + 5, h)
    assert Log.calls == 1 and again.tx_hash == mined.tx_hash and again.status == "already_onchain"
    assert Web3.is_address(again.target)


def test_nonce_manager_survives_restarts_and_failed_sends(chain: Chain, tmp_path: Path) -> None:
    addr = Account.from_key(chain.monitor_key).address
    nm = NonceManager(chain.fresh_w3(), addr, tmp_path / "locks" / "monitor.lock")
    start = monitor_nonce(chain, "pending")
    with pytest.raises(RuntimeError), nm.reserve() as n:
        assert n == start
        raise RuntimeError("node refused the transaction")
    with nm.reserve() as n:  # not consumed by the failed send
        assert n == start
    with nm.reserve() as n:  # the local floor covers an endpoint that lags behind
        assert n == start + 1
    nm.reset()
    with nm.reserve() as n:
        assert n == start
    restarted = NonceManager(chain.fresh_w3(), addr, tmp_path / "locks" / "monitor.lock")
    with restarted.reserve() as n:
        assert n == start
    assert (tmp_path / "locks" / "monitor.lock").exists()
