"""Compile the Solidity sources with the pinned npm `solc`, deploy and bind NodeRegistry.

Compilation runs `node` on the `solc` package from the repository's node_modules
(installed by `make setup`) with a standard-JSON input. The result is cached under
a build directory, keyed by a hash of the sources, the compiler version and the
settings, so that a second call with unchanged sources reads one JSON file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import function_signature_to_4byte_selector, to_checksum_address
from web3 import Web3
from web3.contract import Contract

log = logging.getLogger(__name__)

# Compiler settings that are part of the cache key. `cancun` runs on anvil and on
# current mainnet/L2 chains; raise it only when every target chain supports it.
EVM_VERSION = "cancun"
OPTIMIZER_RUNS = 200
CACHE_FORMAT = 1
COMPILE_TIMEOUT_S = 300.0

# Reads the standard-JSON input on stdin, prints {"version", "output"} on stdout.
_NODE_COMPILE = r"""
const solc = require(process.argv[1]);
let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (c) => { input += c; });
process.stdin.on("end", () => {
  const output = solc.compile(input);
  process.stdout.write(JSON.stringify({ version: solc.version(), output: JSON.parse(output) }));
});
"""


class CompileError(RuntimeError):
    """solc (or the toolchain around it) failed; the message carries solc's messages."""


@dataclass(frozen=True)
class Artifact:
    """One compiled contract."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str  # 0x-prefixed creation bytecode
    source_hash: str  # sha256 over all compiled sources (paths and contents)
    solc_version: str  # full compiler version, e.g. 0.8.37+commit.f401782d...


def find_repo_root() -> Path:
    """The repository root: the parent of the `pipelines/` package."""
    return Path(__file__).resolve().parents[2]


def node_modules_dir() -> Path:
    """The npm toolchain folder (`VIGIL_NODE_MODULES` overrides the repo's own)."""
    override = os.environ.get("VIGIL_NODE_MODULES")
    return Path(override) if override else find_repo_root() / "node_modules"


def contracts_dir() -> Path:
    """The Solidity sources of the project."""
    return find_repo_root() / "contracts"


def solc_package_dir() -> Path:
    path = node_modules_dir() / "solc"
    if not (path / "package.json").is_file():
        raise CompileError(f"solc npm package not found at {path}; run `make setup`")
    return path


def solc_package_version() -> str:
    """Version of the pinned npm solc (from its package.json, without loading it)."""
    meta = json.loads((solc_package_dir() / "package.json").read_text())
    return str(meta["version"])


def _collect_sources(source_dir: Path) -> dict[str, str]:
    files = sorted(p for p in source_dir.rglob("*.sol") if p.is_file())
    if not files:
        raise CompileError(f"no .sol files under {source_dir}")
    return {p.relative_to(source_dir).as_posix(): p.read_text(encoding="utf-8") for p in files}


def _sources_hash(sources: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(sources):
        data = sources[name].encode("utf-8")
        h.update(name.encode("utf-8") + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()


def _standard_input(sources: dict[str, str]) -> dict[str, Any]:
    return {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sources.items()},
        "settings": {
            "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
            "evmVersion": EVM_VERSION,
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
        },
    }


def _run_solc(std_input: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    node = shutil.which("node")
    if node is None:
        raise CompileError("`node` not found on PATH; install Node.js and run `make setup`")
    pkg = solc_package_dir()
    try:
        proc = subprocess.run(  # noqa: S603 - fixed argv
            [node, "-e", _NODE_COMPILE, str(pkg)],
            input=json.dumps(std_input).encode(),
            capture_output=True,
            timeout=COMPILE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CompileError(f"solc did not finish in {COMPILE_TIMEOUT_S:.0f}s") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace")[-4000:]
        raise CompileError(f"node/solc exited with {proc.returncode}: {err}")
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise CompileError(f"unreadable solc output: {proc.stdout[:500]!r}") from exc
    return str(result["version"]), result["output"]


def _artifacts_from_output(
    output: dict[str, Any], source_hash: str, solc_version: str
) -> dict[str, Artifact]:
    messages = output.get("errors", [])
    errors = [m for m in messages if m.get("severity") == "error"]
    for m in messages:
        if m.get("severity") != "error":
            log.warning("solc: %s", m.get("formattedMessage") or m.get("message"))
    if errors:
        text = "\n".join(str(m.get("formattedMessage") or m.get("message")) for m in errors)
        raise CompileError(f"solc reported {len(errors)} error(s):\n{text}")
    artifacts: dict[str, Artifact] = {}
    for source_name, contracts in sorted(output.get("contracts", {}).items()):
        for name, data in sorted(contracts.items()):
            if name in artifacts:
                raise CompileError(f"contract name {name} defined twice (again in {source_name})")
            obj = data.get("evm", {}).get("bytecode", {}).get("object", "")
            artifacts[name] = Artifact(
                name=name,
                abi=data["abi"],
                bytecode="0x" + obj,
                source_hash=source_hash,
                solc_version=solc_version,
            )
    return artifacts


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def compile_contracts(source_dir: Path, build_dir: Path) -> dict[str, Artifact]:
    """Compile every `*.sol` under `source_dir`; return the artifacts by contract name.

    Cached in `build_dir` by sources + compiler version + settings; raises
    `CompileError` with solc's messages when compilation fails.
    """
    source_dir = Path(source_dir)
    build_dir = Path(build_dir)
    sources = _collect_sources(source_dir)
    source_hash = _sources_hash(sources)
    std_input = _standard_input(sources)
    key_material = json.dumps(
        {
            "format": CACHE_FORMAT,
            "sources": source_hash,
            "solc": solc_package_version(),
            "settings": std_input["settings"],
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_material.encode()).hexdigest()
    cache_path = build_dir / f"solc-{key[:24]}.json"
    if cache_path.is_file():
        try:
            cached = json.loads(cache_path.read_text(encoding="utf-8"))
            if cached.get("key") == key:
                return {name: Artifact(**fields) for name, fields in cached["artifacts"].items()}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring unreadable compile cache %s: %s", cache_path, exc)
    solc_version, output = _run_solc(std_input)
    artifacts = _artifacts_from_output(output, source_hash, solc_version)
    payload = {
        "key": key,
        "artifacts": {
            name: {
                "name": a.name,
                "abi": a.abi,
                "bytecode": a.bytecode,
                "source_hash": a.source_hash,
                "solc_version": a.solc_version,
            }
            for name, a in artifacts.items()
        },
    }
    _write_atomic(cache_path, json.dumps(payload))
    return artifacts


def compile_project(build_dir: Path | None = None) -> dict[str, Artifact]:
    """Compile the repository's `contracts/` into `build_dir` (default `build/contracts`)."""
    return compile_contracts(contracts_dir(), build_dir or find_repo_root() / "build" / "contracts")


# ---------------------------------------------------------------- transactions


class TransactionFailed(RuntimeError):
    """A transaction was mined but reverted (status 0); `receipt` is the receipt."""

    def __init__(self, message: str, receipt: Any = None) -> None:
        super().__init__(message)
        self.receipt = receipt


def _padded_gas(estimate: int) -> int:
    return int(estimate * 1.2) + 10_000


def send_transaction(
    w3: Web3,
    private_key: str,
    tx: dict[str, Any],
    *,
    timeout: float = 120.0,
) -> Any:
    """Fill nonce/chain id/gas, sign locally, send, wait for the receipt, raise on revert.

    `tx` is a transaction dict, e.g. from `build_transaction`. Returns the receipt;
    raises `TransactionFailed` when it was mined with status 0. Gas, when missing,
    is estimated against the pending block (the one the transaction will run in);
    a revert found then surfaces as web3's `ContractLogicError`
    (`ContractCustomError` for custom errors; see `decode_custom_error`).
    """
    account = w3.eth.account.from_key(private_key)
    tx = dict(tx)
    tx["from"] = account.address
    tx.setdefault("chainId", w3.eth.chain_id)
    tx.setdefault("nonce", w3.eth.get_transaction_count(account.address, "pending"))
    if "gas" not in tx:
        tx["gas"] = _padded_gas(w3.eth.estimate_gas(tx, "pending"))  # type: ignore[arg-type]
    signed = account.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout)
    if receipt["status"] != 1:
        raise TransactionFailed(f"transaction {tx_hash.to_0x_hex()} reverted", receipt)
    return receipt


def transact(
    w3: Web3,
    private_key: str,
    fn: Any,
    *,
    value: int = 0,
    gas: int | None = None,
    timeout: float = 120.0,
) -> Any:
    """Send contract call `fn` (e.g. `registry.functions.throttle(...)`) signed by the key.

    Unlike a bare `fn.build_transaction()`, which estimates gas against the *latest*
    block, the estimate here runs against the *pending* block, where the transaction
    will execute: block-number conditions (challenge periods, throttle expiry) are
    judged as the miner will judge them. Returns the receipt.
    """
    sender = w3.eth.account.from_key(private_key).address
    params: dict[str, Any] = {"from": sender, "value": value}
    if gas is None:
        gas = _padded_gas(fn.estimate_gas(params, block_identifier="pending"))
    params["gas"] = gas
    return send_transaction(w3, private_key, dict(fn.build_transaction(params)), timeout=timeout)


def deploy_node_registry(
    w3: Web3,
    deployer_key: str,
    *,
    monitor: str,
    governance: str,
    challenge_period_blocks: int,
    min_stake_wei: int,
    artifact: Artifact,
) -> str:
    """Deploy NodeRegistry from the deployer key; return its checksummed address."""
    if not artifact.bytecode or artifact.bytecode == "0x":
        raise ValueError(f"artifact {artifact.name} has no bytecode")
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    ctor = factory.constructor(
        to_checksum_address(monitor),
        to_checksum_address(governance),
        challenge_period_blocks,
        min_stake_wei,
    )
    receipt = transact(w3, deployer_key, ctor)
    address = receipt["contractAddress"]
    if not address:
        raise TransactionFailed("deployment receipt has no contract address")
    return str(to_checksum_address(address))


def node_registry(w3: Web3, address: str, artifact: Artifact) -> Contract:
    """Bind the deployed registry at `address`."""
    return w3.eth.contract(address=to_checksum_address(address), abi=artifact.abi)


# ---------------------------------------------------------------- custom errors


def _abi_type(param: dict[str, Any]) -> str:
    t = str(param["type"])
    if t.startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in param["components"])
        return f"({inner}){t[5:]}"
    return t


def custom_error_selectors(abi: list[dict[str, Any]]) -> dict[bytes, dict[str, Any]]:
    """Map 4-byte selector -> error ABI entry for the custom errors in `abi`."""
    out: dict[bytes, dict[str, Any]] = {}
    for entry in abi:
        if entry.get("type") == "error":
            sig = f"{entry['name']}({','.join(_abi_type(p) for p in entry['inputs'])})"
            out[function_signature_to_4byte_selector(sig)] = entry
    return out


def decode_custom_error(abi: list[dict[str, Any]], data: Any) -> tuple[str, tuple[Any, ...]] | None:
    """Decode revert data (hex str or bytes, e.g. `ContractCustomError.data`) to (name, args).

    Returns None when the data does not match a custom error of `abi`.
    """
    if isinstance(data, dict):  # some providers nest it: {"data": "0x..."}
        data = data.get("data")
    if data is None:
        return None
    raw = bytes.fromhex(data.removeprefix("0x")) if isinstance(data, str) else bytes(data)
    if len(raw) < 4:
        return None
    entry = custom_error_selectors(abi).get(raw[:4])
    if entry is None:
        return None
    types = [_abi_type(p) for p in entry["inputs"]]
    values = abi_decode(types, raw[4:])
    args = tuple(
        to_checksum_address(v) if t == "address" else v for t, v in zip(types, values, strict=True)
    )
    return str(entry["name"]), args
