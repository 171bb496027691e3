"""Run `vigil up` as a user would, for the stack tests: a subprocess, its manifest, its end."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest


def wait_for(fn: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    """Poll `fn` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = fn()
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class UpRun:
    proc: subprocess.Popen[bytes]
    workdir: Path
    data_dir: Path
    summary_path: Path
    log_path: Path
    manifest: dict[str, Any]

    def clickhouse(self) -> Any:
        host, port = self.manifest["clickhouse_url"].removeprefix("http://").split(":")
        return clickhouse_connect.get_client(host=host, port=int(port), database="vigil")

    def finish(self, timeout: float) -> dict[str, Any]:
        """Wait for `vigil up` to end by itself; its summary JSON."""
        self.proc.wait(timeout=timeout)
        assert self.proc.returncode == 0, self.log_path.read_text(errors="replace")[-4000:]
        return dict(json.loads(self.summary_path.read_text()))


@contextlib.contextmanager
def vigil_up(
    workdir: Path, *args: str, env: dict[str, str] | None = None, start_timeout: float = 400
) -> Iterator[UpRun]:
    """`vigil up --data-dir <workdir>/data --summary-json ... <args>`; stopped on exit."""
    data, summary, log_path = workdir / "data", workdir / "summary.json", workdir / "up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipelines.cli",
                "up",
                "--data-dir",
                str(data),
                "--summary-json",
                str(summary),
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200", **(env or {})},
        )
    try:
        manifest = data / "stack.json"
        wait_for(lambda: manifest.exists() or proc.poll() is not None, start_timeout, "stack.json")
        if proc.poll() is not None:
            pytest.fail(f"vigil up exited early:\n{log_path.read_text()[-4000:]}")
        yield UpRun(proc, workdir, data, summary, log_path, json.loads(manifest.read_text()))
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=90)
