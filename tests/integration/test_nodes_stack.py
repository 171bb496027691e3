"""Inference nodes in the embedded stack: honest, lazy and overclaiming, end to end.

`vigil up --nodes 3 --faulty-nodes lazy:1,overclaim:1` runs three real MiniLM nodes
registered on chain, a gateway routing user load to them with spot checks, and the
monitor. The lazy node must fail spot checks and the overclaiming one must claim more
than its telemetry shows: both get a slash proposal whose evidence the API serves;
the honest node keeps a high reputation and gets no action.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from pipelines.chain.anvil import DEV_ACCOUNTS
from pipelines.chain.contracts import compile_project, transact
from pipelines.governance import verify_signature
from pipelines.procs import free_port
from tests.integration.stackrun import vigil_up, wait_for

pytestmark = pytest.mark.integration

DURATION_S = 150
WEBHOOK_SECRET = "test-webhook-secret"


class Receiver:
    """A governance webhook endpoint: checks signatures, fails each first delivery."""

    def __init__(self) -> None:
        self.deliveries: list[dict[str, Any]] = []
        self.first_attempts_failed: set[str] = set()
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = verify_signature(
                    WEBHOOK_SECRET,
                    self.headers.get("X-Vigil-Timestamp"),
                    body,
                    self.headers.get("X-Vigil-Signature"),
                )
                delivery = self.headers.get("X-Vigil-Delivery", "")
                if not ok:
                    receiver.bad_signatures += 1
                    self.send_response(401)
                elif delivery not in receiver.first_attempts_failed:
                    receiver.first_attempts_failed.add(delivery)  # forced 500: must retry
                    self.send_response(500)
                else:
                    receiver.deliveries.append(json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    receiver = Receiver()
    env = {
        "VIGIL_GOVERNANCE_WEBHOOK_URLS": receiver.url,
        "VIGIL_GOVERNANCE_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    try:
        with vigil_up(
            tmp_path_factory.mktemp("nodes"),
            "--duration",
            str(DURATION_S),
            "--traffic",
            "demo",
            "--nodes",
            "3",
            "--faulty-nodes",
            "lazy:1,overclaim:1",
            env=env,
        ) as run:
            m = dict(run.manifest)
            m["_ch"], m["_run"], m["_receiver"] = run.clickhouse(), run, receiver
            yield m
    finally:
        receiver.server.shutdown()


def _by_fault(m: dict[str, Any], fault: str) -> str:
    return next(n["id"] for n in m["nodes"] if n["fault"] == fault)


def test_manifest_lists_nodes_and_gateway(stack: dict[str, Any]) -> None:
    assert sorted(n["fault"] for n in stack["nodes"]) == ["lazy", "none", "overclaim"]
    for n in stack["nodes"]:
        assert {"id", "url", "operator", "fault"} <= set(n)
        assert Web3.is_address(n["id"]) and Web3.is_address(n["operator"])
    assert httpx.get(stack["gateway_url"] + "/health", timeout=5).status_code == 200


def test_registered_node_that_never_starts_gets_a_heartbeat_alert(stack: dict[str, Any]) -> None:
    """A node registered on chain that never sends anything is timed out from its
    registration (the worker reads `NodeRegistered`); the running nodes are not, nor is a
    node its operator took out of service (`NodeDeregistered`)."""
    w3 = Web3(Web3.HTTPProvider(stack["rpc_url"]))
    registry = w3.eth.contract(
        address=stack["contracts"]["NodeRegistry"], abi=compile_project()["NodeRegistry"].abi
    )
    silent = Account.from_key(keccak(text="vigil-test:silent-node")).address
    gone = Account.from_key(keccak(text="vigil-test:deregistered-node")).address
    stake = registry.functions.minStake().call()
    # the last dev account: not an operator of the stack's nodes, nor a traffic sender
    f, key = registry.functions, DEV_ACCOUNTS[-1][1]
    transact(w3, key, f.registerNode(gone, "http://127.0.0.1:9"), value=stake)
    transact(w3, key, f.registerNode(silent, "http://127.0.0.1:9"), value=stake)
    transact(w3, key, f.deregisterNode(gone))
    ch = stack["_ch"]

    def heartbeat_alerts(node: str) -> int:
        return int(
            ch.query(
                "SELECT count() FROM alerts WHERE entity = {n:String} "
                "AND detector = 'rule:heartbeat'",
                parameters={"n": node},
            ).result_rows[0][0]
        )

    assert wait_for(
        lambda: heartbeat_alerts(silent.lower()), 120, "a heartbeat alert about the silent node"
    )
    # `gone` was registered first: had its deregistration been missed, the timer pass that
    # named `silent` (or an earlier one) would have named it too, in the same insert
    assert heartbeat_alerts(gone.lower()) == 0
    assert all(heartbeat_alerts(n["id"]) == 0 for n in stack["nodes"])


def test_telemetry_reaches_clickhouse_and_usage_is_settled_on_chain(stack: dict[str, Any]) -> None:
    ch = stack["_ch"]
    ids = {n["id"] for n in stack["nodes"]}
    seen = wait_for(
        lambda: (
            {r[0] for r in ch.query("SELECT DISTINCT node_id FROM telemetry").result_rows} >= ids
        ),
        120,
        "telemetry from every node",
    )
    assert seen
    w3 = Web3(Web3.HTTPProvider(stack["rpc_url"]))
    registry = w3.eth.contract(
        address=stack["contracts"]["NodeRegistry"], abi=compile_project()["NodeRegistry"].abi
    )
    settled = wait_for(
        lambda: (
            {e["args"]["node"].lower() for e in registry.events.UsageSettled.get_logs(from_block=0)}
            >= ids
        ),
        120,
        "a usage settlement from every node",
    )
    assert settled


def test_faulty_nodes_get_slash_proposals_with_evidence_and_honest_one_nothing(
    stack: dict[str, Any],
) -> None:
    ch = stack["_ch"]
    lazy, over, honest = (_by_fault(stack, f) for f in ("lazy", "overclaim", "none"))
    proposals = wait_for(
        lambda: (lambda got: got if {lazy, over} <= set(got) else None)(
            dict(
                ch.query(
                    "SELECT target, evidence_hash FROM actions FINAL WHERE kind = 'slash_proposal'"
                ).result_rows
            )
        ),
        DURATION_S,
        "slash proposals against the lazy and the overclaiming node",
    )
    for node in (lazy, over):
        r = httpx.get(f"{stack['api_url']}/v1/evidence/{proposals[node]}", timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["verified"] and body["entity"] == node
    actions_on_honest = ch.query(
        "SELECT count() FROM actions FINAL WHERE target = {n:String}", parameters={"n": honest}
    ).result_rows[0][0]
    assert actions_on_honest == 0
    rep = httpx.get(f"{stack['api_url']}/v1/nodes/{honest}/reputation", timeout=10)
    assert rep.status_code == 200, rep.text
    assert rep.json()["score"] >= 80
    bad = httpx.get(f"{stack['api_url']}/v1/nodes/{lazy}/reputation", timeout=10).json()
    assert bad["score"] < rep.json()["score"]
    assert {c["name"] for c in bad["components"]} >= {"spot_checks", "slashes"}


def test_governance_gets_signed_alerts_after_retries_and_can_veto(stack: dict[str, Any]) -> None:
    receiver: Receiver = stack["_receiver"]
    lazy = _by_fault(stack, "lazy")
    alert = wait_for(
        lambda: next(
            (
                a
                for a in receiver.deliveries
                if a["kind"] == "slash_proposal" and a["entity"] == lazy
            ),
            None,
        ),
        DURATION_S,
        "a signed slash-proposal alert about the lazy node",
    )
    assert f"slash:{alert['evidence_hash']}" in receiver.first_attempts_failed  # retried
    assert receiver.bad_signatures == 0
    w3 = Web3(Web3.HTTPProvider(stack["rpc_url"]))
    registry = w3.eth.contract(
        address=stack["contracts"]["NodeRegistry"], abi=compile_project()["NodeRegistry"].abi
    )
    (event,) = registry.events.SlashProposed.get_logs(
        from_block=0, argument_filters={"evidenceHash": alert["evidence_hash"]}
    )
    pid = event["args"]["id"]
    transact(w3, DEV_ACCOUNTS[2][1], registry.functions.veto(pid))  # governance vetoes
    assert registry.functions.getProposal(pid).call()[-1] == 2  # Vetoed
    stake = registry.functions.nodeInfo(Web3.to_checksum_address(lazy)).call()[1]
    assert stake > 0  # nothing was taken


def test_summary_names_nodes_and_their_detection(stack: dict[str, Any]) -> None:
    summary = stack["_run"].finish(timeout=DURATION_S + 200)
    assert sorted(n["fault"] for n in summary["nodes"]) == ["lazy", "none", "overclaim"]
    assert summary["detection"]["node:lazy"]["recall"] == 1.0
    assert summary["detection"]["node:overclaim"]["recall"] == 1.0
