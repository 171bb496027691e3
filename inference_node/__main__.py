"""`python -m inference_node serve|register|gateway|load`: nodes, the gateway, user load.

- `serve` / `register`: run or register one inference node (`VIGIL_NODE_*`, see
  `NodeSettings`).
- `gateway`: the OpenAI-compatible gateway that routes users to nodes and
  spot-checks them (`VIGIL_GATEWAY_*`, see `gateway.GatewaySettings`).
- `load`: realistic user traffic against a gateway; prints a JSON summary.

The few flags below override the variables for convenience. Secrets are read
from the environment only, never from argv (argv is visible to every local user).
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

    gw = sub.add_parser("gateway", help="route users to nodes and spot-check them")
    gw.add_argument("--host", help="bind address (VIGIL_GATEWAY_HOST)")
    gw.add_argument("--port", type=int, help="bind port (VIGIL_GATEWAY_PORT)")
    gw.add_argument(
        "--node",
        action="append",
        metavar="ID=URL[=0xADDR]",
        help="a node to route to (repeatable; replaces VIGIL_GATEWAY_NODES)",
    )
    gw.add_argument("--spot-check-rate", type=float, help="VIGIL_GATEWAY_SPOT_CHECK_RATE")
    gw.add_argument("--kafka-bootstrap", help="verdicts to Kafka (VIGIL_GATEWAY_KAFKA_BOOTSTRAP)")
    gw.add_argument("--device", choices=["auto", "cpu", "cuda"], help="VIGIL_GATEWAY_DEVICE")
    gw.add_argument("--access-log", action="store_true", help="log each request line")

    load = sub.add_parser("load", help="send realistic user requests through a gateway")
    load.add_argument("--url", default="http://127.0.0.1:8000", help="gateway (or node) URL")
    load.add_argument("--rate", type=float, default=5.0, help="mean requests/s (Poisson)")
    load.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals")
    load.add_argument("--requests", type=int, help="stop after this many requests")
    load.add_argument("--concurrency", type=int, default=32, help="requests in flight at most")
    load.add_argument("--users", type=int, default=20, help="distinct user accounts")
    load.add_argument("--seed", type=int, default=0)
    load.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    load.add_argument("--max-inputs", type=int, default=8, help="largest batch per request")
    load.add_argument("--json", dest="json_path", help="also write the summary to this file")
    load.add_argument("--no-progress", action="store_true", help="no progress bar")
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


def _gateway(args: argparse.Namespace) -> int:
    import uvicorn

    from inference_node.gateway import GatewayConfigError, GatewaySettings, create_gateway

    overrides: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "spot_check_rate": args.spot_check_rate,
        "kafka_bootstrap": args.kafka_bootstrap,
        "device": args.device,
        "nodes": ",".join(args.node) if args.node else None,
    }
    try:
        settings = GatewaySettings(**{k: v for k, v in overrides.items() if v is not None})
        app = create_gateway(settings)
    except (ValidationError, GatewayConfigError) as exc:
        raise SystemExit(f"invalid gateway settings:\n{exc}") from exc
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=args.access_log,
        log_config=None,
        timeout_graceful_shutdown=10,
    )
    return 0


def _load(args: argparse.Namespace) -> int:
    import asyncio

    from inference_node.load import LoadConfig, LoadConfigError, LoadSummary, run_load

    try:
        cfg = LoadConfig(
            url=args.url,
            rate=args.rate,
            duration_s=args.duration,
            max_requests=args.requests,
            concurrency=args.concurrency,
            users=args.users,
            seed=args.seed,
            timeout_s=args.timeout,
            max_inputs=args.max_inputs,
        )
    except LoadConfigError as exc:
        raise SystemExit(f"invalid load settings: {exc}") from exc
    if args.no_progress:
        summary = asyncio.run(run_load(cfg))
    else:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        with Progress(
            TextColumn("[bold]load[/]"),
            BarColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("load", total=cfg.duration_s, stats="")

            def on_progress(s: LoadSummary, elapsed: float) -> None:
                stats = f"sent {s.sent} ok {s.ok} 429 {s.throttled} err {s.errors}"
                progress.update(task, completed=min(elapsed, cfg.duration_s), stats=stats)

            summary = asyncio.run(run_load(cfg, on_progress=on_progress))
        d = summary.to_dict()
        console.print(
            f"sent {d['sent']}  ok {d['ok']}  429 {d['throttled_429']}  errors {d['errors']}  "
            f"p50 {d['p50_ms']} ms  p99 {d['p99_ms']} ms  ({d['achieved_rps']} req/s)"
        )
    result = json.dumps(summary.to_dict())
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as f:
            f.write(result + "\n")
    sys.stdout.write(result + "\n")
    return 1 if summary.sent and not summary.ok else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.log_level != "debug":  # httpx logs every request at INFO (gateway, load)
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "serve":
        return _serve(args)
    if args.command == "gateway":
        return _gateway(args)
    if args.command == "load":
        return _load(args)
    result = _register(_settings({}), args.stake_wei)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
