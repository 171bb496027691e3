"""Deterministic bot-behaviour rules on window feature rows: soft evidence for the policy.

The forest ranks windows against a threshold calibrated on a short warm-up, so a bot
whose windows sit just under it never reaches the alert bar. These rules name behaviour
that no wallet shows, from the same feature rows (order: `FEATURE_NAMES`):

- `dusting`: a large share of the window moves dust (a non-zero amount below
  `features.DUST_WEI`), the signature of address-poisoning and airdrop spam;
- `automated_calls`: machine-precision gas prices (wallets quote round prices; bots
  price to the wei) on repeated calls to a few contracts or recipients;
- `machine_gas_call` (per transaction, `tx_hits`): one contract call priced to the wei.
  It needs no full window, so it also sees slow bots (a few calls a minute) whose
  30 s windows never reach `MIN_EVENTS`; the policy still wants several of them among
  the sender's latest events.

Gas-price precision is a signal only where wallets quote round prices (legacy pricing,
as in the simulator). Under EIP-1559 a transaction's effective gas price is base fee
plus tip, precise to the wei for everyone; `gas_rules_apply` checks the warm-up traffic
and the scoring core turns the two gas rules off when precise prices are common.

A rule hit is evidence, not a decision: `AlertPolicy` counts it like a score above the
threshold, so a rule alone still needs several hits in a sender's recent events.
Rows of windows below `features.MIN_EVENTS` are NaN and never hit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detector.features import FEATURE_NAMES, _gas_digits
from detector.types import Tx

_F = {n: i for i, n in enumerate(FEATURE_NAMES)}

#: Rule names in bit order of `BotRules.hits` (bit i set: RULE_NAMES[i] fired).
RULE_NAMES: tuple[str, ...] = ("dusting", "automated_calls", "machine_gas_call")
#: Bits of the rules that rest on gas-price precision.
GAS_RULES_MASK = 0b110


@dataclass(frozen=True, slots=True)
class BotRules:
    """Thresholds of the rules (see the module docstring)."""

    dust_share: float = 0.3
    precise_gas_digits: float = 6.0
    max_recipient_ratio: float = 0.5
    max_precise_share: float = 0.05  # gas rules on only if precise prices are this rare

    def precise_gas_share(self, txs: Sequence[Tx]) -> float:
        """Share of contract calls in `txs` priced to machine precision (0 if none)."""
        calls = [t for t in txs if t.selector]
        if not calls:
            return 0.0
        digits = self.precise_gas_digits
        return sum(_gas_digits(t.gas_price_wei) >= digits for t in calls) / len(calls)

    def gas_rules_apply(self, precise_share: float) -> bool:
        """Whether precision is rare enough in normal traffic to be evidence at all."""
        return precise_share <= self.max_precise_share

    def hits(self, rows: np.ndarray) -> np.ndarray:
        """Bitmask per row (int64): which rules fired on it (0: none)."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"expected (n, {len(FEATURE_NAMES)}) feature rows, got {rows.shape}")
        with np.errstate(invalid="ignore"):
            dusting = rows[:, _F["dust_share"]] >= self.dust_share
            automated = (rows[:, _F["gas_price_digits"]] >= self.precise_gas_digits) & (
                rows[:, _F["recipient_distinct_ratio"]] <= self.max_recipient_ratio
            )
        out: np.ndarray = dusting.astype(np.int64) | (automated.astype(np.int64) << 1)
        return out

    def tx_hits(self, txs: Sequence[Tx]) -> np.ndarray:
        """Bitmask per transaction (int64) of the per-transaction rules."""
        bit = 1 << RULE_NAMES.index("machine_gas_call")
        digits = self.precise_gas_digits
        return np.fromiter(
            (bit if t.selector and _gas_digits(t.gas_price_wei) >= digits else 0 for t in txs),
            np.int64,
            len(txs),
        )


def rule_names(mask: int) -> list[str]:
    """Names of the rules set in a `BotRules.hits` bitmask."""
    return [n for i, n in enumerate(RULE_NAMES) if mask >> i & 1]
