"""A real browser on Superset: log in through the form, open a dashboard, wait for every chart.

Playwright (the Python package only) drives Debian's Chromium (``/usr/bin/chromium``): its
own browser download cannot reach the internet here, and Playwright, unlike Selenium,
needs no chromedriver matching the browser's version and can wait on the page's own
network traffic (each chart's ``/api/v1/chart/data`` answer) instead of fixed sleeps.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, Page, Response, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1600, "height": 1200}
# What a chart looks like once drawn: ECharts draws on a canvas (or svg), tables are tables,
# big numbers are their header line.
DRAWN = "canvas, svg, table, .header-line, .big-number"
ERROR = ".ant-alert-error, [data-test='alert'], .chart-error, .error-message"
EMPTY_TEXT = ("No results were returned", "No data")


@dataclass
class ChartData:
    url: str
    status: int
    rows: int
    error: str | None


@dataclass
class DashboardReport:
    slug: str
    charts_on_page: int
    drawn: int
    data: list[ChartData] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    screenshot: Path | None = None


def launch(playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def login(page: Page, base_url: str, user: str, password: str, attempts: int = 3) -> None:
    """Superset's own login form, as a person fills it in.

    A submit that leaves the browser on the login page (seen in full suites on a busy machine,
    never in a module run on its own) is tried again on a freshly loaded form, as a person would;
    each attempt's visible message is kept for the error if none gets through."""
    fields = {"input[name='username'], #username": user, "input[name='password'], #password": password}
    seen: list[str] = []
    for _ in range(attempts):
        page.goto(f"{base_url}/login/", wait_until="networkidle", timeout=120_000)
        if "/login" not in page.url:
            return  # a slow earlier submit did log in: Superset sends a logged-in user on
        # The form is a React component: what is typed before it has hydrated is lost (on a busy
        # machine that is seconds after "load"), so type until the fields hold the values.
        deadline = time.monotonic() + 60
        while True:
            for selector, value in fields.items():
                page.locator(selector).first.fill(value)
            page.wait_for_timeout(300)
            if all(page.locator(selector).first.input_value() == value for selector, value in fields.items()):
                break
            if time.monotonic() > deadline:
                raise AssertionError("Superset's login form never kept what was typed into it")
        page.locator("button[type='submit'], input[type='submit']").first.click()
        try:
            page.wait_for_url(lambda url: "/login" not in url, timeout=30_000)
            return
        except PlaywrightTimeoutError:
            alerts = page.locator(".ant-alert, .ant-message, .ant-form-item-explain, [role='alert']")
            seen.append(" | ".join(alerts.all_inner_texts()) or f"still on {page.url}, no message shown")
    raise AssertionError(f"Superset's login form kept the browser on the login page {attempts} times: {seen}")


def _chart_data(resp: Response) -> ChartData:
    try:
        body = resp.json()
    except Exception:  # noqa: BLE001 (an HTML error page)
        return ChartData(resp.url, resp.status, 0, f"HTTP {resp.status}: not JSON")
    results = body.get("result") or []
    error = body.get("message") or next((r.get("error") for r in results if r.get("error")), None)
    rows = sum(int(r.get("rowcount") or len(r.get("data") or [])) for r in results)
    return ChartData(resp.url, resp.status, rows, str(error) if error else None)


def _wait_drawn(page: Page, holders, expected: int, deadline: float) -> None:
    """Until every chart holder is drawn (or shows an error) and no spinner is left."""
    while time.monotonic() < deadline:
        page.wait_for_timeout(500)
        count = holders.count()
        if count < expected:
            continue
        loading = page.locator(".dashboard-component-chart-holder .loading").count()
        drawn = sum(1 for i in range(count) if holders.nth(i).locator(DRAWN).count() > 0)
        if loading == 0 and (drawn == count or page.locator(ERROR).count()):
            return


def open_dashboard(page: Page, base_url: str, slug: str, expected_charts: int, screenshot: Path,
                   timeout_s: float = 180) -> DashboardReport:
    """Open the dashboard, wait until every chart's data came back and it is drawn; screenshot it."""
    data: list[ChartData] = []

    def on_response(resp: Response) -> None:
        if "/api/v1/chart/data" in resp.url and resp.request.method == "POST":
            data.append(_chart_data(resp))

    page.on("response", on_response)
    try:
        page.goto(f"{base_url}/superset/dashboard/{slug}/", wait_until="domcontentloaded")
        holders = page.locator(".dashboard-component-chart-holder")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(data) < expected_charts:
            page.wait_for_timeout(500)
        _wait_drawn(page, holders, expected_charts, deadline)
        # The whole dashboard in one viewport (a full-page screenshot resizes the page, and the
        # grid re-lays out, sometimes blank, while it is taken); then wait for the charts again.
        height = page.evaluate("document.documentElement.scrollHeight")
        page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], int(height) + 40)})
        _wait_drawn(page, holders, expected_charts, deadline=time.monotonic() + 60)
        page.wait_for_timeout(2000)  # ECharts' entry animation
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot))
        count = holders.count()
        report = DashboardReport(slug=slug, charts_on_page=count, data=list(data),
                                 drawn=sum(1 for i in range(count) if holders.nth(i).locator(DRAWN).count() > 0),
                                 screenshot=screenshot)
        for i in range(count):
            holder = holders.nth(i)
            text = holder.inner_text(timeout=5000)
            title = text.splitlines()[0] if text else f"chart {i + 1}"
            if holder.locator(ERROR).count():
                report.errors.append(f"{title}: {holder.locator(ERROR).first.inner_text()[:300]}")
            if any(marker in text for marker in EMPTY_TEXT) or holder.locator(DRAWN).count() == 0:
                report.empty.append(title)
        report.errors += [f"chart data {d.url}: HTTP {d.status} {d.error}" for d in data if d.status != 200 or d.error]
        report.empty += [f"chart data {d.url}: no rows" for d in data if d.status == 200 and not d.error and d.rows == 0]
        page.set_viewport_size(VIEWPORT)
        return report
    finally:
        page.remove_listener("response", on_response)


def drawn_share(png: Path, tile: int = 40) -> float:
    """Share of the dashboard grid's tiles (right of the filter bar, under the header) with something drawn.

    A tile counts when its pixels differ (text, lines, bars); a blank grid, or one whose charts
    vanished while the screenshot was taken, is nearly all uniform tiles.
    """
    from PIL import Image

    with Image.open(png) as image:
        gray = image.convert("L")
    box = (280, 140, gray.width - 20, gray.height - 20)
    region = gray.crop(box)
    tiles = drawn = 0
    for x in range(0, region.width - tile + 1, tile):
        for y in range(0, region.height - tile + 1, tile):
            lo, hi = region.crop((x, y, x + tile, y + tile)).getextrema()
            tiles += 1
            drawn += (hi - lo) > 40
    return drawn / max(tiles, 1)


def render_all(base_url: str, user: str, password: str, dashboards: dict[str, int], out_dir: Path,
               timeout_s: float = 180) -> dict[str, DashboardReport]:
    """Log in once, then open each dashboard (slug -> number of charts) and screenshot it."""
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            login(page, base_url, user, password)
            return {slug: open_dashboard(page, base_url, slug, n, out_dir / f"superset-{slug}.png", timeout_s)
                    for slug, n in dashboards.items()}
        finally:
            browser.close()


# ----- native filters ------------------------------------------------------------------------------


@dataclass
class ChartAnswer:
    slice_id: int
    filters: list        # what the chart's (first) query filtered on
    rows: list           # the rows of each of its results


class ChartTraffic:
    """A page's chart data requests and their answers, in order, each with the chart (slice id) it is for."""

    def __init__(self, page: Page):
        self.answers: list[ChartAnswer] = []
        page.on("response", self._on_response)

    def _on_response(self, resp: Response) -> None:
        if "/api/v1/chart/data" not in resp.url or resp.request.method != "POST":
            return
        body = resp.request.post_data_json or {}
        slice_id = (body.get("form_data") or {}).get("slice_id")
        try:
            results = resp.json().get("result") or []
        except Exception:  # noqa: BLE001 (an HTML error page: no rows)
            results = []
        if slice_id is not None:
            self.answers.append(ChartAnswer(int(slice_id), (body.get("queries") or [{}])[0].get("filters") or [],
                                            [r.get("data") for r in results]))

    def latest(self, since: int = 0) -> dict[int, ChartAnswer]:
        """The last answer for each chart among those after the first ``since``."""
        return {a.slice_id: a for a in self.answers[since:]}

    def wait_for(self, page: Page, slice_ids: set[int], since: int = 0, timeout_s: float = 180) -> dict[int, ChartAnswer]:
        deadline = time.monotonic() + timeout_s
        while not slice_ids <= set(self.latest(since)) and time.monotonic() < deadline:
            page.wait_for_timeout(500)
        missing = slice_ids - set(self.latest(since))
        assert not missing, f"no chart data came for charts {sorted(missing)} within {timeout_s:.0f}s"
        return self.latest(since)


def pick_in_filter(page: Page, filter_id: str, value: str) -> None:
    """Choose one value in a native select filter of the filter bar, as a person does, and apply it."""
    box = page.locator(f"[id='{filter_id}']")
    box.click()
    box.fill(value)
    option = page.locator(".ant-select-item-option", has_text=value)
    option.first.wait_for(timeout=60_000)
    option.filter(has_text=value).first.click()
    page.keyboard.press("Escape")
    page.locator("[data-test='filter-bar__apply-button']").click()


def filter_badges(page: Page) -> dict[str, bool]:
    """Each chart's title -> whether it carries the applied-filters badge."""
    holders = page.locator(".dashboard-component-chart-holder")
    return {holders.nth(i).locator("[data-test='editable-title']").first.inner_text().strip():
            holders.nth(i).locator("[data-test='applied-filter-count']").count() > 0 for i in range(holders.count())}


def explore_query_context(page: Page, base_url: str, chart_id: int, timeout_s: float = 120) -> dict:
    """The query context Superset's Explore builds for a chart (what its Save stores), from its data request."""
    with page.expect_request(lambda r: "/api/v1/chart/data" in r.url and r.method == "POST", timeout=timeout_s * 1000) as req:
        page.goto(f"{base_url}/explore/?slice_id={chart_id}", wait_until="domcontentloaded")
    return req.value.post_data_json


def save_query_contexts(base_url: str, user: str, password: str, charts: dict[int, str], store) -> None:
    """Open each chart (id -> name) in Explore and ``store(id, query_context)``, as Explore's Save would."""
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            login(page, base_url, user, password)
            for chart_id, name in charts.items():
                context = explore_query_context(page, base_url, chart_id)
                assert context.get("queries"), f"{name}: Explore sent no query"
                store(chart_id, context)
        finally:
            browser.close()


if __name__ == "__main__":
    # A look by hand:                python -m dwh_assets_tests.superset_browser URL USER PASSWORD_FILE
    # Save every chart's query context (then `dwh dashboards export`): ... --save-query-contexts
    import sys

    from dwh_assets.warehouse.superset_export import load_bundle

    url, user, password = sys.argv[1], sys.argv[2], Path(sys.argv[3]).read_text().strip()
    if "--save-query-contexts" in sys.argv:
        from dwh_assets.local.config import load_config
        from dwh_assets.local.superset import SupersetApi, save_query_context

        api = SupersetApi(load_config())
        charts = {c["id"]: c["slice_name"] for c in api.list_all("chart", ["id", "slice_name"])}
        save_query_contexts(url, user, password, charts, lambda chart_id, context: save_query_context(api, chart_id, context))
        print(f"saved the query context of {len(charts)} chart(s)")
        sys.exit(0)
    bundle = load_bundle()
    wanted = {d.slug: len(d.chart_uuids) for d in bundle.dashboards.values()}
    reports = render_all(url, user, password, wanted, Path("test-artifacts"))
    for r in reports.values():
        print(json.dumps({"slug": r.slug, "charts": r.charts_on_page, "drawn": r.drawn, "data": len(r.data),
                          "errors": r.errors, "empty": r.empty}, indent=1))
