"""Dagster's webserver as the stack runs it: GraphQL answers and the global asset lineage page.

The webserver is the one the session ``stack`` started (its own Postgres instance storage).
GraphQL is compared with ``build_definitions``, the same function the code location loads;
headless Chromium renders the lineage page the way a user's browser would, and leaves its
screenshot in ``test-artifacts/asset-lineage.png``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from PIL import Image

from dwh_assets.local.config import REPO_ROOT
from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.defs import CodeLocationSettings, build_definitions, key_of
from dwh_assets.warehouse.defs.metadata import relation_of

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"
SCREENSHOT = ARTIFACTS / "asset-lineage.png"
# Dagster 1.13's "Global asset lineage" page (the UI's own links to it use this path).
LINEAGE_PATH = "/asset-groups"
WINDOW = (1600, 1000)
# Virtual time runs ahead while the page is idle and stops while requests are in flight, so
# the budget covers the GraphQL fetches and the graph layout without a fixed sleep.
VIRTUAL_TIME_BUDGET_MS = 15_000
CHROMIUM_TIMEOUT_S = 120

ASSET_NODES_QUERY = """
query AssetGraph {
  assetNodes {
    assetKey { path }
    dependencyKeys { path }
    groupName
    kinds
    isMaterializable
  }
}
"""

INSTIGATORS_QUERY = """
query Instigators($sensor: SensorSelector!, $schedule: ScheduleSelector!) {
  sensorOrError(sensorSelector: $sensor) {
    __typename
    ... on Sensor { name sensorState { status } }
    ... on Error { message }
  }
  scheduleOrError(scheduleSelector: $schedule) {
    __typename
    ... on Schedule { name scheduleState { status } }
    ... on Error { message }
  }
}
"""


def graphql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{url}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        answer = json.load(resp)
    assert "errors" not in answer, f"GraphQL errors from {url}: {answer['errors']}"
    return answer["data"]


def location_name() -> str:
    """The code location's name, as workspace.yaml declares it."""
    workspace = yaml.safe_load((REPO_ROOT / "workspace.yaml").read_text())
    return workspace["load_from"][0]["python_module"]["location_name"]


@pytest.fixture(scope="module")
def defs(cfg):
    return build_definitions(CodeLocationSettings(cfg.history_start))


def expected_graph(defs) -> dict[tuple[str, ...], dict[str, Any]]:
    graph = defs.resolve_asset_graph()
    nodes = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        nodes[tuple(key.path)] = {
            "deps": sorted(tuple(parent.path) for parent in node.parent_keys),
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "materializable": node.is_materializable,
        }
    return nodes


def served_graph(data: dict[str, Any]) -> dict[tuple[str, ...], dict[str, Any]]:
    return {
        tuple(node["assetKey"]["path"]): {
            "deps": sorted(tuple(dep["path"]) for dep in node["dependencyKeys"]),
            "group": node["groupName"],
            "kinds": sorted(node["kinds"]),
            "materializable": node["isMaterializable"],
        }
        for node in data["assetNodes"]
    }


def test_webserver_serves_the_asset_graph_of_the_definitions(cfg, defs):
    served = served_graph(graphql(cfg.dagster_url, ASSET_NODES_QUERY))
    expected = expected_graph(defs)
    assert served.keys() == expected.keys()
    for key, node in expected.items():
        assert served[key] == node, f"asset {'/'.join(key)} differs between the webserver and build_definitions"
    # the lineage runs source -> copy -> mart, so the served graph has all three layers as edges
    def layer(path: tuple[str, ...]) -> str:  # a source's key is its system's name: its schema is src_<system>
        return relation_of(dg.AssetKey(list(path))).split(".")[0].split("_")[0]

    layers = {(layer(dep), layer(key)) for key, node in served.items() for dep in node["deps"]}
    assert {("src", "dwh"), ("dwh", "mart")} <= layers


def test_cron_sensor_and_nightly_schedule_are_running_in_the_stack_instance(cfg):
    repo = {"repositoryLocationName": location_name(), "repositoryName": "__repository__"}
    data = graphql(cfg.dagster_url, INSTIGATORS_QUERY, {
        "sensor": {**repo, "sensorName": "pg_cron_runs"},
        "schedule": {**repo, "scheduleName": "nightly_late_data_schedule"},
    })
    sensor, schedule = data["sensorOrError"], data["scheduleOrError"]
    assert sensor["__typename"] == "Sensor", sensor
    assert sensor["sensorState"]["status"] == "RUNNING"
    assert schedule["__typename"] == "Schedule", schedule
    assert schedule["scheduleState"]["status"] == "RUNNING"


# ----- the global asset lineage page, rendered by headless Chromium -----


def lineage_url(base_url: str, groups: list[str]) -> str:
    """The lineage page with every group expanded in the graph and opened in the sidebar tree.

    Group ids are the UI's own (``global@global:<group>`` while code-location grouping is off);
    the open sidebar lists every asset by name, whatever part of the graph fits the window.
    """
    ids = [f"global@global:{group}" for group in sorted(groups)]
    query = urllib.parse.urlencode([("expanded", ",".join(ids)), *(("open-nodes", i) for i in ids)])
    return f"{base_url}{LINEAGE_PATH}?{query}"


def run_chromium(url: str, profile: Path, *mode: str, window: tuple[int, int] = WINDOW) -> subprocess.CompletedProcess:
    """One headless Chromium call; the whole process group dies if it outlives the timeout."""
    argv = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--no-first-run", f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}", *mode, url,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish rendering {url} within {CHROMIUM_TIMEOUT_S} s")
    finally:
        try:  # renderer or zygote processes left behind by this call
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"chromium failed on {url}: {err[-2000:]}"
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


class _TextCollector(HTMLParser):
    """Visible text nodes of a DOM dump (not scripts or styles)."""

    def __init__(self):
        super().__init__()
        self.texts: set[str] = set()
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.texts.add(data.strip())


def dom_texts(html: str) -> set[str]:
    collector = _TextCollector()
    collector.feed(html)
    return collector.texts


def inked_tile_share(image: Image.Image, box: tuple[int, int, int, int], tile: int = 40) -> float:
    """Share of ``tile``-pixel squares inside ``box`` holding dark pixels (text, borders, edges)."""
    region = image.crop(box).convert("L")
    tiles = inked = 0
    for x in range(0, region.width - tile + 1, tile):
        for y in range(0, region.height - tile + 1, tile):
            tiles += 1
            inked += sum(region.crop((x, y, x + tile, y + tile)).histogram()[:160]) >= 20
    return inked / tiles


@pytest.fixture(scope="module")
def lineage(cfg, defs, tmp_path_factory) -> tuple[Path, str]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `bash .ci/setup` (it installs Debian's chromium)"
    groups = sorted({node["group"] for node in expected_graph(defs).values()})
    url = lineage_url(cfg.dagster_url, groups)
    ARTIFACTS.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)  # never judge a previous run's picture
    profile = tmp_path_factory.mktemp("chromium-profile")
    try:
        run_chromium(url, profile, f"--screenshot={SCREENSHOT}")
        # A tall window for the DOM: the asset tree renders only the rows that fit on screen.
        dom = run_chromium(url, profile, "--dump-dom", window=(WINDOW[0], 4000)).stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return SCREENSHOT, dom


def test_lineage_page_screenshot_is_a_rendered_graph(lineage):
    screenshot, _ = lineage
    assert screenshot.exists(), "chromium wrote no screenshot"
    with Image.open(screenshot) as png:
        image = png.convert("RGB")
    assert image.size == WINDOW
    assert len(image.getcolors(maxcolors=WINDOW[0] * WINDOW[1])) > 256, "the screenshot is (nearly) blank"
    # The graph canvas (right of the navigation and the asset tree, under the toolbar): asset
    # nodes fill it with text; a loading spinner inks a few tiles in the middle (<1% of the
    # ~550), a blank page none. The whole graph (seven groups) leaves much of the view to the
    # edges between them: about 10% of the tiles are inked when it is drawn.
    share = inked_tile_share(image, (560, 120, WINDOW[0] - 40, WINDOW[1]))
    assert share >= 0.05, f"the graph canvas is mostly empty ({share:.0%} of it drawn): a spinner or an error?"


def test_lineage_page_dom_names_every_asset_and_group(lineage, defs):
    _, dom = lineage
    texts = dom_texts(dom)
    assert "Global asset lineage" in texts, "chromium did not land on the global asset lineage page"
    nodes = expected_graph(defs)
    missing = {key[-1] for key in nodes} - texts
    assert not missing, f"asset names missing from the rendered lineage page: {sorted(missing)}"
    assert {node["group"] for node in nodes.values()} <= texts
    assert {"org_daily_usage", "users"} <= texts


# ----- what an asset page shows: table metadata, check results of pg_cron refreshes --------------

LATEST_MATERIALIZATION_QUERY = """
query Latest($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode {
      assetMaterializations(limit: 1) {
        runId
        metadataEntries {
          label
          ... on TableSchemaMetadataEntry { schema { columns { name description } } }
          ... on IntMetadataEntry { intValue }
          ... on TableColumnLineageMetadataEntry { lineage { columnName columnDeps { assetKey { path } columnName } } }
        }
      }
    }
  }
}
"""

CHECK_EXECUTIONS_QUERY = """
query Checks($key: AssetKeyInput!, $check: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $check, limit: 1) {
    status
    evaluation { success metadataEntries { label ... on IntMetadataEntry { intValue } } }
  }
}
"""


def entries(materialization: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["label"]: e for e in materialization["metadataEntries"]}


def test_an_asset_shows_its_columns_row_count_and_column_lineage_from_the_database(cfg, loader):
    from dwh_assets_tests.test_dagster_cli import materialize

    done = materialize("--assets", "dwh/users")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    node = graphql(cfg.dagster_url, LATEST_MATERIALIZATION_QUERY, {"key": {"path": ["dwh", "users"]}})["assetNodeOrError"]
    meta = entries(node["assetMaterializations"][0])
    comments = dict(loader.execute(
        "SELECT attname, col_description(attrelid, attnum) FROM pg_attribute "
        "WHERE attrelid = 'dwh.users'::regclass AND attnum > 0 AND NOT attisdropped").fetchall())
    columns = {c["name"]: c["description"] for c in meta["dagster/column_schema"]["schema"]["columns"]}
    assert columns == comments and all(comments.values()), "every column carries its COMMENT"
    assert meta["dagster/row_count"]["intValue"] == loader.execute("SELECT count(*) FROM dwh.users").fetchone()[0]
    lineage = {e["columnName"]: e["columnDeps"] for e in meta["dagster/column_lineage"]["lineage"]}
    assert lineage["email"] == [{"assetKey": {"path": ["clerk.users"]}, "columnName": "email"}]
    assert set(lineage) == set(columns)


def test_after_a_pg_cron_refresh_the_latest_check_results_are_that_refreshes(cfg, superuser, loader):
    """The daemon's sensor reports the run of dwh:refresh_users with its checks, in the same tick."""
    import time

    job = "dwh:refresh_users"
    start_runid = superuser.execute("SELECT coalesce(max(runid), 0) FROM cron.job_run_details").fetchone()[0]
    schedule = superuser.execute("SELECT schedule FROM cron.job WHERE jobname = %s AND username = 'dwh_loader'",
                                 (job,)).fetchone()[0]
    superuser.execute("SELECT cron.alter_job(jobid, schedule := '* * * * *') FROM cron.job "
                      "WHERE jobname = %s AND username = 'dwh_loader'", (job,))
    try:
        deadline = time.monotonic() + 180
        runid = None
        while time.monotonic() < deadline and runid is None:
            row = superuser.execute("SELECT r.runid FROM cron.job_run_details r JOIN cron.job j USING (jobid) "
                                    "WHERE j.jobname = %s AND r.runid > %s AND r.status = 'succeeded' ORDER BY runid LIMIT 1",
                                    (job, start_runid)).fetchone()
            runid = row[0] if row else None
            time.sleep(2)
    finally:
        superuser.execute("SELECT cron.alter_job(jobid, schedule := %s) FROM cron.job "
                          "WHERE jobname = %s AND username = 'dwh_loader'", (schedule, job))
    assert runid is not None, "pg_cron did not run dwh:refresh_users"

    def reported() -> dict[str, Any] | None:
        data = graphql(cfg.dagster_url, CHECK_EXECUTIONS_QUERY,
                       {"key": {"path": ["dwh", "users"]}, "check": "row_count_matches_source"})
        executions = data["assetCheckExecutions"]
        if executions and executions[0]["evaluation"]:
            meta = {e["label"]: e.get("intValue") for e in executions[0]["evaluation"]["metadataEntries"]}
            if meta.get("pg_cron_runid", 0) >= runid:
                return executions[0]
        return None

    deadline = time.monotonic() + 180
    execution = reported()
    while execution is None and time.monotonic() < deadline:
        time.sleep(3)
        execution = reported()
    assert execution is not None, "the sensor reported no check result for the pg_cron refresh"
    assert execution["status"] == "SUCCEEDED" and execution["evaluation"]["success"] is True


def screenshot(url: str, path: Path, tmp_path: Path) -> Image.Image:
    path.unlink(missing_ok=True)
    run_chromium(url, tmp_path / "profile", f"--screenshot={path}")
    with Image.open(path) as png:
        return png.convert("RGB")


def test_screenshots_of_an_asset_page_and_the_sensor_page(cfg, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    asset = screenshot(f"{cfg.dagster_url}/assets/dwh/users", ARTIFACTS / "asset-users.png", tmp_path)
    sensor = screenshot(f"{cfg.dagster_url}/locations/{location_name()}/sensors/pg_cron_runs",
                        ARTIFACTS / "sensor-pg-cron-runs.png", tmp_path)
    for image in (asset, sensor):
        assert image.size == WINDOW
        assert inked_tile_share(image, (300, 100, WINDOW[0] - 40, WINDOW[1] - 40)) >= 0.05, "a (nearly) blank page"


MATERIALIZE_ALL = """
mutation All($assets: [AssetKeyInput!]!) {
  launchPartitionBackfill(backfillParams: {assetSelection: $assets, allPartitions: true}) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}
"""
BACKFILL_STATUS = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } ... on PythonError { message } }
}
"""
PARTITION_STATS = """
query Stats {
  assetNodes { assetKey { path } isMaterializable partitionStats { numPartitions numMaterialized numFailed } }
}
"""


def test_materialize_all_succeeds_and_leaves_no_partition_that_can_never_be_built(cfg, defs):
    """What the UI's "Materialize all" launches: a backfill of every materializable asset, every partition."""
    import time

    nodes = graphql(cfg.dagster_url, PARTITION_STATS)["assetNodes"]
    assets = [{"path": n["assetKey"]["path"]} for n in nodes if n["isMaterializable"]]
    launched = graphql(cfg.dagster_url, MATERIALIZE_ALL, {"assets": assets})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    deadline, status = time.monotonic() + 600, None
    while time.monotonic() < deadline:
        status = graphql(cfg.dagster_url, BACKFILL_STATUS, {"id": launched["backfillId"]})["partitionBackfillOrError"]
        if status.get("status") in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"):
            break
        time.sleep(3)
    assert status and status.get("status") in ("COMPLETED", "COMPLETED_SUCCESS"), status
    for node in graphql(cfg.dagster_url, PARTITION_STATS)["assetNodes"]:
        stats = node["partitionStats"]
        if node["isMaterializable"] and stats is not None:
            assert stats["numMaterialized"] == stats["numPartitions"] and stats["numFailed"] == 0, node


# ----- what a data team reads on the pages, in a real browser (Playwright drives Debian's Chromium) -----

OBSERVATIONS_QUERY = """
query Observed {
  assetNodes { assetKey { path } isObservable assetObservations(limit: 1) { timestamp } }
}
"""
SENSOR_TICKS_QUERY = """
query Ticks($sensor: SensorSelector!) {
  sensorOrError(sensorSelector: $sensor) {
    ... on Sensor { sensorState { ticks(limit: 20) { status skipReason cursor error { message } } } }
  }
}
"""
PAGE_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    from dwh_assets_tests.superset_browser import launch

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser, url: str, ready: str, height: int = 2400):
    """The page in a tall window (the asset page scrolls inside itself), once ``ready`` is on it."""
    page = browser.new_page(viewport={"width": WINDOW[0], "height": height})
    page.goto(url, wait_until="domcontentloaded", timeout=PAGE_TIMEOUT_MS)
    page.get_by_text(ready, exact=True).first.wait_for(timeout=PAGE_TIMEOUT_MS)
    return page


def page_row_count(page) -> int:
    status = page.get_by_text("Row count", exact=True).first.locator("xpath=..").inner_text()
    return int(status.replace("Row count", "").strip().replace(",", ""))


def test_an_asset_page_shows_column_lineage_and_the_tables_row_count(cfg, loader, browser):
    """dwh/events after two one-day runs: "Row count" is the table's, the latest window's rows are
    labelled apart, and the column lineage is a table on the page."""
    import time

    from dwh_assets_tests.test_dagster_cli import materialize

    # Two days with events that pg_cron's own refreshes (today and its lookback) leave alone.
    lookback = catalog.get("events").lookback_days
    days = [r[0] for r in loader.execute(
        "SELECT DISTINCT (enqueued_at AT TIME ZONE 'UTC')::date FROM src_control_plane.a_instance_events "
        "WHERE enqueued_at < date_trunc('day', now(), 'UTC') - make_interval(days => %s) ORDER BY 1 DESC LIMIT 2",
        (lookback,)).fetchall()]
    assert len(days) == 2, "the control plane holds too little history for this test"
    for day in sorted(days):  # the later day last: its run is the latest materialization
        done = materialize("--assets", "dwh/events", "--partition", day.isoformat())
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    page = open_page(browser, f"{cfg.dagster_url}/assets/dwh/events", "column_lineage")
    try:
        # pg_cron keeps refreshing the table: wait until the page and the table agree (a row count that is
        # the window's never does: the earlier day's rows are in the table, not in the window).
        deadline = time.monotonic() + 180
        while (shown := page_row_count(page)) != (table_rows := loader.execute("SELECT count(*) FROM dwh.events").fetchone()[0]):
            assert time.monotonic() < deadline, f"the Row count {shown:,} is not the table's {table_rows:,}"
            page.reload(wait_until="domcontentloaded")
            page.get_by_text("column_lineage", exact=True).first.wait_for(timeout=PAGE_TIMEOUT_MS)

        def metadata(key: str) -> str:
            row = page.locator("tr").filter(has=page.get_by_text(key, exact=True)).first.inner_text()
            return row.split("\t")[-1].strip()

        # The latest materialization may be pg_cron's (the sensor's) by now: its own window, its own rows.
        start, end = (dt.datetime.fromisoformat(t) for t in metadata("window").strip("[)").split(", "))
        window_rows = loader.execute("SELECT count(*) FROM dwh.events WHERE enqueued_at >= %s AND enqueued_at < %s",
                                     (start, end)).fetchone()[0]
        assert int(metadata("rows_in_window").replace(",", "")) == window_rows < table_rows
        lineage = page.locator("table table").filter(has_text="source columns").first
        rows = {line.split("\t")[0].strip(): line for line in lineage.inner_text().splitlines()[1:]}
        columns = [r[0] for r in loader.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'dwh.events'::regclass "
                                                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum").fetchall()]
        assert list(rows) == columns
        assert "src_control_plane.a_instance_events.msg_id" in rows["msg_id"]
        assert "src_control_plane.a_instance_events.message" in rows["event_type"]
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "asset-events.png"))
    finally:
        page.close()


def test_what_dagster_never_builds_reads_observed(cfg, loader, browser):
    """Every source whose copy was refreshed, every view, the refresh log, pg_cron's history and every
    dashboard is observed by the sensor; a source's page says when and by whom it was read."""
    import time

    from dwh_assets_tests.test_dagster_cli import materialize

    done = materialize("--assets", "dwh/users")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    refreshed = {r[0] for r in loader.execute("SELECT DISTINCT table_name FROM dwh.refresh_log").fetchall()}
    unread = {"/".join(key_of(source).path) for spec in catalog.CATALOG if spec.log_table not in refreshed
              for source in spec.sources}

    def unobserved() -> list[str]:
        nodes = graphql(cfg.dagster_url, OBSERVATIONS_QUERY)["assetNodes"]
        return sorted("/".join(n["assetKey"]["path"]) for n in nodes if n["isObservable"] and not n["assetObservations"])

    deadline = time.monotonic() + 300
    missing = set(unobserved()) - unread
    while missing and time.monotonic() < deadline:
        time.sleep(3)
        missing = set(unobserved()) - unread
    assert missing == set(), f"never observed: {sorted(missing)}"

    page = open_page(browser, f"{cfg.dagster_url}/assets/clerk.users", "Latest observation", height=WINDOW[1])
    try:
        page.get_by_text("rows_read", exact=True).first.wait_for(timeout=PAGE_TIMEOUT_MS)
        # the page's lineage names the copy that reads the source
        page.locator("a[href*='/assets/dwh/users']").first.wait_for(timeout=PAGE_TIMEOUT_MS)
        text = page.locator("body").inner_text()
        assert "Never materialized" not in text and "Never observed" not in text
        assert "dwh.users" in text  # read by
        page.screenshot(path=str(ARTIFACTS / "asset-clerk-users.png"))
    finally:
        page.close()


def sensor_ticks(cfg, sensor: str) -> list[dict[str, Any]]:
    selector = {"repositoryLocationName": location_name(), "repositoryName": "__repository__", "sensorName": sensor}
    return graphql(cfg.dagster_url, SENSOR_TICKS_QUERY, {"sensor": selector})["sensorOrError"]["sensorState"]["ticks"]


def test_the_sensors_say_what_each_tick_did_under_a_short_cursor(cfg):
    """Every finished tick of both sensors says what it did, under a cursor of a few dozen characters."""
    import time

    for sensor, said in (("pg_cron_runs", "reported "), ("warehouse_observations", "")):
        # A loaded machine can time a tick out (its gRPC deadline): wait for one that finished.
        deadline = time.monotonic() + 300
        ticks = sensor_ticks(cfg, sensor)
        while not any(t["status"] == "SKIPPED" for t in ticks):
            assert time.monotonic() < deadline, f"{sensor} has no finished tick: {ticks}"
            time.sleep(5)
            ticks = sensor_ticks(cfg, sensor)
        finished = [t for t in ticks if t["status"] == "SKIPPED"]
        assert all(t["skipReason"].startswith(said) and len(cursor_core(t["cursor"])) < 100 for t in finished), finished


def cursor_core(cursor: str) -> str:
    """The cursor without its per-job notes (jobs already reported as missed, each job's last freshness
    verdict): one short entry per pg_cron job, bounded by the jobs, not by the history read."""
    try:
        parsed = json.loads(cursor)
    except ValueError:
        return cursor
    if not isinstance(parsed, dict):
        return cursor
    per_job = {**parsed.pop("missed_reported", {}), **parsed.pop("fresh", {})}
    assert all(job.startswith("dwh:") for job in per_job), per_job
    return json.dumps(parsed, separators=(",", ":"))
