"""Local inference nodes for the embedded stack: plan, configure and start them.

Each node is a real `python -m inference_node serve` process with its own operator
key (anvil dev accounts from index 3 on), its own identity address, registration
with stake on the NodeRegistry, telemetry to Kafka and periodic usage settlement.
Faulty nodes get `VIGIL_NODE_FAULT`; nothing else tells them apart.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_utils import keccak

from pipelines.chain.anvil import DEV_ACCOUNTS
from pipelines.procs import ManagedProcess, free_port

FAULTS = ("overclaim", "lazy", "slow", "flaky", "offline", "sybil")
FIRST_OPERATOR = 3  # dev accounts 0-2: deployer, monitor, governance
NODE_STAKE_WEI = 10 * 10**18


class NodePlanError(ValueError):
    """The requested node mix cannot be built."""


@dataclass(frozen=True)
class NodeSpec:
    id: str
    address: str
    operator: str
    operator_key: str
    port: int
    fault: str  # "none" or one of FAULTS

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def manifest(self) -> dict[str, str]:
        return {
            "id": self.id,
            "address": self.address,
            "url": self.url,
            "operator": self.operator,
            "fault": self.fault,
        }


def parse_faulty(text: str) -> dict[str, int]:
    """'lazy:1,overclaim:1' -> {'lazy': 1, 'overclaim': 1}."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, count = part.partition(":")
        if name not in FAULTS:
            raise NodePlanError(f"unknown fault {name!r}; choose from {', '.join(FAULTS)}")
        try:
            n = int(count or "1")
        except ValueError:
            raise NodePlanError(f"bad count in {part!r} (expected fault:N)") from None
        if n < 0:
            raise NodePlanError(f"negative count in {part!r}")
        out[name] = out.get(name, 0) + n
    return out


def plan_nodes(n: int, faulty: dict[str, int], *, seed: int = 0) -> list[NodeSpec]:
    """N nodes, the first ones carrying the requested faults, one operator each."""
    faults = [f for f, k in sorted(faulty.items()) for _ in range(k)]
    if len(faults) > n:
        raise NodePlanError(f"{len(faults)} faulty nodes requested but only {n} nodes")
    if n > len(DEV_ACCOUNTS) - FIRST_OPERATOR:
        raise NodePlanError(f"at most {len(DEV_ACCOUNTS) - FIRST_OPERATOR} local nodes")
    specs = []
    for i in range(n):
        operator, key = DEV_ACCOUNTS[FIRST_OPERATOR + i]
        identity = Account.from_key(keccak(text=f"vigil-node:{seed}:{i}")).address
        # The node's id is its on-chain identity: telemetry, verdicts, claims and
        # enforcement all name it the same way.
        specs.append(
            NodeSpec(
                id=identity.lower(),
                address=identity,
                operator=operator,
                operator_key=key,
                port=free_port(),
                fault=faults[i] if i < len(faults) else "none",
            )
        )
    return specs


def write_abi(abi: list[dict[str, object]], data_dir: Path) -> Path:
    path = data_dir / "abi" / "NodeRegistry.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(abi))
    return path


def node_env(
    spec: NodeSpec,
    *,
    rpc_url: str,
    registry: str,
    abi_path: Path,
    kafka_bootstrap: str,
    settle_interval_s: float = 10.0,
    challenge_token: str = "",
) -> dict[str, str]:
    env = {
        # Local nodes sign with anvil dev keys, which a node refuses unless told that
        # it belongs to the embedded demo stack.
        "VIGIL_NODE_EMBEDDED": "true",
        "VIGIL_NODE_NODE_ID": spec.id,
        "VIGIL_NODE_NODE_ADDRESS": spec.address,
        "VIGIL_NODE_OPERATOR_PRIVATE_KEY": spec.operator_key,
        "VIGIL_NODE_PUBLIC_URL": spec.url,
        "VIGIL_NODE_PORT": str(spec.port),
        "VIGIL_NODE_RPC_URL": rpc_url,
        "VIGIL_NODE_REGISTRY_ADDRESS": registry,
        "VIGIL_NODE_ABI_PATH": str(abi_path),
        "VIGIL_NODE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "VIGIL_NODE_SETTLE_INTERVAL_S": str(settle_interval_s),
        "VIGIL_NODE_REGISTER_STAKE_WEI": str(NODE_STAKE_WEI),
        "VIGIL_NODE_HEARTBEAT_INTERVAL_S": "2",
        "VIGIL_NODE_FAULT": spec.fault,
        "VIGIL_NODE_DEVICE": "auto",
    }
    if challenge_token:
        env["VIGIL_NODE_CHALLENGE_TOKEN"] = challenge_token
    return env


def node_argv() -> list[str]:
    return [sys.executable, "-m", "inference_node", "serve"]


def healthy(spec: NodeSpec) -> bool:
    with urllib.request.urlopen(f"{spec.url}/health", timeout=2) as r:  # noqa: S310 - loopback
        return bool(r.status == 200)


def start_node(spec: NodeSpec, env: dict[str, str], log_dir: Path) -> ManagedProcess:
    return ManagedProcess(
        spec.id, node_argv(), log_path=log_dir / f"{spec.id}.log", env=env
    ).start()
