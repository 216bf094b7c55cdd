"""Prometheus with a gap in its data, and a metric that is renamed at the source.

A Prometheus of the module's own serves a TSDB built with promtool from exact samples, so
what it holds is known to the sample: a day with the hours it was down missing (what a
Prometheus that was restarted after a while holds), then the same day with those hours
back-filled and the server restarted; and a day on which the storage metric carries a new
name. The warehouse reads it through a reader settings file of its own, switched on in a
transaction of the owner that is rolled back at the end (the session stack is left as it was).
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from dwh_assets.local.config import OWNER_ROLE, free_port
from dwh_assets.local.generator import METRIC_CPU, METRIC_MEMORY, METRIC_STORAGE
from dwh_assets.local.process import ManagedProcess
from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.defs.checks import checks_of
from dwh_assets.warehouse.sources.reader_install import install_settings, reader_program
from dwh_assets_tests.fault_helpers import connect, refresh
from dwh_assets_tests.tiers import integration_fixture
from dwh_assets_tests.warehouse_helpers import utc_midnight

GAP_DAY = utc_midnight(-12)
GAP_HOURS = (3, 4, 5)  # the hours Prometheus was down that day
RENAME_DAY = utc_midnight(-11)
RENAMED_STORAGE = "dwh_instance_storage_used_bytes"
INSTANCES = ({"instance_id": "00000000-0000-4000-8000-00000000000a", "organization_id": "org_gap_a"},
             {"instance_id": "00000000-0000-4000-8000-00000000000b", "organization_id": "org_gap_b"})
TYPES = {METRIC_CPU: "counter", METRIC_MEMORY: "gauge", METRIC_STORAGE: "gauge", RENAMED_STORAGE: "gauge"}

Sample = tuple[str, dict, int, float]  # metric, labels, epoch seconds, value


def day_samples(day: dt.datetime, metrics: tuple[str, ...], hours=range(24)) -> list[Sample]:
    return [(metric, {**labels, "job": "dwh_usage", "instance": "usage_exporter"}, int(day.timestamp()) + 3600 * h,
             float(1000 * n + 10 * h + i))
            for n, metric in enumerate(metrics) for i, labels in enumerate(INSTANCES) for h in hours]


def openmetrics(samples: list[Sample]) -> str:
    lines = []
    for metric in sorted({s[0] for s in samples}):
        family = metric.removesuffix("_total") if TYPES[metric] == "counter" else metric
        lines.append(f"# TYPE {family} {TYPES[metric]}")
        for _m, labels, t, value in sorted((s for s in samples if s[0] == metric), key=lambda s: (sorted(s[1].items()), s[2])):
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            lines.append(f"{metric}{{{text}}} {value} {t}")
    return "\n".join(lines) + "\n# EOF\n"


@dataclass
class OwnPrometheus:
    """A Prometheus serving exactly the samples given to it (promtool blocks), restartable."""

    directory: Path
    server: ManagedProcess
    url: str

    def add(self, samples: list[Sample], name: str) -> None:
        """Back-fill ``samples`` into its TSDB; the server sees them from its next start."""
        source = self.directory / f"{name}.om"
        source.write_text(openmetrics(samples))
        subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source), str(self.directory / "data")],
                       check=True, capture_output=True, timeout=120)

    def restart(self) -> None:
        self.server.stop()
        self.server.start()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@integration_fixture(scope="module")
def prometheus(tmp_path_factory) -> Iterator[OwnPrometheus]:
    directory = tmp_path_factory.mktemp("own-prometheus")
    (directory / "prometheus.yml").write_text("scrape_configs: []\n")
    port = free_port()
    server = ManagedProcess(
        name="own-prometheus",
        argv=[shutil.which("prometheus") or "/usr/bin/prometheus", f"--config.file={directory / 'prometheus.yml'}",
              f"--storage.tsdb.path={directory / 'data'}", "--storage.tsdb.retention.time=3650d",
              f"--web.listen-address=127.0.0.1:{port}"],
        port=port, pid_file=directory / "prometheus.pid", log_file=directory / "prometheus.log", cwd=directory,
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/-/ready"),
    )
    own = OwnPrometheus(directory, server, f"http://127.0.0.1:{port}")
    all_metrics = (METRIC_CPU, METRIC_MEMORY, METRIC_STORAGE)
    own.add(day_samples(GAP_DAY, all_metrics, [h for h in range(24) if h not in GAP_HOURS]), "with-gap")
    own.add(day_samples(RENAME_DAY, (METRIC_CPU, METRIC_MEMORY, RENAMED_STORAGE)), "renamed")
    server.start()
    try:
        yield own
    finally:
        server.stop()


@pytest.fixture()
def reading_it(cfg, prometheus) -> Iterator[psycopg.Connection]:
    """The owner in a transaction (rolled back afterwards) in which the refreshes read the module's Prometheus."""
    variant = install_settings(cfg.deployment(), {"prometheus_url": prometheus.url}, name="reader.own-prometheus.json")
    try:
        with connect(cfg, OWNER_ROLE, autocommit=False) as conn:
            conn.execute("UPDATE dwh.settings SET value = %s WHERE key = 'reader.command'",
                         (reader_program(cfg.deployment(), config=variant),))
            yield conn
            conn.rollback()
    finally:
        variant.unlink()


def window_samples(conn: psycopg.Connection, start: dt.datetime, end: dt.datetime) -> set[tuple]:
    rows = conn.execute("SELECT s.metric_name, s.labels->>'instance_id', extract(epoch FROM m.ts)::bigint, m.value"
                        " FROM dwh.metrics m JOIN dwh.metric_series s USING (series_id) WHERE m.ts >= %s AND m.ts < %s",
                        (start, end)).fetchall()
    return set(rows)


def expected(samples: list[Sample]) -> set[tuple]:
    return {(metric, labels["instance_id"], t, value) for metric, labels, t, value in samples}


def samples_complete(conn: psycopg.Connection, log: dict) -> tuple[bool, dict]:
    (check,) = [c for c in checks_of(catalog.get("metrics")) if c.name == "samples_complete"]
    conn.row_factory = dict_row
    try:
        return check.run(conn, log)
    finally:
        conn.row_factory = psycopg.rows.tuple_row


def test_a_gap_is_named_by_the_check_and_a_later_refresh_fills_it(reading_it, prometheus):
    end = GAP_DAY + dt.timedelta(days=1)
    all_metrics = (METRIC_CPU, METRIC_MEMORY, METRIC_STORAGE)
    served = day_samples(GAP_DAY, all_metrics, [h for h in range(24) if h not in GAP_HOURS])

    log = refresh(reading_it, "refresh_metrics", GAP_DAY, end)
    assert log["rows_inserted"] == len(served)
    assert window_samples(reading_it, GAP_DAY, end) == expected(served), "the window is what Prometheus has"
    passed, metadata = samples_complete(reading_it, log)
    assert not passed
    assert metadata["missing_times"] == f"{GAP_DAY:%Y-%m-%d} 03:00 to 05:00 UTC"
    assert (metadata["offending_rows"], metadata["missing_sample_times"]) == (1, len(GAP_HOURS))

    # The hours come back at Prometheus (back-filled from elsewhere), which restarts.
    prometheus.add(day_samples(GAP_DAY, all_metrics, GAP_HOURS), "gap-filled")
    prometheus.restart()
    started = time.monotonic()
    log = refresh(reading_it, "refresh_metrics", GAP_DAY, end)
    print(f"measured: the refresh that filled the gap took {time.monotonic() - started:.2f}s")
    assert window_samples(reading_it, GAP_DAY, end) == expected(day_samples(GAP_DAY, all_metrics)), \
        "every sample, the ones copied before unchanged"
    assert samples_complete(reading_it, log)[0]


def test_a_renamed_metric_fails_the_refresh_naming_it(reading_it):
    end = RENAME_DAY + dt.timedelta(days=1)
    before = window_samples(reading_it, RENAME_DAY, end)
    failed_pid = reading_it.info.backend_pid
    with pytest.raises(psycopg.Error) as raised:
        with reading_it.transaction():  # a savepoint: the refresh's own transaction in a real run
            refresh(reading_it, "refresh_metrics", RENAME_DAY, end)
    error = raised.value
    assert error.sqlstate == "HV005", f"{error.sqlstate}: {error}"
    assert error.diag.message_primary == (
        f"dwh.refresh_metrics: source Prometheus has no samples of metric {METRIC_STORAGE} (table dwh.metrics) on "
        f"{RENAME_DAY:%Y-%m-%d}, while the other metrics have: renamed or no longer exported")
    assert "set prometheus.metrics.storage to that name" in error.diag.message_hint
    assert window_samples(reading_it, RENAME_DAY, end) == before, "the window is as it was"
    assert reading_it.execute("SELECT count(*) FROM dwh.refresh_log WHERE backend_pid = %s AND table_name = 'metrics'"
                              " AND window_start = %s", (failed_pid, RENAME_DAY)).fetchone()[0] == 0

    # The deployment follows the rename (prometheus.metrics.storage; what `dwh migrate` writes here).
    reading_it.execute("UPDATE dwh.settings SET value = replace(value, %s, %s) WHERE key IN ('metrics.storage', 'metrics.names')",
                       (METRIC_STORAGE, RENAMED_STORAGE))
    refresh(reading_it, "refresh_metrics", RENAME_DAY, end)
    assert window_samples(reading_it, RENAME_DAY, end) == expected(
        day_samples(RENAME_DAY, (METRIC_CPU, METRIC_MEMORY, RENAMED_STORAGE)))
