"""Built-in demo traffic: human-like senders plus one obvious high-frequency bot.

Ground truth (address -> label) is written next to the run so the summary can
report precision and recall. The richer labelled simulator (sybil farms, sandwich
bots, wash trading) builds on the same pieces.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3
from web3.types import RPCEndpoint

log = logging.getLogger(__name__)

GWEI = 10**9
LABEL_NORMAL = "normal"
LABEL_HF_BOT = "hf_bot"


@dataclass(frozen=True)
class TrafficConfig:
    seed: int = 1
    users: int = 40
    user_rate_per_s: float = 0.25  # Poisson rate per human sender
    bot_delay_s: float = 65.0  # the bot wakes up after the detector warmed up
    bot_interval_s: float = 0.4
    duration_s: float | None = None


def derive_account(seed: int, i: int) -> LocalAccount:
    """Deterministic throwaway account for simulated senders."""
    return Account.from_key(keccak(text=f"vigil-traffic:{seed}:{i}"))


class DemoTraffic:
    """Drives the chain from one thread; `stop()` ends it."""

    def __init__(self, rpc_url: str, cfg: TrafficConfig, labels_path: Path) -> None:
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 10}))
        self.cfg = cfg
        self.labels_path = labels_path
        self.rng = np.random.default_rng(cfg.seed)
        self.users = [derive_account(cfg.seed, i) for i in range(cfg.users)]
        self.bot = derive_account(cfg.seed, 10_000)
        self.bot_target = Web3.to_checksum_address("0x" + keccak(text="demo-dex").hex()[:40])
        self.nonces: dict[str, int] = {}
        self.sent = {LABEL_NORMAL: 0, LABEL_HF_BOT: 0}
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def labels(self) -> dict[str, str]:
        out = {a.address.lower(): LABEL_NORMAL for a in self.users}
        out[self.bot.address.lower()] = LABEL_HF_BOT
        return out

    def fund(self) -> None:
        """Give every simulated sender 1,000 ETH (anvil's `anvil_setBalance`)."""
        for acct in [*self.users, self.bot]:
            self.w3.provider.make_request(
                RPCEndpoint("anvil_setBalance"), [acct.address, hex(1000 * 10**18)]
            )
            self.nonces[acct.address] = 0
        self.labels_path.parent.mkdir(parents=True, exist_ok=True)
        self.labels_path.write_text(json.dumps(self.labels(), indent=1))

    def _send(self, acct: LocalAccount, tx: dict[str, object], label: str) -> None:
        tx = {**tx, "nonce": self.nonces[acct.address], "chainId": self.chain_id}
        signed = acct.sign_transaction(tx)  # type: ignore[arg-type]
        try:
            self.w3.eth.send_raw_transaction(signed.raw_transaction)
            self.nonces[acct.address] += 1
            self.sent[label] += 1
        except Exception as e:  # keep the demo going; the nonce is re-read below
            self.errors += 1
            log.debug("send from %s failed: %s", acct.address, e)
            self.nonces[acct.address] = self.w3.eth.get_transaction_count(acct.address, "pending")

    def _human_tx(self, i: int) -> dict[str, object]:
        rng = self.rng
        others = self.users[int(rng.integers(len(self.users)))].address  # may be i: fine
        value = int(min(rng.pareto(1.5) + 0.001, 50.0) * 10**18 * 0.01)
        gas_price = int(rng.choice([2, 2, 3, 3, 5, 10]) * GWEI)
        return {"to": others, "value": value, "gas": 21_000, "gasPrice": gas_price}

    def _bot_tx(self) -> dict[str, object]:
        data = "0x38ed1739" + keccak(text=str(self.rng.integers(1 << 30))).hex()[:64]
        return {
            "to": self.bot_target,
            "value": 0,
            "gas": 60_000,
            "gasPrice": 2_345_678_901 + int(self.rng.integers(0, 7)),
            "data": data,
        }

    def schedule(self) -> Iterator[tuple[float, LocalAccount, dict[str, object], str]]:
        """The traffic plan: (seconds from start, sender, tx fields, label), in time order.

        Pure given the seed, so tests and offline replays see exactly the demo's traffic.
        """
        rate = self.cfg.user_rate_per_s
        queue: list[tuple[float, int]] = [
            (float(self.rng.exponential(1 / rate)), i) for i in range(len(self.users))
        ]
        heapq.heapify(queue)
        heapq.heappush(queue, (self.cfg.bot_delay_s, -1))
        while queue:
            when, who = heapq.heappop(queue)
            if self.cfg.duration_s is not None and when > self.cfg.duration_s:
                return
            if who < 0:
                yield when, self.bot, self._bot_tx(), LABEL_HF_BOT
                jitter = float(self.rng.uniform(0.9, 1.1))
                heapq.heappush(queue, (when + self.cfg.bot_interval_s * jitter, -1))
            else:
                yield when, self.users[who], self._human_tx(who), LABEL_NORMAL
                heapq.heappush(queue, (when + float(self.rng.exponential(1 / rate)), who))

    def run(self) -> None:
        self.chain_id = int(self.w3.eth.chain_id)
        t0 = time.monotonic()
        for when, acct, tx, label in self.schedule():
            delay = when - (time.monotonic() - t0)
            if self._stop.is_set() or (delay > 0 and self._stop.wait(delay)):
                break
            self._send(acct, tx, label)
        log.info("traffic done: sent %s, %d errors", self.sent, self.errors)

    def start(self) -> DemoTraffic:
        self.fund()
        self._thread = threading.Thread(target=self.run, name="demo-traffic", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
