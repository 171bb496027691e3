"""The embedded server speaks the ClickHouse HTTP protocol: what clients see on the wire."""

from __future__ import annotations

import gzip
import json
import zlib

import clickhouse_connect
import pytest
from clickhouse_connect.driver import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from tests.storage.conftest import ServerProc, raw_http

pytestmark = pytest.mark.integration


def test_ping_and_root(chserver: ServerProc) -> None:
    for path in ("/ping", "/"):
        resp = raw_http(chserver.url, "GET", path)
        assert (resp.status, resp.body) == (200, b"Ok.\n")
    assert raw_http(chserver.url, "GET", "/nope").status == 404


def test_get_query_and_headers(chserver: ServerProc) -> None:
    resp = raw_http(chserver.url, "GET", params={"query": "SELECT 1 AS a", "query_id": "q-42"})
    assert resp.status == 200 and resp.body == b"1\n"
    assert resp.headers["X-ClickHouse-Query-Id"] == "q-42"
    assert resp.headers["X-ClickHouse-Format"] == "TabSeparated"
    assert resp.headers["X-ClickHouse-Timezone"] == "UTC"
    summary = json.loads(resp.headers["X-ClickHouse-Summary"])
    assert summary["read_rows"] == "1" and "elapsed_ns" in summary
    resp = raw_http(
        chserver.url,
        "GET",
        params={"query": "SELECT 1 AS a, currentDatabase() AS d", "default_format": "JSONEachRow"},
    )
    assert json.loads(resp.body) == {"a": 1, "d": "default"}
    assert resp.headers["X-ClickHouse-Format"] == "JSONEachRow"
    # An explicit FORMAT clause wins over default_format.
    resp = raw_http(
        chserver.url, "POST", params={"default_format": "JSONEachRow"}, body=b"SELECT 2 FORMAT CSV"
    )
    assert resp.body == b"2\n" and resp.headers["X-ClickHouse-Format"] == "CSV"


def test_url_params_database_settings_and_query_params(chserver: ServerProc, db: str) -> None:
    resp = raw_http(
        chserver.url,
        "GET",
        params={
            "query": "SELECT currentDatabase(), getSetting('max_threads'), {n:UInt32} + 1",
            "database": db,
            "max_threads": "3",
            "param_n": "41",
            "some_unknown_setting": "1",
            "wait_end_of_query": "1",
        },
    )
    assert resp.status == 200, resp.text
    assert resp.text == f"{db}\t3\t42\n"


def test_get_implies_readonly(chserver: ServerProc, db: str) -> None:
    resp = raw_http(
        chserver.url, "GET", params={"query": f"CREATE TABLE {db}.g (x UInt8) ENGINE=Memory"}
    )
    assert resp.status == 500 and resp.headers["X-ClickHouse-Exception-Code"] == "164"
    resp = raw_http(
        chserver.url,
        params={"readonly": "1"},
        body=f"CREATE TABLE {db}.g (x UInt8) ENGINE=Memory".encode(),
    )
    assert resp.headers["X-ClickHouse-Exception-Code"] == "164"
    resp = raw_http(chserver.url, "GET", params={"query": f"EXISTS TABLE {db}.g"})
    assert resp.text == "0\n"


def test_errors_look_like_clickhouse(chserver: ServerProc, client: Client) -> None:
    resp = raw_http(chserver.url, body=b"SELECT * FROM no_such_table")
    assert resp.status == 404
    assert resp.headers["X-ClickHouse-Exception-Code"] == "60"
    assert resp.text.startswith("Code: 60. DB::Exception: ") and "(UNKNOWN_TABLE)" in resp.text
    resp = raw_http(chserver.url, body=b"SELEC 1")
    assert resp.status == 400 and resp.headers["X-ClickHouse-Exception-Code"] == "62"
    with pytest.raises(DatabaseError) as err:
        client.query("SELECT * FROM no_such_table")
    assert err.value.code == 60 and "UNKNOWN_TABLE" in str(err.value)
    with pytest.raises(DatabaseError, match="boom"):
        client.command("SELECT throwIf(1, 'boom')")
    # The server is fine afterwards, on the same session.
    assert client.command("SELECT 7") == 7


def test_one_statement_per_request(chserver: ServerProc, client: Client, db: str) -> None:
    client.command(f"CREATE TABLE {db}.keep (x UInt8) ENGINE=Memory")
    resp = raw_http(chserver.url, body=f"SELECT 1; DROP TABLE {db}.keep".encode())
    assert resp.status == 400 and "Multi-statements are not allowed" in resp.text
    with pytest.raises(DatabaseError, match="Multi-statements"):
        client.command(f"SELECT 1; DROP TABLE {db}.keep")
    # Data after FORMAT / VALUES is data, whatever it contains.
    resp = raw_http(
        chserver.url,
        params={"query": f"INSERT INTO {db}.keep FORMAT CSV"},
        body=b"1\n2\n",
    )
    assert resp.status == 200, resp.text
    # The Values input format stops at ';' (as on a server): the rest is never SQL.
    sql = f"INSERT INTO {db}.keep VALUES (3); DROP TABLE {db}.keep"
    resp = raw_http(chserver.url, body=sql.encode())
    assert resp.status == 200, resp.text
    assert client.command(f"EXISTS TABLE {db}.keep") == 1
    assert client.command(f"SELECT sum(x) FROM {db}.keep") == 6


def test_command_results(client: Client, db: str) -> None:
    summary = client.command(f"CREATE TABLE {db}.c (x UInt8) ENGINE=Memory")
    assert not isinstance(summary, (str, int))  # a QuerySummary: no result set
    assert client.command(f"SELECT x FROM {db}.c") == ""  # result set, empty
    assert client.command("SELECT 1, 'a'") == ["1", "a"]
    assert client.query(f"SELECT * FROM {db}.c").result_rows == []


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "lz4", "zstd"])
def test_compressed_request_bodies(
    chserver: ServerProc, client: Client, db: str, encoding: str
) -> None:
    import lz4.frame
    from backports import zstd

    client.command(f"CREATE TABLE {db}.z (x UInt32, s String) ENGINE=MergeTree ORDER BY x")
    data = b"".join(b"%d,row%d\n" % (i, i) for i in range(1000))
    pack = {
        "gzip": gzip.compress,
        "deflate": zlib.compress,
        "lz4": lz4.frame.compress,
        "zstd": zstd.compress,
    }[encoding]
    # Clients compress block by block: the body is several concatenated frames.
    packed = b"".join(pack(data[i : i + 4000]) for i in range(0, len(data), 4000))
    resp = raw_http(
        chserver.url,
        params={"query": f"INSERT INTO {db}.z FORMAT CSV"},
        body=packed,
        headers={"Content-Encoding": encoding},
    )
    assert resp.status == 200, resp.text
    assert json.loads(resp.headers["X-ClickHouse-Summary"])["written_rows"] == "1000"
    assert client.command(f"SELECT count(), sum(x) FROM {db}.z") == ["1000", str(sum(range(1000)))]


def test_chunked_request_body(chserver: ServerProc, client: Client, db: str) -> None:
    client.command(f"CREATE TABLE {db}.ch (x UInt32) ENGINE=Memory")
    resp = raw_http(
        chserver.url,
        params={"query": f"INSERT INTO {db}.ch FORMAT TSV"},
        body=b"".join(b"%d\n" % i for i in range(100)),
        encode_chunked=True,
    )
    assert resp.status == 200, resp.text
    assert client.command(f"SELECT count() FROM {db}.ch") == 100


def test_compressed_responses(chserver: ServerProc) -> None:
    query = {"query": "SELECT number FROM numbers(1000)"}
    resp = raw_http(chserver.url, "GET", params=query, headers={"Accept-Encoding": "gzip"})
    assert resp.headers.get("Content-Encoding") == "gzip"
    assert gzip.decompress(resp.body) == b"".join(b"%d\n" % i for i in range(1000))
    resp = raw_http(
        chserver.url,
        "GET",
        params={**query, "enable_http_compression": "0"},
        headers={"Accept-Encoding": "gzip"},
    )
    assert "Content-Encoding" not in resp.headers and resp.body.startswith(b"0\n1\n")


def test_wrong_password_is_refused(chserver: ServerProc) -> None:
    resp = raw_http(chserver.url, body=b"SELECT 1", headers={"X-ClickHouse-Key": "bad"})
    assert resp.status == 403 and resp.headers["X-ClickHouse-Exception-Code"] == "516"
    with pytest.raises(DatabaseError, match="Authentication failed"):
        clickhouse_connect.get_client(host="127.0.0.1", port=chserver.port, password="bad")


def test_sessions_keep_state_per_client(chserver: ServerProc) -> None:
    a = clickhouse_connect.get_client(host="127.0.0.1", port=chserver.port)
    b = clickhouse_connect.get_client(host="127.0.0.1", port=chserver.port)
    try:
        a.command("CREATE TEMPORARY TABLE tmp_a (x UInt8)")
        a.insert("tmp_a", [[1], [2]], column_names=["x"])
        assert a.command("SELECT sum(x) FROM tmp_a") == 3
        with pytest.raises(DatabaseError):
            b.command("SELECT sum(x) FROM tmp_a")
        a.command("SET max_threads = 1")
        assert a.command("SELECT getSetting('max_threads')") == 1
        assert b.command("SELECT getSetting('max_threads')") != 1
        # Per-request settings apply to that request only, then the session's value is back.
        got = a.query("SELECT getSetting('max_threads')", settings={"max_threads": 3})
        assert got.result_rows[0][0] == 3
        assert a.command("SELECT getSetting('max_threads')") == 1
        a.command("USE system")
        assert a.command("SELECT currentDatabase()") == "system"
        assert b.command("SELECT currentDatabase()") == "default"
    finally:
        a.close()
        b.close()


def test_form_encoded_queries_and_server_side_binding(chserver: ServerProc) -> None:
    c = clickhouse_connect.get_client(
        host="127.0.0.1", port=chserver.port, form_encode_query_params=True
    )
    try:
        res = c.query("SELECT {a:UInt64} + 1, {s:String}", parameters={"a": 41, "s": "x;y"})
        assert res.result_rows == [(42, "x;y")]
    finally:
        c.close()


def test_concurrent_clients(chserver: ServerProc, client: Client, db: str) -> None:
    import threading

    client.command(f"CREATE TABLE {db}.cc (w UInt8, i UInt32) ENGINE=MergeTree ORDER BY (w, i)")
    errors: list[BaseException] = []

    def work(w: int) -> None:
        try:
            c = clickhouse_connect.get_client(host="127.0.0.1", port=chserver.port)
            try:
                for batch in range(5):
                    rows = [[w, batch * 100 + i] for i in range(100)]
                    c.insert("cc", rows, column_names=["w", "i"], database=db)
                    assert (
                        c.command(f"SELECT count() FROM {db}.cc WHERE w = {w}") == (batch + 1) * 100
                    )
            finally:
                c.close()
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert client.command(f"SELECT count() FROM {db}.cc") == 2000
