"""One validated `Settings` object, built at startup and passed down explicitly.

Sources, highest priority first: keyword arguments, `VIGIL_*` environment variables,
an optional TOML file (`vigil --config vigil.toml ...`), then the defaults below.
Every endpoint is a setting; the embedded stack fills them in for the demo.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# The list is shared with the inference node, which may not import `pipelines`.
from inference_node.devkeys import ANVIL_DEV_KEYS, dev_key_message, is_dev_key

__all__ = ["ANVIL_DEV_KEYS", "ConfigError", "Settings"]


class ConfigError(ValueError):
    """Settings are invalid; the message says which and how to fix it."""


#: Codecs for the messages Vigil produces (`Settings.kafka_compression`).
KafkaCompression = Literal["none", "gzip", "lz4", "zstd"]
KAFKA_COMPRESSIONS: tuple[str, ...] = get_args(KafkaCompression)


def kafka_client_codec(compression: str) -> str | None:
    """A `kafka_compression` value as Kafka clients take it (None: uncompressed)."""
    return None if compression == "none" else compression


class Settings(BaseSettings):
    """All of Vigil's configuration."""

    # hide_input_in_errors: a validation error must not echo a secret (or part of one).
    model_config = SettingsConfigDict(
        env_prefix="VIGIL_", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    # --- deployment mode -------------------------------------------------------
    embedded: bool = Field(
        False, description="True only for the local demo stack; allows well-known dev keys."
    )
    data_dir: Path = Field(Path(".vigil"), description="State: checkpoints, models, chdb data.")

    # --- endpoints -------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap host:port list.")
    kafka_compression: KafkaCompression = Field(
        "zstd",
        description=(
            "Codec of the record batches Vigil produces (follower and worker). zstd keeps "
            "the bench's chain.tx.v1 traffic at about a third of its size in the broker, "
            "for about 1 us of producer CPU per tx; the embedded broker holds every "
            "message in memory, so this is what its memory grows by."
        ),
    )
    rpc_url: str = Field("http://127.0.0.1:8545", description="EVM JSON-RPC endpoint.")
    clickhouse_url: str = Field("http://127.0.0.1:8123", description="ClickHouse HTTP endpoint.")
    clickhouse_user: str = "default"
    clickhouse_password: SecretStr = SecretStr("")
    clickhouse_database: str = "vigil"
    clickhouse_cluster: str | None = Field(
        None, description="Cluster name: DDL ON CLUSTER with Replicated*/Distributed tables."
    )
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=0, le=65535)

    # --- contracts and keys ----------------------------------------------------
    node_registry_address: str | None = None
    monitor_private_key: SecretStr | None = Field(
        None, description="Key holding the registry's monitor role (or use a keystore)."
    )
    monitor_keystore_path: Path | None = None
    monitor_keystore_password: SecretStr | None = None

    # --- chain follower --------------------------------------------------------
    confirmations: int = Field(1, ge=0, description="Blocks behind head before publishing.")
    poll_interval_s: float = Field(0.5, gt=0)
    start_block: int | None = Field(None, ge=0, description="First block when no checkpoint.")
    rpc_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra JSON-RPC endpoints tried in order after rpc_url (comma-separated "
        "or a JSON list); the follower rotates among them on errors and rate limits.",
    )
    rpc_timeout_s: float = Field(10.0, gt=0, description="Timeout of one JSON-RPC request.")
    rpc_batch_size: int = Field(50, ge=1, le=1000, description="Calls per JSON-RPC batch.")
    fast_lane: bool = Field(
        False, description="Also publish blocks before they are confirmed (confirmed=false)."
    )
    follow_chunk_blocks: int = Field(
        16, ge=1, le=1000, description="Blocks fetched and published per follower step."
    )
    reorg_memory_blocks: int = Field(
        128, ge=2, description="Published blocks remembered to find a reorg's common ancestor."
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve the follower's Prometheus /metrics here."
    )

    # --- Kafka / Faust ---------------------------------------------------------
    app_id: str = "vigil"
    topic_partitions: int = Field(1, ge=1)
    worker_web_port: int = Field(6066, ge=0, le=65535)
    batch_size: int = Field(
        256, ge=1, description="chain.tx.v1 messages (block shards) scored as one batch."
    )
    state_snapshot_every: int = Field(
        1000, ge=1, description="State-log deltas per partition between full snapshots."
    )
    batch_within_s: float = Field(
        0.1, gt=0, description="Longest wait to fill a batch (adds to detection latency)."
    )

    # --- detection -------------------------------------------------------------
    window_s: float = Field(30.0, gt=0, description="Per-sender feature window (seconds).")
    warmup_rows: int = Field(300, ge=20, description="Feature rows used to fit the forest.")
    threshold_quantile: float = Field(
        0.999, gt=0.5, lt=1.0, description="Warm-up score quantile that calibrates alerts."
    )
    min_window_txs: int = Field(5, ge=1, description="No alert from fewer txs in a window.")
    min_consecutive: int = Field(5, ge=1, description="Anomalous events in a row before alerting.")
    seed: int = 7
    sequence_model_dir: Path | None = Field(
        None,
        description="Artifact root holding a `tx_sequence` model (`vigil train tx --out DIR`): "
        "the transaction worker then scores every sender of a batch once with it (its window "
        "after the batch, one batched call) and writes those scores; a score at or above the "
        "threshold is soft evidence for the alert policy, like a behaviour rule. Off by "
        "default (no cost): meant for GPU workers or small chains, on a busy CPU worker it "
        "adds a neural net call per batch.",
    )
    sequence_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the tx sequence model runs (auto: CUDA when present)."
    )
    sequence_threshold: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="P(bot) at or above which a sequence score is a hit; default: the 0.1 % "
        "dev false-positive quantile stored with the artifact by training.",
    )
    sequence_min_events: int = Field(
        8, ge=1, description="Senders with fewer window events are not sequence-scored."
    )

    # --- enforcement -----------------------------------------------------------
    throttle_level: int = Field(2, ge=1, le=255)
    throttle_blocks: int = Field(300, ge=1, description="Throttle duration in blocks.")
    dry_run: bool = False
    protected_accounts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accounts never enforced against (the monitor's own is always added).",
    )

    # --- node monitoring -------------------------------------------------------
    node_heartbeat_interval_s: float = Field(5.0, gt=0, description="Nodes' heartbeat period.")
    node_heartbeat_timeout_s: float = Field(30.0, gt=0, description="Silence that is an alert.")
    reputation_write_interval_s: float = Field(10.0, gt=0)

    # --- governance alerts -----------------------------------------------------
    governance_webhook_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Webhooks receiving signed governance alerts."
    )
    governance_webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key for the X-Vigil-Signature header."
    )
    governance_webhook_attempts: int = Field(5, ge=1, le=20)

    @field_validator("rpc_urls", "governance_webhook_urls", "protected_accounts", mode="before")
    @classmethod
    def _split_urls(cls, v: Any) -> Any:
        """Accept a JSON list, a Python list repr (how a child gets it) or comma-separated."""
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                try:
                    return list(json.loads(text))
                except ValueError:
                    return list(ast.literal_eval(text))
            return [u.strip() for u in text.split(",") if u.strip()]
        return v

    @property
    def kafka_codec(self) -> str | None:
        """`kafka_compression` as Kafka clients take it (None: uncompressed)."""
        return kafka_client_codec(self.kafka_compression)

    @property
    def rpc_endpoints(self) -> list[str]:
        """`rpc_url` first, then `rpc_urls`, without repeats."""
        return list(dict.fromkeys([self.rpc_url, *self.rpc_urls]))

    @field_validator("kafka_bootstrap")
    @classmethod
    def _strip_scheme(cls, v: str) -> str:
        return v.removeprefix("kafka://")

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        key = self.monitor_private_key
        if key is not None and not self.embedded and is_dev_key(key.get_secret_value()):
            raise ConfigError(
                dev_key_message(
                    "monitor_private_key",
                    "VIGIL_MONITOR_PRIVATE_KEY (or VIGIL_MONITOR_KEYSTORE_PATH)",
                    "VIGIL_EMBEDDED",
                )
            )
        return self

    def clickhouse_login(self) -> tuple[str, str]:
        """(user, password) for ClickHouse. An empty password is ClickHouse's out-of-the-box
        default for its `default` user, so, like every default secret, it is refused
        outside the embedded demo. Checked by the services that use ClickHouse (worker,
        API), not at validation: the follower, the nodes and offline evaluation never
        touch it."""
        password = self.clickhouse_password.get_secret_value()
        if not password and not self.embedded:
            raise ConfigError(
                "clickhouse_password is empty: outside the embedded demo (VIGIL_EMBEDDED) "
                "set VIGIL_CLICKHOUSE_PASSWORD to the password of VIGIL_CLICKHOUSE_USER "
                f"({self.clickhouse_user!r}) on {self.clickhouse_url}"
            )
        return self.clickhouse_user, password

    @property
    def kafka_url(self) -> str:
        """The broker list in Faust's URL form."""
        return ";".join(f"kafka://{h}" for h in self.kafka_bootstrap.split(","))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = settings_cls.model_config.get("toml_file")
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)

    @classmethod
    def load(cls, config: Path | None = None, **overrides: Any) -> Settings:
        """Build settings from an optional TOML file, the environment and overrides."""
        if config is None:
            return cls(**overrides)
        if not config.is_file():
            raise ConfigError(f"config file {config} not found")

        class _FromFile(cls):  # type: ignore[valid-type,misc]
            model_config = SettingsConfigDict(**{**cls.model_config, "toml_file": config})

        return _FromFile(**overrides)
