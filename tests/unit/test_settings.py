"""Settings: validated at startup, from env and TOML; default secrets refused outside the demo."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipelines.settings import ANVIL_DEV_KEYS, ConfigError, Settings


def test_env_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", "kafka://k1:9092,k2:9092")
    monkeypatch.setenv("VIGIL_CONFIRMATIONS", "12")
    s = Settings()
    assert s.kafka_bootstrap == "k1:9092,k2:9092"
    assert s.kafka_url == "kafka://k1:9092;kafka://k2:9092"
    assert s.confirmations == 12


def test_toml_file_is_read_and_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "vigil.toml"
    f.write_text('rpc_url = "http://rpc.example:8545"\nconfirmations = 6\n')
    monkeypatch.setenv("VIGIL_CONFIRMATIONS", "9")
    s = Settings.load(f)
    assert s.rpc_url == "http://rpc.example:8545"
    assert s.confirmations == 9


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        Settings.load(tmp_path / "nope.toml")


def test_invalid_values_fail_at_startup() -> None:
    with pytest.raises(ValidationError):
        Settings(confirmations=-1)
    with pytest.raises(ValidationError):
        Settings(threshold_quantile=1.5)
    with pytest.raises(ValidationError):
        Settings(unknown_setting=1)  # type: ignore[call-arg]


def test_default_dev_key_refused_outside_embedded_demo() -> None:
    with pytest.raises(ValidationError, match="well-known anvil development key"):
        Settings(monitor_private_key=ANVIL_DEV_KEYS[1])
    assert Settings(monitor_private_key=ANVIL_DEV_KEYS[1], embedded=True).embedded


def test_secrets_are_masked_in_dumps_and_repr() -> None:
    key = "0x" + "5a" * 32
    s = Settings(monitor_private_key=key, clickhouse_password="hunter2")
    assert key not in repr(s) and key not in s.model_dump_json()
    assert "hunter2" not in repr(s) and "hunter2" not in s.model_dump_json()
