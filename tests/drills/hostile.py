"""A seeded generator of malformed and hostile `chain.tx.v1` messages.

Every message it yields must be refused by `decode_tx_batch` with `InvalidMessage`
(the drill checks that offline first, so a generator bug cannot pass as a pipeline
success). Kinds: truncated JSON, non-UTF-8 bytes, null values, JSON that is not an
object, unknown schema versions, wrong types, missing fields, bad hex, out-of-range
numbers, huge fields, too many txs, malformed logs.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Iterator
from typing import Any

Message = tuple[bytes | None, bytes | None]

# Hostile inputs that today escape `decode_tx_batch` as something other than
# `InvalidMessage`, or crash the worker (see tests/drills/test_known_bugs.py).
ESCAPING: dict[str, bytes] = {
    "deep_nesting": b"[" * 100_000 + b"]" * 100_000,  # RecursionError in json.loads
    "int_over_4300_digits": b'{"schema_version": ' + b"1" * 5000 + b"}",  # ValueError
}


def _dumps(d: Any) -> bytes:
    return json.dumps(d, separators=(",", ":")).encode()


class HostileGenerator:
    """Bad messages derived from a good template (a real `TxBatchRecord` dict)."""

    def __init__(self, template: dict[str, Any], seed: int = 1) -> None:
        self.t = template
        self.rng = random.Random(seed)
        self.kinds: list[tuple[str, Callable[[], bytes | None], int]] = [
            ("truncated", self.truncated, 10),
            ("non_utf8", self.non_utf8, 8),
            ("null_value", lambda: None, 3),
            ("not_object", self.not_object, 5),
            ("schema_version", self.schema_version, 8),
            ("wrong_type", self.wrong_type, 20),
            ("missing_field", self.missing_field, 10),
            ("bad_hex", self.bad_hex, 15),
            ("out_of_range", self.out_of_range, 10),
            ("huge_field", self.huge_field, 6),
            ("bad_event", self.bad_event, 5),
        ]
        self.weights = [w for _, _, w in self.kinds]

    def _doc(self) -> dict[str, Any]:
        return copy.deepcopy(self.t)

    def _tx(self, d: dict[str, Any]) -> dict[str, Any]:
        return d["txs"][self.rng.randrange(len(d["txs"]))]

    def truncated(self) -> bytes:
        raw = _dumps(self._doc())
        return raw[: self.rng.randrange(0, len(raw) - 1)]

    def non_utf8(self) -> bytes:
        junk = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 200)))
        return self.rng.choice([b"\xff\xfe", b"\xc3\x28", b'{"a":"\xff"}']) + junk

    def not_object(self) -> bytes:
        return self.rng.choice(
            [b"[]", b"[1,2,3]", b"42", b'"chain.tx"', b"null", b"true", _dumps([self._doc()])]
        )

    def schema_version(self) -> bytes:
        d = self._doc()
        d["schema_version"] = self.rng.choice([0, 2, 99, -1, 2**63, "1", 1.5, None, True])
        return _dumps(d)

    def wrong_type(self) -> bytes:
        d = self._doc()
        choice = self.rng.randrange(8)
        if choice == 0:
            d["block_number"] = self.rng.choice(["12", 1.5, None, [], True])
        elif choice == 1:
            d["txs"] = self.rng.choice([{}, "txs", 7, None])
        elif choice == 2:
            d["block_time"] = self.rng.choice(["now", None, [], True])
        elif choice == 3:
            d["confirmed"] = self.rng.choice([1, "true", None])
        elif choice == 4:
            self._tx(d)["gas"] = self.rng.choice(["21000", 2.5, None, True, {}])
        elif choice == 5:
            self._tx(d)["value_wei"] = self.rng.choice([10**18, None, 1.0, ["1"]])
        elif choice == 6:
            d["txs"][0] = self.rng.choice([None, "tx", 3, []])
        else:
            self._tx(d)["sender"] = self.rng.choice([None, 123, ["0x"], {"a": 1}])
        return _dumps(d)

    def missing_field(self) -> bytes:
        d = self._doc()
        if self.rng.random() < 0.5:
            del d[
                self.rng.choice(
                    [
                        "schema_version",
                        "block_number",
                        "block_hash",
                        "txs",
                        "block_time",
                        "confirmed",
                    ]
                )
            ]
        else:
            del self._tx(d)[
                self.rng.choice(
                    [
                        "tx_hash",
                        "sender",
                        "to",
                        "value_wei",
                        "gas",
                        "nonce",
                        "selector",
                        "status",
                        "gas_price_wei",
                    ]
                )
            ]
        return _dumps(d)

    def bad_hex(self) -> bytes:
        d = self._doc()
        bad = self.rng.choice(
            [
                "0x" + "zz" * 32,
                "0x" + "a" * 63,
                "0x" + "a" * 65,
                "a" * 64,
                "0X",
                "",
                "0x" + "é" * 64,
            ]
        )
        field = self.rng.choice(
            ["tx_hash", "sender", "to", "selector", "block_hash", "parent_hash"]
        )
        if field in ("block_hash", "parent_hash"):
            d[field] = bad
        elif field == "to" and bad == "":
            self._tx(d)["to"] = "0x1234"
        elif field == "selector":
            self._tx(d)["selector"] = self.rng.choice(["0x1234", "0xgggggggg", "transfer"])
        else:
            self._tx(d)[field] = bad or "0x"
        return _dumps(d)

    def out_of_range(self) -> bytes:
        d = self._doc()
        choice = self.rng.randrange(6)
        if choice == 0:
            d["block_number"] = -self.rng.randrange(1, 10**6)
        elif choice == 1:
            self._tx(d)["gas"] = 2**256 + self.rng.randrange(10)
        elif choice == 2:
            self._tx(d)["status"] = self.rng.choice([2, 3, 255])
        elif choice == 3:
            self._tx(d)["value_wei"] = self.rng.choice(["-5", "1" * 79, "1e18", "0x10", " 1"])
        elif choice == 4:
            d["block_time"] = self.rng.choice([-1, 2**41, 1e300])
        else:
            self._tx(d)["nonce"] = -1
        return _dumps(d)

    def huge_field(self) -> bytes:
        d = self._doc()
        choice = self.rng.randrange(4)
        n = self.rng.randrange(5_000, 60_000)
        if choice == 0:
            self._tx(d)["tx_hash"] = "0x" + "a" * n
        elif choice == 1:
            self._tx(d)["method"] = "m" * n
        elif choice == 2:
            self._tx(d)["call_args"] = {f"a{i}": "x" for i in range(100)}
        else:
            self._tx(d)["call_args"] = {"data": "f" * n}
        return _dumps(d)

    def bad_event(self) -> bytes:
        d = self._doc()
        self._tx(d)["events"] = self.rng.choice(
            [
                [{"address": "nope", "topic0": "", "log_index": 0}],
                [{"address": "0x" + "1" * 40, "topic0": "0x12", "log_index": 0}],
                [{"address": "0x" + "1" * 40, "topic0": "", "log_index": -3}],
                ["event"],
                {"not": "a list"},
            ]
        )
        return _dumps(d)

    def messages(self, n: int) -> Iterator[tuple[str, Message]]:
        for i in range(n):
            kind, make, _ = self.rng.choices(self.kinds, weights=self.weights)[0]
            key = self.rng.choice([b"bad", str(i % 16).encode(), None])
            value = make()
            yield kind, (key if value is not None else b"tombstone", value)

    @staticmethod
    def rare() -> list[tuple[str, Message]]:
        """Expensive ones, sent once each: too many txs in one message."""
        too_many = _dumps(
            {
                "schema_version": 1,
                "block_number": 1,
                "block_hash": "0x" + "1" * 64,
                "block_time": 1.0,
                "confirmed": True,
                "txs": [{}] * 50_001,
            }
        )
        return [("too_many_txs", (b"bad", too_many))]


#: Refused correctly by the decoder, but its dead letter (the raw bytes as latin-1 JSON,
#: ~4.2 MB) is larger than the worker producer's max request size (1 MB), so the DLQ send
#: raises and crashes the agent (see test_dead_letter_of_any_refused_message_is_sendable).
OVERSIZE = b'{"schema_version":1,"pad":"' + b"x" * (4 * 1024 * 1024 + 10) + b'"}'
