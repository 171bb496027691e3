"""Sends enforcement actions to the NodeRegistry contract, exactly once per evidence.

Exactly once does not rest on local state: the contract refuses a second action
with the same evidence hash (`evidenceUsed`, shared by throttle, unthrottle and
slash proposals). Before sending, the enforcer asks the chain, at the latest block
and at the pending block (which includes our own transactions still in the
mempool). After a crash between "sent" and "recorded", the retry finds the
evidence used, waits for the in-flight transaction if needed, and recovers the
original transaction from the `Throttled` / `Unthrottled` / `SlashProposed` event
(or from the actions log) instead of sending another one.

Nonces come from the chain's pending count (so a restart continues after whatever
is already in the mempool), never below the last nonce this process used, under a
thread lock plus an optional file lock shared by processes using the same key.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError, TimeExhausted, Web3Exception
from web3.logs import DISCARD

from detector.policy import ActionDecision, ActionKind, ChainView
from inference_node.devkeys import dev_key_message, is_dev_key
from pipelines.chain.contracts import decode_custom_error
from pipelines.settings import ConfigError, Settings

log = logging.getLogger(__name__)

#: Action kinds as stored in `actions.kind` (same values as `ActionKind`).
KIND_THROTTLE = ActionKind.THROTTLE.value
KIND_UNTHROTTLE = ActionKind.UNTHROTTLE.value
KIND_SLASH = ActionKind.SLASH_PROPOSAL.value
_EVENT_KIND = {
    "Throttled": KIND_THROTTLE,
    "Unthrottled": KIND_UNTHROTTLE,
    "SlashProposed": KIND_SLASH,
}
_KIND_EVENT = {v: k for k, v in _EVENT_KIND.items()}
#: Proposal states of the contract's `ProposalState` enum.
PROPOSAL_STATES = ("none", "pending", "vetoed", "executed")


class EnforcementError(RuntimeError):
    """An action could not be sent or confirmed after bounded retries."""


class EnforcementRejected(EnforcementError):
    """The contract refuses the action (a custom error); retrying will not help."""

    def __init__(self, kind: str, error: str, args: tuple[Any, ...]) -> None:
        super().__init__(f"{kind} refused by the contract: {error}{args}")
        self.error = error
        self.error_args = args


@dataclass(frozen=True, slots=True)
class ActionResult:
    kind: str
    target: str
    evidence_hash: str
    # mined | already_onchain | already_throttled | not_throttled | dry_run
    status: str
    tx_hash: str
    block_number: int
    proposal_id: int | None = None  # slash proposals only


@dataclass(frozen=True, slots=True)
class SlashProposalView:
    """A slash proposal as the contract holds it."""

    proposal_id: int
    node: str
    amount_wei: int
    evidence_hash: str
    proposer: str
    proposed_block: int
    challenge_end_block: int
    state: str  # none | pending | vetoed | executed


class ActionLog(Protocol):
    """The local record of sent actions (e.g. the `actions` table)."""

    def lookup(self, evidence_hash: str) -> ActionResult | None:
        """A confirmed action recorded for this evidence, if any."""
        ...


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
        if is_dev_key(bytes(key).hex()) and not settings.embedded:
            raise ConfigError(
                dev_key_message(
                    f"the key in {settings.monitor_keystore_path}",
                    "VIGIL_MONITOR_KEYSTORE_PATH",
                    "VIGIL_EMBEDDED",
                )
            )
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


class NonceManager:
    """Nonces for one sender that survive restarts and never repeat within a process.

    The next nonce is max(chain pending count, last used + 1): the pending count
    covers transactions a previous run left in the mempool; the local floor covers
    an RPC endpoint that has not seen our last transaction yet. `reset()` drops the
    floor (after a receipt timeout a transaction may have been dropped, leaving a gap).
    """

    def __init__(self, w3: Web3, address: str, lock_path: Path | None = None) -> None:
        self.w3 = w3
        self.address = Web3.to_checksum_address(address)
        self.lock_path = lock_path
        self._lock = threading.Lock()
        self._next: int | None = None

    @contextlib.contextmanager
    def reserve(self) -> Iterator[int]:
        """Hold the sender's lock and yield the nonce to use; it is consumed only when
        the body returns normally (the transaction was accepted by the node)."""
        with self._lock, self._file_lock():
            chain = int(self.w3.eth.get_transaction_count(self.address, "pending"))
            nonce = chain if self._next is None else max(chain, self._next)
            yield nonce
            self._next = nonce + 1

    def reset(self) -> None:
        with self._lock:
            self._next = None

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        if self.lock_path is None:
            yield
            return
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class Enforcer:
    """Throttles, unthrottles and proposes slashes through the registry's monitor role."""

    def __init__(
        self,
        w3: Web3,
        registry: Contract,
        account: LocalAccount | None,
        *,
        dry_run: bool = False,
        max_attempts: int = 4,
        receipt_timeout_s: float = 60.0,
        backoff_s: float = 0.5,
        from_block: int = 0,
        nonce_lock_path: Path | None = None,
        action_log: ActionLog | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.w3 = w3
        self.registry = registry
        self.account = account
        self.dry_run = dry_run or account is None
        self.max_attempts = max(1, max_attempts)
        self.receipt_timeout_s = receipt_timeout_s
        self.backoff_s = backoff_s
        self.from_block = from_block  # first block to search for earlier actions
        self.action_log = action_log
        self.sleep = sleep
        self.nonces = (
            NonceManager(w3, account.address, nonce_lock_path) if account is not None else None
        )
        self._abi: list[dict[str, Any]] = [dict(e) for e in registry.abi]

    # ------------------------------------------------------------------ reads

    def head(self) -> int:
        return int(self.w3.eth.block_number)

    def throttle_state(self, account: str) -> tuple[int, int]:
        level, until = self.registry.functions.throttleOf(Web3.to_checksum_address(account)).call()
        return int(level), int(until)

    def chain_view(self, entity: str) -> ChainView:
        """What the action ladder needs to know about `entity`, read now."""
        addr = Web3.to_checksum_address(entity)
        head = self.head()
        level, until = self.throttle_state(addr)
        operator, stake, _url, _block, _active = self.registry.functions.nodeInfo(addr).call()
        is_node = int(operator, 16) != 0
        available = 0
        if is_node:
            acct = self.registry.functions.nodeAccounting(addr).call()
            available = max(0, int(stake) - int(acct[3]))
        return ChainView(head, level, until, is_node, available)

    def proposal(self, proposal_id: int) -> SlashProposalView:
        node, amount, ev, proposer, proposed, end, state = self.registry.functions.getProposal(
            proposal_id
        ).call()
        return SlashProposalView(
            proposal_id,
            str(node),
            int(amount),
            "0x" + bytes(ev).hex(),
            str(proposer),
            int(proposed),
            int(end),
            PROPOSAL_STATES[int(state)],
        )

    def evidence_used(
        self, evidence_hash: str, block: Literal["latest", "pending"] = "latest"
    ) -> bool:
        return bool(
            self.registry.functions.evidenceUsed(_b32(evidence_hash)).call(block_identifier=block)
        )

    def _in_flight(self, evidence_hash: str) -> bool:
        """Whether a mempool transaction already uses the evidence (pending state)."""
        try:
            return self.evidence_used(evidence_hash, "pending")
        except (ValueError, Web3Exception) as e:  # endpoint without a pending state
            log.debug("pending evidenceUsed unavailable: %s", type(e).__name__)
            return False

    def find_action(self, evidence_hash: str) -> ActionResult | None:
        """The action that already used this evidence: from the log, else from events."""
        if self.action_log is not None:
            try:
                prior = self.action_log.lookup(evidence_hash)
            except Exception as e:  # the log is a shortcut; the chain is the authority
                log.warning("action log lookup failed (%s); searching events", type(e).__name__)
                prior = None
            # a slash needs its proposal id, which the log does not keep
            if prior is not None and prior.tx_hash and prior.kind != KIND_SLASH:
                return prior
        topic = "0x" + _b32(evidence_hash).hex()
        for name, kind in _EVENT_KIND.items():
            event = getattr(self.registry.events, name)
            logs = event.get_logs(
                from_block=self.from_block, argument_filters={"evidenceHash": topic}
            )
            for entry in logs:
                args = entry["args"]
                target = args["node"] if name == "SlashProposed" else args["account"]
                pid = int(args["id"]) if name == "SlashProposed" else None
                return ActionResult(
                    kind,
                    str(target),
                    evidence_hash,
                    "mined",
                    entry["transactionHash"].to_0x_hex(),
                    int(entry["blockNumber"]),
                    pid,
                )
        return None

    # ------------------------------------------------------------------ actions

    def throttle(
        self, target: str, level: int, until_block: int, evidence_hash: str
    ) -> ActionResult:
        """Throttle `target` once for this evidence; safe to call again after any crash."""
        fn = self.registry.functions.throttle(
            Web3.to_checksum_address(target), level, until_block, _b32(evidence_hash)
        )
        return self._act(KIND_THROTTLE, target, evidence_hash, fn)

    def unthrottle(self, target: str, evidence_hash: str) -> ActionResult:
        """Lift `target`'s throttle once for this evidence (`not_throttled` if none)."""
        fn = self.registry.functions.unthrottle(
            Web3.to_checksum_address(target), _b32(evidence_hash)
        )
        return self._act(KIND_UNTHROTTLE, target, evidence_hash, fn)

    def propose_slash(self, node: str, amount_wei: int, evidence_hash: str) -> ActionResult:
        """Propose slashing `amount_wei` of `node`'s stake once for this evidence."""
        fn = self.registry.functions.proposeSlash(
            Web3.to_checksum_address(node), amount_wei, _b32(evidence_hash)
        )
        return self._act(KIND_SLASH, node, evidence_hash, fn)

    def apply(self, decision: ActionDecision) -> ActionResult | None:
        """Carry out a ladder decision (None for `observe`: nothing to send)."""
        if decision.kind is ActionKind.THROTTLE:
            return self.throttle(
                decision.entity, decision.level, decision.until_block, decision.evidence_hash
            )
        if decision.kind is ActionKind.UNTHROTTLE:
            return self.unthrottle(decision.entity, decision.evidence_hash)
        if decision.kind is ActionKind.SLASH_PROPOSAL:
            return self.propose_slash(decision.entity, decision.amount_wei, decision.evidence_hash)
        return None

    # ------------------------------------------------------------------ internals

    def _recovered(self, kind: str, target: str, evidence_hash: str) -> ActionResult:
        found = self.find_action(evidence_hash)
        if found is None:  # used, but the event is outside [from_block, head]
            log.warning("evidence %s already used; its transaction was not found", evidence_hash)
            return ActionResult(kind, target, evidence_hash, "already_onchain", "", 0)
        if found.kind != kind:
            log.warning(
                "evidence %s was already used by a %s, not a %s", evidence_hash, found.kind, kind
            )
        return ActionResult(
            found.kind,
            found.target,
            evidence_hash,
            "already_onchain",
            found.tx_hash,
            found.block_number,
            found.proposal_id,
        )

    def _wait_used(self, evidence_hash: str) -> bool:
        """Wait (bounded) for an in-flight transaction using this evidence to be mined."""
        deadline = time.monotonic() + self.receipt_timeout_s
        while time.monotonic() < deadline:
            if self.evidence_used(evidence_hash):
                return True
            self.sleep(0.2)
        return False

    def _decode(self, e: ContractCustomError) -> tuple[str, tuple[Any, ...]]:
        decoded = decode_custom_error(self._abi, e.data)
        return decoded if decoded is not None else ("unknown", (str(e.data)[:80],))

    def _act(self, kind: str, target: str, evidence_hash: str, fn: Any) -> ActionResult:
        last_error: Exception | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                if self.evidence_used(evidence_hash):
                    return self._recovered(kind, target, evidence_hash)
                if self._in_flight(evidence_hash):
                    # our own earlier transaction is in the mempool: wait for it
                    log.info("%s for %s already in flight; waiting for it", kind, evidence_hash)
                    if self._wait_used(evidence_hash):
                        return self._recovered(kind, target, evidence_hash)
                    raise EnforcementError(f"in-flight {kind} for {evidence_hash} not mined")
                if self.dry_run:
                    log.info("dry run: would send %s for %s (%s)", kind, target, evidence_hash)
                    return ActionResult(kind, target, evidence_hash, "dry_run", "", 0)
                return self._send(kind, target, evidence_hash, fn)
            except ContractCustomError as e:
                name, args = self._decode(e)
                if name == "EvidenceAlreadyUsed":
                    last_error = e  # raced with an in-flight transaction: re-check first
                elif name == "NotThrottled" and kind == KIND_UNTHROTTLE:
                    return ActionResult(kind, target, evidence_hash, "not_throttled", "", 0)
                else:
                    raise EnforcementRejected(kind, name, args) from None
            except EnforcementRejected:
                raise
            except Exception as e:  # bounded retries; each retry re-checks the chain first
                last_error = e
                if isinstance(e, TimeExhausted) and self.nonces is not None:
                    self.nonces.reset()
            log.warning(
                "%s attempt %d/%d for %s failed: %s",
                kind,
                attempt,
                self.max_attempts,
                target,
                type(last_error).__name__ if last_error else "?",
            )
            if attempt < self.max_attempts:
                self.sleep(min(self.backoff_s * 2 ** (attempt - 1), 10.0))
        # the type only: RPC error texts can carry the endpoint URL (and its API key)
        log.debug("last %s error for %s: %r", kind, target, last_error)
        raise EnforcementError(
            f"{kind} of {target} failed after {self.max_attempts} attempts: "
            f"{type(last_error).__name__}"
        )

    def _send(self, kind: str, target: str, evidence_hash: str, fn: Any) -> ActionResult:
        assert self.account is not None and self.nonces is not None
        sender = self.account.address
        # estimate against the block the tx will be mined in; a refusal raises here
        gas = int(fn.estimate_gas({"from": sender}, block_identifier="pending") * 1.2) + 10_000
        chain_id = self.w3.eth.chain_id
        with self.nonces.reserve() as nonce:
            tx = fn.build_transaction(
                {"from": sender, "nonce": nonce, "chainId": chain_id, "gas": gas}
            )
            signed = self.account.sign_transaction(tx)
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        log.info("sent %s for %s (tx %s, nonce %d)", kind, target, tx_hash.to_0x_hex(), nonce)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout_s)
        if int(receipt["status"]) != 1:
            if self.evidence_used(evidence_hash):  # lost a race to an earlier send
                return self._recovered(kind, target, evidence_hash)
            raise EnforcementError(f"{kind} tx {tx_hash.to_0x_hex()} reverted")
        pid = None
        event = getattr(self.registry.events, _KIND_EVENT[kind])()
        for ev in event.process_receipt(receipt, errors=DISCARD):
            if kind == KIND_SLASH:
                pid = int(ev["args"]["id"])
        log.info(
            "%s of %s mined in block %d (tx %s)",
            kind,
            target,
            int(receipt["blockNumber"]),
            tx_hash.to_0x_hex(),
        )
        return ActionResult(
            kind,
            target,
            evidence_hash,
            "mined",
            tx_hash.to_0x_hex(),
            int(receipt["blockNumber"]),
            pid,
        )


class ClickHouseActionLog:
    """`ActionLog` over the `actions` table (confirmed rows only)."""

    def __init__(self, client: Any, database: str | None = None) -> None:
        self.client = client
        self.table = f"`{database}`.actions" if database else "actions"

    def lookup(self, evidence_hash: str) -> ActionResult | None:
        rows = self.client.query(
            f"SELECT kind, target, tx_hash, block_number FROM {self.table} FINAL "
            "WHERE evidence_hash = {h:String} AND status IN ('mined', 'already_onchain') "
            "AND tx_hash != '' ORDER BY block_number LIMIT 1",
            parameters={"h": evidence_hash},
        ).result_rows
        if not rows:
            return None
        kind, target, tx_hash, block = rows[0]
        return ActionResult(
            str(kind), str(target), evidence_hash, "mined", str(tx_hash), int(block)
        )
