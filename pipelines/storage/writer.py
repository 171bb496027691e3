"""Batched ClickHouse writer with retry and a bounded on-disk spool.

Why: rows arrive one event at a time but ClickHouse wants few, large inserts; and
when ClickHouse is down (restart, network, overload) the pipeline must neither lose
rows nor grow memory without bound. So:

* rows are buffered and sent as one insert when `max_rows` accumulate or the oldest
  buffered row is `max_delay_s` old (a background thread watches the clock);
* a batch that cannot be inserted goes to a spool directory, one file per batch,
  written atomically (temp file, fsync, rename) and replayed oldest first by the
  background thread with exponential backoff once ClickHouse answers again. While
  the spool is not empty, new batches queue behind it, so rows arrive in order;
* the spool is bounded (`max_spool_bytes`): when it is full, `add()` refuses new
  rows with `SpoolFull` (the caller keeps them, e.g. does not commit its Kafka
  offset) -- nothing is dropped silently, and memory stays at most about one batch;
* every batch carries an `insert_deduplication_token` fixed when it is cut (and
  stored in its spool file). An insert that reached ClickHouse although the client
  saw an error (server killed after the commit, connection reset before the reply)
  is then dropped by the server when retried: every row arrives exactly once, in
  the table and in the materialized views fed by it (the tables keep a dedup log,
  see `schema.DEDUP_WINDOW`). ReplacingMergeTree keys catch what remains, e.g. a
  process that died with a batch in memory and re-read it from Kafka.

A batch the server rejects for its content (a type or parse error) would fail
forever; it is moved to `<spool>/rejected/` with the error and logged at ERROR, so
one bad row cannot stall the pipeline and the rows are still there to inspect.

One writer per (spool directory, table): the spool is locked with `flock`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import decimal
import fcntl
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clickhouse_connect.driver import Client
from clickhouse_connect.driver.exceptions import (
    DatabaseError,
    DataError,
    OperationalError,
    ProgrammingError,
)

from pipelines.storage.client import StorageUnavailable

log = logging.getLogger(__name__)

SPOOL_SUFFIX = ".batch.json"
# ClickHouse error codes that say "this batch itself is wrong": retrying cannot help.
_DATA_ERROR_CODES = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        16,  # NO_SUCH_COLUMN_IN_TABLE
        26,  # CANNOT_PARSE_QUOTED_STRING
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        33,  # CANNOT_READ_ALL_DATA
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    }
)
_CODE_RE = re.compile(r"\bcode[:\s]+(\d+)", re.I)


class SpoolFull(RuntimeError):
    """ClickHouse is unavailable and the spool has no room: the rows were refused."""


class WriterClosed(RuntimeError):
    """`add()` after `close()`."""


@dataclass
class WriterStats:
    """Counters since the writer started (read them from any thread)."""

    rows_added: int = 0
    rows_written: int = 0
    batches_written: int = 0
    batches_spooled: int = 0
    batches_replayed: int = 0
    batches_rejected: int = 0
    insert_failures: int = 0
    rows_refused: int = 0
    spool_batches: int = 0
    spool_bytes: int = 0
    last_error: str = ""


@dataclass
class _Batch:
    seq: int
    token: str
    rows: list[Sequence[Any]]


@dataclass
class _SpoolEntry:
    seq: int
    path: Path
    size: int


@dataclass
class _Spool:
    """Batch files named by sequence number; oldest first."""

    root: Path
    max_bytes: int
    entries: deque[_SpoolEntry] = field(default_factory=deque)
    bytes: int = 0

    def load(self) -> int:
        """Index what a previous run left; returns the next free sequence number."""
        self.root.mkdir(parents=True, exist_ok=True)
        for tmp in self.root.glob("*.tmp"):
            tmp.unlink()  # never renamed: its batch was not accepted as spooled
        found = []
        for path in self.root.glob(f"*{SPOOL_SUFFIX}"):
            with contextlib.suppress(ValueError):
                found.append(_SpoolEntry(int(path.name.split(".")[0]), path, path.stat().st_size))
        found.sort(key=lambda e: e.seq)
        self.entries = deque(found)
        self.bytes = sum(e.size for e in found)
        return found[-1].seq + 1 if found else 0

    def append(self, batch: _Batch, header: dict[str, Any]) -> int:
        payload = _serialize(batch, header)
        if self.bytes + len(payload) > self.max_bytes:
            raise SpoolFull(
                f"spool {self.root} is full ({self.bytes} bytes spooled, "
                f"{len(payload)} more would pass the {self.max_bytes} byte limit)"
            )
        path = self.root / f"{batch.seq:016d}{SPOOL_SUFFIX}"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.root)
        self.entries.append(_SpoolEntry(batch.seq, path, len(payload)))
        self.bytes += len(payload)
        return len(payload)

    def read(self, entry: _SpoolEntry) -> _Batch:
        doc = json.loads(entry.path.read_bytes(), object_hook=_decode_object)
        return _Batch(int(doc["seq"]), str(doc["token"]), list(doc["rows"]))

    def pop(self, entry: _SpoolEntry, reject_reason: str | None = None) -> None:
        """Forget the oldest entry: deleted when inserted, moved aside when rejected."""
        assert self.entries and self.entries[0] is entry
        self.entries.popleft()
        self.bytes -= entry.size
        if reject_reason is None:
            entry.path.unlink(missing_ok=True)
            return
        rejected = self.root / "rejected"
        rejected.mkdir(exist_ok=True)
        os.replace(entry.path, rejected / entry.path.name)
        (rejected / (entry.path.name + ".error.txt")).write_text(reject_reason)


def _serialize(batch: _Batch, header: dict[str, Any]) -> bytes:
    doc = {
        **header,
        "seq": batch.seq,
        "token": batch.token,
        "rows": list(map(_encode_row, batch.rows)),
    }
    return json.dumps(doc, default=_encode_value, separators=(",", ":")).encode()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode_value(value: Any) -> Any:
    """JSON for the Python values clickhouse-connect inserts (types kept via a tag)."""
    if isinstance(value, dt.datetime):
        return {"$t": "dt", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$t": "date", "v": value.isoformat()}
    if isinstance(value, bytes | bytearray):
        return {"$t": "bytes", "v": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, decimal.Decimal):
        return {"$t": "dec", "v": str(value)}
    if isinstance(value, uuid.UUID):
        return {"$t": "uuid", "v": str(value)}
    if isinstance(value, tuple):
        return {"$t": "tuple", "v": list(value)}
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"cannot spool a {type(value).__name__}: {value!r}")


def _encode_row(row: Sequence[Any]) -> list[Any]:
    """Dicts (Map columns) become tagged pairs, so keys keep their type and a user
    dict can never be mistaken for a tag."""
    return [_encode_nested(v) for v in row]


def _encode_nested(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            "$t": "map",
            "v": [[_encode_nested(k), _encode_nested(v)] for k, v in value.items()],
        }
    if isinstance(value, list):
        return [_encode_nested(v) for v in value]
    if isinstance(value, tuple):
        return {"$t": "tuple", "v": [_encode_nested(v) for v in value]}
    return value


def _decode_object(obj: dict[str, Any]) -> Any:
    tag = obj.get("$t")
    if tag is None or len(obj) != 2:
        return obj
    v = obj["v"]
    if tag == "dt":
        return dt.datetime.fromisoformat(v)
    if tag == "date":
        return dt.date.fromisoformat(v)
    if tag == "bytes":
        return base64.b64decode(v)
    if tag == "dec":
        return decimal.Decimal(v)
    if tag == "uuid":
        return uuid.UUID(v)
    if tag == "tuple":
        return tuple(v)
    if tag == "map":
        return {_hashable(k): val for k, val in v}
    return obj


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def error_code(exc: BaseException) -> int | None:
    """The ClickHouse error code in a clickhouse-connect exception, when there is one."""
    m = _CODE_RE.search(str(exc))
    return int(m.group(1)) if m else None


def is_retryable(exc: BaseException) -> bool:
    """True for "ClickHouse is unavailable" (retry later), False for a batch that the
    server or the driver refuses for its content (retrying would fail the same way)."""
    if isinstance(exc, OperationalError | StorageUnavailable | OSError | TimeoutError):
        return True
    if isinstance(exc, DataError | ProgrammingError | TypeError | ValueError):
        return False
    if isinstance(exc, DatabaseError):
        return error_code(exc) not in _DATA_ERROR_CODES
    return True


class BatchedWriter:
    """Buffered, spooling, exactly-once inserts into one table (see module docstring).

    `client_factory` returns a connected `clickhouse_connect` client; it is called
    again after any failure (a broken connection is never reused). Use it from any
    number of threads.
    """

    def __init__(
        self,
        client_factory: Callable[[], Client],
        table: str,
        columns: Sequence[str],
        *,
        database: str | None = None,
        max_rows: int = 10_000,
        max_delay_s: float = 1.0,
        spool_dir: str | Path,
        max_spool_bytes: int = 256 * 1024 * 1024,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        insert_settings: dict[str, Any] | None = None,
    ) -> None:
        if max_rows < 1 or max_delay_s <= 0 or max_spool_bytes < 1:
            raise ValueError("max_rows, max_delay_s and max_spool_bytes must be positive")
        self.table = table
        self.columns = list(columns)
        self.database = database
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._factory = client_factory
        self._settings = dict(insert_settings or {})
        self._client: Client | None = None
        self._column_types: Any = None
        self._writer_id = uuid.uuid4().hex[:12]
        self._header = {"table": table, "database": database, "columns": self.columns}

        qualified = f"{database}.{table}" if database else table
        self._spool = _Spool(Path(spool_dir) / qualified, max_spool_bytes)
        self._spool.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self._spool.root / ".lock", "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise RuntimeError(f"spool {self._spool.root} is in use by another writer") from None
        self._seq = self._spool.load()

        self._lock = threading.Lock()  # buffer and stats
        self._io = threading.Lock()  # inserts and spool, in order
        self._wake = threading.Event()
        self._buffer: list[Sequence[Any]] = []
        self._buffer_since = 0.0
        self._retry_at = 0.0
        self._backoff = retry_initial_s
        self._closed = False
        self._full_logged = False
        self.stats = WriterStats(
            spool_batches=len(self._spool.entries), spool_bytes=self._spool.bytes
        )
        if self._spool.entries:
            log.warning(
                "%s: %d spooled batches (%d bytes) from a previous run will be replayed",
                qualified,
                len(self._spool.entries),
                self._spool.bytes,
            )
        self._thread = threading.Thread(target=self._run, name=f"writer-{table}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API

    @property
    def pending_rows(self) -> int:
        """Rows buffered in memory (not yet inserted or spooled)."""
        with self._lock:
            return len(self._buffer)

    @property
    def spooled_batches(self) -> int:
        return len(self._spool.entries)

    def add(self, rows: Iterable[Sequence[Any]]) -> None:
        """Accept rows for insertion, or refuse all of them with `SpoolFull`.

        Full batches are sent (or spooled) before returning, in the caller's thread:
        a slow ClickHouse slows the producer instead of growing memory.
        """
        batch = list(rows)
        if not batch:
            return
        self._dispatch(force=False)
        with self._lock:
            if self._closed:
                raise WriterClosed(f"writer for {self.table} is closed")
            if len(self._buffer) >= self.max_rows:
                self.stats.rows_refused += len(batch)
                raise SpoolFull(
                    f"{self.table}: ClickHouse unavailable ({self.stats.last_error}) and the "
                    f"spool {self._spool.root} is full ({self._spool.bytes} bytes); "
                    f"refusing {len(batch)} rows"
                )
            if not self._buffer:
                self._buffer_since = time.monotonic()
            self._buffer.extend(batch)
            self.stats.rows_added += len(batch)
            full = len(self._buffer) >= self.max_rows
        if full:
            self._dispatch(force=False)

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything buffered and replay the spool, retrying up to `timeout` s.

        Returns True when every accepted row is in ClickHouse; False when some are
        still spooled (ClickHouse still down) -- they stay safe on disk.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._dispatch(force=True)
            self._drain()
            if not self._spool.entries and not self.pending_rows:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            pause = max(0.0, self._retry_at - time.monotonic())
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            time.sleep(max(pause, 0.01))

    def close(self, timeout: float = 10.0) -> None:
        """Flush (up to `timeout` s), stop the thread. Rows ClickHouse did not take stay
        in the spool for the next writer on this directory; rows that could not even
        be spooled raise `SpoolFull` here rather than vanish."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        self._thread.join(timeout=timeout + 5)
        delivered = self.flush(timeout)
        left = self.pending_rows
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
        if left:
            raise SpoolFull(f"{self.table}: {left} rows could be neither inserted nor spooled")
        if not delivered:
            log.warning(
                "%s: closed with %d batches (%d bytes) spooled in %s for the next run",
                self.table,
                len(self._spool.entries),
                self._spool.bytes,
                self._spool.root,
            )

    def __enter__(self) -> BatchedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _run(self) -> None:
        tick = min(0.05, self.max_delay_s / 4)
        while True:
            self._wake.wait(tick)
            self._wake.clear()
            with self._lock:
                if self._closed:
                    return
                due = bool(self._buffer) and (
                    time.monotonic() - self._buffer_since >= self.max_delay_s
                )
            try:
                if due:
                    self._dispatch(force=True)
                if self._spool.entries and time.monotonic() >= self._retry_at:
                    self._drain()
            except Exception:  # the thread must survive anything a batch can raise
                log.exception("%s: background flush failed", self.table)

    def _cut(self, force: bool) -> list[_Batch]:
        with self._lock:
            batches = []
            while len(self._buffer) >= self.max_rows or (force and self._buffer):
                rows, self._buffer = self._buffer[: self.max_rows], self._buffer[self.max_rows :]
                batches.append(_Batch(self._seq, f"{self._writer_id}-{self._seq}", rows))
                self._seq += 1
            if self._buffer and batches:
                self._buffer_since = time.monotonic()
            return batches

    def _requeue(self, batches: list[_Batch]) -> None:
        """Put batches that could be neither inserted nor spooled back in front."""
        with self._lock:
            rows = [r for b in batches for r in b.rows]
            self._buffer = rows + self._buffer

    def _dispatch(self, force: bool) -> None:
        """Move full (or, with `force`, all) buffered rows out: to ClickHouse when the
        spool is empty and ClickHouse answers, else to the spool."""
        with self._io:
            batches = self._cut(force)
            for i, batch in enumerate(batches):
                try:
                    self._deliver(batch)
                except SpoolFull as exc:
                    self._requeue(batches[i:])
                    if not self._full_logged:
                        self._full_logged = True
                        log.error("%s; new rows are refused until ClickHouse is back", exc)
                    return
            self._full_logged = False

    def _deliver(self, batch: _Batch) -> None:
        if not self._spool.entries:
            error = self._insert(batch)
            if error is None:
                return
            if not is_retryable(error):
                self._reject_batch(batch, error)
                return
        size = self._spool.append(batch, self._header)
        with self._lock:
            self.stats.batches_spooled += 1
            self.stats.spool_batches = len(self._spool.entries)
            self.stats.spool_bytes = self._spool.bytes
        log.debug(
            "%s: spooled batch %d (%d rows, %d bytes)", self.table, batch.seq, len(batch.rows), size
        )

    def _drain(self) -> None:
        """Replay spooled batches oldest first; stop at the first retryable failure."""
        while True:
            with self._io:
                if not self._spool.entries:
                    return
                if time.monotonic() < self._retry_at:
                    return
                entry = self._spool.entries[0]
                try:
                    batch = self._spool.read(entry)
                except (OSError, ValueError) as exc:  # torn or foreign file: keep it aside
                    log.error("%s: unreadable spool file %s: %s", self.table, entry.path, exc)
                    self._spool.pop(entry, reject_reason=f"unreadable: {exc}")
                    continue
                error = self._insert(batch)
                if error is not None and is_retryable(error):
                    return
                if error is not None:
                    self._spool.pop(entry, reject_reason=repr(error))
                    self._count_rejected(batch, error)
                else:
                    self._spool.pop(entry)
                    with self._lock:
                        self.stats.batches_replayed += 1
                with self._lock:
                    self.stats.spool_batches = len(self._spool.entries)
                    self.stats.spool_bytes = self._spool.bytes
                if not self._spool.entries:
                    log.info("%s: spool drained, ClickHouse is taking inserts again", self.table)

    def _insert(self, batch: _Batch) -> BaseException | None:
        """One insert attempt; returns the error instead of raising it."""
        try:
            if self._client is None:
                self._client = self._factory()
            settings = {**self._settings, "insert_deduplication_token": batch.token}
            kwargs: dict[str, Any] = {}
            if self._column_types is not None:
                kwargs["column_types"] = self._column_types
            else:
                ctx = self._client.create_insert_context(
                    self.table, self.columns, self.database, settings=settings
                )
                self._column_types = ctx.column_types
                kwargs["column_types"] = self._column_types
            self._client.insert(
                self.table,
                batch.rows,
                column_names=self.columns,
                database=self.database,
                settings=settings,
                **kwargs,
            )
        except Exception as exc:  # classified by the caller
            self._on_failure(exc)
            return exc
        now = time.monotonic()
        with self._lock:
            self.stats.rows_written += len(batch.rows)
            self.stats.batches_written += 1
            self._backoff = self.retry_initial_s
            self._retry_at = now
        return None

    def _on_failure(self, exc: BaseException) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        with self._lock:
            self.stats.insert_failures += 1
            first = not self.stats.last_error
            self.stats.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self.retry_max_s, self._backoff * 2)
        level = logging.WARNING if first or not is_retryable(exc) else logging.DEBUG
        log.log(level, "%s: insert failed (%s); spooling and retrying", self.table, exc)

    def _reject_batch(self, batch: _Batch, error: BaseException) -> None:
        rejected = self._spool.root / "rejected"
        rejected.mkdir(exist_ok=True)
        path = rejected / f"{batch.seq:016d}{SPOOL_SUFFIX}"
        path.write_bytes(_serialize(batch, self._header))
        (rejected / (path.name + ".error.txt")).write_text(repr(error))
        self._count_rejected(batch, error)

    def _count_rejected(self, batch: _Batch, error: BaseException) -> None:
        with self._lock:
            self.stats.batches_rejected += 1
        log.error(
            "%s: ClickHouse rejected batch %d (%d rows) for its content: %s; kept in %s",
            self.table,
            batch.seq,
            len(batch.rows),
            error,
            self._spool.root / "rejected",
        )
