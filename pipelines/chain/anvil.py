"""Start a local anvil chain (from the pinned npm package) as a supervised child."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pipelines.chain.contracts import node_modules_dir
from pipelines.procs import ManagedProcess

#: anvil's (and hardhat's) well-known public test mnemonic. Development only.
TEST_MNEMONIC = "test test test test test test test test test test test junk"

#: anvil's default chain id.
ANVIL_CHAIN_ID = 31337

#: The first 10 (address, private key) pairs derived from TEST_MNEMONIC, each funded
#: with 10,000 ETH by anvil. Public knowledge: never protect real funds with them.
DEV_ACCOUNTS: tuple[tuple[str, str], ...] = (
    (
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    ),
    (
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    ),
    (
        "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
        "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    ),
    (
        "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
        "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    ),
    (
        "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65",
        "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    ),
    (
        "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc",
        "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    ),
    (
        "0x976EA74026E726554dB657fA54763abd0C3a0aa9",
        "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    ),
    (
        "0x14dC79964da2C08b23698B3D3cc7Ca32193d9955",
        "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    ),
    (
        "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f",
        "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    ),
    (
        "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720",
        "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
    ),
)


class AnvilNotInstalled(FileNotFoundError):
    """The pinned anvil binary is missing."""


def anvil_binary() -> Path:
    """Path of the anvil binary shipped by `@foundry-rs/anvil-linux-amd64`."""
    path = node_modules_dir() / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
    if not path.is_file():
        raise AnvilNotInstalled(
            f"anvil not found at {path}; run `make setup` (it installs the pinned npm toolchain)"
        )
    return path


def rpc_url(port: int, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{port}"


def chain_id_answers(url: str, timeout: float = 1.0) -> bool:
    """True when the JSON-RPC endpoint at `url` answers `eth_chainId`."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    req = urllib.request.Request(  # noqa: S310 - local http URL built by us
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
        reply = json.loads(resp.read())
    return isinstance(reply.get("result"), str) and reply["result"].startswith("0x")


def anvil_argv(
    port: int,
    *,
    block_time: float | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    argv = [
        str(anvil_binary()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--mnemonic",
        TEST_MNEMONIC,
        "--accounts",
        str(len(DEV_ACCOUNTS)),
        "--chain-id",
        str(ANVIL_CHAIN_ID),
    ]
    if block_time is not None:
        if block_time <= 0:
            raise ValueError("block_time must be positive (None: mine on every transaction)")
        argv += ["--block-time", f"{block_time:g}"]
    argv += list(extra_args)
    return argv


def start_anvil(
    port: int,
    *,
    block_time: float | None = None,
    log_path: Path | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> ManagedProcess:
    """Start anvil on 127.0.0.1:`port` and wait until it answers `eth_chainId`.

    `block_time=None` mines a block per transaction (automine); otherwise blocks are
    mined every `block_time` seconds. The caller stops it with `.stop()`; the returned
    process is already started, so do not enter it as a context manager (that would
    start a second one): use `running_anvil` for a `with` block.
    """
    proc = ManagedProcess(
        "anvil",
        anvil_argv(port, block_time=block_time, extra_args=extra_args),
        log_path=log_path,
    )
    proc.start()
    url = rpc_url(port)
    try:
        proc.wait_healthy(lambda: chain_id_answers(url), timeout=timeout)
    except BaseException:
        proc.stop()
        raise
    return proc


@contextmanager
def running_anvil(
    port: int,
    *,
    block_time: float | None = None,
    log_path: Path | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> Iterator[ManagedProcess]:
    """`start_anvil` as a context manager that always stops the chain."""
    proc = start_anvil(
        port, block_time=block_time, log_path=log_path, extra_args=extra_args, timeout=timeout
    )
    try:
        yield proc
    finally:
        proc.stop()
