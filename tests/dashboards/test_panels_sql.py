"""Every panel's SQL, expanded like Grafana's ClickHouse data source does, on the real
engine loaded with a simulator run: it runs, returns the shape its panel type needs,
and is not empty where the run produced data."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping

import pytest

from dashboards.definitions import VARIABLES, all_dashboards
from dashboards.model import Dashboard, Panel, Variable
from pipelines.storage.macros import ALL, QueryContext, VarValue, expand
from tests.dashboards.conftest import SimStore

pytestmark = pytest.mark.integration

NUMERIC = re.compile(r"^(Nullable\()?(U?Int\d+|Float\d+|Decimal)")
STRING = re.compile(r"^(Nullable\()?(LowCardinality\()?(String|FixedString|Bool|UInt8)")
PANELS = [(d, p) for d in all_dashboards() for p in d.panels]


def _ctx(store: SimStore, variables: Mapping[str, VarValue]) -> QueryContext:
    run = store.run
    return QueryContext(
        run.start - dt.timedelta(minutes=10),
        run.end + dt.timedelta(minutes=10),
        interval_s=60,
        variables=variables,
    )


def _run(store: SimStore, sql: str) -> tuple[list[str], list[str], list[tuple]]:
    """(column names, types, rows). An empty result carries no header over Native,
    so its columns come from DESCRIBE of the same query."""
    res = store.client.query(sql)
    rows = [tuple(r) for r in res.result_rows]
    if rows:
        return list(res.column_names), [t.name for t in res.column_types], rows
    described = store.client.query(f"DESCRIBE ({sql})").result_rows
    return [r[0] for r in described], [r[1] for r in described], rows


def _check_shape(panel: Panel, names: list[str], types: list[str], rows: list[tuple]) -> None:
    where = f"{panel.title!r} ({panel.kind})"
    # Grafana's data frames know plain types only, not aggregate-function states.
    assert not any("Aggregate" in t for t in types), (
        f"{where}: {list(zip(names, types, strict=True))}"
    )
    if panel.kind == "timeseries":
        assert names[0] == "t" and types[0].startswith("DateTime"), f"{where}: {names} {types}"
        values = [n for n, t in zip(names[1:], types[1:], strict=True) if NUMERIC.match(t)]
        labels = [n for n, t in zip(names[1:], types[1:], strict=True) if not NUMERIC.match(t)]
        assert values, f"{where}: no numeric value column in {list(zip(names, types, strict=True))}"
        label_types = [t for t in types[1:] if not NUMERIC.match(t)]
        for label, t in zip(labels, label_types, strict=True):
            assert STRING.match(t), f"{where}: label column {label} is {t}"
        times = [r[0] for r in rows]
        assert times == sorted(times), f"{where}: Grafana needs rows in time order"
    elif panel.kind == "stat":
        assert all(NUMERIC.match(t) for t in types), (
            f"{where}: {list(zip(names, types, strict=True))}"
        )
        assert len(rows) <= 1, f"{where}: a stat reads one row, got {len(rows)}"
    else:
        assert tuple(names) == panel.columns, f"{where}: columns {names} != {panel.columns}"
        if panel.kind in ("piechart", "bargauge"):
            assert STRING.match(types[0]) and NUMERIC.match(types[1]), f"{where}: {types}"


def test_the_simulator_run_filled_every_table(sim_store: SimStore) -> None:
    assert all(n > 0 for n in sim_store.run.counts.values()), sim_store.run.counts
    assert sim_store.run.counts["alerts"] >= 5  # the bot was caught, plus node alerts


@pytest.mark.parametrize("variable", VARIABLES, ids=lambda v: v.name)
def test_variable_queries_list_values(sim_store: SimStore, variable: Variable) -> None:
    if variable.sql is None:
        assert variable.options
        return
    sql = expand(variable.sql, _ctx(sim_store, {}))
    values = [r[0] for r in sim_store.client.query(sql).result_rows]
    assert values and all(isinstance(v, str) and v for v in values), values


@pytest.mark.parametrize(
    ("dashboard", "panel"), PANELS, ids=[f"{d.uid}:{p.title}" for d, p in PANELS]
)
def test_panel_sql_returns_its_shape_with_all_selected(
    sim_store: SimStore, dashboard: Dashboard, panel: Panel
) -> None:
    sql = expand(panel.sql, _ctx(sim_store, {v.name: ALL for v in dashboard.variables}))
    assert "$" not in sql, sql  # every macro and variable was expanded
    names, types, rows = _run(sim_store, sql)
    _check_shape(panel, names, types, rows)
    assert rows, f"{dashboard.uid}: {panel.title!r} is empty on the simulator run:\n{sql}"
    if panel.kind == "stat":
        assert rows[0][0] is not None and rows[0][0] == rows[0][0], rows  # not NULL/NaN


def test_panels_filter_by_a_concrete_selection(sim_store: SimStore) -> None:
    """Each variable set to real values (multi-value lists): the SQL still runs and
    keeps its shape, and filtering narrows (never widens) what All shows."""
    chosen: dict[str, str | list[str]] = {}
    for v in VARIABLES:
        if v.sql is None:
            chosen[v.name] = ["critical", "high"]
        else:
            values = sim_store.client.query(expand(v.sql, _ctx(sim_store, {}))).result_rows
            chosen[v.name] = [values[0][0]]
    for dashboard, panel in PANELS:
        everything = {v.name: ALL for v in dashboard.variables}
        filtered_sql = expand(panel.sql, _ctx(sim_store, {**everything, **chosen}))
        names, types, rows = _run(sim_store, filtered_sql)
        _check_shape(panel, names, types, rows)
        if panel.kind in ("table", "timeseries") and panel.variables:
            all_rows = sim_store.client.query(
                expand(panel.sql, _ctx(sim_store, everything))
            ).result_rows
            assert len(rows) <= len(all_rows), (dashboard.uid, panel.title)
