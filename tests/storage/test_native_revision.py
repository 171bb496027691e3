"""Native results for a client protocol revision (clickhouse-go/Grafana and clickhouse-connect).

chdb writes revision-0 Native; a server honours `client_protocol_version`. The expected
bytes here are built from single-column revision-0 answers, independently of the
server's own Native walker.
"""

from __future__ import annotations

import clickhouse_connect
import pytest

from tests.storage.conftest import ServerProc, raw_http

pytestmark = pytest.mark.integration

BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"
CH_GO_REVISION = "54460"  # what recent clickhouse-go sends over HTTP

COLUMNS = {
    "n": "number",
    "s": "toString(number * 7919)",
    "lc": "toLowCardinality(toString(number % 7))",
    "lcn": "toLowCardinality(if(number % 2 = 0, NULL, toString(number)))",
    "nn": "if(number % 3 = 0, NULL, number)",
    "alc": "[toLowCardinality(toString(number % 5)), 'x']",
    "arr": "range(number % 4)",
    "nested": "[range(number % 3), []]",
    "m": "map('k', number, 'j', number + 1)",
    "tup": "tuple(number, 'x', [1, 2])",
    "named": "CAST((number, 'y') AS Tuple(a UInt64, b String))",
    "dec": "toDecimal64(number, 4)",
    "big": "toUInt256(number) * toUInt256('100000000000000000000')",
    "fs": "toFixedString('ab', 2)",
    "dt": "toDateTime64(number, 3, 'UTC')",
    "d": "toDate('2024-01-01') + number",
    "e": "CAST(number % 2 AS Enum8('a, b' = 0, 'c' = 1))",
    "ip": "toIPv6('::1')",
    "u": "toUUID('61f0c404-5cb3-11e7-907b-a6006ad3dba0')",
    "ns": "CAST(if(number % 4 = 0, NULL, 'v') AS Nullable(String))",
}


def _query(chserver: ServerProc, sql: str, revision: str | None) -> bytes:
    params = {"default_format": "Native", "max_block_size": "100000"}
    if revision is not None:
        params["client_protocol_version"] = revision
    resp = raw_http(chserver.url, params=params, body=sql.encode())
    assert resp.status == 200, resp.text
    return resp.body


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _single_column_parts(block: bytes) -> tuple[bytes, bytes]:
    """(name+type header, data) of a one-column revision-0 block."""
    pos = _varint(block, _varint(block, 0)[1])[1]  # columns, rows
    start = pos
    size, pos = _varint(block, pos)
    pos += size
    size, pos = _varint(block, pos)
    pos += size
    return block[start:pos], block[pos:]


@pytest.mark.parametrize("rows", [1, 3000])
def test_revision_framing_matches_a_server(chserver: ServerProc, rows: int) -> None:
    select = ", ".join(f"{expr} AS {name}" for name, expr in COLUMNS.items())
    sql = f"SELECT {select} FROM numbers({rows})"
    plain = _query(chserver, sql, None)
    # Revision 0 (or no parameter) is what chdb writes.
    assert _query(chserver, sql, "0") == plain
    # clickhouse-connect's revision: a BlockInfo before the (single) block.
    assert _query(chserver, sql, "54405") == BLOCK_INFO + plain
    # clickhouse-go's revision: also a "no custom serialization" byte per column.
    expected = bytearray(BLOCK_INFO)
    expected += bytes([len(COLUMNS)]) + _encode_varint(rows)
    for name, expr in COLUMNS.items():
        header, data = _single_column_parts(
            _query(chserver, f"SELECT {expr} AS {name} FROM numbers({rows})", None)
        )
        expected += header + b"\x00" + data
    assert _query(chserver, sql, CH_GO_REVISION) == bytes(expected)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_multi_block_results_get_one_header_per_block(chserver: ServerProc) -> None:
    body = raw_http(
        chserver.url,
        params={
            "default_format": "Native",
            "client_protocol_version": CH_GO_REVISION,
            "max_block_size": "1000",
        },
        body=b"SELECT number AS a, toString(number) AS s FROM numbers(2500)",
    ).body
    pos, seen = 0, []
    while pos < len(body):
        assert body[pos : pos + 8] == BLOCK_INFO
        columns, pos = _varint(body, pos + 8)
        rows, pos = _varint(body, pos)
        assert columns == 2
        for expected_type in (b"UInt64", b"String"):
            size, pos = _varint(body, pos)
            pos += size
            size, pos = _varint(body, pos)
            assert body[pos : pos + size] == expected_type
            pos += size
            assert body[pos] == 0  # no custom serialization
            pos += 1
            if expected_type == b"UInt64":
                seen += [
                    int.from_bytes(body[p : p + 8], "little") for p in range(pos, pos + 8 * rows, 8)
                ]
                pos += 8 * rows
            else:
                for _ in range(rows):
                    size, pos = _varint(body, pos)
                    pos += size
    assert seen == list(range(2500))


def test_non_streamable_statements_are_framed_too(chserver: ServerProc) -> None:
    body = _query(chserver, "DESCRIBE TABLE system.one", CH_GO_REVISION)
    assert body.startswith(BLOCK_INFO) and b"dummy" in body


def test_clickhouse_connect_uses_the_protocol_revision(chserver: ServerProc) -> None:
    client = clickhouse_connect.get_client(host="127.0.0.1", port=chserver.port)
    try:
        assert client.protocol_version == 54405  # its probe saw a server's framing
        result = client.query(
            "SELECT number, toLowCardinality(toString(number % 3)) AS lc FROM numbers(200000)",
            settings={"max_block_size": 30000},
        )
        rows = result.result_rows
        assert len(rows) == 200000 and rows[-1] == (199999, "1")
    finally:
        client.close()
