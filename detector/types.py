"""Plain value types shared by the detectors; no behaviour, no I/O."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tx:
    """One confirmed transaction as the detectors see it.

    Integers stay Python ints so that wei amounts never overflow; the feature code
    converts them to floats itself.
    """

    tx_hash: str
    sender: str
    to: str  # '' for contract creation
    value_wei: int
    gas_price_wei: int
    gas: int
    nonce: int
    selector: str  # '0x' + 8 hex digits, or '' for a plain transfer
    status: int  # 1 ok, 0 failed (reverted)
    block_number: int
    timestamp: float  # block time, unix seconds
