"""Settings: validated at startup, from env and TOML; default secrets refused outside the demo."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from inference_node import devkeys
from inference_node.settings import NodeSettings
from pipelines.chain.anvil import DEV_ACCOUNTS
from pipelines.nodes import node_env, plan_nodes
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


def test_monitor_and_node_share_one_dev_key_list() -> None:
    assert ANVIL_DEV_KEYS is devkeys.ANVIL_DEV_KEYS
    assert tuple(k for _, k in DEV_ACCOUNTS) == ANVIL_DEV_KEYS


@pytest.mark.parametrize("key", ANVIL_DEV_KEYS)
def test_every_dev_key_is_refused_in_any_spelling(key: str) -> None:
    for spelling in (key, key[2:], key.upper().replace("0X", "0x")):
        with pytest.raises(ValidationError, match="well-known anvil development key") as e:
            Settings(monitor_private_key=spelling)
        text = str(e.value)
        assert "VIGIL_MONITOR_PRIVATE_KEY" in text and "VIGIL_EMBEDDED" in text
        assert key[2:22] not in text.lower() and key[-20:] not in text.lower()  # not echoed


def test_embedded_flag_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_MONITOR_PRIVATE_KEY", ANVIL_DEV_KEYS[1])
    with pytest.raises(ValidationError, match="only accepted by the embedded demo stack"):
        Settings()
    monkeypatch.setenv("VIGIL_EMBEDDED", "true")
    assert Settings().embedded


def test_errors_do_not_echo_secrets() -> None:
    key = "0x" + "3c" * 32
    with pytest.raises(ValidationError) as e:
        Settings(monitor_private_key=key, clickhouse_password="hunter2", confirmations=-1)
    assert "3c3c3c" not in str(e.value) and "hunter2" not in str(e.value)


def test_node_dev_keys_refused_unless_the_embedded_stack_starts_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vigil up` starts local nodes with dev keys and VIGIL_NODE_EMBEDDED=true."""
    (spec,) = plan_nodes(1, {})
    env = node_env(
        spec,
        rpc_url="http://127.0.0.1:8545",
        registry="0x" + "11" * 20,
        abi_path=tmp_path / "NodeRegistry.json",
        kafka_bootstrap="127.0.0.1:9092",
    )
    assert env["VIGIL_NODE_OPERATOR_PRIVATE_KEY"] in ANVIL_DEV_KEYS
    assert env["VIGIL_NODE_EMBEDDED"] == "true"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = NodeSettings()
    assert s.embedded and s.chain_enabled
    monkeypatch.delenv("VIGIL_NODE_EMBEDDED")
    with pytest.raises(ValidationError, match="VIGIL_NODE_OPERATOR_PRIVATE_KEY"):
        NodeSettings()


def test_secrets_are_masked_in_dumps_and_repr() -> None:
    key = "0x" + "5a" * 32
    s = Settings(monitor_private_key=key, clickhouse_password="hunter2")
    assert key not in repr(s) and key not in s.model_dump_json()
    assert "hunter2" not in repr(s) and "hunter2" not in s.model_dump_json()


def test_keystore_holding_a_dev_key_is_refused_outside_the_demo(tmp_path: Path) -> None:
    """A keystore file is no disguise: the key inside is checked like a plain one."""
    import json

    from eth_account import Account

    from pipelines.chain.enforcer import load_monitor_account

    path = tmp_path / "monitor.json"
    path.write_text(json.dumps(Account.encrypt(ANVIL_DEV_KEYS[0], "pw")))
    outside = Settings(monitor_keystore_path=path, monitor_keystore_password="pw")
    with pytest.raises(ConfigError, match="development key") as err:
        load_monitor_account(outside)
    assert ANVIL_DEV_KEYS[0][2:] not in str(err.value)
    demo = Settings(embedded=True, monitor_keystore_path=path, monitor_keystore_password="pw")
    assert load_monitor_account(demo).address == DEV_ACCOUNTS[0][0]
    own = tmp_path / "own.json"
    key = "0x" + "5a" * 32
    own.write_text(json.dumps(Account.encrypt(key, "pw")))
    mine = Settings(monitor_keystore_path=own, monitor_keystore_password="pw")
    assert load_monitor_account(mine).key.hex().removeprefix("0x") == "5a" * 32


def test_empty_clickhouse_password_is_refused_outside_the_demo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ClickHouse's `default` user has no password out of the box: a default secret."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    with pytest.raises(ConfigError, match="VIGIL_CLICKHOUSE_PASSWORD"):
        Settings().clickhouse_login()
    assert Settings(embedded=True).clickhouse_login() == ("default", "")
    assert Settings(clickhouse_user="soc", clickhouse_password="pw").clickhouse_login() == (
        "soc",
        "pw",
    )
    for command in ("worker", "api"):  # refused before anything starts
        monkeypatch.delenv("VIGIL_CLICKHOUSE_PASSWORD", raising=False)
        result = CliRunner().invoke(app, [command])
        assert result.exit_code == 2 and "VIGIL_CLICKHOUSE_PASSWORD" in result.output
