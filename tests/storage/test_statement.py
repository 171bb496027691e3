"""The SQL splitting that keeps the HTTP server one-statement-per-request (no server needed)."""

from __future__ import annotations

import pytest

from pipelines.storage.chserver import ClickHouseError, choose_encoding, parse_statement


def test_plain_select_and_trailing_semicolons() -> None:
    st = parse_statement(b"  SELECT 1 ;  ; -- done\n")
    assert st.sql == b"  SELECT 1"
    assert st.kind == "SELECT" and st.produces_result and st.read_only
    assert st.output_format is None and st.insert_data is None


@pytest.mark.parametrize(
    "sql",
    [
        b"SELECT 1; SELECT 2",
        b"SELECT 1;DROP TABLE t",
        b"CREATE TABLE a (x UInt8) ENGINE=Memory; DROP TABLE a",
        b"SELECT $$ ' $$; DROP TABLE t; SELECT '",  # heredoc ends before the ';'
        b"SELECT 1 /* a /* nested */ still comment */; SELECT 2",
        b"INSERT INTO t SELECT 1; DROP TABLE t",
    ],
)
def test_multi_statements_are_refused(sql: bytes) -> None:
    with pytest.raises(ClickHouseError) as err:
        parse_statement(sql)
    assert err.value.code == 62 and "Multi-statements" in err.value.text
    assert err.value.http_status == 400


@pytest.mark.parametrize(
    "sql",
    [
        b"SELECT 'a;b', \"c;d\", `e;f`",
        b"SELECT 'it''s; fine', 'back\\'slash;'",
        b"SELECT $tag$ ; $tag$",
        b"SELECT 1 -- ; SELECT 2",
        b"SELECT 1 /* ; SELECT 2 */",
        b"SELECT 1 # ; not a statement",
    ],
)
def test_semicolons_inside_literals_and_comments_are_fine(sql: bytes) -> None:
    assert parse_statement(sql).kind == "SELECT"


def test_empty_query() -> None:
    with pytest.raises(ClickHouseError, match="Empty query"):
        parse_statement(b"  -- nothing\n /* here */ ;")


def test_trailing_format_clause() -> None:
    assert parse_statement(b"SELECT 1 FORMAT JSONEachRow").output_format == "JSONEachRow"
    assert parse_statement(b"SELECT 1 format CSV SETTINGS a=1;").output_format == "CSV"
    assert parse_statement(b"SELECT format FROM t").output_format is None
    assert parse_statement(b"SELECT format('{}', 1)").output_format is None


def test_insert_format_native_keeps_a_leading_tab_byte() -> None:
    # 9 columns: the first Native byte is 0x09, which must not be eaten as whitespace.
    data = b"\x09\x01\x00binary;\nDROP TABLE x"
    st = parse_statement(b"INSERT INTO db.scores (a, b) FORMAT Native\n" + data)
    assert st.kind == "INSERT" and st.sql == b"INSERT INTO db.scores (a, b)"
    assert st.insert_format == "Native" and st.insert_data == data


def test_insert_data_start_rules() -> None:
    st = parse_statement(b"INSERT INTO t FORMAT CSV  \r\n1,2\n")
    assert st.insert_data == b"1,2\n"
    st = parse_statement(b"INSERT INTO t FORMAT CSV 1,2")
    assert st.insert_data == b"1,2"
    st = parse_statement(b"INSERT INTO t (x) SETTINGS a=1 FORMAT JSONEachRow\n")
    assert st.sql == b"INSERT INTO t (x) SETTINGS a=1" and st.insert_data == b""
    with pytest.raises(ClickHouseError, match="excessive ';'"):
        parse_statement(b"INSERT INTO t FORMAT CSV;\n1")


def test_insert_values_is_data_not_sql() -> None:
    st = parse_statement(b"INSERT INTO t (a, b) VALUES (1, 'x;y'), (2, 'z'); DROP TABLE t")
    assert st.insert_format == "Values"
    assert st.insert_data == b"(1, 'x;y'), (2, 'z'); DROP TABLE t"
    assert not st.read_only


def test_insert_select_and_infile_stay_sql() -> None:
    st = parse_statement(b"INSERT INTO t SELECT * FROM numbers(3)")
    assert st.insert_data is None and st.kind == "INSERT" and not st.produces_result
    st = parse_statement(b"INSERT INTO t FROM INFILE 'x.csv' FORMAT CSV")
    assert st.insert_data is None


def test_statement_kinds() -> None:
    assert parse_statement(b"(SELECT 1) UNION ALL (SELECT 2)").kind == "SELECT"
    assert parse_statement(b"/* c */ with x as (select 1) select * from x").kind == "WITH"
    assert not parse_statement(b"CREATE TABLE t (x UInt8) ENGINE=Memory").produces_result
    assert parse_statement(b"SHOW TABLES").produces_result
    assert parse_statement(b"SET max_threads = 1").read_only


def test_choose_encoding() -> None:
    assert choose_encoding("lz4,zstd,gzip,deflate") == "lz4"
    assert choose_encoding("br;q=0, gzip;q=0.5") == "gzip"
    assert choose_encoding("gzip;q=0, deflate") == "deflate"
    assert choose_encoding("identity") is None
