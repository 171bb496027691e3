"""Telemetry to Kafka `node.telemetry.v1`, through a bounded buffer that rides out outages.

The buffer and sink carry any `Record` (the gateway sends spot-check verdicts
to `node.challenges.v1` through the same machinery).

Records go into an in-memory buffer and a single sender task moves them to
Kafka; a record leaves the buffer only once the broker acknowledged it, so a
broker hiccup loses nothing while the buffer has room (delivery is at least
once: a retried send may duplicate). When the buffer is full the oldest record
is dropped and counted, so serving never blocks on telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TELEMETRY_TOPIC = "node.telemetry.v1"


@dataclass(frozen=True)
class TelemetryRecord:
    """One message of `node.telemetry.v1` (the monitor decodes exactly these fields)."""

    node_id: str
    kind: Literal["batch", "heartbeat"]
    ts: float
    latency_ms: float
    batch_size: int
    tokens: int
    queue_depth: int
    errors: int
    device: str
    gpu_util: float
    gpu_mem_mb: float
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        d = asdict(self)
        d = {"schema_version": d.pop("schema_version"), **d}
        return json.dumps(d, separators=(",", ":")).encode()


class Record(Protocol):
    """What the buffer and the Kafka sink need of a message (telemetry, spot-check verdicts)."""

    @property
    def node_id(self) -> str: ...

    def to_json(self) -> bytes: ...


class TelemetrySink(Protocol):
    """Where buffered records go; raises on any failure to deliver the whole batch."""

    async def send(self, records: list[Record]) -> None: ...

    async def close(self) -> None: ...


class KafkaSink:
    """aiokafka producer; re-created after a failure so a broker restart is survived."""

    def __init__(
        self, bootstrap: str, topic: str = TELEMETRY_TOPIC, *, request_timeout_s: float = 5.0
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.request_timeout_s = request_timeout_s
        self._producer: Any = None

    async def _ensure(self) -> Any:
        if self._producer is None:
            from aiokafka import AIOKafkaProducer

            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                request_timeout_ms=int(self.request_timeout_s * 1000),
                linger_ms=5,
                client_id="vigil-inference-node",
            )
            try:
                await producer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def send(self, records: list[Record]) -> None:
        try:
            producer = await self._ensure()
            futures = [
                await producer.send(self.topic, r.to_json(), key=r.node_id.encode())
                for r in records
            ]
            await asyncio.wait_for(asyncio.gather(*futures), self.request_timeout_s * 2)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), self.request_timeout_s)


class TelemetryBuffer:
    """Bounded FIFO of records plus the task that drains it into a sink with retries."""

    def __init__(
        self,
        sink: TelemetrySink,
        *,
        capacity: int = 10_000,
        max_batch: int = 500,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
    ) -> None:
        if capacity < 1 or max_batch < 1:
            raise ValueError("capacity and max_batch must be >= 1")
        self.sink = sink
        self.capacity = capacity
        self.max_batch = max_batch
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._buf: deque[Record] = deque()
        self._inflight = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.dropped = 0
        self.send_failures = 0
        self._last_warning = 0.0

    def __len__(self) -> int:
        return len(self._buf) + self._inflight

    def emit(self, record: Record) -> None:
        """Queue one record; never blocks. Drops (and counts) the oldest when full."""
        self._buf.append(record)
        self._trim()
        if self._wakeup is not None:
            self._wakeup.set()

    def _trim(self) -> None:
        while len(self._buf) + self._inflight > self.capacity and self._buf:
            self._buf.popleft()
            self.dropped += 1

    async def start(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            if self._buf:
                self._wakeup.set()
            self._task = asyncio.create_task(self._run(), name="vigil-telemetry")

    async def _run(self) -> None:
        assert self._wakeup is not None
        delay = self.retry_initial_s
        while True:
            if not self._buf:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [self._buf.popleft() for _ in range(min(self.max_batch, len(self._buf)))]
            self._inflight = len(batch)
            try:
                await self.sink.send(batch)
            except asyncio.CancelledError:
                self._requeue(batch)
                raise
            except Exception as exc:  # noqa: BLE001 - any broker error: keep and retry
                self._requeue(batch)
                self.send_failures += 1
                self._warn(exc)
                await asyncio.sleep(delay)
                delay = min(self.retry_max_s, delay * 2)
                continue
            self._inflight = 0
            self.sent += len(batch)
            delay = self.retry_initial_s

    def _requeue(self, batch: list[Record]) -> None:
        self._inflight = 0
        self._buf.extendleft(reversed(batch))
        self._trim()

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10.0:
            self._last_warning = now
            log.warning(
                "telemetry send failed (%s: %s); %d records buffered, %d dropped so far",
                type(exc).__name__,
                exc,
                len(self),
                self.dropped,
            )

    async def flush(self, timeout: float) -> bool:
        """Wait until the buffer is empty; False when `timeout` passed first."""
        deadline = time.monotonic() + timeout
        while len(self) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not len(self)

    async def stop(self, flush_timeout: float = 3.0) -> None:
        if self._task is not None:
            await self.flush(flush_timeout)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if len(self):
            log.warning("telemetry stopped with %d unsent records", len(self))
        await self.sink.close()
