"""`vigil up` supervision: SIGTERM stops everything; a dying part stops everything too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _start(d: Path) -> tuple[subprocess.Popen[bytes], dict]:  # type: ignore[type-arg]
    log = open(d / "up.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "up",
            "--data-dir",
            str(d / "data"),
            "--traffic",
            "none",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    manifest = d / "data" / "stack.json"
    deadline = time.monotonic() + 180
    while not manifest.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("vigil up did not start:\n" + (d / "up.log").read_text()[-3000:])
        time.sleep(0.3)
    return proc, json.loads(manifest.read_text())


def _assert_all_gone(pids: dict[str, int]) -> None:
    deadline = time.monotonic() + 10
    alive = dict(pids)
    while alive and time.monotonic() < deadline:
        for name, pid in list(alive.items()):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                del alive[name]
        time.sleep(0.2)
    assert not alive, f"orphans left running: {alive}"


def test_sigterm_stops_every_part(tmp_path: Path) -> None:
    proc, manifest = _start(tmp_path)
    assert set(manifest["pids"]) >= {"tansu", "anvil", "clickhouse", "worker", "follower"}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    _assert_all_gone(manifest["pids"])


def test_a_dying_part_stops_the_stack_with_an_error(tmp_path: Path) -> None:
    proc, manifest = _start(tmp_path)
    os.kill(manifest["pids"]["anvil"], signal.SIGKILL)
    assert proc.wait(timeout=60) == 1
    assert "anvil died" in (tmp_path / "up.log").read_text()
    _assert_all_gone(manifest["pids"])
