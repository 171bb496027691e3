"""Every codec `Settings.kafka_compression` offers works on the embedded broker: a
follower-sized message produced with it comes back byte for byte (how much broker memory
each saves is a benchmark figure: `vigil bench pipeline --compression ...`)."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import ValidationError

from pipelines.procs import ManagedProcess, free_port, port_open
from pipelines.settings import KAFKA_COMPRESSIONS, Settings, kafka_client_codec
from pipelines.stack import tansu_argv

pytestmark = pytest.mark.integration

CODECS = KAFKA_COMPRESSIONS


def _block_message(seed: int) -> bytes:
    """A chain.tx.v1-like value of ~50 KB: hex hashes and addresses, numbers, keys."""
    rng = random.Random(seed)
    txs = [
        {
            "tx_hash": "0x" + rng.randbytes(32).hex(),
            "sender": "0x" + rng.randbytes(20).hex(),
            "to": "0x" + rng.randbytes(20).hex(),
            "value_wei": str(rng.randrange(10**20)),
            "gas_price_wei": rng.randrange(10**9, 10**11),
            "gas": 21000,
            "nonce": rng.randrange(1000),
            "selector": "",
            "status": 1,
            "tx_index": i,
        }
        for i in range(150)
    ]
    return json.dumps({"schema_version": 1, "block_number": seed, "txs": txs}).encode()


async def _round_trip(bootstrap: str, codec: str, values: list[bytes]) -> list[bytes]:
    topic = f"codec-{codec}"
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        compression_type=kafka_client_codec(codec),
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    try:
        for v in values:
            await producer.send_and_wait(topic, v, key=b"shard-0")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        for _ in range(50):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got += [r.value for r in records if r.value is not None]
            if len(got) >= len(values):
                break
    finally:
        await consumer.stop()
    return got


def test_every_offered_codec_round_trips_through_the_embedded_broker(tmp_path: Path) -> None:
    assert set(CODECS) == {"none", "gzip", "lz4", "zstd"}
    assert Settings().kafka_compression == "zstd" and Settings().kafka_codec == "zstd"
    assert Settings(kafka_compression="none").kafka_codec is None
    port = free_port()
    broker = ManagedProcess("tansu", tansu_argv(port), log_path=tmp_path / "tansu.log").start()
    try:
        broker.wait_healthy(lambda: port_open("127.0.0.1", port), timeout=30)
        values = [_block_message(seed) for seed in range(3)]
        for codec in CODECS:
            got = asyncio.run(_round_trip(f"127.0.0.1:{port}", codec, values))
            assert got == values, codec
    finally:
        broker.stop()


def test_an_unknown_codec_is_refused_at_startup() -> None:
    with pytest.raises(ValidationError, match="kafka_compression"):
        Settings(kafka_compression="snappy")
