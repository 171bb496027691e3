"""A real anvil chain with a freshly compiled and deployed NodeRegistry."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD

from pipelines.chain.anvil import DEV_ACCOUNTS, start_anvil
from pipelines.chain.contracts import (
    Artifact,
    compile_contracts,
    contracts_dir,
    decode_custom_error,
    deploy_node_registry,
    node_registry,
    transact,
)
from pipelines.procs import free_port

CHALLENGE_BLOCKS = 5
MIN_STAKE = 10**18
ETH = 10**18


@dataclass
class Actor:
    address: str
    key: str


@dataclass
class Chain:
    w3: Web3
    artifact: Artifact
    registry: Any  # web3 Contract
    admin: Actor
    monitor: Actor
    governance: Actor
    operator: Actor
    operator2: Actor
    outsider: Actor

    def send(self, actor: Actor, fn: Any, *, value: int = 0, gas: int | None = None) -> Any:
        """Send `fn` (a bound contract function) from `actor`; return the receipt."""
        return transact(self.w3, actor.key, fn, value=value, gas=gas)

    def expect_error(
        self,
        fn: Any,
        sender: Actor | str,
        name: str,
        *args: Any,
        value: int = 0,
        block: str = "latest",
    ) -> tuple[Any, ...]:
        """Assert that `fn` from `sender` reverts with custom error `name` (and `args`)."""
        frm = sender.address if isinstance(sender, Actor) else sender
        with pytest.raises(ContractCustomError) as info:
            fn.call({"from": frm, "value": value}, block_identifier=block)
        decoded = decode_custom_error(self.artifact.abi, info.value.data)
        assert decoded is not None, f"undecodable revert data {info.value.data!r}"
        got_name, got_args = decoded
        assert got_name == name, f"expected {name}, got {got_name}{got_args}"
        if args:
            assert got_args == args, f"{name}: expected {args}, got {got_args}"
        return got_args

    def events(self, receipt: Any, name: str) -> list[Any]:
        """Decoded `name` events of the registry in `receipt`."""
        return list(getattr(self.registry.events, name)().process_receipt(receipt, errors=DISCARD))

    def balance(self, address: str) -> int:
        return int(self.w3.eth.get_balance(Web3.to_checksum_address(address)))

    def mine(self, blocks: int) -> None:
        self.w3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]

    @property
    def block(self) -> int:
        return int(self.w3.eth.block_number)

    def deploy(self, *, challenge_blocks: int = CHALLENGE_BLOCKS) -> Any:
        address = deploy_node_registry(
            self.w3,
            self.admin.key,
            monitor=self.monitor.address,
            governance=self.governance.address,
            challenge_period_blocks=challenge_blocks,
            min_stake_wei=MIN_STAKE,
            artifact=self.artifact,
        )
        return node_registry(self.w3, address, self.artifact)


def new_node() -> str:
    """A fresh node identity (nodes are plain addresses)."""
    return str(Account.create().address)


def evidence() -> bytes:
    return os.urandom(32)


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("contracts-build")


@pytest.fixture(scope="module")
def artifact(build_dir: Path) -> Artifact:
    return compile_contracts(contracts_dir(), build_dir)["NodeRegistry"]


@pytest.fixture(scope="module")
def chain(artifact: Artifact, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("anvil") / "anvil.log"
    proc = start_anvil(port, log_path=log_path)
    try:
        w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}", request_kwargs={"timeout": 30}))
        actors = [Actor(a, k) for a, k in DEV_ACCOUNTS[:6]]
        c = Chain(w3, artifact, None, *actors)
        c.registry = c.deploy()
        yield c
    finally:
        proc.stop()
