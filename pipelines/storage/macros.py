"""Grafana ClickHouse data source query expansion, for running panel SQL outside Grafana.

Why: the dashboards' SQL is tested against the real engine and rendered by
`vigil report`, and must mean there exactly what it means in Grafana. Expansion
follows the `grafana-clickhouse-datasource` plugin (v4) in the same three steps:

1. frontend, `$__conditionalAll(condition, $var)`: the condition, or `1=1` when the
   variable's value is All (`$__all`) or empty;
2. frontend, template variables (`$var`, `${var}`, `${var:format}`, `[[var]]`): a
   multi-value (list) value becomes `'a','b'` (the plugin's default format), a single
   value is inserted raw; Grafana's global `$__from`, `$__to` (epoch ms),
   `$__interval`, `$__interval_ms`, `$__range_s` too. Unknown names are left alone,
   as Grafana does;
3. backend macros on the query's time range and interval:
   `$__timeFilter(c)` -> `c >= toDateTime(from) AND c <= toDateTime(to)`,
   `$__timeFilter_ms(c)` (DateTime64 bounds), `$__dateFilter(c)`,
   `$__dateTimeFilter(d, t)` / `$__dt(d, t)`, `$__fromTime`, `$__toTime`,
   `$__fromTime_ms`, `$__toTime_ms`, `$__timeInterval(c)` ->
   `toStartOfInterval(toDateTime(c), INTERVAL n second)`, `$__timeInterval_ms(c)`,
   `$__interval_s` -> n.

One deliberate difference: quotes and backslashes inside list values are escaped
(the plugin joins them verbatim), so an odd entity name cannot break the SQL.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ALL = "$__all"
VarValue = str | Sequence[str]


class MacroError(ValueError):
    """A macro with the wrong arguments, or a variable that cannot be expanded."""


@dataclass(frozen=True)
class QueryContext:
    """What Grafana knows when it runs one panel query."""

    time_from: dt.datetime
    time_to: dt.datetime
    interval_s: float = 60.0
    variables: Mapping[str, VarValue] = field(default_factory=dict)
    # Values a variable expands to when All is selected outside $__conditionalAll.
    all_values: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for t in (self.time_from, self.time_to):
            if t.tzinfo is None:
                raise MacroError("time range bounds must be timezone-aware")
        if self.time_to < self.time_from:
            raise MacroError("time_to is before time_from")


# --------------------------------------------------------------------------- parsing


def _macro_args(sql: str, open_paren: int) -> tuple[list[str], int]:
    """Arguments of the call whose `(` is at `open_paren`, split at top-level commas,
    and the index after its `)`. Parentheses nest; quoted strings are opaque."""
    depth = 0
    args: list[str] = []
    start = open_paren + 1
    i = open_paren
    quote: str | None = None
    while i < len(sql):
        ch = sql[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"`":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(sql[start:i])
                return [a.strip() for a in args], i + 1
        elif ch == "," and depth == 1:
            args.append(sql[start:i])
            start = i + 1
        i += 1
    raise MacroError(f"unclosed macro call at: {sql[open_paren - 20 : open_paren + 40]!r}")


# ------------------------------------------------------------------ conditionalAll


def apply_conditional_all(sql: str, variables: Mapping[str, VarValue]) -> str:
    """Step 1: `$__conditionalAll(cond, $var)` -> cond, or `1=1` for All/empty."""
    macro = "$__conditionalAll("
    idx = sql.rfind(macro)
    while idx >= 0:
        args, end = _macro_args(sql, idx + len(macro) - 1)
        if len(args) != 2:
            raise MacroError(f"$__conditionalAll takes 2 arguments, got {len(args)}: {args}")
        name = args[1].lstrip("$").strip("{}").split(":")[0]
        value = variables.get(name, "")
        is_all = value in ("", ALL) if isinstance(value, str) else (len(value) == 0 or ALL in value)
        sql = sql[:idx] + ("1=1" if is_all else args[0]) + sql[end:]
        idx = sql.rfind(macro)
    return sql


# ------------------------------------------------------------- template variables

_VAR_RE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")


def _sql_quote(value: str, quote: str = "'") -> str:
    escaped = value.replace("\\", "\\\\").replace(quote, "\\" + quote)
    return f"{quote}{escaped}{quote}"


def format_value(value: VarValue, fmt: str | None) -> str:
    """A variable value as Grafana's formatters write it (None = data source default)."""
    values = [value] if isinstance(value, str) else list(value)
    if fmt is None:
        if isinstance(value, str):
            return value
        return ",".join(_sql_quote(v) for v in values)
    if fmt in ("singlequote", "sqlstring"):
        if fmt == "sqlstring":
            return ",".join("'" + v.replace("'", "''") + "'" for v in values)
        return ",".join(_sql_quote(v) for v in values)
    if fmt == "doublequote":
        return ",".join(_sql_quote(v, '"') for v in values)
    if fmt == "csv":
        return ",".join(values)
    if fmt == "pipe":
        return "|".join(values)
    if fmt == "raw" or fmt == "text":
        return ",".join(values)
    raise MacroError(f"unsupported variable format {fmt!r}")


def _human_interval(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds * 1000)}ms"


def _globals(ctx: QueryContext) -> dict[str, str]:
    from_ms = int(ctx.time_from.timestamp() * 1000)
    to_ms = int(ctx.time_to.timestamp() * 1000)
    return {
        "__from": str(from_ms),
        "__to": str(to_ms),
        "__interval": _human_interval(ctx.interval_s),
        "__interval_ms": str(int(ctx.interval_s * 1000)),
        "__range_s": str((to_ms - from_ms) // 1000),
        "__range_ms": str(to_ms - from_ms),
    }


def interpolate_variables(sql: str, ctx: QueryContext) -> str:
    """Step 2: template variables and Grafana's global variables."""
    globals_ = _globals(ctx)

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if name in globals_:
            return globals_[name]
        if name not in ctx.variables:
            return m.group(0)  # not a variable: e.g. $__timeFilter, left for step 3
        value = ctx.variables[name]
        if value == ALL or (not isinstance(value, str) and ALL in value):
            if name not in ctx.all_values:
                raise MacroError(f"${name} is All but its values are unknown")
            value = list(ctx.all_values[name])
        return format_value(value, fmt)

    return _VAR_RE.sub(repl, sql)


# -------------------------------------------------------------- backend macros


def _dt(t: dt.datetime) -> str:
    return f"toDateTime({math.floor(t.timestamp())})"


def _dt64(t: dt.datetime) -> str:
    return f"fromUnixTimestamp64Milli({math.floor(t.timestamp() * 1000)})"


def _date(t: dt.datetime) -> str:
    return f"toDate('{t.astimezone(dt.UTC).date().isoformat()}')"


def _one(name: str, args: list[str]) -> str:
    if len(args) != 1 or not args[0]:
        raise MacroError(f"$__{name} expects 1 argument, received {len(args)}")
    return args[0]


def _expand_macro(name: str, args: list[str] | None, ctx: QueryContext) -> str | None:
    a, b = ctx.time_from, ctx.time_to
    seconds = max(int(ctx.interval_s), 1)
    args = args if args is not None else []
    if name == "fromTime":
        return _dt(a)
    if name == "toTime":
        return _dt(b)
    if name == "fromTime_ms":
        return _dt64(a)
    if name == "toTime_ms":
        return _dt64(b)
    if name == "interval_s":
        return str(seconds)
    if name == "timeFilter":
        c = _one(name, args)
        return f"{c} >= {_dt(a)} AND {c} <= {_dt(b)}"
    if name == "timeFilter_ms":
        c = _one(name, args)
        return f"{c} >= {_dt64(a)} AND {c} <= {_dt64(b)}"
    if name == "dateFilter":
        c = _one(name, args)
        return f"{c} >= {_date(a)} AND {c} <= {_date(b)}"
    if name in ("dateTimeFilter", "dt"):
        if len(args) != 2:
            raise MacroError(f"$__{name} expects 2 arguments, received {len(args)}")
        d, t = args
        return (
            f"({d} >= {_date(a)} AND {d} <= {_date(b)}) AND ({t} >= {_dt(a)} AND {t} <= {_dt(b)})"
        )
    if name == "timeInterval":
        c = _one(name, args)
        return f"toStartOfInterval(toDateTime({c}), INTERVAL {seconds} second)"
    if name == "timeInterval_ms":
        c = _one(name, args)
        ms = max(int(ctx.interval_s * 1000), 1)
        return f"toStartOfInterval(toDateTime64({c}, 3), INTERVAL {ms} millisecond)"
    return None


_MACRO_RE = re.compile(r"\$__(\w+)\b")


def expand_backend_macros(sql: str, ctx: QueryContext) -> str:
    """Step 3: the data source's server-side macros."""
    out: list[str] = []
    pos = 0
    while (m := _MACRO_RE.search(sql, pos)) is not None:
        out.append(sql[pos : m.start()])
        name = m.group(1)
        args: list[str] | None = None
        end = m.end()
        if end < len(sql) and sql[end] == "(":
            args, end = _macro_args(sql, end)
        expanded = _expand_macro(name, args, ctx)
        if expanded is None:
            raise MacroError(f"unknown macro $__{name}")
        out.append(expanded)
        pos = end
    out.append(sql[pos:])
    return "".join(out)


def expand(sql: str, ctx: QueryContext) -> str:
    """Panel SQL as the ClickHouse server receives it from Grafana."""
    sql = apply_conditional_all(sql, ctx.variables)
    sql = interpolate_variables(sql, ctx)
    return expand_backend_macros(sql, ctx)
