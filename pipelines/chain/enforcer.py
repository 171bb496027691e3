"""Sends enforcement actions to the NodeRegistry contract, exactly once per evidence.

Exactly once does not rest on local state: the contract refuses a second action
with the same evidence hash (`evidenceUsed`). Before sending, the enforcer asks the
chain; after a crash between "sent" and "recorded", the retry finds the evidence
used and recovers the original transaction from the `Throttled` event instead of
sending another one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from pipelines.settings import ConfigError, Settings

log = logging.getLogger(__name__)


class EnforcementError(RuntimeError):
    """An action could not be sent or confirmed after bounded retries."""


@dataclass(frozen=True, slots=True)
class ActionResult:
    kind: str
    target: str
    evidence_hash: str
    status: str  # mined | already_onchain | already_throttled | dry_run
    tx_hash: str
    block_number: int


def load_monitor_account(settings: Settings) -> LocalAccount:
    """The monitor signing key, from settings or an encrypted keystore file."""
    if settings.monitor_private_key is not None:
        return Account.from_key(settings.monitor_private_key.get_secret_value())
    if settings.monitor_keystore_path is not None:
        if settings.monitor_keystore_password is None:
            raise ConfigError("monitor_keystore_path is set but monitor_keystore_password is not")
        try:
            blob = settings.monitor_keystore_path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read keystore {settings.monitor_keystore_path}: {e}") from e
        try:
            key = Account.decrypt(blob, settings.monitor_keystore_password.get_secret_value())
        except ValueError:
            raise ConfigError(
                f"cannot decrypt keystore {settings.monitor_keystore_path}: wrong password?"
            ) from None
        return Account.from_key(key)
    raise ConfigError(
        "no monitor key: set VIGIL_MONITOR_PRIVATE_KEY or VIGIL_MONITOR_KEYSTORE_PATH "
        "(or VIGIL_DRY_RUN=true to decide without sending)"
    )


def _b32(h: str) -> bytes:
    raw = bytes.fromhex(h.removeprefix("0x"))
    if len(raw) != 32:
        raise ValueError(f"evidence hash must be 32 bytes, got {len(raw)}")
    return raw


class Enforcer:
    """Throttles accounts through the registry's monitor role."""

    def __init__(
        self,
        w3: Web3,
        registry: Contract,
        account: LocalAccount | None,
        *,
        dry_run: bool = False,
        max_attempts: int = 4,
        receipt_timeout_s: float = 60.0,
    ) -> None:
        self.w3 = w3
        self.registry = registry
        self.account = account
        self.dry_run = dry_run or account is None
        self.max_attempts = max_attempts
        self.receipt_timeout_s = receipt_timeout_s

    def head(self) -> int:
        return int(self.w3.eth.block_number)

    def throttle_state(self, account: str) -> tuple[int, int]:
        level, until = self.registry.functions.throttleOf(Web3.to_checksum_address(account)).call()
        return int(level), int(until)

    def find_action(self, evidence_hash: str) -> tuple[str, int] | None:
        """The transaction that already used this evidence, from the contract's events."""
        topic = "0x" + _b32(evidence_hash).hex()
        for event in (self.registry.events.Throttled,):
            logs = event.get_logs(from_block=0, argument_filters={"evidenceHash": topic})
            for entry in logs:
                return entry["transactionHash"].to_0x_hex(), int(entry["blockNumber"])
        return None

    def throttle(
        self, target: str, level: int, until_block: int, evidence_hash: str
    ) -> ActionResult:
        """Throttle `target` once for this evidence; safe to call again after any crash."""
        ev = _b32(evidence_hash)
        checksum = Web3.to_checksum_address(target)
        last_error: Exception | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                if self.registry.functions.evidenceUsed(ev).call():
                    found = self.find_action(evidence_hash)
                    prior_tx, block = found if found else ("", 0)
                    return ActionResult(
                        "throttle", target, evidence_hash, "already_onchain", prior_tx, block
                    )
                if self.dry_run:
                    return ActionResult("throttle", target, evidence_hash, "dry_run", "", 0)
                assert self.account is not None
                fn = self.registry.functions.throttle(checksum, level, until_block, ev)
                tx = fn.build_transaction(
                    {
                        "from": self.account.address,
                        "nonce": self.w3.eth.get_transaction_count(self.account.address, "pending"),
                        "chainId": self.w3.eth.chain_id,
                        # estimate against the block the tx will be mined in
                        "gas": int(
                            fn.estimate_gas(
                                {"from": self.account.address}, block_identifier="pending"
                            )
                            * 1.2
                        )
                        + 10_000,
                    }
                )
                signed = self.account.sign_transaction(tx)  # type: ignore[arg-type]
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
                receipt = self.w3.eth.wait_for_transaction_receipt(
                    tx_hash, timeout=self.receipt_timeout_s
                )
                if int(receipt["status"]) != 1:
                    raise EnforcementError(f"throttle tx {tx_hash.to_0x_hex()} reverted")
                log.info(
                    "throttled %s level %d until block %d (tx %s)",
                    target,
                    level,
                    until_block,
                    tx_hash.to_0x_hex(),
                )
                return ActionResult(
                    "throttle",
                    target,
                    evidence_hash,
                    "mined",
                    tx_hash.to_0x_hex(),
                    int(receipt["blockNumber"]),
                )
            except Exception as e:  # bounded retries; each retry re-checks the chain first
                last_error = e
                log.warning(
                    "throttle attempt %d/%d for %s failed: %s",
                    attempt,
                    self.max_attempts,
                    target,
                    e,
                )
                time.sleep(min(0.5 * 2 ** (attempt - 1), 5.0))
        raise EnforcementError(f"throttle of {target} failed after retries: {last_error}")
