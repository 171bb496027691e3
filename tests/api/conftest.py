"""The API against real parts: the embedded ClickHouse server (chdb over HTTP) as a
child process, migrated and filled with rows, and anvil with NodeRegistry deployed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from pipelines.chain.anvil import DEV_ACCOUNTS, start_anvil
from pipelines.chain.contracts import (
    compile_project,
    deploy_node_registry,
    node_registry,
    transact,
)
from pipelines.procs import ManagedProcess, free_port
from pipelines.stack import chserver_argv
from pipelines.storage.client import connect, ping

REPO = Path(__file__).resolve().parents[2]
ETH = 10**18


@dataclass
class Storage:
    url: str
    database: str

    def client(self) -> Any:
        return connect(self.url, "default", "", self.database)


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storage]:
    base = tmp_path_factory.mktemp("api-chserver")
    port = free_port()
    argv = chserver_argv(base / "data", port)
    proc = ManagedProcess("chserver", argv, log_path=base / "server.log", cwd=REPO)
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_healthy(lambda: ping(url, timeout=0.5), timeout=60)
        yield Storage(url, "vigil_api_test")
    finally:
        proc.stop(timeout=20)


@dataclass
class Registry:
    w3: Web3
    contract: Any
    operator: Any  # LocalAccount that registered `node`
    node: str
    unregistered: str


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    artifact = compile_project()["NodeRegistry"]
    port = free_port()
    proc = start_anvil(port, log_path=tmp_path_factory.mktemp("api-anvil") / "anvil.log")
    try:
        w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}", request_kwargs={"timeout": 30}))
        address = deploy_node_registry(
            w3,
            DEV_ACCOUNTS[0][1],
            monitor=DEV_ACCOUNTS[1][0],
            governance=DEV_ACCOUNTS[2][0],
            challenge_period_blocks=5,
            min_stake_wei=ETH,
            artifact=artifact,
        )
        contract = node_registry(w3, address, artifact)
        operator = Account.from_key(DEV_ACCOUNTS[3][1])
        node = str(Account.create().address)
        transact(
            w3, DEV_ACCOUNTS[3][1], contract.functions.registerNode(node, "http://n:1"), value=ETH
        )
        yield Registry(w3, contract, operator, node, str(Account.create().address))
    finally:
        proc.stop()
