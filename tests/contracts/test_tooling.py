"""Compile cache, compile errors, dev accounts and the anvil launcher."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from pipelines.chain.anvil import (
    ANVIL_CHAIN_ID,
    DEV_ACCOUNTS,
    AnvilNotInstalled,
    anvil_binary,
    running_anvil,
)
from pipelines.chain.contracts import (
    CompileError,
    compile_contracts,
    contracts_dir,
    decode_custom_error,
    find_repo_root,
    node_modules_dir,
    solc_package_version,
)
from pipelines.procs import free_port, port_open
from pipelines.settings import ANVIL_DEV_KEYS


def test_repo_helpers_locate_toolchain() -> None:
    root = find_repo_root()
    assert (root / "pipelines" / "procs.py").is_file()
    assert node_modules_dir() == root / "node_modules"
    assert (contracts_dir() / "NodeRegistry.sol").is_file()
    assert solc_package_version().startswith("0.8.")
    assert anvil_binary().is_file()


def test_compile_produces_artifact_and_cache_hit_is_fast(tmp_path: Path) -> None:
    build = tmp_path / "build"
    arts = compile_contracts(contracts_dir(), build)
    art = arts["NodeRegistry"]
    assert art.bytecode.startswith("0x6") and len(art.bytecode) > 1000
    assert art.solc_version.startswith(solc_package_version() + "+commit")
    names = {e.get("name") for e in art.abi}
    assert {"registerNode", "settleUsage", "throttle", "proposeSlash", "Unauthorized"} <= names
    assert len(list(build.glob("solc-*.json"))) == 1

    t0 = time.perf_counter()
    again = compile_contracts(contracts_dir(), build)
    assert time.perf_counter() - t0 < 0.5
    assert again == arts


def test_cache_key_follows_sources(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sol = src / "Tiny.sol"
    sol.write_text("// SPDX-License-Identifier: MIT\npragma solidity ^0.8.0;\ncontract Tiny {}\n")
    first = compile_contracts(src, tmp_path / "build")["Tiny"]
    sol.write_text(
        "// SPDX-License-Identifier: MIT\npragma solidity ^0.8.0;\n"
        "contract Tiny { function x() external pure returns (uint256) { return 1; } }\n"
    )
    second = compile_contracts(src, tmp_path / "build")["Tiny"]
    assert first.source_hash != second.source_hash
    assert first.bytecode != second.bytecode
    assert len(list((tmp_path / "build").glob("solc-*.json"))) == 2


def test_compile_error_carries_solc_messages(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "Broken.sol").write_text(
        "// SPDX-License-Identifier: MIT\npragma solidity ^0.8.0;\n"
        "contract Broken { function f() external { undefinedThing(); } }\n"
    )
    with pytest.raises(CompileError, match="undefinedThing") as info:
        compile_contracts(src, tmp_path / "build")
    assert "Broken.sol" in str(info.value)
    assert not list((tmp_path / "build").glob("solc-*.json"))
    with pytest.raises(CompileError, match="no .sol files"):
        compile_contracts(tmp_path / "empty", tmp_path / "build")


def test_dev_accounts_are_the_mnemonic_accounts() -> None:
    assert len(DEV_ACCOUNTS) == 10
    for address, key in DEV_ACCOUNTS:
        assert Account.from_key(key).address == address
    assert tuple(k for _, k in DEV_ACCOUNTS) == ANVIL_DEV_KEYS


def test_missing_anvil_says_run_make_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_NODE_MODULES", str(tmp_path))
    with pytest.raises(AnvilNotInstalled, match="make setup"):
        anvil_binary()
    with pytest.raises(CompileError, match="make setup"):
        solc_package_version()


def test_decode_custom_error_ignores_foreign_data() -> None:
    abi = [{"type": "error", "name": "Oops", "inputs": [{"name": "a", "type": "uint256"}]}]
    assert decode_custom_error(abi, "0x") is None
    assert decode_custom_error(abi, "0xdeadbeef") is None
    assert decode_custom_error(abi, None) is None
    sel = Web3.keccak(text="Oops(uint256)")[:4]
    assert decode_custom_error(abi, sel + (7).to_bytes(32, "big")) == ("Oops", (7,))


@pytest.mark.integration
def test_anvil_interval_mining_and_clean_stop(tmp_path: Path) -> None:
    port = free_port()
    with running_anvil(port, block_time=0.25, log_path=tmp_path / "anvil.log") as proc:
        w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}"))
        assert w3.eth.chain_id == ANVIL_CHAIN_ID
        assert w3.eth.accounts[:10] == [a for a, _ in DEV_ACCOUNTS]
        start = w3.eth.block_number
        deadline = time.monotonic() + 5
        while w3.eth.block_number < start + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert w3.eth.block_number >= start + 2
    assert not proc.alive()
    assert not port_open("127.0.0.1", port)
