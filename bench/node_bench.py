"""Inference node throughput and latency per max batch size, on this machine's device.

Drives the node's real ASGI app in process (routing, validation, batching,
model, hashing, metering, JSON) with a fixed number of concurrent clients, once
per `max_batch_size`, and prints requests/s with p50/p99 latency. Run on a GPU
machine to compare devices: the device in use is printed with the results.

    python bench/node_bench.py                      # batch sizes 1, 8, 32; device auto
    python bench/node_bench.py --device cpu --requests 200 --concurrency 32 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference_node.model import MiniLMEmbedder  # noqa: E402
from inference_node.server import create_app  # noqa: E402
from inference_node.settings import NodeSettings  # noqa: E402

WORDS = [
    "node",
    "stake",
    "usage",
    "settlement",
    "inference",
    "batch",
    "token",
    "model",
    "network",
    "chain",
    "verifier",
    "latency",
    "throughput",
    "commitment",
    "telemetry",
]


def _text(i: int, words: int) -> str:
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(words)) + f" #{i}"


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def _run_one(
    embedder: MiniLMEmbedder, batch: int, args: argparse.Namespace
) -> dict[str, Any]:
    settings = NodeSettings(
        device=embedder.device,
        max_batch_size=batch,
        max_wait_ms=args.max_wait_ms,
        queue_limit=max(256, args.concurrency),
    )
    app = create_app(settings, embedder=embedder)
    latencies: list[float] = []
    errors = 0
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://node", timeout=120
        ) as client:
            for i in range(args.warmup):
                await client.post("/v1/embeddings", json={"input": _text(i, args.words)})
            counter = iter(range(args.requests))

            async def worker() -> None:
                nonlocal errors
                for i in counter:
                    t0 = time.perf_counter()
                    r = await client.post("/v1/embeddings", json={"input": _text(i, args.words)})
                    if r.status_code == 200:
                        latencies.append((time.perf_counter() - t0) * 1000.0)
                    else:
                        errors += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            wall = time.perf_counter() - t0
            batches = app.state.node.batcher.batches if app.state.node.batcher else 0
    return {
        "max_batch_size": batch,
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": _pct(latencies, 0.99) if latencies else float("nan"),
        "mean_batch": (args.requests + args.warmup) / max(1, batches),
    }


async def _verify(embedder: MiniLMEmbedder, args: argparse.Namespace) -> dict[str, Any]:
    """Serve on the bench device, judge with a CPU model: GPU math is not bit-exact."""
    from inference_node.commitments import output_hash
    from inference_node.verifier import Verifier

    reference = MiniLMEmbedder(device="cpu", model_path=args.model_path)
    verifier = Verifier(reference)
    app = create_app(NodeSettings(device=embedder.device), embedder=embedder)
    verdicts = []
    same_hash = 0
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            for i in range(20):
                texts = [_text(i * 3 + k, args.words + k) for k in range(3)]
                r = await client.post("/v1/embeddings", json={"input": texts})
                rid, served = r.json()["id"], r.headers["x-vigil-output-hash"]
                same_hash += served == output_hash(reference.encode(texts).vectors)
                verdicts.append(
                    await verifier.spot_check(
                        client, "http://node", rid, expected_hash=served, expected_inputs=texts
                    )
                )
    return {
        "checked": len(verdicts),
        "passed": sum(v.passed for v in verdicts),
        "min_cosine": min(v.cosine for v in verdicts),
        "same_hash": same_hash,
        "tolerance": verifier.tolerance,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--requests", type=int, default=300, help="timed requests per batch size")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    p.add_argument("--words", type=int, default=16, help="words per input")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--model-path", type=Path, help="model folder (default: the pip package)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="also spot-check served outputs against a CPU copy of the model",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    embedder = MiniLMEmbedder(device=args.device, model_path=args.model_path)
    if embedder.device == "cuda":
        device_name = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        device_name = (
            f"cpu ({platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} torch threads)"
        )
    print(
        f"device: {device_name}; torch {torch.__version__}; "
        f"{args.requests} requests x {args.words} words, {args.concurrency} concurrent clients"
    )
    rows = []
    print(
        f"{'max_batch':>9} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'mean batch':>10} "
        f"{'errors':>6}"
    )
    for b in (int(x) for x in args.batch_sizes.split(",")):
        row = asyncio.run(_run_one(embedder, b, args))
        rows.append(row)
        print(
            f"{b:>9} {row['rps']:>9.1f} {row['p50_ms']:>9.1f} {row['p99_ms']:>9.1f} "
            f"{row['mean_batch']:>10.1f} {row['errors']:>6}"
        )
    result: dict[str, Any] = {"device": device_name, "results": rows}
    if args.verify:
        result["verify"] = asyncio.run(_verify(embedder, args))
        v = result["verify"]
        print(
            f"spot check vs CPU reference: {v['passed']}/{v['checked']} passed, "
            f"min cosine {v['min_cosine']:.6f}, byte-identical hashes {v['same_hash']}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
