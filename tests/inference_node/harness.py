"""Test helpers for the gateway and load generator: real HTTP servers on loopback, in threads.

Nodes and gateways run under uvicorn in background threads (each with its own
event loop) on ports the OS picks, so the gateway reaches them over real TCP;
`FakeEmbedder` stands in for the model where the numbers do not matter.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import uvicorn

from inference_node.model import Encoded
from inference_node.telemetry import Record


class FakeEmbedder:
    """Deterministic unit vectors from a hash of each text (fast, model-free)."""

    name = "fake"
    device = "cpu"
    dim = 16

    def encode(self, texts: list[str]) -> Encoded:
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            rows.append(v / np.linalg.norm(v))
        vectors = np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)
        return Encoded(vectors.astype(np.float32), self.count_tokens(texts))

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(t.split()) + 2 for t in texts]


class CaptureSink:
    """Verdict/telemetry sink that keeps the JSON it is sent."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def send(self, records: list[Record]) -> None:
        self.messages.extend(json.loads(r.to_json()) for r in records)

    async def close(self) -> None:
        pass


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@contextmanager
def serve_in_thread(app: Any, timeout: float = 60.0) -> Iterator[str]:
    """Run an ASGI app (lifespan included) under uvicorn in a thread; yield its base URL."""
    sock = _listening_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", log_level="warning")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("server thread died during startup")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextmanager
def dropping_node(node_id: str = "node-drop") -> Iterator[str]:
    """A node that looks healthy but drops the connection on every inference request.

    Real TCP: `/health` answers 200, a POST is read and then the socket is
    closed without a response, as when a node process dies mid-request.
    """
    loop = asyncio.new_event_loop()
    sock = _listening_socket()
    port = sock.getsockname()[1]
    health = json.dumps({"status": "ok", "node_id": node_id, "queue_depth": 0}).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0]
                length = 0
                for h in head.split(b"\r\n")[1:]:
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if line.startswith(b"GET /health"):
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        + f"content-length: {len(health)}\r\n\r\n".encode()
                        + health
                    )
                    await writer.drain()
                    continue
                break  # anything else: die mid-request
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.transport.abort()

    async def main(started: threading.Event, stop: asyncio.Event) -> None:
        server = await asyncio.start_server(handle, sock=sock)
        started.set()
        async with server:
            await stop.wait()

    started = threading.Event()
    stop_holder: dict[str, asyncio.Event] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        stop_holder["stop"] = asyncio.Event()
        loop.run_until_complete(main(started, stop_holder["stop"]))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop_holder["stop"].set)
        thread.join(timeout=10)
        loop.close()


def closed_port_url() -> str:
    """A loopback URL nobody listens on (a node that is offline)."""
    sock = _listening_socket()
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"
