"""Typed builders for Grafana dashboards on the ClickHouse data source.

Why plain dataclasses: a dashboard is a handful of panel kinds, each with SQL and a
few display options. Builders keep the JSON uniform (every panel and variable names
the provisioned data source uid, layout is computed, ids are stable) and let tests
inspect each panel's SQL and the result shape it promises (`Panel.columns`) without
parsing Grafana's JSON back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

DATASOURCE_UID = "vigil-clickhouse"
DATASOURCE_TYPE = "grafana-clickhouse-datasource"
DATASOURCE_NAME = "Vigil ClickHouse"
SCHEMA_VERSION = 39
GRID_WIDTH = 24

PanelKind = Literal["timeseries", "table", "stat", "piechart", "bargauge"]
# Result shape per kind: a time column then numbers (plus optional string labels, which
# the plugin pivots into one series per label), or named table columns.
TIME_SERIES_KINDS = frozenset({"timeseries"})

# format numbers of the plugin's queries (sqlutil.FormatQueryOption)
_FORMAT = {"timeseries": 0, "table": 1}
_VAR_RE = re.compile(r"\$(\w+)|\$\{(\w+)")


def datasource_ref() -> dict[str, str]:
    return {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}


@dataclass(frozen=True)
class Panel:
    """One panel with one SQL query.

    `columns` is the exact result header a table-like panel needs (checked against
    the engine by the tests); time series need a DateTime `t` first. `key` panels
    also go into `vigil report`. `min_interval` keeps Grafana from asking a
    per-minute rollup for finer buckets than it has.
    """

    title: str
    kind: PanelKind
    sql: str
    description: str
    columns: tuple[str, ...] = ()
    unit: str = "short"
    width: int = 12
    height: int = 8
    key: bool = False
    min_interval: str | None = None
    stacked: bool = False
    decimals: int | None = None
    thresholds: tuple[tuple[float, str], ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.width <= GRID_WIDTH:
            raise ValueError(f"{self.title}: width must be 1..{GRID_WIDTH}")
        if self.kind != "timeseries" and self.kind != "stat" and not self.columns:
            raise ValueError(f"{self.title}: {self.kind} panels must declare their columns")

    @property
    def query_format(self) -> str:
        return "timeseries" if self.kind in TIME_SERIES_KINDS else "table"

    @property
    def variables(self) -> set[str]:
        """Template variables the SQL refers to (macros `$__x` excluded)."""
        names = {a or b for a, b in _VAR_RE.findall(self.sql)}
        return {n for n in names if not n.startswith("__")}

    def to_json(self, panel_id: int, x: int, y: int) -> dict[str, Any]:
        defaults: dict[str, Any] = {"unit": self.unit, "color": {"mode": "palette-classic"}}
        if self.decimals is not None:
            defaults["decimals"] = self.decimals
        steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
        steps += [{"color": color, "value": value} for value, color in self.thresholds]
        defaults["thresholds"] = {"mode": "absolute", "steps": steps}
        options: dict[str, Any]
        if self.kind == "timeseries":
            defaults["custom"] = {
                "drawStyle": "line",
                "lineWidth": 1,
                "fillOpacity": 20 if self.stacked else 10,
                "showPoints": "never",
                "spanNulls": False,
                "stacking": {"mode": "normal" if self.stacked else "none", "group": "A"},
            }
            options = {
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"},
            }
        elif self.kind == "table":
            defaults["custom"] = {"align": "auto", "cellOptions": {"type": "auto"}}
            options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
        elif self.kind == "stat":
            defaults["color"] = {"mode": "thresholds"}
            options = {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "value",
                "graphMode": "none",
                "justifyMode": "auto",
                "textMode": "auto",
                "orientation": "auto",
            }
        elif self.kind == "piechart":
            options = {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": True},
                "pieType": "donut",
                "legend": {"displayMode": "table", "placement": "right", "showLegend": True},
                "tooltip": {"mode": "single"},
            }
        else:  # bargauge
            options = {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": True},
                "orientation": "horizontal",
                "displayMode": "gradient",
                "showUnfilled": True,
            }
        panel: dict[str, Any] = {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "datasource": datasource_ref(),
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": options,
            "targets": [
                {
                    "refId": "A",
                    "datasource": datasource_ref(),
                    "editorType": "sql",
                    "format": _FORMAT[self.query_format],
                    "queryType": "timeSeries" if self.query_format == "timeseries" else "table",
                    "rawSql": self.sql,
                }
            ],
        }
        if self.min_interval:
            panel["interval"] = self.min_interval
        return panel


@dataclass(frozen=True)
class Variable:
    """A multi-value template variable with an All option (All -> `$__conditionalAll`
    drops the filter). Values come from `sql`, or are the fixed `options`."""

    name: str
    label: str
    sql: str | None = None
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.sql is None) == (not self.options):
            raise ValueError(f"variable {self.name}: give exactly one of sql or options")

    def to_json(self) -> dict[str, Any]:
        current = {"selected": True, "text": ["All"], "value": ["$__all"]}
        base: dict[str, Any] = {
            "name": self.name,
            "label": self.label,
            "multi": True,
            "includeAll": True,
            "current": current,
            "hide": 0,
            "skipUrlSync": False,
        }
        if self.sql is not None:
            return {
                **base,
                "type": "query",
                "datasource": datasource_ref(),
                "query": self.sql,
                "definition": self.sql,
                "refresh": 2,  # on time range change
                "sort": 1,
                "regex": "",
                "options": [],
            }
        return {
            **base,
            "type": "custom",
            "query": ",".join(self.options),
            "options": [
                {"selected": True, "text": "All", "value": "$__all"},
                *({"selected": False, "text": o, "value": o} for o in self.options),
            ],
        }


@dataclass(frozen=True)
class Dashboard:
    """A dashboard: panels flow left to right in a 24-column grid, rows wrap."""

    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    available_variables: tuple[Variable, ...] = ()
    tags: tuple[str, ...] = ("vigil",)
    refresh: str = "30s"
    time_from: str = "now-24h"
    links_tag: str = "vigil"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def variables(self) -> list[Variable]:
        """The variables its panels use, in the declared order (unused ones are left
        out, so a dashboard never shows a filter that does nothing)."""
        used = set().union(*(p.variables for p in self.panels))
        known = {v.name for v in self.available_variables}
        if used - known:
            raise ValueError(f"{self.uid}: panels use undeclared variables {sorted(used - known)}")
        return [v for v in self.available_variables if v.name in used]

    def layout(self) -> list[tuple[Panel, int, int]]:
        """(panel, x, y) for each panel: fill a row, wrap when the next one does not fit."""
        placed = []
        x = y = row_height = 0
        for panel in self.panels:
            if x + panel.width > GRID_WIDTH:
                x, y, row_height = 0, y + row_height, 0
            placed.append((panel, x, y))
            x += panel.width
            row_height = max(row_height, panel.height)
        return placed

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": list(self.tags),
            "timezone": "utc",
            "editable": True,
            "graphTooltip": 1,
            "liveNow": False,
            "refresh": self.refresh,
            "schemaVersion": SCHEMA_VERSION,
            "time": {"from": self.time_from, "to": "now"},
            "timepicker": {},
            "fiscalYearStartMonth": 0,
            "weekStart": "",
            "annotations": {
                "list": [
                    {
                        "builtIn": 1,
                        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                        "enable": True,
                        "hide": True,
                        "iconColor": "rgba(0, 211, 255, 1)",
                        "name": "Annotations & Alerts",
                        "type": "dashboard",
                    }
                ]
            },
            "links": [
                {
                    "type": "dashboards",
                    "title": "Vigil",
                    "tags": [self.links_tag],
                    "asDropdown": True,
                    "includeVars": True,
                    "keepTime": True,
                    "icon": "external link",
                    "targetBlank": False,
                    "tooltip": "",
                    "url": "",
                }
            ],
            "templating": {"list": [v.to_json() for v in self.variables]},
            "panels": [
                panel.to_json(i, x, y) for i, (panel, x, y) in enumerate(self.layout(), start=1)
            ],
            **self.extra,
        }
