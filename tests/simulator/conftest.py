"""Shares the embedded ClickHouse server fixture of the chain tests."""

from tests.chain.conftest import chserver_url  # noqa: F401
