"""What an analyst sees in Superset, in a real browser: filters, SQL Lab, the chart data API, no other host.

On the session stack's Superset (``superset`` fixture), headless Chromium logged in as the admin:

- one organization picked in each dashboard's Organization filter changes every chart in the
  filter's scope (and only those), and a number on it equals SQL for that organization; on the
  health dashboard, one table; screenshots ``test-artifacts/superset-<slug>-one-<filter>.png``;
- a time range puts its badge on the charts it changes and none on the numbers of now;
- SQL Lab opens on the warehouse, offers the schemas ``dwh`` and ``mart`` only and no pg_partman
  partition, validates nothing with ``ecpg``, and runs ``LIMIT 20`` as 20 rows;
- the chart data API answers for every chart (the saved query contexts);
- no page asks another host for anything (Superset 6.1's telemetry pixel is stopped by the CSP).
"""

from __future__ import annotations

import math
import re
import uuid

import psycopg
import pytest
from playwright.sync_api import Page, sync_playwright

from dwh_assets.local import secrets
from dwh_assets.local.config import LOADER_ROLE, REPO_ROOT, SUPERSET_ADMIN, WAREHOUSE_DB, StackConfig
from dwh_assets.local.superset import SupersetApi
from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.superset_derived import DERIVED_FILTER_PREFIX, native_filters
from dwh_assets.warehouse.superset_export import load_bundle
from dwh_assets_tests.superset_browser import (
    VIEWPORT,
    ChartTraffic,
    filter_badges,
    launch,
    login,
    open_dashboard,
    pick_in_filter,
)
from dwh_assets_tests.test_superset import api, filled  # noqa: F401 (fixtures: the stack's data, the admin's API)

ARTIFACTS = REPO_ROOT / "test-artifacts"
# The growth dashboard's charts of Clerk users (no organization: outside its organization filters).
SIGN_UP_CHARTS = {"Users (sign-ups in the time range)", "Sign-ups per day (today so far included)",
                  "Cumulative users (today so far included)"}
PARTITION = re.compile(r"_(p\d{4}_?\d{2}_?\d{2}|default)$")


@pytest.fixture(scope="module")
def browser(filled: StackConfig):  # noqa: F811 (the fixture imported above)
    with sync_playwright() as p:
        chromium = launch(p)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def page(browser, filled: StackConfig) -> Page:  # noqa: F811
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    login(page, filled.superset_url, SUPERSET_ADMIN, secrets.superset_admin_password(filled))
    yield page
    context.close()


def sql_value(cfg: StackConfig, query: str, *args) -> float:
    with psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True) as conn:
        return float(conn.execute(query, args).fetchone()[0] or 0)


@pytest.fixture(scope="module")
def organization(filled: StackConfig) -> str:  # noqa: F811
    """The organization with the most vCPU-hours that still has live instances (all its charts have data)."""
    with psycopg.connect(filled.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True) as conn:
        return conn.execute("""
            SELECT u.organization_name FROM mart.org_daily_usage u
            WHERE u.organization_id IN (SELECT organization_id FROM mart.instance_current_state WHERE state <> 'deleted')
              AND u.organization_id IN (SELECT organization_id FROM mart.instance_state_daily)
            GROUP BY 1 ORDER BY sum(u.vcpu_hours) DESC LIMIT 1""").fetchone()[0]


def dashboard_charts(api: SupersetApi, slug: str) -> dict[str, int]:  # noqa: F811
    """Chart name -> Superset's id, of one dashboard."""
    return {c["slice_name"]: c["id"] for c in api.get(f"/api/v1/dashboard/{slug}/charts")["result"]}


def scope(slug: str, column: str) -> tuple[set[str], set[str]]:
    """(charts in the derived filter's scope, charts outside it), by name."""
    bundle = load_bundle()
    dash = next(d for d in bundle.dashboards.values() if d.slug == slug)
    (native_filter,) = [f for f in native_filters(bundle, dash) if f["id"] == f"{DERIVED_FILTER_PREFIX}{column}"]
    names = [c.name for c in bundle.dashboard_charts(dash)]
    outside = {names[i - 1] for i in native_filter["scope"]["excluded"]}
    return set(names) - outside, outside


def pick_one(page: Page, cfg: StackConfig, api: SupersetApi, slug: str, column: str, value: str):  # noqa: F811
    """Open the dashboard, pick ``value`` in its filter on ``column``; the charts' answers before and after, by name."""
    ids = dashboard_charts(api, slug)
    traffic = ChartTraffic(page)
    report = open_dashboard(page, cfg.superset_url, slug, len(ids), ARTIFACTS / f"superset-{slug}.png")
    assert report.errors == [] and report.empty == [], report
    before = traffic.wait_for(page, set(ids.values()))
    mark = len(traffic.answers)
    inside, outside = scope(slug, column)
    pick_in_filter(page, f"{DERIVED_FILTER_PREFIX}{column}", value)
    after = traffic.wait_for(page, {ids[name] for name in inside}, since=mark)
    page.wait_for_timeout(2000)  # ECharts' entry animation, for the screenshot
    page.screenshot(path=str(ARTIFACTS / f"superset-{slug}-one-{column.removesuffix('_name')}.png"), full_page=True)
    by_name = {name: i for name, i in ids.items()}
    return ({n: before[i] for n, i in by_name.items()}, {n: after.get(i) for n, i in by_name.items()}, inside, outside)


def only_value(answer) -> float:
    (rows,) = answer.rows
    (row,) = rows
    (value,) = [v for v in row.values() if isinstance(v, (int, float))]
    return float(value)


@pytest.mark.parametrize("slug", ["usage-by-organization", "fleet", "growth"])
def test_one_organization_changes_every_chart_it_applies_to(page, filled, api, organization, slug):  # noqa: F811
    before, after, inside, outside = pick_one(page, filled, api, slug, "organization_name", organization)
    for name in inside:
        assert {"col": "organization_name", "op": "IN", "val": [organization]} in after[name].filters, name
        assert after[name].rows != before[name].rows, f"{slug}: {name!r} did not change for {organization}"
    for name in outside:  # the sign-up charts: Clerk users belong to no single organization
        assert after[name] is None or all(f.get("col") != "organization_name" for f in after[name].filters), name
    assert inside, slug
    assert outside == (SIGN_UP_CHARTS if slug == "growth" else set())


def test_a_number_for_one_organization_equals_sql(page, filled, api, organization):  # noqa: F811
    _before, after, _inside, _outside = pick_one(page, filled, api, "fleet", "organization_name", organization)
    live = sql_value(filled, "SELECT count(*) FROM dwh.instances i JOIN dwh.organizations o USING (organization_id) "
                             "WHERE o.name = %s AND (i.deleted_at IS NULL OR i.deleted_at > now())", organization)
    assert only_value(after["Live instances today"]) == live > 0
    _before, after, _inside, _outside = pick_one(page, filled, api, "usage-by-organization", "organization_name",
                                                 organization)
    vcpu_hours = sql_value(filled, "SELECT sum(vcpu_hours) FROM mart.org_daily_usage_days d "
                                   "JOIN dwh.organizations o USING (organization_id) WHERE o.name = %s", organization)
    assert math.isclose(only_value(after["vCPU-hours (time range)"]), vcpu_hours, rel_tol=1e-9) and vcpu_hours > 0


def test_one_table_narrows_the_health_dashboard(page, filled, api):  # noqa: F811
    before, after, inside, outside = pick_one(page, filled, api, "warehouse-health", "table_name", "events")
    # The quality gate's chart is per mart: its data has no table column for the filter to apply through.
    assert outside == {"Mart days held by the quality gate"} and inside
    for name in inside:
        assert {"col": "table_name", "op": "IN", "val": ["events"]} in after[name].filters, name
    (rows,) = after["Freshness: last refresh per table"].rows
    refreshes = sql_value(filled, "SELECT count(*) FROM dwh.refresh_log WHERE table_name = 'events' "
                                  "AND finished_at > now() - interval '24 hours'")
    assert [(r["table_name"], r["refreshes_24h"]) for r in rows] == [("events", refreshes)]
    assert len(before["Freshness: last refresh per table"].rows[0]) > 1


def test_a_time_range_badges_the_charts_it_changes_and_not_the_numbers_of_now(page, filled):
    time_range = (f"(native_filters:({DERIVED_FILTER_PREFIX}time_range:(extraFormData:(time_range:'Last month'),"
                  f"filterState:(value:'Last month'),id:{DERIVED_FILTER_PREFIX}time_range)))")
    for slug, changed in (("fleet", {"State transitions per day (today so far included)"}),
                          ("growth", {*SIGN_UP_CHARTS,
                                      "Organizations and live instances per day"})):
        page.goto(f"{filled.superset_url}/superset/dashboard/{slug}/?native_filters_key=&{_rison_query(time_range)}",
                  wait_until="domcontentloaded")
        page.locator("[data-test='applied-filter-count']").first.wait_for(timeout=180_000)
        page.wait_for_timeout(3000)
        badges = filter_badges(page)
        assert {name for name, badged in badges.items() if badged} == changed, f"{slug}: {badges}"


def _rison_query(rison: str) -> str:
    return rison.replace("(native_filters:(", "native_filters=(", 1)[:-1]


# ----- SQL Lab ---------------------------------------------------------------------------------------


def test_sql_lab_offers_the_warehouse_schemas_without_partitions(filled, api):  # noqa: F811
    (db,) = api.list_all("database", ["id", "database_name"])
    assert sorted(api.get(f"/api/v1/database/{db['id']}/schemas/", q="(force:!t)")["result"]) == ["dwh", "mart"]
    tables = {t["value"] for t in api.get(f"/api/v1/database/{db['id']}/tables/", q="(schema_name:mart,force:!t)")["result"]}
    assert not {t for t in tables if PARTITION.search(t)}, "pg_partman's partitions are listed"
    assert {v.name for v in catalog.PRODUCT.all_views() if v.relation.startswith("mart.")} <= tables


def run_in_sql_lab(api: SupersetApi, sql: str, limit: int) -> dict:  # noqa: F811
    (db,) = api.list_all("database", ["id", "database_name"])
    resp = api.post("/api/v1/sqllab/execute/", json={
        "database_id": db["id"], "sql": sql, "runAsync": False, "schema": "mart", "tab": "test",
        "client_id": uuid.uuid4().hex[:10], "queryLimit": limit, "select_as_cta": False})
    assert resp.status_code == 200, resp.text[:1000]
    return resp.json()


def test_a_querys_own_limit_is_kept_and_the_dropdowns_still_caps(filled, api):  # noqa: F811
    own = run_in_sql_lab(api, "SELECT * FROM mart.instance_current_state LIMIT 20", 1000)
    assert len(own["data"]) == 20 and own["query"]["executedSql"].rstrip().endswith("LIMIT 21")
    capped = run_in_sql_lab(api, "SELECT * FROM mart.instance_current_state LIMIT 200", 50)
    assert len(capped["data"]) == 50


def test_sql_lab_in_the_browser(page, filled):
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{filled.superset_url}/sqllab/", wait_until="domcontentloaded")
    editor = page.locator(".ace_editor, [data-test='sql-editor-tabs'] .ace_content")
    add_tab = page.get_by_text("Add a new tab")
    deadline_ms = 120_000
    page.locator(".ace_editor").or_(add_tab).first.wait_for(timeout=deadline_ms)
    if not page.locator(".ace_editor").count():
        add_tab.first.click()
    page.locator(".ace_editor").first.wait_for(timeout=deadline_ms)
    selector = page.locator("[data-test='DatabaseSelector']").first
    assert "warehouse" in selector.inner_text(), "SQL Lab opened without the warehouse selected"
    tree = page.get_by_text("mart", exact=True).first
    tree.wait_for(timeout=deadline_ms)
    assert page.get_by_text("src_clerk", exact=True).count() == 0 and page.get_by_text("partman", exact=True).count() == 0
    editor.first.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("SELECT * FROM mart.instance_current_state LIMIT 20")
    with page.expect_response(lambda r: "/api/v1/sqllab/execute/" in r.url, timeout=deadline_ms) as executed:
        page.keyboard.press("Control+Enter")
    body = executed.value.json()
    page.get_by_text("20 rows").first.wait_for(timeout=deadline_ms)
    page.wait_for_timeout(3000)  # time for a validator to answer, had one been asked
    page.screenshot(path=str(ARTIFACTS / "superset-sqllab.png"))
    assert len(body["data"]) == 20
    assert not [u for u in requests if "validate_sql" in u], "SQL Lab asked a validator"
    assert page.locator(".ace_error").count() == 0 and page.get_by_text("ecpg").count() == 0


# ----- the chart data API -------------------------------------------------------------------------------


def test_the_chart_data_api_answers_for_every_chart(filled, api):  # noqa: F811
    charts = api.list_all("chart", ["id", "slice_name"])
    assert len(charts) == len(load_bundle().charts)
    for chart in charts:
        resp = api.request("GET", f"/api/v1/chart/{chart['id']}/data/")
        assert resp.status_code == 200, f"{chart['slice_name']}: HTTP {resp.status_code} {resp.text[:300]}"
        rows = sum(int(r.get("rowcount") or 0) for r in resp.json()["result"])
        assert rows > 0, f"{chart['slice_name']}: no rows"


# ----- nothing leaves for another host ------------------------------------------------------------------


def pages_ask_another_host(browser, cfg: StackConfig, paths: list[str], bypass_csp: bool = False) -> list[str]:
    """Browse ``paths`` logged in; every request for a host other than Superset's (none goes out: aborted here)."""
    context = browser.new_context(viewport=VIEWPORT, bypass_csp=bypass_csp)
    asked: list[str] = []

    def route(r) -> None:
        if r.request.url.startswith(cfg.superset_url):
            r.continue_()
        else:
            asked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    try:
        page = context.new_page()
        login(page, cfg.superset_url, SUPERSET_ADMIN, secrets.superset_admin_password(cfg))
        for path in paths:
            page.goto(f"{cfg.superset_url}{path}", wait_until="networkidle", timeout=180_000)
    finally:
        context.close()
    return asked


def test_no_page_asks_another_host(browser, filled):
    paths = ["/superset/welcome/", "/sqllab/", "/chart/list/",
             *(d.url_path for d in load_bundle().dashboards.values())]
    assert pages_ask_another_host(browser, filled, paths) == []
    # What the Content-Security-Policy stops: Superset 6.1 still draws its telemetry pixel on every page.
    stopped = pages_ask_another_host(browser, filled, ["/superset/welcome/"], bypass_csp=True)
    assert stopped and all("scarf.sh" in url for url in stopped), stopped

