"""Superset in the session stack: dashboards as code, in a real browser, read-only on the warehouse.

The session fixture ``superset`` starts Superset once, on first use (``LocalStack.start_superset``),
and imports ``dashboards/``. Here:

- headless Chromium logs in through Superset's login form, opens each dashboard, waits for
  every chart and fails on a chart error or an empty chart (screenshots in test-artifacts/);
- a number on a dashboard (total sign-ups) equals the same number computed with SQL from dwh;
- importing again duplicates nothing; an edited YAML changes the dashboard; a broken YAML is
  named and changes nothing; ``dwh dashboards export`` gives back the repository's files;
- the warehouse connection is dwh_reader: an INSERT and a read of src_* are refused;
- ``dwh status`` / ``dwh env`` say where Superset is and how to log in, never the password.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import requests
import yaml

from dwh_assets.local import secrets
from dwh_assets.local.config import LOADER_ROLE, READER_ROLE, REPO_ROOT, SUPERSET_ADMIN, WAREHOUSE_DB, StackConfig
from dwh_assets.local.superset import SupersetApi, export_dashboards, import_dashboards
from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.superset_export import PACKAGED_DASHBOARDS, BundleError, load_bundle
from dwh_assets_tests.superset_browser import drawn_share, render_all
from dwh_assets_tests.warehouse_helpers import utc_midnight

ARTIFACTS = REPO_ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def filled(superset: StackConfig) -> StackConfig:
    """What the dashboards read: today's dimensions, the facts' history (metrics: a week), the marts' queued days."""
    with psycopg.connect(superset.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True) as conn:
        for name in ("users", "organizations", "organization_memberships", "instances"):
            conn.execute(f"SELECT dwh.refresh_{name}()")
        for name in ("instance_state", "events"):
            conn.execute(f"SELECT dwh.refresh_{name}(%s, %s)", (utc_midnight(-60), utc_midnight(1)))
        conn.execute("SELECT dwh.refresh_metrics(%s, %s)", (utc_midnight(-7), utc_midnight(1)))
        for mart in catalog.MARTS:
            conn.execute("SELECT dwh.refresh_pending_mart(%s)", (mart.name,))
    return superset


@pytest.fixture(scope="module")
def api(superset: StackConfig) -> SupersetApi:
    return SupersetApi(superset)


def counts(api: SupersetApi) -> dict[str, int]:
    return {kind: api.get(f"/api/v1/{kind}/", q="(page_size:1)")["count"]
            for kind in ("dashboard", "chart", "dataset", "database")}


def dashboard_titles(api: SupersetApi) -> dict[str, str]:
    return {d["slug"]: d["dashboard_title"] for d in api.list_all("dashboard", ["slug", "dashboard_title"])}


# ----- in a browser -----------------------------------------------------------------------------


def test_every_dashboard_renders_every_chart_with_data(filled: StackConfig):
    bundle = load_bundle()
    wanted = {d.slug: len(d.chart_uuids) for d in bundle.dashboards.values()}
    for old in ARTIFACTS.glob("superset-*.png"):
        old.unlink()  # never judge a previous run's picture
    reports = render_all(filled.superset_url, SUPERSET_ADMIN, secrets.superset_admin_password(filled), wanted, ARTIFACTS)
    for slug, report in reports.items():
        assert report.errors == [], f"{slug}: chart errors {report.errors}"
        assert report.empty == [], f"{slug}: empty charts {report.empty}"
        assert report.charts_on_page == wanted[slug], f"{slug}: {report.charts_on_page} charts on the page"
        assert report.drawn == wanted[slug], f"{slug}: only {report.drawn} of {wanted[slug]} charts were drawn"
        assert len(report.data) >= wanted[slug], f"{slug}: {len(report.data)} chart data answers"
        share = drawn_share(report.screenshot)
        assert share >= 0.2, f"{slug}: the screenshot's dashboard grid is mostly blank ({share:.0%} drawn)"


# ----- numbers --------------------------------------------------------------------------------


def chart_value(api: SupersetApi, chart_file: str) -> float:
    """The number a Big Number chart shows, through Superset's chart data API, with the chart's own metric."""
    bundle = load_bundle()
    chart = yaml.safe_load((bundle.root / "charts" / chart_file).read_text())
    dataset = bundle.datasets[chart["dataset_uuid"]]
    found = api.get("/api/v1/dataset/", q=f"(filters:!((col:table_name,opr:eq,value:{dataset.table_name})))")["result"]
    (ds,) = [d for d in found if d["schema"] == dataset.schema]
    metric = chart["params"]["metric"]
    body = {"datasource": {"id": ds["id"], "type": "table"}, "force": True, "result_format": "json", "result_type": "full",
            "queries": [{"metrics": [metric], "columns": [], "filters": [], "row_limit": 10}]}
    resp = api.post("/api/v1/chart/data", json=body)
    assert resp.status_code == 200, resp.text[:2000]
    (row,) = resp.json()["result"][0]["data"]
    return float(row[metric["label"]])


def test_total_signups_on_the_growth_dashboard_equals_the_users_in_dwh(filled: StackConfig, api):
    with psycopg.connect(filled.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True) as conn:
        conn.execute("SELECT dwh.refresh_users()")
        conn.execute("SELECT dwh.refresh_pending_mart('daily_signups')")
        users = conn.execute("SELECT count(*) FROM dwh.users").fetchone()[0]
    assert users > 0
    assert chart_value(api, "growth_users_total.yaml") == users


# ----- dashboards as code -----------------------------------------------------------------------


def test_importing_again_duplicates_nothing(superset: StackConfig, api):
    bundle = load_bundle()
    expected = {"dashboard": len(bundle.dashboards), "chart": len(bundle.charts), "dataset": len(bundle.datasets),
                "database": len(bundle.databases)}
    assert counts(api) == expected
    import_dashboards(superset)
    import_dashboards(superset)
    assert counts(api) == expected


def _expired(token: str, key: str) -> str:
    """The same JWT with an ``exp`` in the past, signed (HS256) with Superset's key, as Superset would."""
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header, payload, _ = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["exp"] = int(time.time()) - 60
    signed = f"{header}.{b64(json.dumps(claims).encode())}"
    return f"{signed}.{b64(hmac.new(key.encode(), signed.encode(), hashlib.sha256).digest())}"


def test_an_expired_api_token_is_renewed_and_the_call_answered(superset: StackConfig):
    api = SupersetApi(superset)
    expired = _expired(api.session.headers["Authorization"].removeprefix("Bearer "),
                       superset.superset_secret_key_file.read_text().strip())
    refused = requests.get(f"{api.url}/api/v1/dashboard/", headers={"Authorization": f"Bearer {expired}"}, timeout=60)
    assert refused.status_code == 401 and "expired" in refused.text.lower(), refused.text[:300]
    api.session.headers["Authorization"] = f"Bearer {expired}"
    assert api.get("/api/v1/dashboard/", q="(page_size:1)")["count"] == len(load_bundle().dashboards)
    assert api.session.headers["Authorization"] != f"Bearer {expired}"


@pytest.fixture()
def copy(tmp_path) -> Path:
    root = tmp_path / "dashboards"
    shutil.copytree(PACKAGED_DASHBOARDS, root)
    return root


def _edit(path: Path, **changes) -> None:
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_an_edited_yaml_changes_the_dashboard_and_its_chart(superset: StackConfig, api, copy):
    _edit(copy / "dashboards" / "growth.yaml", dashboard_title="Growth (edited)")
    _edit(copy / "charts" / "growth_cumulative.yaml", slice_name="Cumulative users (edited)")
    try:
        import_dashboards(superset, copy)
        assert dashboard_titles(api)["growth"] == "Growth (edited)"
        names = {c["slice_name"] for c in api.list_all("chart", ["slice_name"])}
        assert "Cumulative users (edited)" in names and "Cumulative users" not in names
        assert counts(api)["chart"] == len(load_bundle().charts)
    finally:
        import_dashboards(superset)
    assert dashboard_titles(api)["growth"] == "Growth"


def test_a_broken_yaml_is_named_and_changes_nothing(superset: StackConfig, api, copy):
    before = dashboard_titles(api)
    _edit(copy / "dashboards" / "fleet.yaml", dashboard_title="Fleet (must not arrive)")
    (copy / "charts" / "fleet_by_size.yaml").write_text("slice_name: Live instances by size\nparams: {unclosed\n")
    with pytest.raises(BundleError, match=r"charts/fleet_by_size.yaml: not valid YAML"):
        import_dashboards(superset, copy)
    done = subprocess.run([sys.executable, "-m", "dwh_assets.cli", "dashboards", "import", "--directory", str(copy)],
                          capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert done.returncode == 1 and "charts/fleet_by_size.yaml: not valid YAML" in done.stderr, done.stderr
    assert dashboard_titles(api) == before


def test_export_writes_back_exactly_the_repository_files(superset: StackConfig, copy):
    import_dashboards(superset)
    assert export_dashboards(superset, copy) == []
    for path in copy.rglob("*.yaml"):
        assert path.read_text() == (PACKAGED_DASHBOARDS / path.relative_to(copy)).read_text(), path


# ----- the warehouse connection is read-only -------------------------------------------------------


def sqllab(api: SupersetApi, sql: str) -> tuple[int, str]:
    (db,) = api.list_all("database", ["id", "database_name"])
    resp = api.post("/api/v1/sqllab/execute/", json={
        "database_id": db["id"], "sql": sql, "runAsync": False, "schema": "mart", "tab": "test",
        "client_id": uuid.uuid4().hex[:10], "queryLimit": 10, "select_as_cta": False, "expand_data": True})
    return resp.status_code, resp.text


def test_superset_reads_mart_and_dwh_and_nothing_else(filled: StackConfig, api):
    status, text = sqllab(api, "SELECT count(*) AS n FROM mart.growth_daily")
    assert status == 200, text[:1000]
    status, text = sqllab(api, "SELECT count(*) AS n FROM dwh.instances")
    assert status == 200, text[:1000]
    status, text = sqllab(api, "SELECT * FROM src_clerk.users LIMIT 1")
    assert status != 200 and "permission denied" in text, text[:1000]
    status, text = sqllab(api, "INSERT INTO mart.daily_signups VALUES (current_date, 1, 1, 1)")
    assert status != 200, text[:1000]


def test_its_login_is_refused_writes_and_sources_by_the_server(filled: StackConfig):
    """The same login and passfile Superset's processes use, without Superset's own SQL checks."""
    conninfo = (f"host={filled.host} port={filled.pg_port} dbname={WAREHOUSE_DB} user={READER_ROLE} "
                f"passfile={filled.superset_pgpass_file}")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM mart.refresh_latest").fetchone()[0] > 0
        assert conn.execute("SELECT count(*) FROM mart.cron_job_runs").fetchone()[0] > 0  # the jobs, via the definer function
        for statement, error in (
            ("INSERT INTO mart.daily_signups_days VALUES (current_date, 1, 1)", psycopg.errors.InsufficientPrivilege),
            ("INSERT INTO dwh.users (user_id, created_at, updated_at) VALUES ('x', now(), now())",
             psycopg.errors.InsufficientPrivilege),
            ("SELECT * FROM src_clerk.users LIMIT 1", psycopg.errors.InsufficientPrivilege),
            ("SELECT * FROM src_control_plane.instances LIMIT 1", psycopg.errors.InsufficientPrivilege),
            ("SELECT * FROM cron.job_run_details LIMIT 1", psycopg.errors.InsufficientPrivilege),
            ("SELECT * FROM dwh.settings", psycopg.errors.InsufficientPrivilege),
            ("CREATE TABLE mart.x (i int)", psycopg.errors.InsufficientPrivilege),
        ):
            with pytest.raises(error):
                conn.execute(statement)
    lines = filled.superset_pgpass_file.read_text().split()
    assert sorted(line.split(":")[3] for line in lines) == ["dwh_reader", "superset"]


# ----- where it is and how to log in ------------------------------------------------------------------


def test_status_and_env_say_where_superset_is_without_the_password(superset: StackConfig):
    status = subprocess.run([sys.executable, "-m", "dwh_assets.cli", "status"], capture_output=True, text=True,
                            env=dict(os.environ), timeout=120)
    line = next(line for line in status.stdout.splitlines() if line.startswith("superset "))
    assert "running" in line and str(superset.ports["superset"]) in line
    assert f"Superset UI:  {superset.superset_url}" in status.stdout
    assert f"user {SUPERSET_ADMIN}, password in {superset.superset_admin_password_file}" in status.stdout
    env = subprocess.run([sys.executable, "-m", "dwh_assets.cli", "env"], capture_output=True, text=True,
                         env=dict(os.environ), timeout=120)
    assert f"export DWH_SUPERSET_URL={superset.superset_url}" in env.stdout
    for secret in (secrets.superset_admin_password(superset), secrets.superset_secret_key(superset)):
        assert secret not in status.stdout + status.stderr + env.stdout + env.stderr
    for path in (superset.superset_admin_password_file, superset.superset_secret_key_file, superset.superset_pgpass_file):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_superset_listens_on_loopback_only(superset: StackConfig):
    import socket

    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex(("127.0.0.1", superset.ports["superset"])) == 0
    addresses = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None) if a[0] == socket.AF_INET}
    for address in addresses - {"127.0.0.1", "127.0.1.1"}:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, superset.ports["superset"])) != 0, f"superset answers on {address}"


# ----- in Dagster's lineage ------------------------------------------------------------------------


def test_dagsters_webserver_serves_the_dashboards_downstream_of_the_marts(superset: StackConfig):
    from dwh_assets_tests.test_dagster_ui import ASSET_NODES_QUERY, graphql

    nodes = {tuple(n["assetKey"]["path"]): n for n in graphql(superset.dagster_url, ASSET_NODES_QUERY)["assetNodes"]}
    bundle = load_bundle()
    for dash in bundle.dashboards.values():
        node = nodes[("superset", dash.slug.replace("-", "_"))]
        assert node["groupName"] == "dashboards" and node["kinds"] == ["superset"] and not node["isMaterializable"]
        assert {".".join(d["path"]) for d in node["dependencyKeys"]} == set(bundle.dashboard_relations(dash))
    assert ("mart", "org_daily_usage") in {tuple(d["path"]) for d in nodes[("superset", "usage_by_organization")]["dependencyKeys"]}
