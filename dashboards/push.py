"""Upsert the data source, the folder and the dashboards through Grafana's HTTP API.

Why idempotent by uid: `push` runs from CI and by hand, again and again. The data
source and dashboards are looked up by their fixed uids and only written when they
differ, so a second push changes nothing and never creates a duplicate (Grafana
would otherwise keep adding data sources, or bump dashboard versions for nothing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError

from dashboards.definitions import all_dashboards
from dashboards.model import DATASOURCE_UID
from dashboards.provisioning import FOLDER_TITLE, FOLDER_UID, ClickHouseTarget

log = logging.getLogger(__name__)

# Keys Grafana adds to a stored dashboard that the builders do not set.
_SERVER_KEYS = ("id", "version")


@dataclass
class PushResult:
    """What a push changed; all lists empty means everything was already up to date."""

    datasource: str = "unchanged"  # created | updated | unchanged
    folder: str = "unchanged"
    dashboards_created: list[str] = field(default_factory=list)
    dashboards_updated: list[str] = field(default_factory=list)
    dashboards_unchanged: list[str] = field(default_factory=list)


def _not_found(exc: GrafanaClientError) -> bool:
    return exc.status_code == 404


def _subset_differs(want: dict[str, Any], have: dict[str, Any]) -> bool:
    """True when a field we set differs from what Grafana stores (extra keys there are
    Grafana's own, e.g. `id`, `version`, `readOnly`)."""
    for key, value in want.items():
        if isinstance(value, dict):
            if not isinstance(have.get(key), dict) or _subset_differs(value, have[key]):
                return True
        elif have.get(key) != value:
            return True
    return False


def _upsert_datasource(api: GrafanaApi, body: dict[str, Any]) -> str:
    try:
        current = api.datasource.get_datasource_by_uid(DATASOURCE_UID)
    except GrafanaClientError as exc:
        if not _not_found(exc):
            raise
        api.datasource.create_datasource(body)
        log.info("created data source %s", DATASOURCE_UID)
        return "created"
    plain = {k: v for k, v in body.items() if k != "secureJsonData"}
    # A password cannot be compared (Grafana never returns it): send it when given.
    if not _subset_differs(plain, current) and "secureJsonData" not in body:
        return "unchanged"
    api.datasource.update_datasource_by_uid(DATASOURCE_UID, body)
    log.info("updated data source %s", DATASOURCE_UID)
    return "updated"


def _ensure_folder(api: GrafanaApi) -> str:
    try:
        api.folder.get_folder(FOLDER_UID)
        return "unchanged"
    except GrafanaClientError as exc:
        if not _not_found(exc):
            raise
    api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
    log.info("created folder %s", FOLDER_UID)
    return "created"


def push_dashboards(
    grafana_url: str,
    token: str,
    target: ClickHouseTarget | None = None,
    *,
    timeout: float = 10.0,
) -> PushResult:
    """Create or update the ClickHouse data source (uid `vigil-clickhouse`), the
    `Vigil` folder and every dashboard in it; `token` is a service-account token."""
    api = GrafanaApi.from_url(grafana_url, credential=token, timeout=timeout)
    result = PushResult()
    result.datasource = _upsert_datasource(api, (target or ClickHouseTarget()).datasource())
    result.folder = _ensure_folder(api)
    for dashboard in all_dashboards():
        body = dashboard.to_json()
        try:
            stored = api.dashboard.get_dashboard(dashboard.uid)
        except GrafanaClientError as exc:
            if not _not_found(exc):
                raise
            stored = None
        if stored is not None:
            have = {k: v for k, v in stored.get("dashboard", {}).items() if k not in _SERVER_KEYS}
            folder = stored.get("meta", {}).get("folderUid")
            if have == body and folder == FOLDER_UID:
                result.dashboards_unchanged.append(dashboard.uid)
                continue
        api.dashboard.update_dashboard(
            {
                "dashboard": {**body, "id": None},
                "folderUid": FOLDER_UID,
                "overwrite": True,
                "message": "vigil dashboards push",
            }
        )
        (result.dashboards_created if stored is None else result.dashboards_updated).append(
            dashboard.uid
        )
        log.info("%s dashboard %s", "created" if stored is None else "updated", dashboard.uid)
    return result
