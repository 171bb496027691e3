"""Constant-product AMM arithmetic, mirroring `contracts/sim/SimPair.sol` exactly.

Why a mirror: the plan is computed ahead of sending (so a seed fixes the traffic),
and bots size their trades from the pool state. Integer math identical to the
contract keeps the mirror equal to the chain as long as the planned swaps land in
the planned order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FEE_NUM, FEE_DEN = 997, 1000


def amount_out(amount_in: int, reserve_in: int, reserve_out: int) -> int:
    """Uniswap-v2 output for `amount_in` (0.3% fee), as `SimPair.getAmountOut`."""
    if amount_in <= 0 or reserve_in <= 0 or reserve_out <= 0:
        return 0
    with_fee = amount_in * FEE_NUM
    return (with_fee * reserve_out) // (reserve_in * FEE_DEN + with_fee)


@dataclass
class Pool:
    """Reserves of token0 and token1; price = token1 per token0."""

    reserve0: int
    reserve1: int

    @property
    def price(self) -> float:
        return self.reserve1 / self.reserve0

    def quote(self, zero_for_one: bool, amount_in: int) -> int:
        if zero_for_one:
            return amount_out(amount_in, self.reserve0, self.reserve1)
        return amount_out(amount_in, self.reserve1, self.reserve0)

    def swap(self, zero_for_one: bool, amount_in: int) -> int:
        """Apply a swap; returns the output (0 and no change when it would give nothing)."""
        out = self.quote(zero_for_one, amount_in)
        if out <= 0:
            return 0
        if zero_for_one:
            self.reserve0 += amount_in
            self.reserve1 -= out
        else:
            self.reserve1 += amount_in
            self.reserve0 -= out
        return out

    def copy(self) -> Pool:
        return Pool(self.reserve0, self.reserve1)

    def input_to_reach(self, target_price: float) -> tuple[bool, int]:
        """(direction, amount in) that moves the price to `target_price` (fee included)."""
        k = self.reserve0 * self.reserve1
        target_r0 = math.isqrt(int(k / target_price)) if target_price > 0 else self.reserve0
        if target_r0 > self.reserve0:  # price too high: sell token0
            return True, int((target_r0 - self.reserve0) * FEE_DEN / FEE_NUM)
        target_r1 = k // max(target_r0, 1)
        return False, int(max(0, target_r1 - self.reserve1) * FEE_DEN / FEE_NUM)

    def max_front_run(self, zero_for_one: bool, victim_in: int, victim_min_out: int) -> int:
        """Largest same-direction trade before the victim that still leaves the victim at
        least `victim_min_out` (what a sandwich bot can take without making it revert)."""
        if self.quote(zero_for_one, victim_in) < victim_min_out:
            return 0
        lo, hi = 0, (self.reserve0 if zero_for_one else self.reserve1) // 2
        while lo < hi:
            mid = (lo + hi + 1) // 2
            p = self.copy()
            p.swap(zero_for_one, mid)
            if p.quote(zero_for_one, victim_in) >= victim_min_out:
                lo = mid
            else:
                hi = mid - 1
        return lo
