"""Embedded ClickHouse: a chdb engine on disk, served over the ClickHouse HTTP protocol.

Why: the local stack must not need a ClickHouse server binary, yet every consumer
(`clickhouse-connect` in the pipelines, Grafana's ClickHouse data source) should talk
to storage exactly as it will in production. chdb is the ClickHouse engine as a
library; this module puts the HTTP interface of a real server in front of it:

* `POST /` and `GET /?query=` with the URL parameters a server understands
  (`database`, `default_format`, `query_id`, `session_id`, `param_*`, settings);
* results in whatever format the query (or `default_format`) asks for, Native included;
* inserts as `INSERT INTO t (cols) FORMAT <fmt>` followed by the data, which is
  streamed into chdb's own input-format parser and never parsed as SQL;
* request bodies compressed with gzip/deflate/br/xz/zstd/lz4 (`Content-Encoding`)
  and compressed responses when the client sends `Accept-Encoding`;
* Native results framed for the client's `client_protocol_version` (BlockInfo and
  serialization flags), as clickhouse-go -- hence Grafana -- and clickhouse-connect expect;
* errors as `Code: N. DB::Exception: ...` with `X-ClickHouse-Exception-Code` and
  the HTTP status a server would use;
* one statement per request (a server rejects multi-statements; chdb would run them);
* `GET` (or `readonly=1`) only runs reads, as on a server.

Not served: ClickHouse-native block compression (`compress=1`/`decompress=1`, what
clickhouse-go uses for its lz4/zstd options; use gzip/deflate/br/none there) and
external data tables; both answer with a clear NOT_IMPLEMENTED error.

chdb runs one engine (one data dir) per process, so all engine access is serialized by
one lock, and the server sets the process's TZ (default UTC) before the engine starts.
Each HTTP session (`session_id`) gets its own chdb connection, so `SET`, `USE` and
temporary tables stay per session as on a server; requests without a session run on
a fresh connection that is discarded afterwards.

Run it as `python -m pipelines.storage.chserver --data-dir DIR --port P`.
"""

from __future__ import annotations

import argparse
import base64
import bz2
import contextlib
import email.parser
import email.policy
import gzip
import importlib
import json
import logging
import lzma
import os
import re
import signal
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# Named explicitly so `python -m` (where __name__ is "__main__") logs under the same name.
log = logging.getLogger("pipelines.storage.chserver")

DEFAULT_FORMAT = "TabSeparated"
DEFAULT_SESSION_TIMEOUT_S = 60.0
MAX_SESSION_TIMEOUT_S = 3600.0
KEEP_ALIVE_TIMEOUT_S = 30

# ClickHouse error codes this module raises itself.
SYNTAX_ERROR = 62
NOT_IMPLEMENTED = 48
READONLY = 164
SESSION_NOT_FOUND = 372
INVALID_SESSION_TIMEOUT = 374
AUTHENTICATION_FAILED = 516
UNKNOWN_FORMAT = 73
ABORTED = 236
CANNOT_DECOMPRESS = 271
STD_EXCEPTION = 1001

_ERROR_NAMES = {
    SYNTAX_ERROR: "SYNTAX_ERROR",
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    READONLY: "READONLY",
    SESSION_NOT_FOUND: "SESSION_NOT_FOUND",
    INVALID_SESSION_TIMEOUT: "INVALID_SESSION_TIMEOUT",
    AUTHENTICATION_FAILED: "AUTHENTICATION_FAILED",
    UNKNOWN_FORMAT: "UNKNOWN_FORMAT",
    ABORTED: "ABORTED",
    CANNOT_DECOMPRESS: "CANNOT_DECOMPRESS",
    STD_EXCEPTION: "STD_EXCEPTION",
}

# HTTP status per exception name, as ClickHouse's HTTPHandler maps them.
_STATUS_BY_NAME: dict[str, int] = {
    "REQUIRED_PASSWORD": 401,
    "UNKNOWN_USER": 403,
    "WRONG_PASSWORD": 403,
    "AUTHENTICATION_FAILED": 403,
    "QUERY_IS_TOO_LARGE": 413,
    "NOT_IMPLEMENTED": 501,
    "SOCKET_TIMEOUT": 503,
    "CANNOT_OPEN_FILE": 503,
    "HTTP_LENGTH_REQUIRED": 411,
    "ABORTED": 503,
}
for _name in (
    "CANNOT_PARSE_TEXT",
    "CANNOT_PARSE_ESCAPE_SEQUENCE",
    "CANNOT_PARSE_QUOTED_STRING",
    "CANNOT_PARSE_DATE",
    "CANNOT_PARSE_DATETIME",
    "CANNOT_PARSE_NUMBER",
    "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    "UNKNOWN_ELEMENT_IN_AST",
    "UNKNOWN_TYPE_OF_AST_NODE",
    "TOO_DEEP_AST",
    "TOO_BIG_AST",
    "UNEXPECTED_AST_STRUCTURE",
    "SYNTAX_ERROR",
    "INCORRECT_DATA",
    "TYPE_MISMATCH",
    "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    "BAD_REQUEST_PARAMETER",
    "INVALID_SESSION_TIMEOUT",
    "CANNOT_DECOMPRESS",
):
    _STATUS_BY_NAME[_name] = 400
for _name in (
    "UNKNOWN_TABLE",
    "UNKNOWN_FUNCTION",
    "UNKNOWN_IDENTIFIER",
    "UNKNOWN_TYPE",
    "UNKNOWN_STORAGE",
    "UNKNOWN_DATABASE",
    "UNKNOWN_SETTING",
    "UNKNOWN_DIRECTION_OF_SORTING",
    "UNKNOWN_AGGREGATE_FUNCTION",
    "UNKNOWN_FORMAT",
    "UNKNOWN_DATABASE_ENGINE",
    "UNKNOWN_TYPE_OF_QUERY",
    "UNKNOWN_ROLE",
    "SESSION_NOT_FOUND",
):
    _STATUS_BY_NAME[_name] = 404

# URL parameters the HTTP layer consumes; everything else that names a known setting
# is applied to the query, the rest is ignored (clients validate settings themselves).
_TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "user",
        "password",
        "quota_key",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "role",
        "stacktrace",
        "add_http_cors_header",
        "enable_http_compression",
        "send_progress_in_http_headers",
        "cancel_http_readonly_queries_on_client_close",
        "output_format_parallel_formatting",
        "readonly",
    }
)

# Statements that return a result set (a server then sends X-ClickHouse-Format).
_RESULT_KINDS = frozenset(
    {"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS", "CHECK", "KILL", "WATCH"}
)
# What GET may run: GET implies readonly=2 on a server (reads and SET).
_READONLY_KINDS = _RESULT_KINDS - {"KILL"} | {"SET", "USE"}

# Output formats of chdb's Python layer that are Python objects, not ClickHouse formats.
_PYTHON_ONLY_FORMATS = frozenset({"dataframe", "arrowtable", "debug"})


class ClickHouseError(Exception):
    """An error to report to the client the way a ClickHouse server does."""

    def __init__(self, code: int, message: str, name: str | None = None) -> None:
        self.code = code
        self.name = name or _ERROR_NAMES.get(code, "UNKNOWN_EXCEPTION")
        if message.startswith("Code: "):
            self.text = message.strip()
        else:
            self.text = f"Code: {code}. DB::Exception: {message}. ({self.name})"
        super().__init__(self.text)

    @property
    def http_status(self) -> int:
        return _STATUS_BY_NAME.get(self.name, 500)

    def body(self, version: str) -> bytes:
        text = self.text if "(version " in self.text else f"{self.text} (version {version})"
        return (text + "\n").encode()

    @classmethod
    def from_engine(cls, exc: BaseException) -> ClickHouseError:
        """Wrap a chdb exception, whose text already is ClickHouse's `Code: N. ...`."""
        message = str(exc)
        idx = message.find("Code: ")
        if idx < 0:
            return cls(STD_EXCEPTION, message or type(exc).__name__)
        message = message[idx:].strip()
        code_match = re.match(r"Code: (\d+)\.", message)
        code = int(code_match.group(1)) if code_match else STD_EXCEPTION
        names = re.findall(r"\(([A-Z][A-Z0-9_]+)\)", message)
        return cls(code, message, names[-1] if names else None)


# --------------------------------------------------------------------------- SQL text

_TOKEN_RE = re.compile(
    rb"""
      (?P<ws>[ \t\n\r\f\v]+)
    | (?P<lcomment>--[^\n]*|\#[ !][^\n]*)
    | (?P<bcomment>/\*)
    | (?P<string>'(?:[^'\\]++|\\.|'')*+')
    | (?P<dquoted>"(?:[^"\\]++|\\.|"")*+")
    | (?P<bquoted>`(?:[^`\\]++|\\.|``)*+`)
    | (?P<heredoc>\$[A-Za-z0-9_]*\$)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<number>[0-9][0-9A-Za-z_.]*)
    | (?P<other>.)
    """,
    re.S | re.X,
)
_BLOCK_COMMENT_RE = re.compile(rb"/\*|\*/")
_INSIGNIFICANT = frozenset({"ws", "lcomment", "bcomment"})


@dataclass(frozen=True)
class _Token:
    kind: str
    start: int
    end: int
    text: bytes


def _tokens(sql: bytes) -> Iterator[_Token]:
    """Lex SQL the way ClickHouse's lexer delimits strings, identifiers and comments.

    Only as much as statement splitting needs: every token that can hide a `;`
    (strings, quoted identifiers, heredocs, nested block comments) is one token.
    """
    pos, end = 0, len(sql)
    while pos < end:
        m = _TOKEN_RE.match(sql, pos)
        assert m is not None  # `other` matches any single byte
        kind = m.lastgroup or "other"
        stop = m.end()
        if kind == "bcomment":
            depth = 1
            for cm in _BLOCK_COMMENT_RE.finditer(sql, stop):
                depth += 1 if cm.group() == b"/*" else -1
                if depth == 0:
                    stop = cm.end()
                    break
            else:
                stop = end
        elif kind == "heredoc":
            close = sql.find(m.group(), stop)
            stop = end if close < 0 else close + len(m.group())
        yield _Token(kind, pos, stop, sql[pos:stop])
        pos = stop


@dataclass(frozen=True)
class Statement:
    """One SQL statement as the HTTP layer needs to know it.

    `sql` is the statement without trailing `;`. For an INSERT that carries its data
    (`FORMAT x` + data, or `VALUES ...`) `sql` is the INSERT head only and the data
    is `insert_data`, to be fed to the input format parser, never to the SQL parser.
    """

    sql: bytes
    kind: str
    output_format: str | None = None
    insert_format: str | None = None
    insert_data: bytes | None = None

    @property
    def produces_result(self) -> bool:
        return self.kind in _RESULT_KINDS

    @property
    def read_only(self) -> bool:
        return self.kind in _READONLY_KINDS


def _data_start(sql: bytes, pos: int) -> int:
    """Where inline INSERT data starts after `FORMAT name`, exactly as ClickHouse does:
    skip blanks, then one line break. (Native data may begin with a tab byte.)"""
    end = len(sql)
    while pos < end and sql[pos] in b" \t\f":
        pos += 1
    if pos < end and sql[pos] == 0x0D:
        pos += 1
    if pos < end and sql[pos] == 0x0A:
        pos += 1
    return pos


def parse_statement(sql: bytes) -> Statement:
    """Split off inline INSERT data, find the output format, refuse multi-statements."""
    kind = ""
    depth = 0
    tokens = _tokens(sql)
    significant: list[_Token] = []
    stmt_end: int | None = None
    for tok in tokens:
        if tok.kind in _INSIGNIFICANT:
            continue
        if stmt_end is not None:
            if tok.text == b";":
                continue
            snippet = sql[stmt_end : stmt_end + 60].decode("utf-8", "replace")
            raise ClickHouseError(
                SYNTAX_ERROR,
                "Syntax error (Multi-statements are not allowed): failed at position "
                f"{stmt_end + 1}: {snippet}",
            )
        if tok.text == b";":
            stmt_end = tok.start
            continue
        if not kind:
            if tok.kind == "word":
                kind = tok.text.decode().upper()
            elif tok.text == b"(":
                kind = "SELECT"
        if tok.text in (b"(", b"[", b"{"):
            depth += 1
        elif tok.text in (b")", b"]", b"}"):
            depth = max(0, depth - 1)
        word = tok.text.upper() if tok.kind == "word" else b""
        if kind == "INSERT" and depth == 0 and word in (b"FORMAT", b"VALUES"):
            if any(t.kind == "word" and t.text.upper() == b"INFILE" for t in significant):
                significant.append(tok)
                continue
            head = sql[: tok.start].rstrip()
            if word == b"VALUES":
                start = tok.end
                while start < len(sql) and sql[start] in b" \t\n\r\f\v":
                    start += 1
                return Statement(head, kind, insert_format="Values", insert_data=sql[start:])
            name = next((t for t in tokens if t.kind not in _INSIGNIFICANT), None)
            if name is None or name.kind != "word":
                raise ClickHouseError(SYNTAX_ERROR, "Syntax error: no format name after FORMAT")
            rest = sql[name.end :].lstrip(b" \t\f")
            if rest.startswith(b";"):
                raise ClickHouseError(
                    SYNTAX_ERROR, "You have excessive ';' symbol before data for INSERT"
                )
            data = sql[_data_start(sql, name.end) :]
            return Statement(head, kind, insert_format=name.text.decode(), insert_data=data)
        significant.append(tok)
    if not significant:
        raise ClickHouseError(SYNTAX_ERROR, "Empty query")
    end = stmt_end if stmt_end is not None else len(sql)
    return Statement(sql[:end].rstrip(), kind, output_format=_trailing_format(significant))


def _trailing_format(toks: list[_Token]) -> str | None:
    """The `FORMAT name` clause at the end of a query (optionally before SETTINGS)."""
    for i in range(len(toks) - 2, -1, -1):
        tok, name = toks[i], toks[i + 1]
        if tok.kind == "word" and tok.text.upper() == b"FORMAT" and name.kind == "word":
            after = toks[i + 2] if i + 2 < len(toks) else None
            if after is None or (after.kind == "word" and after.text.upper() == b"SETTINGS"):
                return name.text.decode()
    return None


# --------------------------------------------------------------------------- compression


def _optional_module(*names: str) -> ModuleType | None:
    for name in names:
        with contextlib.suppress(ImportError):
            return importlib.import_module(name)
    return None


_lz4 = _optional_module("lz4.frame")
# Both decompress concatenated frames (clickhouse-connect sends one frame per block).
_zstd = _optional_module("compression.zstd", "backports.zstd")
_brotli = _optional_module("brotli")


def _inflate(data: bytes) -> bytes:
    """zlib-wrapped deflate (what servers and clients mean), raw deflate as fallback;
    concatenated streams are all decoded."""
    out = []
    while data:
        try:
            obj = zlib.decompressobj()
            out.append(obj.decompress(data))
        except zlib.error:
            if out:
                raise
            return zlib.decompress(data, -zlib.MAX_WBITS)
        out.append(obj.flush())
        data = obj.unused_data
    return b"".join(out)


def _lz4_frames(data: bytes) -> bytes:
    """Every frame of a concatenation (`lz4.frame.decompress` stops after the first)."""
    assert _lz4 is not None
    out = []
    while data:
        dec = _lz4.LZ4FrameDecompressor()
        out.append(dec.decompress(data))
        if not dec.eof:
            raise ValueError("truncated lz4 frame")
        data = dec.unused_data
    return b"".join(out)


_DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,  # handles concatenated members
    "x-gzip": gzip.decompress,
    "deflate": _inflate,
    "xz": lzma.decompress,
    "bz2": bz2.decompress,
}
_ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda b: gzip.compress(b, compresslevel=3),
    "deflate": lambda b: zlib.compress(b, 3),
    "xz": lzma.compress,
    "bz2": bz2.compress,
}
if _lz4 is not None:
    _DECODERS["lz4"] = _lz4_frames
    _ENCODERS["lz4"] = _lz4.compress
if _zstd is not None:
    _DECODERS["zstd"] = _zstd.decompress
    _ENCODERS["zstd"] = _zstd.compress
if _brotli is not None:
    _DECODERS["br"] = _brotli.decompress
    _ENCODERS["br"] = _brotli.compress


def decode_body(data: bytes, encoding: str) -> bytes:
    """Undo a request's Content-Encoding (the encodings a ClickHouse server accepts)."""
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity" or not data:
        return data
    decoder = _DECODERS.get(encoding)
    if decoder is None:
        raise ClickHouseError(NOT_IMPLEMENTED, f"Unsupported Content-Encoding: {encoding}")
    try:
        return decoder(data)
    except Exception as exc:  # each codec raises its own error type
        raise ClickHouseError(
            CANNOT_DECOMPRESS, f"Cannot decompress {encoding} request body: {exc}"
        ) from exc


def choose_encoding(accept_encoding: str) -> str | None:
    """First encoding in the client's Accept-Encoding list that this server can produce."""
    for item in accept_encoding.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        q = re.search(r"q\s*=\s*([0-9.]+)", params)
        with contextlib.suppress(ValueError):
            if q and float(q.group(1)) == 0:
                continue
        if name in _ENCODERS:
            return name
    return None


def encode_body(data: bytes, encoding: str) -> bytes:
    return _ENCODERS[encoding](data)


# --------------------------------------------------------------------------- Native revisions

# A server writes Native results for the protocol revision the client names in
# `client_protocol_version` (clickhouse-go, hence Grafana, always sends it; clickhouse-
# connect after a probe). chdb writes revision 0, so the layout is adapted here:
# revision > 0 adds a BlockInfo before each block, revision >= 54454 adds a "custom
# serialization" flag byte after each column's type.
MIN_REVISION_WITH_CUSTOM_SERIALIZATION = 54454
# BlockInfo: field 1 is_overflows = 0, field 2 bucket_num = -1, end marker.
_BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"

_FIXED_WIDTH = {
    "UInt8": 1, "Int8": 1, "Bool": 1, "Enum8": 1, "Nothing": 1,
    "UInt16": 2, "Int16": 2, "Enum16": 2, "Date": 2, "BFloat16": 2,
    "UInt32": 4, "Int32": 4, "Float32": 4, "Date32": 4, "DateTime": 4, "IPv4": 4,
    "Decimal32": 4, "Time": 4,
    "UInt64": 8, "Int64": 8, "Float64": 8, "DateTime64": 8, "Decimal64": 8, "Time64": 8,
    "UInt128": 16, "Int128": 16, "UUID": 16, "IPv6": 16, "Decimal128": 16,
    "UInt256": 32, "Int256": 32, "Decimal256": 32,
}  # fmt: skip
_TYPE_ALIASES = {
    "Point": "Tuple(Float64, Float64)",
    "Ring": "Array(Point)",
    "LineString": "Array(Point)",
    "MultiLineString": "Array(LineString)",
    "Polygon": "Array(Ring)",
    "MultiPolygon": "Array(Polygon)",
}


def _split_type(type_name: str) -> tuple[str, list[str]]:
    """`Map(String, Array(UInt8))` -> ("Map", ["String", "Array(UInt8)"])."""
    type_name = type_name.strip()
    open_at = type_name.find("(")
    if open_at < 0:
        return type_name, []
    args, depth, quote, start = [], 0, "", open_at + 1
    for i in range(open_at + 1, len(type_name) - 1):
        ch = type_name[i]
        if quote:
            if ch == "\\":
                continue
            if ch == quote and type_name[i - 1] != "\\":
                quote = ""
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(type_name[start:i].strip())
            start = i + 1
    args.append(type_name[start:-1].strip())
    return type_name[:open_at].strip(), args


def _tuple_element_type(arg: str) -> str:
    """Drop the element name of a named tuple element (`a String`, `` `a b` String``)."""
    if arg.startswith("`"):
        end = arg.index("`", 1)
        while end + 1 < len(arg) and arg[end + 1] == "`":
            end = arg.index("`", end + 2)
        return arg[end + 1 :].strip()
    head, _, rest = arg.partition(" ")
    if rest and "(" not in head and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", head):
        return rest.strip()
    return arg


class _NativeCursor:
    """Walks column data of a revision-0 Native block without decoding values."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def varint(self) -> int:
        result = shift = 0
        buf, pos = self.buf, self.pos
        while True:
            byte = buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                self.pos = pos
                return result
            shift += 7

    def u64(self) -> int:
        value = int.from_bytes(self.buf[self.pos : self.pos + 8], "little")
        self.pos += 8
        return value

    def skip(self, n: int) -> None:
        self.pos += n
        if self.pos > len(self.buf):
            raise ValueError("Native block truncated")

    def skip_strings(self, n: int) -> None:
        buf, pos = self.buf, self.pos
        for _ in range(n):
            size = buf[pos]
            pos += 1
            if size >= 0x80:
                self.pos = pos - 1
                size = self.varint()
                pos = self.pos
            pos += size
        self.pos = pos
        if pos > len(buf):
            raise ValueError("Native block truncated")

    def skip_prefix(self, type_name: str) -> None:
        """Per-column state written before the data (LowCardinality's key version)."""
        name, args = _split_type(type_name)
        if name in _TYPE_ALIASES:
            self.skip_prefix(_TYPE_ALIASES[name])
        elif name == "LowCardinality":
            self.skip(8)
        elif name in ("Array", "Nullable"):
            self.skip_prefix(args[0])
        elif name == "SimpleAggregateFunction":
            self.skip_prefix(args[-1])
        elif name in ("Tuple", "Map"):
            for arg in args:
                self.skip_prefix(_tuple_element_type(arg))

    def skip_data(self, type_name: str, rows: int) -> None:
        name, args = _split_type(type_name)
        width = _FIXED_WIDTH.get(name)
        if width is not None or name.startswith("Interval"):
            self.skip(rows * (width or 8))
        elif name == "String":
            self.skip_strings(rows)
        elif name == "FixedString":
            self.skip(rows * int(args[0]))
        elif name == "Decimal":
            precision = int(args[0])
            self.skip(
                rows
                * (4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32)
            )
        elif name in _TYPE_ALIASES:
            self.skip_data(_TYPE_ALIASES[name], rows)
        elif name == "Nullable":
            self.skip(rows)
            self.skip_data(args[0], rows)
        elif name in ("Array", "Map"):
            total = 0
            if rows:
                total = int.from_bytes(
                    self.buf[self.pos + 8 * (rows - 1) : self.pos + 8 * rows], "little"
                )
            self.skip(8 * rows)
            for arg in args:  # Map(K, V) is Array(Tuple(K, V)): keys, then values
                self.skip_data(_tuple_element_type(arg), total)
        elif name == "Tuple":
            for arg in args:
                self.skip_data(_tuple_element_type(arg), rows)
        elif name == "SimpleAggregateFunction":
            self.skip_data(args[-1], rows)
        elif name == "LowCardinality":
            inner_name, inner_args = _split_type(args[0])
            keys_type = inner_args[0] if inner_name == "Nullable" else args[0]
            remaining = rows
            while remaining > 0:
                flags = self.u64()
                if flags & (1 << 8):
                    raise NotImplementedError("LowCardinality global dictionary")
                if flags & (1 << 9):
                    self.skip_data(keys_type, self.u64())
                count = self.u64()
                self.skip(count * (1, 2, 4, 8)[flags & 0xFF])
                remaining -= count
        else:
            raise NotImplementedError(f"type {type_name}")


def split_native_blocks(data: bytes) -> list[bytes]:
    """Cut a revision-0 Native stream into its blocks (walks, does not decode, the data)."""
    blocks = []
    cur = _NativeCursor(data)
    while cur.pos < len(data):
        start = cur.pos
        columns, rows = cur.varint(), cur.varint()
        for _ in range(columns):
            cur.skip(cur.varint())
            type_len = cur.varint()
            type_name = data[cur.pos : cur.pos + type_len].decode()
            cur.skip(type_len)
            if rows:
                cur.skip_prefix(type_name)
                cur.skip_data(type_name, rows)
        blocks.append(data[start : cur.pos])
    return blocks


def native_for_revision(blocks: Iterator[bytes] | list[bytes], revision: int) -> bytes:
    """Re-frame revision-0 Native blocks (one block per item) for protocol `revision`."""
    out = bytearray()
    for block in blocks:
        if not block:
            continue
        if revision > 0:
            out += _BLOCK_INFO
        if revision < MIN_REVISION_WITH_CUSTOM_SERIALIZATION:
            out += block
            continue
        cur = _NativeCursor(block)
        columns, rows = cur.varint(), cur.varint()
        out += block[: cur.pos]
        for _ in range(columns):
            start = cur.pos
            cur.skip(cur.varint())  # name
            type_len = cur.varint()
            type_name = block[cur.pos : cur.pos + type_len].decode()
            cur.skip(type_len)
            out += block[start : cur.pos]
            out += b"\x00"  # no custom (sparse) serialization
            start = cur.pos
            if rows:
                cur.skip_prefix(type_name)
                cur.skip_data(type_name, rows)
            out += block[start : cur.pos]
        if cur.pos != len(block):
            raise ValueError("Native block has trailing bytes")
    return bytes(out)


# --------------------------------------------------------------------------- engine


def _quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _quote_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class QueryRequest:
    """One statement plus the request context a server would apply to it."""

    sql: bytes
    params: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    database: str | None = None
    default_format: str = DEFAULT_FORMAT
    session_id: str | None = None
    session_timeout: float = DEFAULT_SESSION_TIMEOUT_S
    session_check: bool = False
    read_only: bool = False
    protocol_revision: int = 0


@dataclass
class QueryResult:
    body: bytes
    fmt: str | None
    summary: dict[str, str]


@dataclass
class _Handle:
    """A chdb connection and the per-session state layered on it."""

    conn: Any
    session_db: str = "default"
    current_db: str = "default"
    url_settings: dict[str, str] = field(default_factory=dict)
    saved: dict[str, tuple[str, bool]] = field(default_factory=dict)
    timeout: float = DEFAULT_SESSION_TIMEOUT_S
    last_used: float = field(default_factory=time.monotonic)


class _Engine:
    """The chdb engine on disk; every call holds one lock (chdb is one engine per process)."""

    def __init__(self, data_dir: Path, timezone: str | None) -> None:
        if timezone:
            # chdb takes the server time zone from TZ when the engine starts.
            os.environ["TZ"] = timezone
            time.tzset()
        import chdb  # deferred: importing chdb starts nothing, but it is heavy

        self._chdb = chdb
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._closed = False
        self._sessions: dict[str, _Handle] = {}
        try:
            self._main = chdb.connect(str(data_dir))
        except Exception as exc:
            raise ClickHouseError.from_engine(exc) from exc
        row = self._main.query("SELECT version(), timezone(), revision()", "TabSeparated")
        self.version, self.timezone, revision = row.bytes().decode().strip().split("\t")
        self.revision = int(revision)
        rows = self._main.query(
            "SELECT name, value FROM system.settings", "JSONCompactEachRow"
        ).bytes()
        defaults = dict(json.loads(line) for line in rows.splitlines() if line)
        self.known_settings = frozenset(defaults)
        self.http_compression_default = defaults.get("enable_http_compression", "0") != "0"

    # -- handles ---------------------------------------------------------------------

    def _open(self) -> _Handle:
        return _Handle(self._chdb.connect(str(self.data_dir)))

    def _expire_sessions(self, now: float) -> None:
        for sid, handle in list(self._sessions.items()):
            if now - handle.last_used > handle.timeout:
                log.debug("session %s expired", sid)
                self._close_handle(self._sessions.pop(sid))

    @staticmethod
    def _close_handle(handle: _Handle) -> None:
        try:
            handle.conn.close()
        except Exception:
            log.debug("closing a chdb connection failed", exc_info=True)

    def _handle_for(self, req: QueryRequest) -> tuple[_Handle, bool]:
        if not req.session_id:
            return self._open(), False
        handle = self._sessions.get(req.session_id)
        if handle is None:
            if req.session_check:
                raise ClickHouseError(SESSION_NOT_FOUND, f"Session {req.session_id} not found")
            handle = self._open()
            self._sessions[req.session_id] = handle
        handle.timeout = req.session_timeout
        return handle, True

    def _run(self, handle: _Handle, sql: str | bytes, fmt: str = DEFAULT_FORMAT, **kw: Any) -> Any:
        try:
            return handle.conn.query(sql, fmt, **kw)
        except Exception as exc:
            raise ClickHouseError.from_engine(exc) from exc

    def _use_database(self, handle: _Handle, database: str | None) -> None:
        want = database or handle.session_db
        if want != handle.current_db:
            self._run(handle, f"USE {_quote_ident(want)}")
            handle.current_db = want

    def _apply_settings(self, handle: _Handle, wanted: Mapping[str, str], keep: bool) -> None:
        """Apply per-request settings; on a session connection restore them afterwards
        lazily, so a client sending the same settings each time costs nothing."""
        if not keep:
            for name, value in wanted.items():
                self._run(handle, f"SET {name} = {_quote_literal(value)}")
            return
        changed = {k: v for k, v in wanted.items() if handle.url_settings.get(k) != v}
        stale = [k for k in handle.url_settings if k not in wanted]
        if not changed and not stale:
            return
        fresh = [k for k in changed if k not in handle.saved]
        if fresh:
            names = ", ".join(_quote_literal(k) for k in fresh)
            rows = self._run(
                handle,
                f"SELECT name, value, changed FROM system.settings WHERE name IN ({names})",
                "JSONCompactEachRow",
            ).bytes()
            for line in rows.splitlines():
                name, value, was_changed = json.loads(line)
                handle.saved[name] = (value, bool(was_changed))
        for name in stale:
            value, was_changed = handle.saved.pop(name, ("", False))
            literal = _quote_literal(value) if was_changed else "DEFAULT"
            self._run(handle, f"SET {name} = {literal}")
            del handle.url_settings[name]
        for name, value in changed.items():
            self._run(handle, f"SET {name} = {_quote_literal(value)}")
            handle.url_settings[name] = value

    # -- execution -------------------------------------------------------------------

    def execute(self, req: QueryRequest) -> QueryResult:
        stmt = parse_statement(req.sql)
        if req.read_only and not stmt.read_only:
            raise ClickHouseError(
                READONLY,
                "Cannot execute query in readonly mode. For queries over HTTP, method GET "
                "implies readonly. You should use method POST for modifying queries",
            )
        fmt = stmt.output_format or req.default_format
        if fmt.lower() in _PYTHON_ONLY_FORMATS:
            raise ClickHouseError(UNKNOWN_FORMAT, f"Unknown format {fmt}")
        settings = {k: v for k, v in req.settings.items() if k in self.known_settings}
        ignored = set(req.settings) - set(settings)
        if ignored:
            log.debug("ignoring unknown settings %s", sorted(ignored))
        with self._lock:
            if self._closed:
                raise ClickHouseError(ABORTED, "Server is shutting down")
            now = time.monotonic()
            self._expire_sessions(now)
            handle, keep = self._handle_for(req)
            try:
                self._use_database(handle, req.database)
                self._apply_settings(handle, settings, keep)
                if stmt.insert_data is not None:
                    return self._insert(handle, stmt)
                started = time.perf_counter()
                if req.protocol_revision and fmt == "Native" and stmt.produces_result:
                    revision = min(req.protocol_revision, self.revision)
                    body, summary = self._native_stream(handle, stmt, req, revision)
                    summary["elapsed_ns"] = str(int((time.perf_counter() - started) * 1e9))
                    return QueryResult(body, fmt, summary)
                res = self._run(handle, stmt.sql, fmt, params=req.params)
                body = res.bytes() or b""
                if keep and stmt.kind == "USE":
                    current = self._run(handle, "SELECT currentDatabase()").bytes()
                    handle.session_db = handle.current_db = current.decode().strip()
                summary = {
                    "read_rows": str(res.rows_read()),
                    "read_bytes": str(res.bytes_read()),
                    "written_rows": str(res.rows_written()),
                    "written_bytes": str(res.bytes_written()),
                    "total_rows_to_read": str(res.rows_read()),
                    "result_bytes": str(len(body)),
                    "elapsed_ns": str(int((time.perf_counter() - started) * 1e9)),
                }
                return QueryResult(body, fmt if stmt.produces_result else None, summary)
            finally:
                if keep:
                    handle.last_used = time.monotonic()
                else:
                    self._close_handle(handle)

    def _native_stream(
        self, handle: _Handle, stmt: Statement, req: QueryRequest, revision: int
    ) -> tuple[bytes, dict[str, str]]:
        """Native for a client protocol revision: chdb streams one block per chunk, which
        is what re-framing needs (block boundaries without decoding the data)."""
        blocks: list[bytes] = []
        read_rows = read_bytes = 0
        whole = False  # one buffer holding every block (not streamed block by block)
        try:
            with handle.conn.send_query(stmt.sql, "Native", params=req.params) as stream:
                for chunk in stream:
                    blocks.append(chunk.bytes())
                    read_rows += chunk.rows_read()
                    read_bytes += chunk.bytes_read()
        except Exception as exc:
            err = ClickHouseError.from_engine(exc)
            if "Streaming query is not supported" not in err.text:
                raise err from exc
            # chdb streams SELECTs only (not DESCRIBE, SHOW, ...): cut the blocks here.
            res = self._run(handle, stmt.sql, "Native", params=req.params)
            read_rows, read_bytes = res.rows_read(), res.bytes_read()
            blocks, whole = [res.bytes() or b""], True
        try:
            if whole and revision > 0:
                blocks = split_native_blocks(blocks[0])
            body = native_for_revision(blocks, revision)
        except NotImplementedError as exc:
            raise ClickHouseError(
                NOT_IMPLEMENTED,
                f"Native output for client_protocol_version {req.protocol_revision}: {exc} "
                "is not supported by the embedded server",
            ) from exc
        except (ValueError, IndexError) as exc:
            raise ClickHouseError(STD_EXCEPTION, f"Cannot re-frame Native output: {exc}") from exc
        summary = {
            "read_rows": str(read_rows),
            "read_bytes": str(read_bytes),
            "written_rows": "0",
            "written_bytes": "0",
            "total_rows_to_read": str(read_rows),
            "result_bytes": str(len(body)),
        }
        return body, summary

    def _insert(self, handle: _Handle, stmt: Statement) -> QueryResult:
        """Stream inline INSERT data into chdb's input format parser (never the SQL parser)."""
        assert stmt.insert_data is not None and stmt.insert_format is not None
        started = time.perf_counter()
        try:
            inserter = handle.conn.send_insert(stmt.sql.decode(), stmt.insert_format)
        except Exception as exc:
            raise ClickHouseError.from_engine(exc) from exc
        try:
            if stmt.insert_data:
                inserter.append(stmt.insert_data)
            done = inserter.finish()
        except Exception as exc:
            with contextlib.suppress(Exception):
                inserter.cancel()
            raise ClickHouseError.from_engine(exc) from exc
        summary = {
            "read_rows": str(done.rows_written),
            "read_bytes": str(len(stmt.insert_data)),
            "written_rows": str(done.rows_written),
            "written_bytes": str(done.bytes_written),
            "total_rows_to_read": "0",
            "result_bytes": "0",
            "elapsed_ns": str(int((time.perf_counter() - started) * 1e9)),
        }
        return QueryResult(b"", None, summary)

    def ping(self) -> bool:
        with self._lock:
            return not self._closed

    def close(self) -> None:
        """Close every connection; the last one shuts the engine down and frees the dir."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for handle in self._sessions.values():
                self._close_handle(handle)
            self._sessions.clear()
            try:
                self._main.close()
            except Exception:
                log.warning("closing chdb failed", exc_info=True)


# --------------------------------------------------------------------------- HTTP


def _content_type(fmt: str | None) -> str:
    if fmt is None:
        return "text/plain; charset=UTF-8"
    low = fmt.lower()
    if low.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if low.startswith("csv"):
        return "text/csv; charset=UTF-8; header=absent"
    if low.startswith("json"):
        return "application/json; charset=UTF-8"
    if low.startswith(("pretty", "vertical", "markdown", "values", "raw", "template")):
        return "text/plain; charset=UTF-8"
    return "application/octet-stream"


def _parse_multipart(content_type: str, body: bytes) -> dict[str, str]:
    """Form fields of a multipart/form-data request (query and param_* only)."""
    raw = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    fields: dict[str, str] = {}
    for part in msg.walk():
        if part.is_multipart():
            continue
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            raise ClickHouseError(NOT_IMPLEMENTED, "External data is not supported")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload.decode()
    return fields


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], engine: _Engine, users: Mapping[str, str]):
        self.engine = engine
        self.users = dict(users)
        self.display_name = socket.gethostname()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-response is routine, not a traceback on stderr."""
        log.debug("connection from %s failed", client_address, exc_info=True)

    def drop_connections(self) -> None:
        """Wake handler threads parked on idle keep-alive connections."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ClickHouse-chdb"
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle plus delayed
    # ACKs add ~40 ms to every small response.
    disable_nagle_algorithm = True
    timeout = KEEP_ALIVE_TIMEOUT_S
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    # -- plumbing ------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(3)
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(
        self,
        status: int,
        body: bytes,
        headers: Mapping[str, str],
        content_type: str = "text/plain; charset=UTF-8",
        compress: bool = False,
    ) -> None:
        encoding = None
        if compress and body:
            encoding = choose_encoding(self.headers.get("Accept-Encoding", ""))
            if encoding:
                body = encode_body(body, encoding)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Keep-Alive", f"timeout={KEEP_ALIVE_TIMEOUT_S}")
        if encoding:
            self.send_header("Content-Encoding", encoding)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authenticate(self, params: Mapping[str, str]) -> None:
        user = self.headers.get("X-ClickHouse-User") or params.get("user")
        password = self.headers.get("X-ClickHouse-Key") or params.get("password") or ""
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            with contextlib.suppress(ValueError):
                user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
        user = user or "default"
        if self.server.users.get(user) != password:
            raise ClickHouseError(
                AUTHENTICATION_FAILED,
                f"{user}: Authentication failed: password is incorrect, "
                "or there is no user with such name",
            )

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        engine = self.server.engine
        query_id = params.get("query_id") or str(uuid.uuid4())
        base_headers = {
            "X-ClickHouse-Server-Display-Name": self.server.display_name,
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": engine.timezone,
        }
        try:
            body = self._read_body()
        except (ValueError, OSError) as exc:
            self.close_connection = True
            self._send(400, f"Bad request body: {exc}\n".encode(), base_headers)
            return
        path = url.path.rstrip("/") or "/"
        if path in ("/ping", "/replicas_status") or (
            path == "/" and "query" not in params and not body and self.command != "POST"
        ):
            self._send(200, b"Ok.\n", {})
            return
        if path != "/":
            msg = (
                f"There is no handle {url.path}\n\nUse / or /ping for health checks.\n"
                "Send queries from your program with POST method or GET /?query=...\n"
            )
            self._send(404, msg.encode(), {})
            return
        try:
            result, compress = self._run_query(params, body)
        except ClickHouseError as exc:
            log.debug("query %s failed: %s", query_id, exc.text)
            headers = {**base_headers, "X-ClickHouse-Exception-Code": str(exc.code)}
            self._send(exc.http_status, exc.body(engine.version), headers)
            return
        except Exception as exc:  # a bug here must still answer like a server
            log.exception("query %s crashed", query_id)
            err = ClickHouseError(STD_EXCEPTION, f"{type(exc).__name__}: {exc}")
            headers = {**base_headers, "X-ClickHouse-Exception-Code": str(err.code)}
            self._send(500, err.body(engine.version), headers)
            return
        headers = dict(base_headers)
        if result.fmt is not None:
            headers["X-ClickHouse-Format"] = result.fmt
        headers["X-ClickHouse-Summary"] = json.dumps(result.summary, separators=(",", ":"))
        self._send(200, result.body, headers, _content_type(result.fmt), compress)

    def _run_query(self, params: dict[str, str], body: bytes) -> tuple[QueryResult, bool]:
        engine = self.server.engine
        body = decode_body(body, self.headers.get("Content-Encoding", ""))
        if params.get("decompress", "0") not in ("", "0"):
            raise ClickHouseError(NOT_IMPLEMENTED, "Native 'decompress' is not supported")
        if params.get("compress", "0") not in ("", "0"):
            raise ClickHouseError(NOT_IMPLEMENTED, "Native 'compress' is not supported")
        content_type = self.headers.get("Content-Type", "")
        if content_type.lower().startswith("multipart/form-data"):
            params = {**params, **_parse_multipart(content_type, body)}
            body = b""
        self._authenticate(params)
        query = params.get("query", "")
        sql = (query.encode() + b"\n" + body) if query else body
        try:
            timeout = float(params.get("session_timeout") or DEFAULT_SESSION_TIMEOUT_S)
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= MAX_SESSION_TIMEOUT_S:
            raise ClickHouseError(
                INVALID_SESSION_TIMEOUT, f"Invalid session timeout: {params['session_timeout']}"
            )
        try:
            revision = int(params.get("client_protocol_version") or 0)
        except ValueError:
            revision = 0
        req = QueryRequest(
            sql=sql,
            protocol_revision=max(0, revision),
            params={k[6:]: v for k, v in params.items() if k.startswith("param_")},
            settings={
                k: v
                for k, v in params.items()
                if k not in _TRANSPORT_PARAMS
                and not k.startswith(("param_", "http_"))
                and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)
            },
            database=self.headers.get("X-ClickHouse-Database") or params.get("database") or None,
            default_format=(
                params.get("default_format")
                or self.headers.get("X-ClickHouse-Format")
                or DEFAULT_FORMAT
            ),
            session_id=params.get("session_id") or None,
            session_timeout=timeout,
            session_check=params.get("session_check", "0") not in ("", "0"),
            # `readonly` is enforced here rather than SET on the connection: once set,
            # chdb would refuse to reset it and a session would stay read-only.
            read_only=self.command in ("GET", "HEAD") or params.get("readonly", "0") != "0",
        )
        compress_param = params.get("enable_http_compression")
        compress = (
            engine.http_compression_default
            if compress_param is None
            else compress_param not in ("", "0")
        )
        return engine.execute(req), compress


class ChdbHttpServer:
    """chdb on disk behind the ClickHouse HTTP protocol (see the module docstring)."""

    def __init__(
        self,
        data_dir: str | Path,
        host: str = "127.0.0.1",
        port: int = 8123,
        *,
        user: str = "default",
        password: str = "",
        timezone: str | None = "UTC",
    ) -> None:
        self.data_dir = Path(data_dir)
        self._engine = _Engine(self.data_dir, timezone)
        try:
            self._httpd = _Server((host, port), self._engine, {user: password})
        except Exception:
            self._engine.close()
            raise
        self._thread: threading.Thread | None = None
        self._serving = False
        self._stopped = False

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def version(self) -> str:
        return self._engine.version

    def serve_forever(self) -> None:
        """Serve in the calling thread until `stop()` is called from another one."""
        self._serving = True
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            self._serving = False

    def start(self) -> ChdbHttpServer:
        """Serve from a background thread; returns once the socket accepts connections."""
        self._thread = threading.Thread(target=self.serve_forever, name="chserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, drop idle connections, close chdb (flushes and frees the dir)."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None or self._serving:
            self._httpd.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._httpd.server_close()
        self._httpd.drop_connections()
        self._engine.close()

    def __enter__(self) -> ChdbHttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """CLI: serve until SIGTERM/SIGINT, then close the engine cleanly."""
    ap = argparse.ArgumentParser(
        prog="python -m pipelines.storage.chserver",
        description="Serve a chdb data directory over the ClickHouse HTTP protocol.",
    )
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--user", default="default")
    ap.add_argument(
        "--password-env",
        default="VIGIL_CLICKHOUSE_PASSWORD",
        help="environment variable holding the user's password (empty when unset)",
    )
    ap.add_argument("--log-level", default=os.environ.get("VIGIL_LOG_LEVEL", "INFO"))
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        server = ChdbHttpServer(
            args.data_dir,
            args.host,
            args.port,
            user=args.user,
            password=os.environ.get(args.password_env, ""),
        )
    except (OSError, ClickHouseError) as exc:
        log.error("cannot start on %s:%s with %s: %s", args.host, args.port, args.data_dir, exc)
        return 1
    server.start()
    log.info(
        "ClickHouse HTTP (chdb %s) ready on %s, data in %s",
        server.version,
        server.url,
        args.data_dir.resolve(),
    )
    while not stop.wait(0.5):
        pass
    server.stop()
    log.info("stopped, data in %s", args.data_dir.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
