"""Settings, faults, metering, the challenge window, throttle cache and telemetry buffer."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from pydantic import ValidationError

from inference_node.devkeys import ANVIL_DEV_KEYS
from inference_node.faults import FaultConfig, FaultInjector, InjectedFault
from inference_node.metering import ChallengeStore, UsageMeter
from inference_node.settings import NodeSettings
from inference_node.telemetry import TelemetryBuffer, TelemetryRecord
from inference_node.throttle import ThrottleCache

KEY = "0x" + "5a" * 32  # an operator key of one's own (not an anvil dev key)
ADDR = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
TELEMETRY_FIELDS = {
    "schema_version",
    "node_id",
    "kind",
    "ts",
    "latency_ms",
    "batch_size",
    "tokens",
    "queue_depth",
    "errors",
    "device",
    "gpu_util",
    "gpu_mem_mb",
}


# ------------------------------------------------------------------- settings


def test_settings_come_from_vigil_node_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_NODE_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("VIGIL_NODE_FAULT", "lazy")
    monkeypatch.setenv("VIGIL_NODE_KAFKA_BOOTSTRAP", "kafka://k1:9092;k2:9092")
    monkeypatch.setenv("VIGIL_NODE_OPERATOR_PRIVATE_KEY", KEY)
    s = NodeSettings()
    assert (s.max_batch_size, s.fault, s.kafka_bootstrap) == (8, "lazy", "k1:9092,k2:9092")
    assert KEY not in repr(s) and KEY[2:] not in str(s.model_dump())
    assert s.telemetry_enabled and not s.chain_enabled


def test_invalid_settings_fail_at_startup() -> None:
    with pytest.raises(ValidationError):
        NodeSettings(fault="evil")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        NodeSettings(operator_private_key="not-a-key")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="chain settings incomplete"):
        NodeSettings(rpc_url="http://127.0.0.1:8545")
    with pytest.raises(ValidationError):
        NodeSettings(max_batch_size=0)


@pytest.mark.parametrize("index", range(len(ANVIL_DEV_KEYS)))
def test_dev_keys_are_refused_outside_the_embedded_demo(index: int) -> None:
    key = ANVIL_DEV_KEYS[index]
    for spelling in (key, key[2:], key.upper().replace("0X", "0x")):
        with pytest.raises(ValidationError, match="well-known anvil development key") as e:
            NodeSettings(operator_private_key=spelling)  # type: ignore[arg-type]
        text = str(e.value)
        assert "VIGIL_NODE_OPERATOR_PRIVATE_KEY" in text and "VIGIL_NODE_EMBEDDED" in text
        assert key[2:22] not in text.lower() and key[-20:] not in text.lower()  # not echoed


def test_dev_keys_are_refused_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_NODE_OPERATOR_PRIVATE_KEY", ANVIL_DEV_KEYS[3])
    with pytest.raises(ValidationError, match="only accepted by the embedded demo stack"):
        NodeSettings()
    monkeypatch.setenv("VIGIL_NODE_EMBEDDED", "false")
    with pytest.raises(ValidationError, match="well-known anvil development key"):
        NodeSettings()


def test_the_embedded_demo_accepts_dev_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    s = NodeSettings(operator_private_key=ANVIL_DEV_KEYS[3], embedded=True)  # type: ignore[arg-type]
    assert s.embedded and s.operator_private_key is not None
    monkeypatch.setenv("VIGIL_NODE_OPERATOR_PRIVATE_KEY", ANVIL_DEV_KEYS[4])
    monkeypatch.setenv("VIGIL_NODE_EMBEDDED", "true")
    assert NodeSettings().embedded


def test_an_own_key_needs_no_embedded_flag_and_no_key_is_fine() -> None:
    assert not NodeSettings(operator_private_key=KEY).embedded  # type: ignore[arg-type]
    assert NodeSettings().operator_private_key is None


def test_a_malformed_key_is_not_echoed_in_the_error() -> None:
    bad = "0x" + "7e" * 31 + "zz"  # a typo in a real key must not end up in a log
    with pytest.raises(ValidationError, match="32-byte hex private key") as e:
        NodeSettings(operator_private_key=bad)  # type: ignore[arg-type]
    assert "7e7e7e" not in str(e.value)


# ------------------------------------------------------------------- faults


def test_lazy_choice_is_seeded_per_request_and_garbage_repeats() -> None:
    f = FaultInjector(FaultConfig(fault="lazy", rate=0.5, seed=7))
    picks = [f.is_lazy(f"r{i}") for i in range(400)]
    assert 120 < sum(picks) < 280
    assert picks == [
        FaultInjector(FaultConfig(fault="lazy", rate=0.5, seed=7)).is_lazy(f"r{i}")
        for i in range(400)
    ]
    g = f.garbage("r1", 2, 384)
    assert (g == f.garbage("r1", 2, 384)).all() and (g != f.garbage("r2", 2, 384)).any()
    assert not FaultInjector(FaultConfig()).is_lazy("r1")


def test_flaky_fails_only_inside_bursts() -> None:
    now = [0.0]
    f = FaultInjector(
        FaultConfig(fault="flaky", rate=1.0, flaky_period_s=10, flaky_burst_s=2),
        clock=lambda: now[0],
    )
    with pytest.raises(InjectedFault):
        f.before_batch(1)
    now[0] = 5.0
    f.before_batch(1)
    now[0] = 11.0
    with pytest.raises(InjectedFault):
        f.before_batch(1)


def test_overclaim_offline_and_sybil_effects() -> None:
    assert FaultInjector(FaultConfig(fault="overclaim", overclaim_factor=3)).claimed_units(10) == 30
    assert FaultInjector(FaultConfig()).claimed_units(10) == 10
    now = [0.0]
    off = FaultInjector(FaultConfig(fault="offline", offline_after_s=5), clock=lambda: now[0])
    assert off.heartbeat_allowed()
    now[0] = 6.0
    assert not off.heartbeat_allowed()
    assert FaultInjector(FaultConfig(fault="sybil", sybil_identities=4)).sybil_identities == 4
    assert FaultInjector(FaultConfig(sybil_identities=4)).sybil_identities == 0


# ------------------------------------------------------------------- metering


def test_challenge_window_expires_and_is_capped() -> None:
    now = [0.0]
    store = ChallengeStore(ttl_s=10, cap=3, clock=lambda: now[0])
    for i in range(5):
        store.put(f"r{i}", [f"text {i}"], "0x" + "00" * 32)
    assert len(store) == 3 and store.get("r0") is None and store.get("r4") is not None
    now[0] = 10.5
    assert store.get("r4") is None and len(store) == 0


def test_failed_settlement_puts_usage_back_in_front() -> None:
    m = UsageMeter()
    full: list[int] = []
    m.soft_limit = 3
    m.on_full(lambda: full.append(m.pending))
    m.record("a", 5, 1.0, "0x" + "11" * 32)
    m.record("b", 7, 1.0, "0x" + "22" * 32)
    period = m.drain()
    assert (period.units, m.pending) == (12, 0)
    m.record("c", 1, 1.0, "0x" + "33" * 32)
    m.restore(period)
    merged = m.drain()
    assert [r.request_id for r in merged.records] == ["a", "b", "c"]
    assert merged.commitment != period.commitment
    m2 = UsageMeter(keep_records=False)
    m2.record("a", 5, 1.0, "0x" + "11" * 32)
    assert m2.pending == 0 and m2.total_tokens == 5


# ------------------------------------------------------------------- throttle cache


class FakeReader:
    def __init__(self) -> None:
        self.head = 100
        self.states: dict[str, tuple[int, int]] = {}
        self.events: list[tuple[int, str]] = []
        self.reads = 0
        self.down = False

    def block_number(self) -> int:
        if self.down:
            raise ConnectionError("rpc down")
        return self.head

    def throttle_of(self, account: str) -> tuple[int, int]:
        if self.down:
            raise ConnectionError("rpc down")
        self.reads += 1
        return self.states.get(account.lower(), (0, 0))

    def throttle_event_accounts(self, a: int, b: int) -> set[str]:
        return {acc for blk, acc in self.events if a <= blk <= b}


def test_throttle_cache_follows_events_expiry_and_fails_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = FakeReader()
    acc = ADDR.lower()

    async def go() -> None:
        c = ThrottleCache(r, ttl_s=60)
        await c.refresh()
        assert await c.check(ADDR) is None
        r.states[acc] = (2, 105)
        r.head = 101
        r.events.append((101, acc))
        await c.refresh()  # the Throttled event re-reads the cached account
        t = await c.check(ADDR)
        assert t is not None and t.level == 2 and "until block 105" in t.reason
        reads = r.reads
        await c.check(ADDR)
        assert r.reads == reads  # served from cache
        r.head = 106
        await c.refresh()
        assert await c.check(ADDR) is None  # expired by block height
        r.head = 5_000  # a long outage: too many blocks to scan, so the cache is dropped
        await c.refresh()
        reads = r.reads
        assert await c.check(ADDR) is None and r.reads == reads + 1
        other = "0x" + "ab" * 20
        r.down = True
        with caplog.at_level(logging.WARNING):
            assert await c.check(other) is None  # fail open
        assert "serving without it" in caplog.text

    asyncio.run(go())


# ------------------------------------------------------------------- telemetry buffer


def _rec(i: int) -> TelemetryRecord:
    return TelemetryRecord(
        node_id="n1",
        kind="batch",
        ts=float(i),
        latency_ms=1.0,
        batch_size=i,
        tokens=i,
        queue_depth=0,
        errors=0,
        device="cpu",
        gpu_util=0.0,
        gpu_mem_mb=0.0,
    )


class FlakySink:
    def __init__(self) -> None:
        self.down = True
        self.got: list[TelemetryRecord] = []
        self.closed = False

    async def send(self, records: list[TelemetryRecord]) -> None:
        if self.down:
            raise ConnectionError("broker unavailable")
        self.got.extend(records)

    async def close(self) -> None:
        self.closed = True


def test_record_has_exactly_the_topic_schema() -> None:
    d = json.loads(_rec(3).to_json())
    assert set(d) == TELEMETRY_FIELDS and d["schema_version"] == 1


def test_buffer_rides_out_a_broker_outage_without_loss() -> None:
    sink = FlakySink()

    async def go() -> None:
        buf = TelemetryBuffer(
            sink, capacity=100, max_batch=7, retry_initial_s=0.01, retry_max_s=0.02
        )
        await buf.start()
        for i in range(50):
            buf.emit(_rec(i))
        await asyncio.sleep(0.1)
        assert buf.send_failures > 0 and len(buf) == 50
        sink.down = False
        assert await buf.flush(2.0)
        await buf.stop()
        assert (buf.sent, buf.dropped) == (50, 0)

    asyncio.run(go())
    assert [r.batch_size for r in sink.got] == list(range(50)) and sink.closed


def test_buffer_overflow_drops_oldest_and_counts() -> None:
    sink = FlakySink()

    async def go() -> None:
        buf = TelemetryBuffer(sink, capacity=10, retry_initial_s=0.01, retry_max_s=0.01)
        await buf.start()
        for i in range(25):
            buf.emit(_rec(i))
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert buf.dropped == 15 and len(buf) == 10
        sink.down = False
        assert await buf.flush(2.0)
        await buf.stop()

    asyncio.run(go())
    assert [r.batch_size for r in sink.got] == list(range(15, 25))
