"""NodeRegistry on a real anvil chain: roles, stake, settlement, throttle, slashing."""

from __future__ import annotations

from typing import Any

import pytest
from web3 import Web3
from web3.exceptions import ContractCustomError

from pipelines.chain.contracts import TransactionFailed, decode_custom_error
from pipelines.node_side import registration_record

from .conftest import CHALLENGE_BLOCKS, ETH, MIN_STAKE, Actor, Chain, evidence, new_node

pytestmark = pytest.mark.integration

MONITOR_ROLE = Web3.keccak(text="MONITOR_ROLE")
GOVERNANCE_ROLE = Web3.keccak(text="GOVERNANCE_ROLE")
ADMIN_ROLE = Web3.keccak(text="ADMIN_ROLE")

PENDING, VETOED, EXECUTED = 1, 2, 3


def register(chain: Chain, operator: Actor, stake: int = MIN_STAKE, url: str = "http://n") -> str:
    node = new_node()
    chain.send(operator, chain.registry.functions.registerNode(node, url), value=stake)
    return node


def throttled(chain: Chain, account: str, blocks: int = 50, level: int = 2) -> bytes:
    ev = evidence()
    fn = chain.registry.functions.throttle(account, level, chain.block + blocks, ev)
    chain.send(chain.monitor, fn)
    return ev


def proposal(chain: Chain, pid: int) -> tuple[Any, ...]:
    return tuple(chain.registry.functions.getProposal(pid).call())


# ---------------------------------------------------------------- deployment and roles


def test_deployment_state(chain: Chain) -> None:
    f = chain.registry.functions
    assert f.admin().call() == chain.admin.address
    assert f.challengePeriodBlocks().call() == CHALLENGE_BLOCKS
    assert f.minStake().call() == MIN_STAKE
    assert bytes(f.MONITOR_ROLE().call()) == MONITOR_ROLE
    assert f.hasRole(MONITOR_ROLE, chain.monitor.address).call()
    assert f.hasRole(GOVERNANCE_ROLE, chain.governance.address).call()
    assert f.hasRole(ADMIN_ROLE, chain.admin.address).call()
    assert not f.hasRole(MONITOR_ROLE, chain.governance.address).call()
    assert not f.hasRole(GOVERNANCE_ROLE, chain.monitor.address).call()


def test_role_gated_functions_reject_unauthorised_callers(chain: Chain) -> None:
    f = chain.registry.functions
    node = register(chain, chain.operator)
    someone = new_node()
    ev = evidence()
    until = chain.block + 100
    monitor_only = [
        f.throttle(someone, 1, until, ev),
        f.unthrottle(someone, ev),
        f.proposeSlash(node, 1, ev),
    ]
    governance_only = [
        f.pardon(someone),
        f.veto(0),
        f.executeSlash(0),
        f.sweepSlashed(someone, 1),
    ]
    admin_only = [
        f.grantRole(MONITOR_ROLE, someone),
        f.revokeRole(MONITOR_ROLE, chain.monitor.address),
        f.transferAdmin(someone),
    ]
    # Outsiders, and the holders of the *other* roles, are all refused.
    for fn in monitor_only:
        for who in (chain.outsider, chain.governance, chain.admin, chain.operator):
            chain.expect_error(fn, who, "Unauthorized", MONITOR_ROLE, who.address)
    for fn in governance_only:
        for who in (chain.outsider, chain.monitor, chain.admin, chain.operator):
            chain.expect_error(fn, who, "Unauthorized", GOVERNANCE_ROLE, who.address)
    for fn in admin_only:
        for who in (chain.outsider, chain.monitor, chain.governance):
            chain.expect_error(fn, who, "Unauthorized", ADMIN_ROLE, who.address)
    # Operator-gated node functions refuse anyone but the node's operator.
    operator_only = [
        (f.addStake(node), ETH),
        (f.settleUsage(node, 10, evidence()), 0),
        (f.updateUrl(node, "http://other"), 0),
        (f.deregisterNode(node), 0),
        (f.withdrawStake(node), 0),
    ]
    for fn, value in operator_only:
        for who in (chain.operator2, chain.monitor, chain.admin):
            chain.expect_error(fn, who, "NotOperator", node, who.address, value=value)
    # A mined transaction from an outsider reverts too (not just the eth_call).
    with pytest.raises(TransactionFailed) as info:
        chain.send(chain.outsider, f.throttle(someone, 1, until, ev), gas=200_000)
    assert info.value.receipt["status"] == 0
    assert not f.evidenceUsed(ev).call()


def test_admin_grants_and_revokes_roles(chain: Chain) -> None:
    reg = chain.deploy()
    chain.registry, saved = reg, chain.registry
    try:
        f = reg.functions
        deputy = chain.outsider
        target = new_node()
        receipt = chain.send(chain.admin, f.grantRole(MONITOR_ROLE, deputy.address))
        (granted,) = chain.events(receipt, "RoleGranted")
        assert granted.args.role == MONITOR_ROLE
        assert granted.args.account == deputy.address
        assert granted.args.sender == chain.admin.address
        chain.send(deputy, f.throttle(target, 1, chain.block + 10, evidence()))

        receipt = chain.send(chain.admin, f.revokeRole(MONITOR_ROLE, deputy.address))
        assert len(chain.events(receipt, "RoleRevoked")) == 1
        chain.expect_error(
            f.throttle(target, 1, chain.block + 10, evidence()),
            deputy,
            "Unauthorized",
            MONITOR_ROLE,
            deputy.address,
        )
        for role in (ADMIN_ROLE, b"\x07" * 32):
            chain.expect_error(f.grantRole(role, deputy.address), chain.admin, "InvalidRole", role)
        chain.expect_error(f.grantRole(MONITOR_ROLE, "0x" + "00" * 20), chain.admin, "ZeroAddress")

        receipt = chain.send(chain.admin, f.transferAdmin(chain.operator2.address))
        assert chain.events(receipt, "AdminTransferred")[0].args.newAdmin == chain.operator2.address
        assert f.admin().call() == chain.operator2.address
        chain.expect_error(
            f.grantRole(MONITOR_ROLE, deputy.address),
            chain.admin,
            "Unauthorized",
            ADMIN_ROLE,
            chain.admin.address,
        )
    finally:
        chain.registry = saved


def test_constructor_rejects_zero_challenge_period(chain: Chain) -> None:
    with pytest.raises(ContractCustomError) as info:  # raised by the gas estimate
        chain.deploy(challenge_blocks=0)
    assert decode_custom_error(chain.artifact.abi, info.value.data) == (
        "InvalidChallengePeriod",
        (),
    )


# ---------------------------------------------------------------- nodes


def test_registration_requires_min_stake(chain: Chain) -> None:
    f = chain.registry.functions
    op = chain.operator2
    node = new_node()
    chain.expect_error(
        f.registerNode(node, "http://n"),
        op,
        "InsufficientStake",
        MIN_STAKE - 1,
        MIN_STAKE,
        value=MIN_STAKE - 1,
    )
    chain.expect_error(f.registerNode(node, "http://n"), op, "InsufficientStake", 0, MIN_STAKE)
    chain.expect_error(f.registerNode(node, ""), op, "InvalidUrl", 0, value=MIN_STAKE)
    chain.expect_error(f.registerNode(node, "x" * 513), op, "InvalidUrl", 513, value=MIN_STAKE)
    chain.expect_error(
        f.registerNode("0x" + "00" * 20, "http://n"), op, "ZeroAddress", value=MIN_STAKE
    )

    count_before = f.nodeCount().call()
    receipt = chain.send(op, f.registerNode(node, "http://node-a:8000"), value=2 * ETH)
    (ev,) = chain.events(receipt, "NodeRegistered")
    assert (ev.args.node, ev.args.operator, ev.args.stake, ev.args.url) == (
        node,
        op.address,
        2 * ETH,
        "http://node-a:8000",
    )
    operator, stake, url, registered_block, active = f.nodeInfo(node).call()
    assert (operator, stake, url, active) == (op.address, 2 * ETH, "http://node-a:8000", True)
    assert registered_block == receipt["blockNumber"]
    chain.expect_error(
        f.registerNode(node, "http://n"), chain.operator, "NodeAlreadyRegistered", node, value=ETH
    )

    # One operator may run several nodes (sybil drills rely on this).
    node2 = register(chain, op)
    assert f.nodesOf(op.address).call()[-2:] == [node, node2]
    assert f.nodeCount().call() == count_before + 2
    assert f.nodeAt(count_before).call() == node
    unknown = new_node()
    assert f.nodeInfo(unknown).call()[0] == "0x" + "00" * 20


def test_add_stake_and_update_url(chain: Chain) -> None:
    f = chain.registry.functions
    node = register(chain, chain.operator)
    total_before = f.totalStaked().call()
    receipt = chain.send(chain.operator, f.addStake(node), value=ETH // 2)
    (ev,) = chain.events(receipt, "StakeAdded")
    assert ev.args.amount == ETH // 2
    assert ev.args.newStake == MIN_STAKE + ETH // 2
    assert f.nodeInfo(node).call()[1] == MIN_STAKE + ETH // 2
    assert f.totalStaked().call() == total_before + ETH // 2
    chain.expect_error(f.addStake(node), chain.operator, "ZeroAmount")
    chain.expect_error(f.addStake(new_node()), chain.operator, "NodeNotRegistered", value=1)

    receipt = chain.send(chain.operator, f.updateUrl(node, "https://moved"))
    assert chain.events(receipt, "NodeUrlUpdated")[0].args.url == "https://moved"
    assert f.nodeInfo(node).call()[2] == "https://moved"


# ---------------------------------------------------------------- usage settlement


def test_settlement_events_and_totals(chain: Chain) -> None:
    f = chain.registry.functions
    op = chain.operator
    node = register(chain, op)
    units_before = f.totalUnitsSettled().call()
    count_before = f.settlementCount().call()
    commitments = [evidence(), evidence(), evidence()]
    for i, (units, com) in enumerate(zip((120, 7, 3000), commitments, strict=True), start=1):
        receipt = chain.send(op, f.settleUsage(node, units, com))
        (ev,) = chain.events(receipt, "UsageSettled")
        assert ev.args.node == node
        assert ev.args.operator == op.address
        assert ev.args.period == i
        assert ev.args.units == units
        assert ev.args.commitment == com
    last_period, total_units, last_commitment, pending, slashed = f.nodeAccounting(node).call()
    assert (last_period, total_units, last_commitment) == (3, 3127, commitments[-1])
    assert (pending, slashed) == (0, 0)
    assert f.totalUnitsSettled().call() == units_before + 3127
    assert f.settlementCount().call() == count_before + 3

    # The settle call reports the period it settled.
    assert f.settleUsage(node, 1, evidence()).call({"from": op.address}) == 4
    # Periods are per node.
    other = register(chain, op)
    receipt = chain.send(op, f.settleUsage(other, 5, evidence()))
    assert chain.events(receipt, "UsageSettled")[0].args.period == 1
    # Logs are queryable by indexed node.
    logs = chain.registry.events.UsageSettled().get_logs(
        from_block=0, argument_filters={"node": node}
    )
    assert [lg.args.period for lg in logs] == [1, 2, 3]

    chain.expect_error(f.settleUsage(node, 0, evidence()), op, "ZeroAmount")
    unknown = new_node()
    chain.expect_error(f.settleUsage(unknown, 1, evidence()), op, "NodeNotRegistered", unknown)


# ---------------------------------------------------------------- throttling


def test_throttle_expires_after_until_block(chain: Chain) -> None:
    f = chain.registry.functions
    bot = new_node()
    ev = evidence()
    until = chain.block + 4
    assert f.throttleOf(bot).call() == [0, 0]
    assert not f.evidenceUsed(ev).call()
    receipt = chain.send(chain.monitor, f.throttle(bot, 3, until, ev))
    (t,) = chain.events(receipt, "Throttled")
    assert (t.args.account, t.args.level, t.args.untilBlock, t.args.evidenceHash) == (
        bot,
        3,
        until,
        ev,
    )
    assert f.throttleOf(bot).call() == [3, until]
    assert f.evidenceUsed(ev).call()

    chain.mine(until - chain.block)  # latest == untilBlock: still in force
    assert chain.block == until
    assert f.throttleOf(bot).call() == [3, until]
    assert f.throttleOf(bot).call(block_identifier="pending") == [0, 0]
    chain.mine(1)
    assert f.throttleOf(bot).call() == [0, 0]
    # ...and history still shows it.
    assert f.throttleOf(bot).call(block_identifier=until) == [3, until]


def test_throttle_validation(chain: Chain) -> None:
    f = chain.registry.functions
    bot = new_node()
    now = chain.block
    m = chain.monitor
    chain.expect_error(f.throttle(bot, 0, now + 10, evidence()), m, "InvalidThrottle", 0, now + 10)
    # untilBlock must be after the block the transaction runs in.
    chain.expect_error(
        f.throttle(bot, 1, now + 1, evidence()), m, "InvalidThrottle", block="pending"
    )
    chain.expect_error(f.throttle(bot, 1, now + 10, b"\x00" * 32), m, "ZeroEvidence")
    chain.expect_error(f.throttle("0x" + "00" * 20, 1, now + 10, evidence()), m, "ZeroAddress")


def test_nodes_can_be_throttled_and_rethrottled(chain: Chain) -> None:
    f = chain.registry.functions
    node = register(chain, chain.operator)
    throttled(chain, node, blocks=20, level=1)
    assert f.throttleOf(node).call()[0] == 1
    until = chain.block + 40
    chain.send(chain.monitor, f.throttle(node, 4, until, evidence()))  # escalation replaces
    assert f.throttleOf(node).call() == [4, until]


def test_evidence_hash_is_single_use_across_actions(chain: Chain) -> None:
    f = chain.registry.functions
    m = chain.monitor
    bot = new_node()
    node = register(chain, chain.operator, stake=3 * ETH)
    ev = throttled(chain, bot)
    until = chain.block + 50
    chain.expect_error(f.throttle(bot, 2, until, ev), m, "EvidenceAlreadyUsed", ev)
    chain.expect_error(f.throttle(new_node(), 2, until, ev), m, "EvidenceAlreadyUsed", ev)
    chain.expect_error(f.unthrottle(bot, ev), m, "EvidenceAlreadyUsed", ev)
    chain.expect_error(f.proposeSlash(node, ETH, ev), m, "EvidenceAlreadyUsed", ev)

    ev2 = evidence()
    chain.send(m, f.proposeSlash(node, ETH, ev2))
    chain.expect_error(f.throttle(bot, 2, until, ev2), m, "EvidenceAlreadyUsed", ev2)
    chain.expect_error(f.proposeSlash(node, ETH, ev2), m, "EvidenceAlreadyUsed", ev2)
    # A replayed transaction is mined as a revert and changes nothing.
    before = f.throttleOf(bot).call()
    with pytest.raises(TransactionFailed):
        chain.send(m, f.throttle(bot, 9, until, ev), gas=200_000)
    assert f.throttleOf(bot).call() == before


def test_unthrottle_by_monitor(chain: Chain) -> None:
    f = chain.registry.functions
    bot = new_node()
    throttled(chain, bot)
    ev = evidence()
    receipt = chain.send(chain.monitor, f.unthrottle(bot, ev))
    (u,) = chain.events(receipt, "Unthrottled")
    assert (u.args.account, u.args.evidenceHash, u.args.monitor) == (
        bot,
        ev,
        chain.monitor.address,
    )
    assert f.throttleOf(bot).call() == [0, 0]
    assert f.evidenceUsed(ev).call()
    chain.expect_error(f.unthrottle(bot, evidence()), chain.monitor, "NotThrottled", bot)


def test_pardon_by_governance(chain: Chain) -> None:
    f = chain.registry.functions
    bot = new_node()
    throttled(chain, bot, level=5)
    receipt = chain.send(chain.governance, f.pardon(bot))
    (p,) = chain.events(receipt, "Pardoned")
    assert (p.args.account, p.args.governance, p.args.previousLevel) == (
        bot,
        chain.governance.address,
        5,
    )
    assert f.throttleOf(bot).call() == [0, 0]
    chain.expect_error(f.pardon(bot), chain.governance, "NotThrottled", bot)
    # Expired throttles cannot be pardoned either.
    throttled(chain, bot, blocks=2)
    chain.mine(3)
    chain.expect_error(f.pardon(bot), chain.governance, "NotThrottled", bot)


# ---------------------------------------------------------------- slashing


def test_slash_vetoed_in_challenge_period(chain: Chain) -> None:
    f = chain.registry.functions
    node = register(chain, chain.operator, stake=3 * ETH)
    ev = evidence()
    chain.expect_error(
        f.proposeSlash(node, 3 * ETH + 1, ev),
        chain.monitor,
        "SlashExceedsStake",
        3 * ETH + 1,
        3 * ETH,
    )
    chain.expect_error(f.proposeSlash(node, 0, ev), chain.monitor, "ZeroAmount")
    unknown = new_node()
    chain.expect_error(f.proposeSlash(unknown, 1, ev), chain.monitor, "NodeNotRegistered", unknown)

    pid = f.proposeSlash(node, 2 * ETH, ev).call({"from": chain.monitor.address})
    receipt = chain.send(chain.monitor, f.proposeSlash(node, 2 * ETH, ev))
    proposed_block = receipt["blockNumber"]
    end = proposed_block + CHALLENGE_BLOCKS
    (sp,) = chain.events(receipt, "SlashProposed")
    assert (sp.args.id, sp.args.node, sp.args.amount, sp.args.evidenceHash) == (
        pid,
        node,
        2 * ETH,
        ev,
    )
    assert sp.args.challengeEndBlock == end
    assert proposal(chain, pid) == (
        node,
        2 * ETH,
        ev,
        chain.monitor.address,
        proposed_block,
        end,
        PENDING,
    )
    assert f.proposalCount().call() == pid + 1
    # Stake under a pending slash cannot be proposed twice.
    assert f.nodeAccounting(node).call()[3] == 2 * ETH
    chain.expect_error(
        f.proposeSlash(node, 2 * ETH, evidence()),
        chain.monitor,
        "SlashExceedsStake",
        2 * ETH,
        ETH,
    )

    chain.mine(end - 1 - chain.block)  # the veto will run in block `end`, the last one allowed
    receipt = chain.send(chain.governance, f.veto(pid))
    assert receipt["blockNumber"] == end
    (v,) = chain.events(receipt, "SlashVetoed")
    assert (v.args.id, v.args.node, v.args.governance) == (pid, node, chain.governance.address)
    assert proposal(chain, pid)[6] == VETOED
    assert f.nodeAccounting(node).call()[3] == 0

    chain.mine(CHALLENGE_BLOCKS + 1)
    chain.expect_error(f.executeSlash(pid), chain.governance, "ProposalNotPending", pid, VETOED)
    chain.expect_error(f.veto(pid), chain.governance, "ProposalNotPending", pid, VETOED)
    assert f.nodeInfo(node).call()[1] == 3 * ETH
    chain.expect_error(f.getProposal(10**6), chain.outsider, "UnknownProposal", 10**6)
    chain.expect_error(f.veto(10**6), chain.governance, "UnknownProposal", 10**6)


def test_slash_executes_only_after_challenge_period(chain: Chain) -> None:
    f = chain.registry.functions
    g = chain.governance
    node = register(chain, chain.operator, stake=3 * ETH)
    total_staked = f.totalStaked().call()
    slashed_before = f.slashedBalance().call()
    ev = evidence()
    receipt = chain.send(chain.monitor, f.proposeSlash(node, ETH, ev))
    pid = chain.events(receipt, "SlashProposed")[0].args.id
    end = receipt["blockNumber"] + CHALLENGE_BLOCKS

    chain.expect_error(f.executeSlash(pid), g, "ChallengePeriodActive", pid, end)
    chain.mine(end - 1 - chain.block)
    # The next transaction runs in block `end`: still inside the period.
    chain.expect_error(f.executeSlash(pid), g, "ChallengePeriodActive", pid, end, block="pending")
    with pytest.raises(TransactionFailed):  # mined in block `end`, so it reverts
        chain.send(g, f.executeSlash(pid), gas=300_000)
    assert chain.block == end
    # Now the next block is end + 1: veto is over, execution allowed.
    chain.expect_error(f.veto(pid), g, "ChallengePeriodOver", pid, end, block="pending")
    receipt = chain.send(g, f.executeSlash(pid))
    assert receipt["blockNumber"] == end + 1
    (ex,) = chain.events(receipt, "SlashExecuted")
    assert (ex.args.id, ex.args.node, ex.args.amount, ex.args.remainingStake) == (
        pid,
        node,
        ETH,
        2 * ETH,
    )
    assert proposal(chain, pid)[6] == EXECUTED
    assert f.nodeInfo(node).call()[1] == 2 * ETH
    assert f.nodeAccounting(node).call()[3:] == [0, ETH]
    assert f.totalStaked().call() == total_staked - ETH
    assert f.slashedBalance().call() == slashed_before + ETH

    chain.expect_error(f.executeSlash(pid), g, "ProposalNotPending", pid, EXECUTED)
    with pytest.raises(TransactionFailed):
        chain.send(g, f.executeSlash(pid), gas=300_000)
    assert f.nodeInfo(node).call()[1] == 2 * ETH

    # Slashed funds go to a treasury when governance sweeps them.
    treasury = new_node()
    balance = f.slashedBalance().call()
    chain.expect_error(
        f.sweepSlashed(treasury, balance + 1), g, "InsufficientSlashedBalance", balance + 1, balance
    )
    receipt = chain.send(g, f.sweepSlashed(treasury, ETH))
    assert chain.events(receipt, "SlashedFundsSwept")[0].args.amount == ETH
    assert chain.balance(treasury) == ETH
    assert f.slashedBalance().call() == balance - ETH
    assert f.totalSlashed().call() >= ETH


def test_deregister_and_withdraw_respect_unbonding_and_pending_slashes(chain: Chain) -> None:
    f = chain.registry.functions
    op = chain.operator2
    node = register(chain, op, stake=2 * ETH)
    chain.expect_error(f.withdrawStake(node), op, "NodeStillActive", node)
    pid = f.proposalCount().call()
    chain.send(chain.monitor, f.proposeSlash(node, ETH, evidence()))

    receipt = chain.send(op, f.deregisterNode(node))
    withdrawable = receipt["blockNumber"] + CHALLENGE_BLOCKS
    (ev,) = chain.events(receipt, "NodeDeregistered")
    assert ev.args.withdrawableBlock == withdrawable
    # the worker's registry watch reads it as the node leaving service
    assert registration_record(ev, 0.0).kind == "deregistered"
    assert registration_record(ev, 0.0).node == node.lower()
    assert f.nodeInfo(node).call()[4] is False
    chain.expect_error(f.settleUsage(node, 1, evidence()), op, "NodeInactive", node)
    chain.expect_error(f.addStake(node), op, "NodeInactive", node, value=1)
    chain.expect_error(f.deregisterNode(node), op, "NodeInactive", node)
    chain.expect_error(f.withdrawStake(node), op, "StillUnbonding", node, withdrawable)

    chain.mine(CHALLENGE_BLOCKS + 1)
    chain.expect_error(f.withdrawStake(node), op, "SlashPending", node, ETH)
    chain.send(chain.governance, f.executeSlash(pid))  # the node cannot escape the slash

    balance = chain.balance(op.address)
    receipt = chain.send(op, f.withdrawStake(node))
    (w,) = chain.events(receipt, "StakeWithdrawn")
    assert w.args.amount == ETH
    fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert chain.balance(op.address) == balance + ETH - fee
    assert f.nodeInfo(node).call()[1] == 0
    chain.expect_error(f.withdrawStake(node), op, "ZeroAmount")
    chain.expect_error(
        f.proposeSlash(node, 1, evidence()), chain.monitor, "SlashExceedsStake", 1, 0
    )
