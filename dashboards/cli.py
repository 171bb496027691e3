"""`vigil dashboards build|push`: regenerate the committed JSON, upsert into Grafana."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from dashboards.build import ROOT, build, check
from dashboards.provisioning import PASSWORD_ENV, ClickHouseTarget

log = logging.getLogger(__name__)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Grafana dashboards as code: build the JSON and provisioning files, push to Grafana.",
)

HostOpt = Annotated[
    str, typer.Option("--clickhouse-host", help="ClickHouse host as Grafana reaches it.")
]
PortOpt = Annotated[int, typer.Option("--clickhouse-port", help="ClickHouse HTTP port.")]
UserOpt = Annotated[
    str, typer.Option("--clickhouse-user", help="Read-only user for the dashboards.")
]
DbOpt = Annotated[str, typer.Option("--database", help="Database the panels read.")]
SecureOpt = Annotated[bool, typer.Option("--secure/--no-secure", help="HTTPS to ClickHouse.")]


@app.command("build")
def build_command(
    out: Annotated[Path, typer.Option(help="Dashboards directory to write.")] = ROOT,
    check_only: Annotated[
        bool, typer.Option("--check", help="Only verify the files are up to date.")
    ] = False,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8123,
    user: UserOpt = "default",
    database: DbOpt = "vigil",
    secure: SecureOpt = False,
) -> None:
    """Regenerate dashboards/json/*.json and the provisioning files from the builders."""
    target = ClickHouseTarget(host, port, user, database, secure)
    if check_only:
        problems = check(out, target)
        for p in problems:
            typer.echo(p, err=True)
        raise typer.Exit(1 if problems else 0)
    for path in build(out, target):
        typer.echo(str(path))


@app.command("push")
def push_command(
    grafana_url: Annotated[
        str, typer.Option(envvar="GRAFANA_URL", help="Grafana base URL, e.g. http://grafana:3000")
    ],
    token: Annotated[
        str, typer.Option(envvar="GRAFANA_TOKEN", help="Service-account token (Editor or Admin).")
    ],
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8123,
    user: UserOpt = "default",
    database: DbOpt = "vigil",
    secure: SecureOpt = False,
    password: Annotated[
        str | None,
        typer.Option("--clickhouse-password", envvar=PASSWORD_ENV, help="Its password."),
    ] = None,
) -> None:
    """Create or update the data source, the Vigil folder and every dashboard (by uid)."""
    from dashboards.push import push_dashboards

    target = ClickHouseTarget(host, port, user, database, secure, password=password)
    result = push_dashboards(grafana_url, token, target)
    typer.echo(
        f"data source {result.datasource}, folder {result.folder}, dashboards: "
        f"{len(result.dashboards_created)} created, {len(result.dashboards_updated)} updated, "
        f"{len(result.dashboards_unchanged)} unchanged"
    )
