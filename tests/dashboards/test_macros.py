"""Grafana ClickHouse data source expansion rules, as the plugin applies them."""

from __future__ import annotations

import datetime as dt

import pytest

from pipelines.storage.macros import ALL, MacroError, QueryContext, expand, format_value

FROM = dt.datetime(2024, 5, 17, 12, 0, 0, 250000, tzinfo=dt.UTC)
TO = dt.datetime(2024, 5, 17, 13, 0, 0, tzinfo=dt.UTC)


def ctx(**variables: str | list[str]) -> QueryContext:
    return QueryContext(FROM, TO, interval_s=30, variables=variables)


def test_time_macros() -> None:
    c = ctx()
    assert expand("$__timeFilter(ts)", c) == (
        "ts >= toDateTime(1715947200) AND ts <= toDateTime(1715950800)"
    )
    assert expand("$__timeFilter_ms(ts)", c) == (
        "ts >= fromUnixTimestamp64Milli(1715947200250)"
        " AND ts <= fromUnixTimestamp64Milli(1715950800000)"
    )
    assert expand("$__fromTime $__toTime", c) == "toDateTime(1715947200) toDateTime(1715950800)"
    assert (
        expand("$__timeInterval(ts)", c) == "toStartOfInterval(toDateTime(ts), INTERVAL 30 second)"
    )
    assert expand("x / $__interval_s", c) == "x / 30"
    assert (
        expand("$__dateFilter(d)", c) == "d >= toDate('2024-05-17') AND d <= toDate('2024-05-17')"
    )
    assert expand("$__dt(d, t)", c).startswith("(d >= toDate('2024-05-17') AND")
    # Nested parentheses inside an argument stay one argument.
    assert expand("$__timeFilter(toDateTime(ts, 'UTC'))", c).startswith(
        "toDateTime(ts, 'UTC') >= toDateTime("
    )
    assert expand("$__interval $__interval_ms $__from", c) == "30s 30000 1715947200250"


def test_conditional_all_drops_the_filter_for_all_and_empty() -> None:
    sql = "WHERE $__conditionalAll(sev IN ($sev), $sev) AND $__conditionalAll(c IN ($cat), $cat)"
    assert expand(sql, ctx(sev=ALL, cat="")) == "WHERE 1=1 AND 1=1"
    assert expand(sql, ctx(sev=[ALL], cat=[])) == "WHERE 1=1 AND 1=1"
    assert expand(sql, ctx(sev=["high", "low"], cat=["bot"])) == (
        "WHERE sev IN ('high','low') AND c IN ('bot')"
    )
    # Nested calls inside the condition keep their commas.
    nested = "$__conditionalAll(toString(chain_id) IN ($chain), $chain)"
    assert expand(nested, ctx(chain=["1", "2"])) == "toString(chain_id) IN ('1','2')"


def test_variables_formats_and_unknown_names() -> None:
    c = ctx(node="n-1", many=["a", "b'c"])
    assert expand("'$node' '${node}' [[node]]", c) == "'n-1' 'n-1' n-1"
    assert expand("$many", c) == "'a','b\\'c'"  # quotes escaped inside list values
    assert expand("${many:csv}", c) == "a,b'c"
    assert expand("${many:sqlstring}", c) == "'a','b''c'"
    assert expand("${many:doublequote}", c) == '"a","b\'c"'
    assert expand("$unknown and $__timeFilter(t)", c).startswith("$unknown and t >= ")
    assert format_value(["x"], None) == "'x'" and format_value("x", None) == "x"


def test_errors_are_reported() -> None:
    with pytest.raises(MacroError, match="1 argument"):
        expand("$__timeFilter()", ctx())
    with pytest.raises(MacroError, match="unknown macro"):
        expand("$__nope(x)", ctx())
    with pytest.raises(MacroError, match="unclosed"):
        expand("$__timeFilter(ts", ctx())
    with pytest.raises(MacroError, match="All"):
        expand("x IN ($sev)", ctx(sev=ALL))
    assert expand("x IN ($sev)", QueryContext(FROM, TO, 60, {"sev": ALL}, {"sev": ["a"]})) == (
        "x IN ('a')"
    )
    with pytest.raises(MacroError):
        QueryContext(FROM.replace(tzinfo=None), TO)
