"""Render the dashboards and provisioning files to disk, or check the committed ones.

The committed JSON under `dashboards/json/` must be exactly what the builders
produce: edit the Python, run `vigil dashboards build`, commit both.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from dashboards.definitions import all_dashboards
from dashboards.provisioning import ClickHouseTarget, datasource_yaml, provider_yaml

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent
JSON_DIR = "json"
DATASOURCE_FILE = "provisioning/datasources/vigil-clickhouse.yaml"
PROVIDER_FILE = "provisioning/dashboards/vigil.yaml"


def dashboard_json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def render(target: ClickHouseTarget | None = None) -> dict[str, str]:
    """Every generated file: path relative to the dashboards dir -> content."""
    files = {f"{JSON_DIR}/{d.uid}.json": dashboard_json(d.to_json()) for d in all_dashboards()}
    files[DATASOURCE_FILE] = datasource_yaml(target or ClickHouseTarget())
    files[PROVIDER_FILE] = provider_yaml()
    return files


def build(out_dir: Path = ROOT, target: ClickHouseTarget | None = None) -> list[Path]:
    """Write the files (and delete dashboards JSON no builder produces any more)."""
    files = render(target)
    written = []
    for rel, text in files.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            log.info("wrote %s", path)
        written.append(path)
    for stale in (out_dir / JSON_DIR).glob("*.json"):
        if f"{JSON_DIR}/{stale.name}" not in files:
            stale.unlink()
            log.info("removed %s (no longer built)", stale)
    return written


def check(out_dir: Path = ROOT, target: ClickHouseTarget | None = None) -> list[str]:
    """Files that differ from what `build` would write (empty when up to date)."""
    files = render(target)
    problems = []
    for rel, text in files.items():
        path = out_dir / rel
        if not path.exists():
            problems.append(f"{rel}: missing")
        elif path.read_text() != text:
            problems.append(f"{rel}: differs from the builders' output")
    for extra in sorted((out_dir / JSON_DIR).glob("*.json")):
        if f"{JSON_DIR}/{extra.name}" not in files:
            problems.append(f"{JSON_DIR}/{extra.name}: not produced by any builder")
    return problems
