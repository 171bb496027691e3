"""`vigil report --since 24h`: the key dashboard panels as PNG, HTML and markdown.

Why: governance, operators and auditors often have no Grafana. The report runs the
very SQL of the dashboards' key panels (`Panel.key`), expanded exactly as Grafana's
ClickHouse data source would (`pipelines.storage.macros`), so a number in the report
is the number on the SOC's screen for the same range. The HTML is self-contained
(charts embedded as base64 PNG); the markdown links the PNG files next to it.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from clickhouse_connect.driver import Client

from dashboards.definitions import all_dashboards
from dashboards.model import Dashboard, Panel
from pipelines.storage.macros import ALL, QueryContext, expand

log = logging.getLogger(__name__)

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Interval steps (seconds) a report may bucket by; the rollups are per minute.
_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
TARGET_POINTS = 120
MAX_TABLE_ROWS = 50
_NUMERIC_RE = re.compile(r"^(Nullable\()?(U?Int\d+|Float\d+|Decimal.*)")


def parse_duration(text: str) -> dt.timedelta:
    """'24h', '90m', '7d', '1w', '3600s' -> timedelta."""
    m = _DURATION_RE.match(text)
    if m is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 24h, 7d)")
    return dt.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def pick_interval(span: dt.timedelta) -> int:
    """Bucket size giving about TARGET_POINTS points, never finer than a minute."""
    want = span.total_seconds() / TARGET_POINTS
    return next((s for s in _STEPS if s >= want), _STEPS[-1])


@dataclass
class PanelResult:
    dashboard: Dashboard
    panel: Panel
    sql: str
    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]
    png: bytes | None = None
    error: str | None = None

    @property
    def slug(self) -> str:
        text = f"{self.dashboard.uid}-{self.panel.title}".lower()
        return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


@dataclass
class Report:
    time_from: dt.datetime
    time_to: dt.datetime
    interval_s: int
    database: str
    results: list[PanelResult] = field(default_factory=list)
    html_path: Path | None = None
    markdown_path: Path | None = None
    png_paths: list[Path] = field(default_factory=list)


def run_key_panels(
    client: Client, time_from: dt.datetime, time_to: dt.datetime, interval_s: int
) -> list[PanelResult]:
    """Every key panel's SQL on `client` for the range, all variables at All."""
    out = []
    for dashboard in all_dashboards():
        variables = {v.name: ALL for v in dashboard.variables}
        ctx = QueryContext(time_from, time_to, interval_s, variables)
        for panel in dashboard.panels:
            if not panel.key:
                continue
            sql = expand(panel.sql, ctx)
            try:
                res = client.query(sql, settings={"readonly": "1"})
            except Exception as exc:  # one broken panel must not sink the report
                log.error("panel %r of %s failed: %s", panel.title, dashboard.uid, exc)
                out.append(PanelResult(dashboard, panel, sql, [], [], [], error=str(exc)))
                continue
            out.append(
                PanelResult(
                    dashboard,
                    panel,
                    sql,
                    list(res.column_names),
                    [t.name for t in res.column_types],
                    [tuple(r) for r in res.result_rows],
                )
            )
    return out


# ------------------------------------------------------------------------ charts


def _is_numeric(type_name: str) -> bool:
    return bool(_NUMERIC_RE.match(type_name.removeprefix("LowCardinality(")))


def series_of(result: PanelResult) -> dict[str, tuple[list[dt.datetime], list[float]]]:
    """Long-format rows (t, labels..., values...) -> one series per label and value,
    the way the ClickHouse data source pivots them for Grafana."""
    value_idx = [i for i, t in enumerate(result.types) if i > 0 and _is_numeric(t)]
    label_idx = [i for i, t in enumerate(result.types) if i > 0 and not _is_numeric(t)]
    series: dict[str, tuple[list[dt.datetime], list[float]]] = {}
    for row in result.rows:
        label = " ".join(str(row[i]) for i in label_idx)
        for i in value_idx:
            name = (
                " ".join(x for x in (label, result.columns[i]) if x)
                if len(value_idx) > 1
                else (label or result.columns[i])
            )
            xs, ys = series.setdefault(name, ([], []))
            value = row[i]
            xs.append(row[0])
            ys.append(float(value) if value is not None else math.nan)
    return series


def render_png(result: PanelResult) -> bytes | None:
    """A chart for a time series panel (PNG bytes), or None when it has no rows."""
    if result.panel.kind != "timeseries" or not result.rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    try:
        for name, (xs, ys) in sorted(series_of(result).items()):
            marker = "." if len(xs) < 30 else None
            # matplotlib plots datetimes (its stubs only admit numbers)
            ax.plot(xs, ys, label=name, linewidth=1.4, marker=marker)  # type: ignore[arg-type]
        ax.set_title(f"{result.panel.title}", fontsize=11, loc="left")
        unit = result.panel.unit
        if unit not in ("short", ""):
            ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
        fig.autofmt_xdate()
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left", ncol=3, frameon=False)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


# --------------------------------------------------------------------- documents


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return str(value)


def _md_cell(value: Any) -> str:
    return _cell(value).replace("|", "\\|").replace("\n", " ")


def _stat_text(result: PanelResult) -> str:
    if result.error:
        return "error"
    if not result.rows:
        return "no data"
    return ", ".join(_cell(v) for v in result.rows[0])


def to_markdown(report: Report, png_dir_name: str) -> str:
    lines = [
        "# Vigil incident report",
        "",
        f"Range: **{report.time_from:%Y-%m-%d %H:%M} – {report.time_to:%Y-%m-%d %H:%M} UTC**"
        f" · database `{report.database}` · buckets of {report.interval_s} s",
        "",
    ]
    for dashboard in all_dashboards():
        results = [r for r in report.results if r.dashboard.uid == dashboard.uid]
        if not results:
            continue
        lines += [f"## {dashboard.title.removeprefix('Vigil / ')}", "", dashboard.description, ""]
        stats = [r for r in results if r.panel.kind == "stat"]
        if stats:
            lines += ["| " + " | ".join(r.panel.title for r in stats) + " |"]
            lines += ["| " + " | ".join("---" for _ in stats) + " |"]
            lines += ["| " + " | ".join(_md_cell(_stat_text(r)) for r in stats) + " |", ""]
        for r in results:
            if r.panel.kind == "stat":
                continue
            lines += [f"### {r.panel.title}", "", r.panel.description, ""]
            if r.error:
                lines += [f"Query failed: `{_md_cell(r.error[:300])}`", ""]
            elif r.png is not None:
                lines += [f"![{r.panel.title}]({png_dir_name}/{r.slug}.png)", ""]
            elif not r.rows:
                lines += ["No data in this range.", ""]
            else:
                shown = r.rows[:MAX_TABLE_ROWS]
                lines += ["| " + " | ".join(r.columns) + " |"]
                lines += ["| " + " | ".join("---" for _ in r.columns) + " |"]
                lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in shown]
                if len(r.rows) > len(shown):
                    lines += ["", f"({len(r.rows) - len(shown)} more rows not shown)"]
                lines += [""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#1f2328;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:2em}
.meta{color:#57606a}.stats{display:flex;gap:1em;flex-wrap:wrap}
.stat{border:1px solid #d0d7de;border-radius:6px;padding:.6em 1em;min-width:9em}
.stat .v{font-size:1.6em;font-weight:600}.stat .t{color:#57606a;font-size:.85em}
table{border-collapse:collapse;font-size:.85em;width:100%;margin:.5em 0 1.5em}
th,td{border:1px solid #d0d7de;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f6f8fa}td{font-family:ui-monospace,monospace;word-break:break-all}
img{max-width:100%}.desc{color:#57606a;margin:.2em 0 .6em}.err{color:#cf222e}
"""


def to_html(report: Report) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>Vigil incident report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Vigil incident report</h1>",
        f"<p class='meta'>{e(f'{report.time_from:%Y-%m-%d %H:%M}')} – "
        f"{e(f'{report.time_to:%Y-%m-%d %H:%M}')} UTC · database <code>{e(report.database)}"
        f"</code> · buckets of {report.interval_s} s</p>",
    ]
    for dashboard in all_dashboards():
        results = [r for r in report.results if r.dashboard.uid == dashboard.uid]
        if not results:
            continue
        parts += [
            f"<section id='{e(dashboard.uid)}'>",
            f"<h2>{e(dashboard.title.removeprefix('Vigil / '))}</h2>",
            f"<p class='desc'>{e(dashboard.description)}</p>",
        ]
        stats = [r for r in results if r.panel.kind == "stat"]
        if stats:
            parts.append("<div class='stats'>")
            for r in stats:
                parts.append(
                    f"<div class='stat'><div class='v'>{e(_stat_text(r))}</div>"
                    f"<div class='t'>{e(r.panel.title)}</div></div>"
                )
            parts.append("</div>")
        for r in results:
            if r.panel.kind == "stat":
                continue
            parts += [
                f"<h3>{e(r.panel.title)}</h3>",
                f"<p class='desc'>{e(r.panel.description)}</p>",
            ]
            if r.error:
                parts.append(f"<p class='err'>Query failed: {e(r.error[:300])}</p>")
            elif r.png is not None:
                data = base64.b64encode(r.png).decode()
                parts.append(f"<img alt='{e(r.panel.title)}' src='data:image/png;base64,{data}'>")
            elif not r.rows:
                parts.append("<p>No data in this range.</p>")
            else:
                shown = r.rows[:MAX_TABLE_ROWS]
                parts.append("<table><thead><tr>")
                parts += [f"<th>{e(c)}</th>" for c in r.columns]
                parts.append("</tr></thead><tbody>")
                for row in shown:
                    parts.append("<tr>" + "".join(f"<td>{e(_cell(v))}</td>" for v in row) + "</tr>")
                parts.append("</tbody></table>")
                if len(r.rows) > len(shown):
                    parts.append(
                        f"<p class='desc'>{len(r.rows) - len(shown)} more rows not shown</p>"
                    )
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def generate_report(
    client: Client,
    out_dir: Path,
    *,
    since: dt.timedelta,
    until: dt.datetime | None = None,
    database: str = "",
) -> Report:
    """Run the key panels for [until - since, until] and write report.html, report.md
    and panels/*.png under `out_dir`."""
    time_to = (until or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    time_from = time_to - since
    interval = pick_interval(since)
    report = Report(time_from, time_to, interval, database)
    report.results = run_key_panels(client, time_from, time_to, interval)
    png_dir = out_dir / "panels"
    png_dir.mkdir(parents=True, exist_ok=True)
    for r in report.results:
        r.png = render_png(r)
        if r.png is not None:
            path = png_dir / f"{r.slug}.png"
            path.write_bytes(r.png)
            report.png_paths.append(path)
    report.html_path = out_dir / "report.html"
    report.html_path.write_text(to_html(report))
    report.markdown_path = out_dir / "report.md"
    report.markdown_path.write_text(to_markdown(report, png_dir.name))
    failed = [r.panel.title for r in report.results if r.error]
    if failed:
        log.warning("%d panels failed: %s", len(failed), ", ".join(failed))
    return report


# --------------------------------------------------------------------------------- CLI

app = typer.Typer(
    add_completion=False,
    invoke_without_command=True,
    help="Render the key dashboard panels to PNG, HTML and markdown for a time range.",
)


@app.callback()
def report_command(
    since: Annotated[str, typer.Option(help="How far back: 30m, 24h, 7d ...")] = "24h",
    until: Annotated[
        str | None, typer.Option(help="End of the range (ISO 8601, UTC); default now.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("reports/vigil-report"),
    config: Annotated[Path | None, typer.Option("--config", help="TOML settings file.")] = None,
    clickhouse_url: Annotated[
        str | None, typer.Option(help="Override the ClickHouse URL from the settings.")
    ] = None,
    database: Annotated[str | None, typer.Option(help="Override the database.")] = None,
) -> None:
    """Write <out>/report.html (self-contained), <out>/report.md and <out>/panels/*.png."""
    from pipelines.settings import ConfigError, Settings
    from pipelines.storage.client import StorageUnavailable, connect

    overrides: dict[str, Any] = {}
    if clickhouse_url:
        overrides["clickhouse_url"] = clickhouse_url
    if database:
        overrides["clickhouse_database"] = database
    try:
        span = parse_duration(since)
        end = dt.datetime.fromisoformat(until) if until else None
        if end is not None and end.tzinfo is None:
            end = end.replace(tzinfo=dt.UTC)
        settings = Settings.load(config, **overrides)
    except (ValueError, ConfigError) as exc:
        typer.echo(f"invalid arguments: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        # A read-only client tool pointed at a server by its user (the demo's included):
        # the services that hold the data (`vigil worker`, `vigil api`) refuse an empty
        # password outside the demo, this report does not.
        client = connect(
            settings.clickhouse_url,
            settings.clickhouse_user,
            settings.clickhouse_password.get_secret_value(),
            settings.clickhouse_database,
        )
    except StorageUnavailable as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    try:
        report = generate_report(
            client, out, since=span, until=end, database=settings.clickhouse_database
        )
    finally:
        client.close()
    failed = sum(1 for r in report.results if r.error)
    typer.echo(f"{report.html_path}\n{report.markdown_path}\n{len(report.png_paths)} charts")
    if failed:
        typer.echo(f"{failed} panels failed (see the report)", err=True)
        raise typer.Exit(1)
