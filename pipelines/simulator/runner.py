"""Run a plan against a chain: set up contracts and balances, then send on schedule.

Setup (once per run): the run's deployer (an account derived from the seed) deploys
two `SimToken`s, the `SimPair` AMM and `SimInferencePayments`, mints balances, adds
liquidity; every token-using actor approves the pair. ETH comes from
`anvil_setBalance` on anvil, or from `funder_private_key` on any other chain.

Sending: one thread signs locally and sends raw transactions at each planned time
(scaled by `speed`); nonces are tracked locally and re-read after a failed send.
Every sent transaction is labelled (`LabelWriter`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rlp
from eth_abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_bytes, to_checksum_address
from web3 import Web3
from web3.types import RPCEndpoint

from pipelines.chain.contracts import compile_project
from pipelines.simulator.config import LABEL_INFRA, SimConfig
from pipelines.simulator.labels import ClickHouseLabels, LabelWriter
from pipelines.simulator.plan import (
    GAS,
    GWEI,
    MAX_UINT,
    ActorInfo,
    Deployment,
    Plan,
    PlannedTx,
    calldata,
    derive_account,
)

log = logging.getLogger(__name__)

SETUP_GAS_PRICE = 3 * GWEI


class SimulationError(RuntimeError):
    """The simulation could not be set up or run; the message says what to do."""


def create_address(sender: str, nonce: int) -> str:
    """Address of the contract that `sender` creates with `nonce` (CREATE)."""
    return to_checksum_address(keccak(rlp.encode([to_bytes(hexstr=sender), nonce]))[12:])


@dataclass
class SimStats:
    sent: collections.Counter[str] = field(default_factory=collections.Counter)  # by label
    roles: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: int = 0
    max_behind_s: float = 0.0  # how far sending fell behind the plan
    plan_t: float = 0.0  # plan time reached

    @property
    def total(self) -> int:
        return sum(self.sent.values())


class Simulator:
    """Labelled traffic against one RPC endpoint; `run()` blocks, `start()` threads it."""

    def __init__(
        self,
        rpc_url: str,
        cfg: SimConfig,
        out_dir: Path,
        *,
        clickhouse: ClickHouseLabels | None = None,
        nodes: Sequence[str] | None = None,
        run_id: str | None = None,
        on_sent: Callable[[PlannedTx], None] | None = None,
    ) -> None:
        self.rpc_url = rpc_url
        self.cfg = cfg
        self.out_dir = out_dir
        self.clickhouse = clickhouse
        self.node_addresses = list(nodes or [])
        self.run_id = run_id or f"sim-{cfg.seed}-{int(time.time())}"
        self.on_sent = on_sent
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        self.stats = SimStats()
        self.deployment: Deployment | None = None
        self.plan: Plan | None = None
        self.writer: LabelWriter | None = None
        self.chain_id = 0
        self._nonces: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.deployer = derive_account(cfg.seed, "infra:deployer")

    # ------------------------------------------------------------------ setup

    def labels(self) -> dict[str, str]:
        return self.plan.labels() if self.plan else {}

    def setup(self) -> Deployment:
        """Deploy, fund and approve; returns where the contracts are."""
        try:
            self.chain_id = int(self.w3.eth.chain_id)
        except Exception as e:
            raise SimulationError(
                f"cannot reach the JSON-RPC endpoint {self.rpc_url}: {e}. "
                "Start a node (or `vigil up --traffic none`) and pass its URL."
            ) from e
        artifacts = compile_project()
        n = self.w3.eth.get_transaction_count(self.deployer.address, "pending")
        nodes = self.node_addresses or [
            derive_account(self.cfg.seed, f"node:{i}").address for i in range(self.cfg.nodes)
        ]
        dep = Deployment(
            chain_id=self.chain_id,
            token0=create_address(self.deployer.address, n),
            token1=create_address(self.deployer.address, n + 1),
            pair=create_address(self.deployer.address, n + 2),
            payments=create_address(self.deployer.address, n + 3),
            nodes=tuple(to_checksum_address(a) for a in nodes),
        )
        plan = Plan(self.cfg, dep)
        needs = plan.setup_needs()
        self.writer = LabelWriter(self.out_dir, self.run_id, self.clickhouse)
        infra = ActorInfo("infra-deployer", LABEL_INFRA, [self.deployer.address.lower()], {})
        self.writer.write_actors([*plan.infos(), infra])
        self._fund({**needs.eth, self.deployer.address: 10_000 * 10**18})

        def ctor(name: str, types: list[str], args: list[Any]) -> str:
            return artifacts[name].bytecode + abi_encode(types, args).hex()

        erc20 = ["string", "string", "uint256"]
        first = [
            ("deploy", ctor("SimToken", erc20, ["Vigil Sim", "VGL", dep.claim_amount])),
            ("deploy", ctor("SimToken", erc20, ["Sim Dollar", "USDx", dep.claim_amount])),
            ("deploy", ctor("SimPair", ["address", "address"], [dep.token0, dep.token1])),
            ("deploy", ctor("SimInferencePayments", ["uint256"], [self.cfg.price_per_unit_wei])),
        ]
        hashes = [
            self._setup_tx(self.deployer, None, data, GAS[kind], LABEL_INFRA, "deploy")
            for kind, data in first
        ]
        mint = "mint(address,uint256)"
        me = self.deployer.address
        mints = [*needs.mints, (dep.token0, me, dep.reserve0), (dep.token1, me, dep.reserve1)]
        for token, to, amount in mints:
            data = calldata(mint, ["address", "uint256"], [to, amount])
            hashes.append(
                self._setup_tx(self.deployer, token, data, GAS["mint"], LABEL_INFRA, "mint")
            )
        for token in (dep.token0, dep.token1):
            hashes.append(self._approve(self.deployer, token, dep.pair, LABEL_INFRA))
        liquidity = calldata(
            "addLiquidity(uint256,uint256)", ["uint256", "uint256"], [dep.reserve0, dep.reserve1]
        )
        hashes.append(
            self._setup_tx(
                self.deployer, dep.pair, liquidity, GAS["liquidity"], LABEL_INFRA, "add_liquidity"
            )
        )
        self._wait(hashes, "contract deployment")
        # approvals only once the tokens exist (a same-block approval could run first)
        approvals = [
            self._approve(a, token, dep.pair, label) for a, token, label in needs.approvals
        ]
        self._wait(approvals, "approvals")
        self.deployment, self.plan = dep, plan
        log.info(
            "simulator ready on chain %d: %d actors, pair %s, payments %s",
            self.chain_id,
            len(plan.actors),
            dep.pair,
            dep.payments,
        )
        return dep

    def _fund(self, balances: dict[str, int]) -> None:
        if all(self._set_balance(a, wei) for a, wei in balances.items()):
            return
        key = self.cfg.funder_private_key
        if not key:
            raise SimulationError(
                f"{self.rpc_url} does not support anvil_setBalance; set funder_private_key "
                "(a funded account of that chain) in the simulator config"
            )
        funder: LocalAccount = self.w3.eth.account.from_key(key)
        hashes = [
            self._send_raw(
                funder,
                {"to": address, "value": wei, "gas": 21_000, "gasPrice": SETUP_GAS_PRICE},
                LABEL_INFRA,
                "infra",
                "fund",
                0,
            )
            for address, wei in balances.items()
        ]
        self._wait([h for h in hashes if h], "funding")

    def _set_balance(self, address: str, wei: int) -> bool:
        """anvil's `anvil_setBalance`; False where the node does not have it."""
        try:
            reply = self.w3.provider.make_request(
                RPCEndpoint("anvil_setBalance"), [address, hex(wei)]
            )
        except Exception as e:
            log.debug("anvil_setBalance unavailable: %s", e)
            return False
        return "error" not in reply

    def _setup_tx(
        self, acct: LocalAccount, to: str | None, data: str, gas: int, label: str, role: str
    ) -> str:
        tx: dict[str, Any] = {"value": 0, "gas": gas, "gasPrice": SETUP_GAS_PRICE, "data": data}
        if to is not None:
            tx["to"] = to
        h = self._send_raw(acct, tx, label, "infra" if label == LABEL_INFRA else label, role, 0)
        if h is None:
            raise SimulationError(f"setup transaction ({role}) from {acct.address} was refused")
        return h

    def _approve(self, acct: LocalAccount, token: str, spender: str, label: str) -> str:
        data = calldata("approve(address,uint256)", ["address", "uint256"], [spender, MAX_UINT])
        return self._setup_tx(acct, token, data, GAS["approve"], label, "approve")

    def _wait(self, hashes: Sequence[str], what: str, timeout: float = 120.0) -> None:
        for h in hashes:
            r = self.w3.eth.wait_for_transaction_receipt(h, timeout=timeout)  # type: ignore[arg-type]
            if r["status"] != 1:
                raise SimulationError(f"{what} failed: transaction {h} reverted")

    # ------------------------------------------------------------------ sending

    def _nonce(self, address: str) -> int:
        if address not in self._nonces:
            self._nonces[address] = self.w3.eth.get_transaction_count(address, "pending")  # type: ignore[arg-type]
        return self._nonces[address]

    def _send_raw(
        self,
        acct: LocalAccount,
        tx: dict[str, Any],
        label: str,
        actor: str,
        role: str,
        t: float,
    ) -> str | None:
        full = {**tx, "nonce": self._nonce(acct.address), "chainId": self.chain_id}
        signed = acct.sign_transaction(full)
        try:
            self.w3.eth.send_raw_transaction(signed.raw_transaction)
        except Exception as e:  # keep going; the nonce is re-read
            self.stats.errors += 1
            log.debug("send from %s (%s) failed: %s", acct.address, role, e)
            self._nonces[acct.address] = self.w3.eth.get_transaction_count(acct.address, "pending")
            return None
        self._nonces[acct.address] += 1
        h = "0x" + bytes(signed.hash).hex()
        if self.writer is not None:
            self.writer.tx(h, acct.address.lower(), label, actor, role, t)
        return h

    def send(self, p: PlannedTx) -> str | None:
        h = self._send_raw(p.sender, p.tx, p.label, p.actor, p.role, p.t)
        if h is not None:
            self.stats.sent[p.label] += 1
            self.stats.roles[p.role] += 1
            if self.on_sent is not None:
                self.on_sent(p)
        return h

    def _timed(self, plan: Iterator[PlannedTx]) -> Iterator[PlannedTx]:
        t0 = time.monotonic()
        for p in plan:
            due = t0 + p.t / self.cfg.speed
            delay = due - time.monotonic()
            if delay > 0:
                if self._stop.wait(delay):
                    return
            else:
                self.stats.max_behind_s = max(self.stats.max_behind_s, -delay)
            if self._stop.is_set():
                return
            self.stats.plan_t = p.t
            yield p

    def run(self) -> SimStats:
        """Set up if needed, then send the whole plan (or until `stop()`)."""
        if self.plan is None:
            self.setup()
        assert self.plan is not None
        try:
            for p in self._timed(iter(self.plan)):
                self.send(p)
        finally:
            if self.writer is not None:
                self.writer.flush()
        log.info("simulation done: sent %s, %d errors", dict(self.stats.sent), self.stats.errors)
        return self.stats

    def start(self) -> Simulator:
        """Set up now (errors surface here), then send from a daemon thread."""
        if self.plan is None:
            self.setup()
        self._thread = threading.Thread(target=self.run, name="simulator", daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Stop sending soon (safe from a signal handler); `stop()` also waits and closes."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
