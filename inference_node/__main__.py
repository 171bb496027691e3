"""`python -m inference_node serve|register`: run or register one inference node.

Configuration comes from `VIGIL_NODE_*` variables (see `NodeSettings`); the few
flags below override them for convenience. Secrets are read from the
environment only, never from argv (argv is visible to every local user).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from inference_node.settings import NodeSettings

log = logging.getLogger("inference_node")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m inference_node", description=__doc__)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the OpenAI-compatible API with uvicorn")
    serve.add_argument("--host", help="bind address (VIGIL_NODE_HOST)")
    serve.add_argument("--port", type=int, help="bind port (VIGIL_NODE_PORT)")
    serve.add_argument("--device", choices=["auto", "cpu", "cuda"], help="VIGIL_NODE_DEVICE")
    serve.add_argument("--access-log", action="store_true", help="log each request line")

    reg = sub.add_parser("register", help="register the node on chain and exit")
    reg.add_argument("--stake-wei", type=int, required=True, help="stake sent with the call")
    return p


def _settings(overrides: dict[str, Any]) -> NodeSettings:
    try:
        return NodeSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise SystemExit(f"invalid node settings:\n{exc}") from exc


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from inference_node.server import create_app

    settings = _settings({"host": args.host, "port": args.port, "device": args.device})
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=args.access_log,
        log_config=None,  # keep the logging configured in main()
        timeout_graceful_shutdown=10,
    )
    return 0


def _register(settings: NodeSettings, stake_wei: int) -> dict[str, Any]:
    from inference_node.faults import FaultConfig, FaultInjector
    from inference_node.settlement import ChainError, register_identities, registry_from_settings

    if settings.operator_private_key is None:
        raise SystemExit("register needs VIGIL_NODE_OPERATOR_PRIVATE_KEY")
    try:
        client = registry_from_settings(settings)
        sybils = FaultInjector(FaultConfig.from_settings(settings)).sybil_identities
        done = register_identities(client, settings, stake_wei, sybils)
    except ChainError as exc:
        raise SystemExit(f"registration failed: {exc}") from exc
    return {
        "operator": client.operator,
        "nodes": [
            {"node": node, "tx_hash": r["transactionHash"].to_0x_hex() if r else None}
            for node, r in done
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "serve":
        return _serve(args)
    result = _register(_settings({}), args.stake_wei)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
