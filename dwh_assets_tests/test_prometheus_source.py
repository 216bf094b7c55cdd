"""The Prometheus source: usage exporter, history back-fill, Prometheus server, reader.

Real servers throughout: the exporter and Debian's Prometheus run on free loopback ports
in a temporary DWH_HOME, at a small scale; values are checked against ``usage_at``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from dwh_assets.local.config import REPO_ROOT, StackConfig, free_port
from dwh_assets.local import generator, prometheus_backfill
from dwh_assets.local.generator import METRIC_NAMES, build_world, usage_at
from dwh_assets.local.prometheus_backfill import SCRAPE_INSTANCE, SCRAPE_JOB, backfill, read_marker
from dwh_assets.local.process import StackError, wait_until
from dwh_assets.local.prometheus import PrometheusServer, UsageExporter, prometheus_config
from dwh_assets_tests.tiers import integration_fixture

UTC = dt.timezone.utc
SEED = 7
SCALE = 0.05
ANCHOR = dt.datetime.now(UTC).date()
READER = REPO_ROOT / "dwh_assets" / "warehouse" / "sources" / "reader.py"


def make_config(home: Path, scale: float = SCALE) -> StackConfig:
    ports = {"pg": free_port(), "clerk": free_port(), "prometheus": free_port(), "exporter": free_port(), "dagster": free_port()}
    return StackConfig(home=home, ports=ports, anchor_day=ANCHOR, seed=SEED, scale=scale, server_user="nobody")


def get_json(url: str, **params: object) -> dict:
    with urllib.request.urlopen(f"{url}?{urllib.parse.urlencode(params)}", timeout=30) as resp:
        payload = json.load(resp)
    assert payload["status"] == "success", payload
    return payload["data"]


def query_range(cfg: StackConfig, query: str, start: int, end: int, step: int) -> list[dict]:
    return get_json(f"{cfg.prometheus_url}/api/v1/query_range", query=query, start=start, end=end, step=step)["result"]


def expected_labels(inst: generator.Instance, name: str) -> dict[str, str]:
    return {"__name__": name, "instance": SCRAPE_INSTANCE, "job": SCRAPE_JOB,
            "instance_id": inst.id, "organization_id": inst.organization_id}


@pytest.fixture(scope="module")
def world() -> generator.World:
    return build_world(SEED, SCALE, ANCHOR)


@integration_fixture(scope="module")
def stack(tmp_path_factory, world):
    """Exporter + Prometheus (back-filled hourly), scraping every 2 s instead of 60 s.

    Debian's prometheus package (prometheus + promtool) is installed by .ci/setup."""
    cfg = make_config(tmp_path_factory.mktemp("dwh_home"))
    exporter, server = UsageExporter(cfg), PrometheusServer(cfg, scrape_interval="2s")
    try:
        assert exporter.start() is True
        assert server.start() is True
        yield cfg, exporter, server
    finally:
        server.stop()
        exporter.stop()


# ----- exporter -------------------------------------------------------------------------

def test_exporter_serves_exactly_the_alive_instances(stack, world):
    cfg, _, _ = stack
    alive = {i.id: i for i in world.instances if i.alive_at(dt.datetime.now(UTC))}
    assert 0 < len(alive) < len(world.instances), "the world should have deleted instances too"

    with urllib.request.urlopen(f"{cfg.exporter_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    seen = {}
    for family in parse_text(text):
        for s in family.samples:
            assert s.name in METRIC_NAMES
            assert set(s.labels) == {"instance_id", "organization_id"}
            inst = alive[s.labels["instance_id"]]
            assert s.labels["organization_id"] == inst.organization_id
            # Exporter timestamps are whole seconds, valued by usage_at at that second.
            assert float(s.timestamp).is_integer()
            assert s.value == usage_at(inst, dt.datetime.fromtimestamp(float(s.timestamp), UTC))[s.name]
            seen[(s.name, inst.id)] = s.value
    assert set(seen) == {(name, i) for name in METRIC_NAMES for i in alive}
    exposed = {line.split("{")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert exposed == set(METRIC_NAMES)


def test_exporter_openmetrics_names_the_counter_sample_exactly(stack):
    """Prometheus negotiates OpenMetrics: the stored sample name must still end in _total once."""
    cfg, _, _ = stack
    req = urllib.request.Request(f"{cfg.exporter_url}/metrics",
                                 headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
    names = {s.name for family in parse_openmetrics(text) for s in family.samples}
    assert names == set(METRIC_NAMES)


# ----- back-fill: the OpenMetrics it writes ------------------------------------------

def test_sample_times_are_the_step_multiples_while_alive(world):
    start, end, step = world.history_start.timestamp(), world.history_end.timestamp(), 3600
    grid = range(int(start), int(end), step)
    for inst in world.instances:
        want = [t for t in grid if inst.alive_at(dt.datetime.fromtimestamp(t, UTC))]
        assert list(prometheus_backfill.sample_times(inst, start, end, step)) == want


def test_backfill_window_is_valid_openmetrics(tmp_path, world):
    lo = world.history_end.timestamp() - 2 * 86400
    out = io.StringIO()
    n = prometheus_backfill.write_window(out, tmp_path, world.instances, lo, lo + 86400, 3600)
    text = out.getvalue()
    assert text.endswith("# EOF\n") and n > 0
    # The strict parser rejects interleaved families, missing EOF, bad names or values.
    families = list(parse_openmetrics(text))
    assert [f.name for f in families] == ["dwh_instance_cpu_seconds", *METRIC_NAMES[1:]]
    assert sum(len(f.samples) for f in families) == n
    assert list(tmp_path.iterdir()) == []  # the spill files are gone


def test_backfill_rejects_a_step_that_does_not_divide_blocks(tmp_path, world):
    with pytest.raises(StackError, match="must divide 2h"):
        backfill(world, tmp_path / "data", step=7)


# ----- Prometheus server --------------------------------------------------------------

def test_backfilled_day_matches_usage_model(stack, world):
    cfg, _, _ = stack
    # The day with the most instances created or deleted, so alive-ness changes mid-day.
    def churn(day: dt.date) -> int:
        return sum((i.created_at.date() == day) + (i.deleted_at is not None and i.deleted_at.date() == day)
                   for i in world.instances)
    day = max((ANCHOR - dt.timedelta(days=d) for d in range(2, 59)), key=churn)
    assert churn(day) > 0
    start = int(dt.datetime.combine(day, dt.time(), UTC).timestamp())
    times = range(start, start + 86400, 3600)

    for name in METRIC_NAMES:
        got = {}
        for series in query_range(cfg, name, times[0], times[-1], 3600):
            inst = next(i for i in world.instances if i.id == series["metric"]["instance_id"])
            assert series["metric"] == expected_labels(inst, name)
            for t, value in series["values"]:
                got[(inst.id, t)] = float(value)
        want = {
            (i.id, t): usage_at(i, dt.datetime.fromtimestamp(t, UTC))[name]
            for i in world.instances for t in times if i.alive_at(dt.datetime.fromtimestamp(t, UTC))
        }
        assert got == want, name


def test_live_scrapes_continue_the_backfilled_series(stack, world):
    cfg, _, _ = stack
    def scraped() -> bool:
        targets = get_json(f"{cfg.prometheus_url}/api/v1/targets")["activeTargets"]
        return [t["health"] for t in targets] == ["up"]

    assert wait_until(scraped, 30), "Prometheus did not scrape the exporter within 30 s"
    marker = read_marker(cfg.prometheus_dir / "data")
    last_backfilled = marker.end - 1 - (marker.end - 1) % marker.step
    alive = {i.id: i for i in world.instances if i.alive_at(dt.datetime.now(UTC))}

    # Over a range spanning the back-fill's end and now, each series holds both kinds.
    result = get_json(f"{cfg.prometheus_url}/api/v1/query",
                      query=f"dwh_instance_memory_bytes[{int(time.time()) - last_backfilled + 60}s]")["result"]
    assert {s["metric"]["instance_id"] for s in result} == set(alive)
    for series in result:
        inst = alive[series["metric"]["instance_id"]]
        assert series["metric"] == expected_labels(inst, "dwh_instance_memory_bytes")
        stamps = [float(t) for t, _ in series["values"]]
        assert stamps[0] <= last_backfilled < stamps[-1]
        for t, value in series["values"]:
            assert float(value) == usage_at(inst, dt.datetime.fromtimestamp(float(t), UTC))["dwh_instance_memory_bytes"]


def _listening_addresses(port: int) -> set[str]:
    addrs = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                host, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                    addrs.add(host)
    return addrs


def test_servers_listen_on_loopback_only(stack):
    cfg, _, _ = stack
    loopback = "0100007F"  # 127.0.0.1, little-endian hex as in /proc/net/tcp
    assert _listening_addresses(cfg.ports["prometheus"]) == {loopback}
    assert _listening_addresses(cfg.ports["exporter"]) == {loopback}


def test_config_keeps_admin_and_lifecycle_api_off_and_retention_long(stack):
    cfg, _, server = stack
    argv = " ".join(server.argv)
    assert "--web.enable-admin-api" not in argv and "--web.enable-lifecycle" not in argv
    assert "--storage.tsdb.retention.time=3650d" in argv
    check = subprocess.run(["promtool", "check", "config", str(server.config_file)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr + check.stdout
    assert prometheus_config(cfg).count("scrape_interval: 60s") == 2  # the stack's default


def test_start_is_idempotent_and_backfills_once(stack):
    cfg, exporter, server = stack
    data = cfg.prometheus_dir / "data"
    blocks = sorted(p.name for p in data.iterdir() if len(p.name) == 26)
    marker = (data / prometheus_backfill.MARKER_NAME).read_text()
    assert exporter.start() is False and server.start() is False

    assert server.stop() is True and server.is_running() is False
    assert server.start() is True
    assert (data / prometheus_backfill.MARKER_NAME).read_text() == marker
    assert set(blocks) <= {p.name for p in data.iterdir()}
    assert wait_until(server.is_running, 10)


def test_data_dir_of_another_world_is_refused(stack):
    cfg, _, _ = stack
    other = dataclasses.replace(cfg, seed=SEED + 1)
    with pytest.raises(StackError, match="another world"):
        PrometheusServer(other).backfill()


# ----- the source reader against this Prometheus ----------------------------------------

READER_STEP = 60
READER_DAYS = 8  # 8 days at 60 s = 11,520 points per series: more than one request
LOOKBACK = 300  # Prometheus' default lookback delta


@integration_fixture(scope="module")
def fine_prometheus(tmp_path_factory):
    """A second Prometheus whose history has a sample every 60 s over 9 days (10 instances)."""
    if not READER.exists():
        pytest.fail(f"{READER} is missing")
    cfg = make_config(tmp_path_factory.mktemp("dwh_home_fine"), scale=0.01)
    world = build_world(cfg.seed, cfg.scale, cfg.anchor_day)
    start = world.history_end - dt.timedelta(days=READER_DAYS + 1)
    backfill(world, cfg.prometheus_dir / "data", step=READER_STEP, start=start, end=world.history_end)
    server = PrometheusServer(cfg)
    try:
        server.start()
        yield cfg, world, server
    finally:
        server.stop()


def run_reader(cfg: StackConfig, tmp_path: Path, *args: object) -> subprocess.CompletedProcess:
    config = tmp_path / "reader.json"
    config.write_text(json.dumps({"prometheus_url": cfg.prometheus_url, "timeout_seconds": 10,
                                  "max_retries": 1, "backoff_seconds": 0.05}))
    argv = ["/usr/bin/python3", str(READER), "--config", str(config), "prometheus", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd="/")


def test_reader_splits_long_windows_and_returns_every_sample_once(fine_prometheus, tmp_path):
    cfg, world, _ = fine_prometheus
    end = int(world.history_end.timestamp()) - 3600
    start = end - READER_DAYS * 86400 + 17  # not aligned: the first point is the next multiple
    first = start - start % READER_STEP + READER_STEP
    grid = range(first, end, READER_STEP)
    assert len(grid) > 11_000

    done = run_reader(cfg, tmp_path, "--start", start, "--end", end, "--step", READER_STEP,
                      *[arg for name in METRIC_NAMES for arg in ("--metric", name)])
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    keys = [(name, json.loads(labels)["instance_id"], int(t)) for name, labels, t, _ in rows]
    assert len(keys) == len(set(keys)), "a sample came back twice"
    got = {k: float(row[3]) for k, row in zip(keys, rows)}

    # The same points asked directly, in requests Prometheus accepts (<= 11,000 points).
    direct = {}
    for name in METRIC_NAMES:
        for lo in range(first, end, 11_000 * READER_STEP):
            hi = min(lo + (11_000 - 1) * READER_STEP, end - 1)
            for series in query_range(cfg, name, lo, hi, READER_STEP):
                for t, value in series["values"]:
                    direct[(name, series["metric"]["instance_id"], int(t))] = float(value)
    assert got == direct

    # ... which are the model's values, Prometheus-style: at each grid point, the latest
    # sample at most 5 minutes old (so a deleted instance lingers for 5 more points).
    want = {}
    for inst in world.instances:
        samples = prometheus_backfill.sample_times(inst, grid[0] - LOOKBACK, end, READER_STEP)
        for t in grid:
            if samples and samples[0] <= t <= samples[-1] + LOOKBACK:
                usage = usage_at(inst, dt.datetime.fromtimestamp(min(t, samples[-1]), UTC))
                want.update({(name, inst.id, t): usage[name] for name in METRIC_NAMES})
    assert got == want
    assert any(i.deleted_at is not None and grid[0] < i.deleted_at.timestamp() < grid[-1] for i in world.instances)
    labels = json.loads(rows[0][1])
    assert set(labels) == {"instance", "instance_id", "job", "organization_id"}


def test_reader_reads_one_metric_and_adjacent_windows_do_not_overlap(fine_prometheus, tmp_path):
    cfg, world, _ = fine_prometheus
    mid = int(world.history_end.timestamp()) - 86400
    halves = [run_reader(cfg, tmp_path, "--start", a, "--end", b, "--step", READER_STEP,
                         "--metric", "dwh_instance_storage_bytes")
              for a, b in ((mid - 7200, mid), (mid, mid + 7200))]
    whole = run_reader(cfg, tmp_path, "--start", mid - 7200, "--end", mid + 7200, "--step", READER_STEP,
                       "--metric", "dwh_instance_storage_bytes")
    assert all(r.returncode == 0 for r in (*halves, whole)), [r.stderr for r in (*halves, whole)]
    rows = [r.stdout.splitlines() for r in halves]
    assert rows[0] and rows[1] and not set(rows[0]) & set(rows[1])
    assert sorted(rows[0] + rows[1]) == sorted(whole.stdout.splitlines())
    assert {row[0] for row in csv.reader(io.StringIO(whole.stdout))} == {"dwh_instance_storage_bytes"}


def test_reader_fails_loudly_when_prometheus_is_down(fine_prometheus, tmp_path):
    cfg, world, server = fine_prometheus
    assert server.stop() is True
    end = int(world.history_end.timestamp())
    done = run_reader(cfg, tmp_path, "--start", end - 3600, "--end", end, "--step", READER_STEP,
                      "--metric", "dwh_instance_storage_bytes")
    assert done.returncode != 0
    assert done.stdout == ""
    message = done.stderr.strip()
    assert message and "\n" not in message and "Traceback" not in message
    assert str(cfg.ports["prometheus"]) in message or "prometheus" in message.lower()
