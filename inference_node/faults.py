"""Fault injection for drills: a node that misbehaves the way real ones do.

Each fault acts only through its effects (wrong outputs, latency, errors, missing
heartbeats, inflated on-chain claims, extra identities): nothing in telemetry,
`/health` or `/metrics` names the fault, because Vigil must detect it from the
effects exactly as it would for a real cheater. Every random choice is seeded, so
a drill is reproducible, and the lazy choice is keyed by request id, so a
challenged request gets the same (bad) answer again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from eth_utils import keccak

from inference_node.settings import FaultName, NodeSettings

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """A failure the flaky fault made up; to callers it looks like a backend error."""


@dataclass(frozen=True)
class FaultConfig:
    fault: FaultName = "none"
    rate: float = 0.5
    overclaim_factor: float = 3.0
    slow_ms: float = 250.0
    flaky_period_s: float = 20.0
    flaky_burst_s: float = 5.0
    offline_after_s: float = 0.0
    sybil_identities: int = 3
    seed: int = 0

    @classmethod
    def from_settings(cls, s: NodeSettings) -> FaultConfig:
        return cls(
            fault=s.fault,
            rate=s.fault_rate,
            overclaim_factor=s.overclaim_factor,
            slow_ms=s.slow_ms,
            flaky_period_s=s.flaky_period_s,
            flaky_burst_s=s.flaky_burst_s,
            offline_after_s=s.offline_after_s,
            sybil_identities=s.sybil_identities,
            seed=s.seed,
        )


class FaultInjector:
    """Decides, per request or batch, whether and how the configured fault strikes."""

    def __init__(self, cfg: FaultConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._clock = clock
        self._t0 = clock()
        self._rng = random.Random(cfg.seed)
        self._rng_lock = threading.Lock()
        if cfg.fault != "none":
            log.warning("fault injection active: this node misbehaves on purpose (drill)")

    @property
    def active(self) -> str:
        return self.cfg.fault

    def _unit(self, *parts: object) -> float:
        digest = keccak(b"|".join(str(p).encode() for p in (self.cfg.seed, *parts)))
        return int.from_bytes(digest[:8], "big") / 2**64

    # --- lazy ----------------------------------------------------------------
    def is_lazy(self, request_id: str) -> bool:
        """Lazy nodes skip the model for a seeded share of requests."""
        return self.cfg.fault == "lazy" and self._unit("lazy", request_id) < self.cfg.rate

    def garbage(self, request_id: str, n: int, dim: int) -> npt.NDArray[np.float32]:
        """Cheap unit vectors, fixed per request id (so re-runs repeat them)."""
        seed = int.from_bytes(keccak(f"{self.cfg.seed}|garbage|{request_id}".encode())[:8], "big")
        v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True).clip(min=1e-12)
        return v

    # --- slow / flaky (run in the model worker thread) -----------------------
    def in_flaky_burst(self) -> bool:
        if self.cfg.fault != "flaky":
            return False
        return (self._clock() - self._t0) % self.cfg.flaky_period_s < self.cfg.flaky_burst_s

    def before_batch(self, n_inputs: int) -> None:
        """Hook the batcher calls before each forward pass."""
        if self.cfg.fault == "slow" and self.cfg.slow_ms > 0:
            time.sleep(self.cfg.slow_ms / 1000.0)
        elif self.in_flaky_burst():
            with self._rng_lock:
                hit = self._rng.random() < self.cfg.rate
            if hit:
                raise InjectedFault("inference backend error")

    # --- offline ---------------------------------------------------------------
    def heartbeat_allowed(self) -> bool:
        if self.cfg.fault != "offline":
            return True
        return self._clock() - self._t0 < self.cfg.offline_after_s

    # --- overclaim / sybil -----------------------------------------------------
    def claimed_units(self, served_units: int) -> int:
        if self.cfg.fault == "overclaim":
            return int(round(served_units * self.cfg.overclaim_factor))
        return served_units

    @property
    def sybil_identities(self) -> int:
        return self.cfg.sybil_identities if self.cfg.fault == "sybil" else 0
