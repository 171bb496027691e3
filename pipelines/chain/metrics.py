"""Prometheus metrics of the block follower (served on `/metrics`).

Why its own registry: several followers (or a follower and a benchmark) can live in
one process, e.g. in tests, without clashing on the global default registry.
Rates (blocks/s, txs/s) are exported both as counters, for PromQL `rate()`, and as
gauges smoothed over the last few seconds, for a quick look without a Prometheus.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from pipelines.chain.rpc import PoolHooks

log = logging.getLogger(__name__)


class RateMeter:
    """Events per second over a sliding window of `span_s` seconds."""

    def __init__(self, span_s: float = 10.0) -> None:
        self.span_s = span_s
        self._events: deque[tuple[float, int]] = deque()
        self._total = 0

    def add(self, n: int, now: float | None = None) -> None:
        t = time.monotonic() if now is None else now
        self._events.append((t, n))
        self._total += n
        self._trim(t)

    def rate(self, now: float | None = None) -> float:
        t = time.monotonic() if now is None else now
        self._trim(t)
        if not self._events:
            return 0.0
        span = max(t - self._events[0][0], 1.0)
        return self._total / span

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.span_s:
            self._total -= self._events.popleft()[1]


class FollowerMetrics:
    """Counters and gauges of one follower; `hooks()` wires the RPC pool into them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.head_block = Gauge("vigil_follower_head_block", "Chain head seen", registry=r)
        self.published_block = Gauge(
            "vigil_follower_published_block",
            "Newest block published, per lane",
            ["lane"],
            registry=r,
        )
        self.head_lag_blocks = Gauge(
            "vigil_follower_head_lag_blocks",
            "Head minus the newest published block (any lane)",
            registry=r,
        )
        self.head_lag_seconds = Gauge(
            "vigil_follower_head_lag_seconds",
            "Now minus the timestamp of the newest published block",
            registry=r,
        )
        self.blocks = Counter(
            "vigil_follower_blocks", "Blocks published, per lane", ["lane"], registry=r
        )
        self.txs = Counter(
            "vigil_follower_txs", "Transactions published, per lane", ["lane"], registry=r
        )
        self.blocks_per_s = Gauge(
            "vigil_follower_blocks_per_second", "Blocks published per second (10 s)", registry=r
        )
        self.txs_per_s = Gauge(
            "vigil_follower_txs_per_second", "Transactions published per second (10 s)", registry=r
        )
        self.rpc_requests = Counter(
            "vigil_rpc_requests", "JSON-RPC HTTP requests", ["endpoint"], registry=r
        )
        self.rpc_calls = Counter(
            "vigil_rpc_calls", "JSON-RPC calls (batch items)", ["endpoint"], registry=r
        )
        self.rpc_errors = Counter(
            "vigil_rpc_errors",
            "JSON-RPC failures by endpoint and kind",
            ["endpoint", "kind"],
            registry=r,
        )
        self.rpc_latency = Histogram(
            "vigil_rpc_request_seconds", "JSON-RPC request latency", ["endpoint"], registry=r
        )
        self.rpc_up = Gauge("vigil_rpc_endpoint_up", "1 when usable", ["endpoint"], registry=r)
        self.reorgs = Counter("vigil_follower_reorgs", "Reorgs detected", registry=r)
        self.reorg_depth = Histogram(
            "vigil_follower_reorg_depth_blocks",
            "Published blocks orphaned per reorg",
            buckets=(1, 2, 3, 5, 8, 13, 21, 34, 64, 128),
            registry=r,
        )
        self.orphaned_txs = Counter(
            "vigil_follower_orphaned_txs", "Transactions retracted after reorgs", registry=r
        )
        self.checkpoint_block = Gauge(
            "vigil_follower_checkpoint_block", "Confirmed block in the checkpoint", registry=r
        )
        self._blocks_rate = RateMeter()
        self._txs_rate = RateMeter()
        self._newest_time = 0.0

    def hooks(self) -> PoolHooks:
        def on_request(endpoint: str, calls: int, seconds: float) -> None:
            self.rpc_requests.labels(endpoint).inc()
            self.rpc_calls.labels(endpoint).inc(calls)
            self.rpc_latency.labels(endpoint).observe(seconds)

        def on_error(endpoint: str, kind: str) -> None:
            self.rpc_errors.labels(endpoint, kind).inc()

        def on_health(endpoint: str, up: bool) -> None:
            self.rpc_up.labels(endpoint).set(1.0 if up else 0.0)

        return PoolHooks(on_request=on_request, on_error=on_error, on_health=on_health)

    def published(self, lane: str, number: int, block_time: float, n_txs: int) -> None:
        self.blocks.labels(lane).inc()
        self.txs.labels(lane).inc(n_txs)
        self.published_block.labels(lane).set(number)
        self._blocks_rate.add(1)
        self._txs_rate.add(n_txs)
        self._newest_time = max(self._newest_time, block_time)

    @property
    def newest_block_time(self) -> float:
        """Timestamp of the newest block published so far (0.0 before the first)."""
        return self._newest_time

    def observe_head(self, head: int, newest_published: int) -> None:
        self.head_block.set(head)
        self.head_lag_blocks.set(max(0, head - newest_published))
        if self._newest_time:
            self.head_lag_seconds.set(max(0.0, time.time() - self._newest_time))
        self.blocks_per_s.set(self._blocks_rate.rate())
        self.txs_per_s.set(self._txs_rate.rate())

    def reorg(self, depth: int, orphaned_txs: int) -> None:
        self.reorgs.inc()
        self.reorg_depth.observe(depth)
        self.orphaned_txs.inc(orphaned_txs)

    def serve(self, port: int, host: str = "127.0.0.1") -> Any:
        """Start the `/metrics` HTTP endpoint (a daemon thread); returns the server."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("follower metrics on http://%s:%d/metrics", host, port)
        return server
