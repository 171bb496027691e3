"""Ground-truth label outputs: files next to the run and a ClickHouse table.

Files (in the run's output dir):
- `labels.json`: address -> label for every simulated actor (the format the stack's
  summary reads to compute precision/recall; infra accounts are not in it);
- `actors.json`: actor id -> label, addresses and the randomized parameters it drew;
- `tx_labels.jsonl`: one line per sent transaction (hash, sender, label, actor, role).

ClickHouse: `sim_labels`, one row per address and per transaction of a run.
`LABELS_MIGRATION` holds its DDL in the `{db}` form of `pipelines.storage.schema`
migrations, so it can be registered there; `ensure_table` applies the same
statement (idempotent) so a run also works against a database without it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from pipelines.simulator.config import LABEL_INFRA
from pipelines.simulator.plan import ActorInfo

log = logging.getLogger(__name__)

LABELS_TABLE = "sim_labels"

LABELS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.sim_labels
(
    run_id String,
    entity String,
    entity_kind LowCardinality(String),
    label LowCardinality(String),
    actor String,
    role LowCardinality(String),
    params String,
    sent_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(sent_at)
ORDER BY (run_id, entity_kind, entity)
"""
#: Statements for a `pipelines.storage.schema.Migration` ("simulator ground-truth labels").
LABELS_MIGRATION: list[str] = [LABELS_DDL]

LABELS_COLUMNS = [
    "run_id",
    "entity",
    "entity_kind",
    "label",
    "actor",
    "role",
    "params",
    "sent_at",
]


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


@dataclass
class ClickHouseLabels:
    """Connection details of the label table (a real server or the embedded one)."""

    url: str
    database: str = "vigil"
    user: str = "default"
    password: str = ""


class LabelWriter:
    """Writes labels as the run goes; thread-safe; `close()` flushes."""

    def __init__(
        self,
        out_dir: Path,
        run_id: str,
        clickhouse: ClickHouseLabels | None = None,
        flush_every_s: float = 2.0,
    ) -> None:
        self.out_dir = out_dir
        self.run_id = run_id
        self.flush_every_s = flush_every_s
        out_dir.mkdir(parents=True, exist_ok=True)
        self._tx_file: TextIO = open(out_dir / "tx_labels.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._rows: list[list[Any]] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._client: Any = None
        self._ch = clickhouse
        if clickhouse is not None:
            from pipelines.storage.client import connect

            self._client = connect(
                clickhouse.url, clickhouse.user, clickhouse.password, None, retry_for=10.0
            )
            ensure_table(self._client, clickhouse.database)

    def write_actors(self, infos: list[ActorInfo]) -> None:
        """labels.json, actors.json and one address row per actor address."""
        labels = {a: i.label for i in infos for a in i.addresses if i.label != LABEL_INFRA}
        (self.out_dir / "labels.json").write_text(json.dumps(labels, indent=1))
        actors = {
            i.actor: {"label": i.label, "addresses": i.addresses, "params": i.params} for i in infos
        }
        (self.out_dir / "actors.json").write_text(json.dumps(actors, indent=1, default=str))
        now = _ts(time.time())
        with self._lock:
            for i in infos:
                params = json.dumps(i.params, default=str)
                for a in i.addresses:
                    self._rows.append(
                        [self.run_id, a, "address", i.label, i.actor, "", params, now]
                    )
        self.flush()

    def tx(self, tx_hash: str, sender: str, label: str, actor: str, role: str, t: float) -> None:
        """Record one sent transaction."""
        line = {
            "tx_hash": tx_hash,
            "sender": sender,
            "label": label,
            "actor": actor,
            "role": role,
            "t": round(t, 3),
        }
        with self._lock:
            self._tx_file.write(json.dumps(line) + "\n")
            self._rows.append(
                [self.run_id, tx_hash, "tx", label, actor, role, "", _ts(time.time())]
            )
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
            self._tx_file.flush()
            self._last_flush = time.monotonic()
        if rows and self._client is not None and self._ch is not None:
            try:
                self._client.insert(
                    LABELS_TABLE, rows, column_names=LABELS_COLUMNS, database=self._ch.database
                )
            except Exception as e:  # labels must not stop the traffic; keep them for later
                log.warning("could not write %d label rows to ClickHouse: %s", len(rows), e)
                with self._lock:
                    self._rows = rows + self._rows

    def close(self) -> None:
        self.flush()
        self._tx_file.close()
        if self._client is not None:
            self._client.close()
            self._client = None


def ensure_table(client: Any, database: str) -> None:
    """Create the database and `sim_labels` if missing (same DDL as the migration)."""
    from pipelines.storage.schema import quote_database

    db = quote_database(database)
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    client.command(LABELS_DDL.format(db=db))
