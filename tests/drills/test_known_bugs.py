"""Regression tests for bugs the drills found (fast, no stack needed).

Each of these inputs once took the worker's transaction path down: a segfault on
deeply nested JSON, a ValueError escaping the decoder, a dead letter too large to send.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.records import InvalidMessage, dead_letter_record, decode_tx_batch
from tests.drills.hostile import ESCAPING, OVERSIZE

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Faust's default `producer_max_request_size`, which `build_app` does not change.
PRODUCER_MAX_REQUEST = 1_000_000


def test_deeply_nested_json_is_an_invalid_message_not_a_segfault() -> None:
    """Was a bug: web3 pulls in py_ecc, which raises the recursion limit to 100,000 at
    import, so in the worker `json.loads` of ~70,000 nested brackets (a 140 kB message,
    well under the 4 MiB limit) overflows the C stack: the worker process segfaults, and
    the restarted worker reads the same uncommitted message again (a poison pill).
    Run in a child process with the worker's imports, so a segfault cannot kill pytest."""
    code = (
        "import pipelines.app\n"
        "from pipelines.records import InvalidMessage, decode_tx_batch\n"
        "try:\n"
        "    decode_tx_batch(b'[' * 100_000 + b']' * 100_000)\n"
        "except InvalidMessage:\n"
        "    print('invalid')\n"
    )
    r = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, timeout=120
    )
    if r.returncode < 0:
        pytest.fail(f"decode_tx_batch killed the process with signal {-r.returncode}")
    if r.returncode != 0:
        pytest.fail(f"an exception escapes decode_tx_batch: {r.stderr.decode()[-300:]}")
    assert r.stdout.strip() == b"invalid"


def test_int_over_4300_digits_is_an_invalid_message() -> None:
    """Was a bug: `_parse_json` catches only UnicodeDecodeError/JSONDecodeError, so
    Python's int-digits limit (ValueError) escapes `decode_tx_batch`; the agent's
    `except InvalidMessage` misses it and the agent crashes."""
    try:
        decode_tx_batch(ESCAPING["int_over_4300_digits"])
    except InvalidMessage:
        return
    except ValueError as e:
        pytest.fail(f"ValueError escapes decode_tx_batch (known bug): {str(e)[:80]}")


@pytest.mark.parametrize(
    "raw",
    [OVERSIZE, bytes(range(128, 256)) * 1600],
    ids=["over_4MiB_limit", "200KB_non_utf8"],
)
def test_dead_letter_of_any_refused_message_is_sendable(raw: bytes) -> None:
    """Was a bug: `Context.dead_letter` puts the whole raw message (latin-1, JSON-escaped:
    up to 6 bytes per non-ASCII byte) in the DLQ record, so a refused message of a few
    hundred kB gives a record over the producer's 1 MB limit; the send raises
    MessageSizeTooLargeError, the agent crashes, and its restart then fails on the spool
    lock still held by the crashed agent's writers (observed in the drill: the tx path
    stops)."""
    with pytest.raises(InvalidMessage):
        decode_tx_batch(raw)
    rec = dead_letter_record("chain.tx.v1", 0, 0, "r", raw, 0.0)
    size = len(rec.dumps())
    if size > PRODUCER_MAX_REQUEST:
        pytest.fail(f"dead letter is {size} bytes > {PRODUCER_MAX_REQUEST} (known bug)")
