"""On-chain side of a node: registration, periodic usage settlement, registry reads.

The node talks to `NodeRegistry` through a plain web3 client bound to an ABI read
from a JSON file (the node may not import the monitor's `pipelines` package).
Transactions are signed locally with the operator key; web3 calls are blocking,
so the async parts of the node run them in a thread. A failed settlement puts
its records back, so the next period settles them together (nothing is lost and
nothing is claimed twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from eth_account import Account
from eth_utils import function_signature_to_4byte_selector, keccak, to_checksum_address
from pydantic import SecretStr
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, Web3Exception

from inference_node.faults import FaultInjector
from inference_node.metering import UsageMeter, UsagePeriod
from inference_node.settings import NodeSettings

log = logging.getLogger(__name__)

UINT64_MAX = 2**64 - 1


class ChainError(RuntimeError):
    """A chain read or transaction failed."""


class AbiError(ChainError):
    """The ABI file is missing, unreadable or lacks what the node calls."""


class TransactionReverted(ChainError):
    """A transaction reverted (at estimation or once mined); `reason` is decoded if possible."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class SettlementError(ChainError):
    """A settlement could not be sent; its usage stays pending."""


_REQUIRED = ("registerNode", "settleUsage", "throttleOf", "nodeInfo")


def load_abi(path: Path) -> list[dict[str, Any]]:
    """Read a NodeRegistry ABI: a bare ABI list or an artifact object with an `abi` key."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AbiError(f"cannot read ABI file {path}: {exc}") from exc
    abi = data.get("abi") if isinstance(data, dict) else data
    if not isinstance(abi, list):
        raise AbiError(f"{path} holds neither an ABI list nor an object with 'abi'")
    names = {e.get("name") for e in abi if isinstance(e, dict)}
    missing = [n for n in _REQUIRED if n not in names]
    if missing:
        raise AbiError(f"ABI in {path} lacks {missing}: is it NodeRegistry's?")
    return abi


def _abi_type(param: dict[str, Any]) -> str:
    t = str(param["type"])
    if t.startswith("tuple"):
        return f"({','.join(_abi_type(c) for c in param['components'])}){t[5:]}"
    return t


def decode_revert(abi: Sequence[dict[str, Any]], data: Any) -> str | None:
    """Custom error `Name(args)` from revert data, or None when not one of the ABI's."""
    if isinstance(data, dict):
        data = data.get("data")
    if not data:
        return None
    raw = bytes.fromhex(data.removeprefix("0x")) if isinstance(data, str) else bytes(data)
    for entry in abi:
        if entry.get("type") != "error":
            continue
        types = [_abi_type(p) for p in entry["inputs"]]
        if function_signature_to_4byte_selector(f"{entry['name']}({','.join(types)})") == raw[:4]:
            with contextlib.suppress(Exception):
                args = abi_decode(types, raw[4:])
                return f"{entry['name']}{tuple(args)}"
            return str(entry["name"])
    return None


def sybil_address(operator: str, index: int, seed: int) -> str:
    """Deterministic extra identity `index` of a sybil operator (drills only)."""
    digest = keccak(f"vigil-sybil|{operator.lower()}|{seed}|{index}".encode())
    return str(to_checksum_address(digest[-20:]))


class RegistryClient:
    """Blocking NodeRegistry client for one operator key (call from a worker thread)."""

    def __init__(
        self,
        rpc_url: str,
        registry_address: str,
        abi: list[dict[str, Any]],
        *,
        private_key: SecretStr | None = None,
        tx_timeout_s: float = 60.0,
        http_timeout_s: float = 15.0,
    ) -> None:
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": http_timeout_s}))
        self.abi = abi
        self.contract = self.w3.eth.contract(address=to_checksum_address(registry_address), abi=abi)
        self._key = private_key
        self.tx_timeout_s = tx_timeout_s
        self._tx_lock = threading.Lock()
        self.operator: str | None = (
            str(Account.from_key(private_key.get_secret_value()).address) if private_key else None
        )

    def __repr__(self) -> str:  # never show the key
        return f"RegistryClient(registry={self.contract.address}, operator={self.operator})"

    # ------------------------------------------------------------------ reads
    def block_number(self) -> int:
        return int(self.w3.eth.block_number)

    def throttle_of(self, account: str) -> tuple[int, int]:
        level, until = self.contract.functions.throttleOf(to_checksum_address(account)).call()
        return int(level), int(until)

    def node_operator(self, node: str) -> str | None:
        op = self.contract.functions.nodeInfo(to_checksum_address(node)).call()[0]
        return None if int(op, 16) == 0 else str(op)

    def node_accounting(self, node: str) -> tuple[int, int, str]:
        """(last period, total units, last commitment hex) of `node`."""
        period, units, commitment, _, _ = self.contract.functions.nodeAccounting(
            to_checksum_address(node)
        ).call()
        return int(period), int(units), "0x" + bytes(commitment).hex()

    def throttle_event_accounts(self, from_block: int, to_block: int) -> set[str]:
        """Accounts named by Throttled/Unthrottled/Pardoned events in the block range."""
        if to_block < from_block:
            return set()
        accounts: set[str] = set()
        for name in ("Throttled", "Unthrottled", "Pardoned"):
            event = getattr(self.contract.events, name)
            for ev in event.get_logs(from_block=from_block, to_block=to_block):
                accounts.add(str(ev["args"]["account"]).lower())
        return accounts

    # ------------------------------------------------------------------ writes
    def _transact(self, fn: Any, *, value: int = 0) -> Any:
        if self._key is None or self.operator is None:
            raise ChainError("no operator_private_key configured: cannot send transactions")
        params: dict[str, Any] = {"from": self.operator, "value": value}
        with self._tx_lock:
            try:
                gas = fn.estimate_gas(params, block_identifier="pending")
                params["gas"] = int(gas * 1.2) + 10_000
                params["nonce"] = self.w3.eth.get_transaction_count(
                    to_checksum_address(self.operator), "pending"
                )
                tx = fn.build_transaction(params)
                signed = Account.sign_transaction(tx, self._key.get_secret_value())
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
                receipt = self.w3.eth.wait_for_transaction_receipt(
                    tx_hash, timeout=self.tx_timeout_s
                )
            except ContractCustomError as exc:
                reason = decode_revert(self.abi, exc.data)
                raise TransactionReverted(f"reverted: {reason or exc}", reason) from exc
            except ContractLogicError as exc:
                raise TransactionReverted(f"reverted: {exc}", str(exc)) from exc
            except (Web3Exception, OSError, ValueError) as exc:
                raise ChainError(f"transaction failed: {type(exc).__name__}: {exc}") from exc
        if receipt["status"] != 1:
            raise TransactionReverted(f"transaction {tx_hash.to_0x_hex()} reverted when mined")
        return receipt

    def register(self, node: str, url: str, stake_wei: int) -> Any | None:
        """Register `node` with `stake_wei`; None when this operator already registered it."""
        current = self.node_operator(node)
        if current is not None:
            if self.operator and current.lower() == self.operator.lower():
                log.info("node %s is already registered by this operator", node)
                return None
            raise ChainError(f"node {node} is registered by another operator {current}")
        receipt = self._transact(
            self.contract.functions.registerNode(to_checksum_address(node), url), value=stake_wei
        )
        log.info(
            "registered node %s (stake %d wei) in block %d", node, stake_wei, receipt["blockNumber"]
        )
        return receipt

    def settle(self, node: str, units: int, commitment: str) -> Any:
        if not 0 < units <= UINT64_MAX:
            raise SettlementError(f"units must be in 1..2^64-1, got {units}")
        root = bytes.fromhex(commitment.removeprefix("0x"))
        return self._transact(
            self.contract.functions.settleUsage(to_checksum_address(node), units, root)
        )


@dataclass(frozen=True)
class Settlement:
    """One settled period as sent."""

    node: str
    units: int
    served_units: int
    requests: int
    commitment: str
    tx_hash: str
    block_number: int


class Settler:
    """Closes metering periods and settles them, every `interval_s` or when the meter fills."""

    def __init__(
        self,
        client: RegistryClient,
        meter: UsageMeter,
        node_address: str,
        faults: FaultInjector,
        *,
        extra_identities: Sequence[str] = (),
    ) -> None:
        self.client = client
        self.meter = meter
        self.node_address = node_address
        self.faults = faults
        self.identities = [node_address, *extra_identities]
        self._next_identity = 0
        self._lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self.history: list[Settlement] = []
        meter.on_full(self._kick.set)

    async def settle_once(self) -> Settlement | None:
        """Settle whatever usage is pending; None when there is none."""
        async with self._lock:
            period = self.meter.drain()
            if not period.records:
                return None
            try:
                return await self._send(period)
            except BaseException:
                self.meter.restore(period)
                raise

    async def _send(self, period: UsagePeriod) -> Settlement:
        node = self.identities[self._next_identity % len(self.identities)]
        served = period.units
        claimed = min(UINT64_MAX, self.faults.claimed_units(served))
        commitment = period.commitment
        try:
            receipt = await asyncio.to_thread(self.client.settle, node, claimed, commitment)
        except ChainError as exc:
            raise SettlementError(
                f"settlement of {len(period.records)} requests failed: {exc}"
            ) from exc
        self._next_identity += 1
        s = Settlement(
            node=node,
            units=claimed,
            served_units=served,
            requests=len(period.records),
            commitment=commitment,
            tx_hash=receipt["transactionHash"].to_0x_hex(),
            block_number=int(receipt["blockNumber"]),
        )
        self.history.append(s)
        del self.history[:-100]
        log.info(
            "settled %d units for %d requests as %s in block %d (commitment %s)",
            s.units,
            s.requests,
            node,
            s.block_number,
            commitment,
        )
        return s

    async def run(self, interval_s: float) -> None:
        """Settle every `interval_s` (or earlier when the meter passes its soft limit)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), interval_s)
            self._kick.clear()
            try:
                await self.settle_once()
            except SettlementError as exc:
                log.warning("%s; will retry next period", exc)
            except Exception:  # noqa: BLE001 - the loop must keep going
                log.exception("unexpected settlement error; will retry next period")


def registry_from_settings(s: NodeSettings) -> RegistryClient:
    """A client for the configured registry; raises ChainError when the chain is off."""
    if not (s.rpc_url and s.registry_address and s.abi_path):
        raise ChainError("chain settings missing: set rpc_url, registry_address and abi_path")
    return RegistryClient(
        s.rpc_url,
        s.registry_address,
        load_abi(s.abi_path),
        private_key=s.operator_private_key,
        tx_timeout_s=s.tx_timeout_s,
    )


def identities(s: NodeSettings, operator: str | None, sybils: int) -> list[str]:
    """The node's on-chain identities: its address, then any sybil extras (drills)."""
    primary = s.node_address or operator
    if primary is None:
        return []
    extra = [sybil_address(operator, i, s.seed) for i in range(1, sybils + 1)] if operator else []
    return [primary, *extra]


def register_identities(
    client: RegistryClient, s: NodeSettings, stake_wei: int, sybils: int = 0
) -> list[tuple[str, Any | None]]:
    """Register the node (and, for the sybil drill, its extra identities).

    Returns (identity, receipt or None when it was already registered) pairs.
    """
    ids = identities(s, client.operator, sybils)
    if not ids:
        raise ChainError("no node identity: set node_address or operator_private_key")
    url = s.effective_public_url()
    out = [(ids[0], client.register(ids[0], url, stake_wei))]
    for addr in ids[1:]:  # one operator, many "independent" nodes
        out.append(
            (addr, client.register(addr, f"{url}/n/{addr[2:10].lower()}", s.sybil_stake_wei))
        )
    return out
