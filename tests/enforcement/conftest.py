"""A real anvil chain with NodeRegistry deployed; roles as in the embedded stack."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from pipelines.chain.anvil import DEV_ACCOUNTS, start_anvil
from pipelines.chain.contracts import (
    Artifact,
    compile_project,
    deploy_node_registry,
    node_registry,
    transact,
)
from pipelines.chain.enforcer import Enforcer
from pipelines.procs import free_port

CHALLENGE_BLOCKS = 5
ETH = 10**18


@dataclass
class Chain:
    url: str
    w3: Web3
    artifact: Artifact
    registry: Any
    address: str

    admin_key: str = DEV_ACCOUNTS[0][1]
    monitor_key: str = DEV_ACCOUNTS[1][1]
    governance_key: str = DEV_ACCOUNTS[2][1]
    operator_key: str = DEV_ACCOUNTS[3][1]

    def fresh_w3(self) -> Web3:
        """A separate connection (a restarted process has its own)."""
        return Web3(Web3.HTTPProvider(self.url, request_kwargs={"timeout": 30}))

    def enforcer(self, key: str | None = None, **kw: Any) -> Enforcer:
        w3 = self.fresh_w3()
        reg = node_registry(w3, self.address, self.artifact)
        acct = Account.from_key(key or self.monitor_key)
        kw.setdefault("sleep", lambda s: None)
        kw.setdefault("receipt_timeout_s", 20.0)
        return Enforcer(w3, reg, acct, **kw)

    def register_node(self, stake: int = 10 * ETH) -> str:
        node = str(Account.create().address)
        fn = self.registry.functions.registerNode(node, "http://node.test:8000")
        transact(self.w3, self.operator_key, fn, value=stake)
        return node

    def governance(self, fn: Any) -> Any:
        return transact(self.w3, self.governance_key, fn)

    def mine(self, blocks: int = 1) -> None:
        self.w3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]

    def automine(self, on: bool) -> None:
        self.w3.provider.make_request("evm_setAutomine", [on])  # type: ignore[arg-type]

    @property
    def block(self) -> int:
        return int(self.w3.eth.block_number)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    artifact = compile_project()["NodeRegistry"]
    port = free_port()
    proc = start_anvil(port, log_path=tmp_path_factory.mktemp("anvil") / "anvil.log")
    try:
        url = f"http://127.0.0.1:{port}"
        w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))
        address = deploy_node_registry(
            w3,
            DEV_ACCOUNTS[0][1],
            monitor=DEV_ACCOUNTS[1][0],
            governance=DEV_ACCOUNTS[2][0],
            challenge_period_blocks=CHALLENGE_BLOCKS,
            min_stake_wei=ETH,
            artifact=artifact,
        )
        yield Chain(url, w3, artifact, node_registry(w3, address, artifact), address)
    finally:
        proc.stop()
