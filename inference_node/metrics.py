"""Prometheus metrics of one node, in a registry of its own (one per app instance)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST as PROM_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["NodeMetrics", "PROM_CONTENT_TYPE"]

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class NodeMetrics:
    """Counters and gauges that an operator's Prometheus scrapes from `/metrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.info = Gauge(
            "vigil_node_info", "Static node info", ["node_id", "device", "model"], registry=r
        )
        self.requests = Counter(
            "vigil_node_requests_total",
            "Requests by endpoint and outcome",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "vigil_node_request_seconds",
            "End-to-end request latency",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "vigil_node_batch_size",
            "Inputs per forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.batch_latency = Histogram(
            "vigil_node_batch_seconds", "Forward pass time", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.tokens = Counter("vigil_node_tokens_total", "Tokens served", registry=r)
        self.compute_seconds = Counter(
            "vigil_node_compute_seconds_total", "Model compute time", registry=r
        )
        self.rejected = Counter(
            "vigil_node_rejected_total", "Requests refused before serving", ["reason"], registry=r
        )
        self.queue_depth = Gauge("vigil_node_queue_depth", "Requests waiting", registry=r)
        self.challenges = Counter(
            "vigil_node_challenges_total",
            "Challenge requests by outcome",
            ["outcome"],
            registry=r,
        )
        self.challenge_window = Gauge(
            "vigil_node_challenge_window", "Requests currently challengeable", registry=r
        )
        self.settlements = Counter(
            "vigil_node_settlements_total",
            "Settlement attempts by outcome",
            ["outcome"],
            registry=r,
        )
        self.settled_units = Counter(
            "vigil_node_settled_units_total", "Units settled on chain", registry=r
        )
        self.telemetry_buffered = Gauge(
            "vigil_node_telemetry_buffered", "Telemetry records not yet acknowledged", registry=r
        )
        self.telemetry_sent = Gauge(
            "vigil_node_telemetry_sent", "Telemetry records acknowledged by Kafka", registry=r
        )
        self.telemetry_dropped = Gauge(
            "vigil_node_telemetry_dropped", "Telemetry records dropped (buffer full)", registry=r
        )
        self._collect_hooks: list[Callable[[], None]] = []

    def on_collect(self, hook: Callable[[], None]) -> None:
        """Run `hook` before each scrape (refreshes gauges read from other objects)."""
        self._collect_hooks.append(hook)

    def render(self) -> bytes:
        for hook in self._collect_hooks:
            hook()
        return bytes(generate_latest(self.registry))
