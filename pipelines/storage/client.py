"""Connecting to ClickHouse (the embedded chdb server or a real one) over HTTP.

Why a wrapper: at stack start-up the storage endpoint may still be coming up, so a
first connection retries briefly; when it never answers, the caller gets one clear
`StorageUnavailable` naming the URL instead of a urllib3 traceback.
"""

from __future__ import annotations

import ipaddress
import logging
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver import Client
from clickhouse_connect.driver.exceptions import OperationalError

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 8123, "https": 8443}


class StorageUnavailable(RuntimeError):
    """The ClickHouse endpoint did not answer within the start-up grace period."""


def _parse(url: str) -> tuple[str, str, int]:
    """`http://host:port` -> (scheme, host, port); bare `host:port` means http."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"not a ClickHouse HTTP URL: {url!r} (expected http://host:port)")
    return parts.scheme, parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def ping(url: str, timeout: float = 2.0) -> bool:
    """True when the server answers `/ping` with `Ok.` (needs no credentials)."""
    scheme, host, port = _parse(url)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with urllib.request.urlopen(f"{scheme}://{netloc}/ping", timeout=timeout) as resp:
            return bool(resp.status == 200 and resp.read().startswith(b"Ok."))
    except (OSError, urllib.error.URLError):
        return False


def wait_ready(url: str, timeout: float = 30.0, interval: float = 0.2) -> None:
    """Block until `/ping` answers; raise `StorageUnavailable` after `timeout` seconds."""
    _parse(url)
    deadline = time.monotonic() + timeout
    while True:
        if ping(url, timeout=min(2.0, max(0.1, timeout))):
            return
        if time.monotonic() >= deadline:
            raise StorageUnavailable(
                f"ClickHouse at {url} did not answer /ping within {timeout:g}s"
            )
        time.sleep(interval)


def connect(
    url: str,
    user: str = "default",
    password: str = "",
    database: str | None = None,
    *,
    retry_for: float = 10.0,
    compress: bool | str | None = None,
    **kwargs: Any,
) -> Client:
    """A `clickhouse_connect` client for `url`, retrying connection errors for `retry_for` s.

    Server-side errors (wrong password, unknown database) are not retried: they raise
    `clickhouse_connect`'s `DatabaseError` at once. `compress=None` means lz4 for a
    remote server and none on loopback, where compressing only costs CPU. Extra
    keyword arguments go to `clickhouse_connect.get_client`.
    """
    scheme, host, port = _parse(url)
    if compress is None:
        compress = not _is_loopback(host)
    deadline = time.monotonic() + retry_for
    attempt = 0
    while True:
        attempt += 1
        try:
            return clickhouse_connect.get_client(
                host=host,
                port=port,
                username=user,
                password=password,
                database=database,
                secure=scheme == "https",
                compress=compress,
                **kwargs,
            )
        except OperationalError as exc:
            if time.monotonic() >= deadline:
                raise StorageUnavailable(
                    f"ClickHouse at {url} unreachable after {attempt} attempts "
                    f"in {retry_for:g}s: {exc}"
                ) from exc
            log.debug("ClickHouse at %s not reachable yet (attempt %d): %s", url, attempt, exc)
            time.sleep(min(0.5, 0.05 * 2**attempt))
