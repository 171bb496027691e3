"""Decode transaction calls and logs of known contracts from raw JSON-RPC data.

Why in the follower: detectors need *what happened* (a swap of 3 ETH for tokens in
the pool, a token transfer to a fresh wallet, a usage settlement), not only raw
selectors. Decoding once at ingestion, against the ABIs Vigil knows, puts it on
`chain.tx.v1` for every consumer.

Known ABIs: the ERC-20 standard (any token, by signature), and every contract under
`contracts/` (NodeRegistry, the simulator's token, AMM pair and payment contract)
when the pinned compiler is available. A selector or topic that several ABIs share
keeps the first registration (ERC-20 first), so any token's `transfer` reads
`ERC20.transfer`. Unknown calls and logs are kept undecoded (empty name).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import keccak

from pipelines.records import TxEvent

log = logging.getLogger(__name__)

MAX_ARG_CHARS = 256

#: The ERC-20 standard: functions and events every token shares.
ERC20_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "transfer",
        "inputs": [{"name": "to", "type": "address"}, {"name": "value", "type": "uint256"}],
    },
    {
        "type": "function",
        "name": "transferFrom",
        "inputs": [
            {"name": "from", "type": "address"},
            {"name": "to", "type": "address"},
            {"name": "value", "type": "uint256"},
        ],
    },
    {
        "type": "function",
        "name": "approve",
        "inputs": [{"name": "spender", "type": "address"}, {"name": "value", "type": "uint256"}],
    },
    {
        "type": "event",
        "name": "Transfer",
        "anonymous": False,
        "inputs": [
            {"name": "from", "type": "address", "indexed": True},
            {"name": "to", "type": "address", "indexed": True},
            {"name": "value", "type": "uint256", "indexed": False},
        ],
    },
    {
        "type": "event",
        "name": "Approval",
        "anonymous": False,
        "inputs": [
            {"name": "owner", "type": "address", "indexed": True},
            {"name": "spender", "type": "address", "indexed": True},
            {"name": "value", "type": "uint256", "indexed": False},
        ],
    },
]


def _abi_type(param: Mapping[str, Any]) -> str:
    t = str(param["type"])
    if t.startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in param["components"])
        return f"({inner}){t[5:]}"
    return t


@dataclass(frozen=True)
class _Function:
    label: str  # "Contract.name"
    names: tuple[str, ...]
    types: tuple[str, ...]


@dataclass(frozen=True)
class _Event:
    label: str
    names: tuple[str, ...]
    types: tuple[str, ...]
    indexed: tuple[bool, ...]


def _fmt(value: Any, typ: str) -> str:
    """An ABI value as a string: ints in decimal, addresses lower-case, bytes in hex."""
    if typ.endswith("]") or typ.startswith("("):
        return json.dumps(_jsonable(value))[:MAX_ARG_CHARS]
    if typ == "address":
        return str(value).lower()
    if typ == "bool":
        return "true" if value else "false"
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()[: MAX_ARG_CHARS - 2]
    if isinstance(value, str):
        return value[:MAX_ARG_CHARS]
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, bool | str) else str(value)


def _unhex(s: str) -> bytes:
    return bytes.fromhex(s[2:] if s.startswith(("0x", "0X")) else s)


class ChainDecoder:
    """Selector -> function and topic0 -> events, built from contract ABIs."""

    def __init__(self, abis: Iterable[tuple[str, Sequence[Mapping[str, Any]]]]) -> None:
        self._functions: dict[str, _Function] = {}
        self._events: dict[str, list[_Event]] = {}
        for contract, abi in abis:
            self.register(contract, abi)

    def register(self, contract: str, abi: Sequence[Mapping[str, Any]]) -> None:
        for entry in abi:
            kind = entry.get("type")
            name = str(entry.get("name", ""))
            inputs = list(entry.get("inputs", []))
            types = tuple(_abi_type(p) for p in inputs)
            names = tuple(str(p.get("name") or f"arg{i}") for i, p in enumerate(inputs))
            sig = f"{name}({','.join(types)})"
            if kind == "function":
                selector = "0x" + keccak(text=sig)[:4].hex()
                self._functions.setdefault(selector, _Function(f"{contract}.{name}", names, types))
            elif kind == "event" and not entry.get("anonymous"):
                topic0 = "0x" + keccak(text=sig).hex()
                indexed = tuple(bool(p.get("indexed")) for p in inputs)
                ev = _Event(f"{contract}.{name}", names, types, indexed)
                known = self._events.setdefault(topic0, [])
                if all(e.types != ev.types or e.indexed != ev.indexed for e in known):
                    known.append(ev)

    @property
    def n_functions(self) -> int:
        return len(self._functions)

    def decode_call(self, data: str) -> tuple[str, dict[str, str]]:
        """("Contract.function", args) of call data; ("", {}) when unknown or malformed."""
        if not data or len(data) < 10:
            return "", {}
        fn = self._functions.get(data[:10].lower())
        if fn is None:
            return "", {}
        try:
            values = abi_decode(list(fn.types), _unhex(data[10:]))
        except (DecodingError, ValueError, OverflowError):
            return fn.label, {}
        return fn.label, {n: _fmt(v, t) for n, v, t in zip(fn.names, values, fn.types, strict=True)}

    def decode_log(self, log_entry: Mapping[str, Any]) -> TxEvent:
        """A raw JSON-RPC log as a `TxEvent` (named and with args when known)."""
        topics = [str(t).lower() for t in log_entry.get("topics") or []]
        address = str(log_entry.get("address", "")).lower()
        index = int(str(log_entry.get("logIndex", "0x0")), 16)
        topic0 = topics[0] if topics else ""
        for ev in self._events.get(topic0, []):
            if sum(ev.indexed) != len(topics) - 1:
                continue
            try:
                args = self._event_args(ev, topics[1:], str(log_entry.get("data", "0x")))
            except (DecodingError, ValueError, OverflowError):
                continue
            return TxEvent(index, address, topic0, ev.label, args)
        return TxEvent(index, address, topic0, "", {})

    @staticmethod
    def _event_args(ev: _Event, topics: list[str], data: str) -> dict[str, str]:
        data_types = [t for t, ix in zip(ev.types, ev.indexed, strict=True) if not ix]
        data_values = list(abi_decode(data_types, _unhex(data))) if data_types else []
        args: dict[str, str] = {}
        ti = 0
        for name, typ, ix in zip(ev.names, ev.types, ev.indexed, strict=True):
            if ix:
                raw = _unhex(topics[ti])
                ti += 1
                if typ in ("string", "bytes") or typ.endswith("]") or typ.startswith("("):
                    args[name] = "0x" + raw.hex()  # indexed dynamic values are only hashes
                else:
                    (value,) = abi_decode([typ], raw)
                    args[name] = _fmt(value, typ)
            else:
                args[name] = _fmt(data_values.pop(0), typ)
        return args


def project_abis() -> list[tuple[str, list[dict[str, Any]]]]:
    """ABIs of every contract under `contracts/` ([] when the compiler is unavailable)."""
    from pipelines.chain.contracts import CompileError, compile_project

    try:
        artifacts = compile_project()
    except (CompileError, OSError) as e:
        log.warning("project contracts not decoded (compiler unavailable: %s)", e)
        return []
    return [(name, a.abi) for name, a in sorted(artifacts.items())]


def default_decoder(*, with_project: bool = True) -> ChainDecoder:
    """ERC-20 first, then the project's contracts."""
    abis: list[tuple[str, Sequence[Mapping[str, Any]]]] = [("ERC20", ERC20_ABI)]
    if with_project:
        abis += project_abis()
    return ChainDecoder(abis)
