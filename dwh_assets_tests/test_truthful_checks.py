"""Checks that tell the truth, on the session stack: completeness from the first complete day of
history, no pass for a pg_cron job that never ran, and the SQL freshness rules equal to Python's.
"""

from __future__ import annotations

import datetime as dt
import time

import psycopg
from psycopg.rows import dict_row

from dwh_assets.local.config import LOADER_ROLE, WAREHOUSE_DB
from dwh_assets.warehouse import catalog, freshness
from dwh_assets.warehouse.defs.checks import cron_health_check, refresh_checks
from dwh_assets.warehouse.defs.metadata import key_of
from dwh_assets.warehouse.defs.resources import WarehouseResource
from dwh_assets_tests.test_unattended_unit import INTERVALS

UTC = dt.timezone.utc


def _samples_complete():
    return next(c for c in refresh_checks(catalog.get("metrics")) if c.name == "samples_complete")


def test_a_fresh_deployments_partial_first_day_does_not_fail_samples_complete(cfg, loader):
    """The first backfill of a fresh stack: Prometheus's history starts mid-day, so the first day is
    partial and the next days complete; the check of that refresh passes."""
    start = dt.datetime.combine(cfg.history_start, dt.time(), UTC)
    loader.execute("SELECT dwh.refresh_metrics(%s, %s)", (start, start + dt.timedelta(days=3)))
    window = {"id": None, "window_start": start, "window_end": start + dt.timedelta(days=3)}
    with psycopg.connect(cfg.superuser_dsn(WAREHOUSE_DB), row_factory=dict_row) as conn:
        first = conn.execute("SELECT min(ts) AS ts FROM dwh.metrics").fetchone()["ts"]
        assert first.date() == cfg.history_start and first > start, "the first day of history is partial"
        passed, metadata = _samples_complete().run(conn, window)
        assert passed and metadata["days_checked"] == 2 and metadata["missing_times"] == "none", metadata
        # A sample time missing from a complete day still fails it, naming the day (rolled back).
        day = cfg.history_start + dt.timedelta(days=1)
        conn.execute("DELETE FROM dwh.metrics WHERE ts = %s", (dt.datetime.combine(day, dt.time(12), UTC),))
        passed, metadata = _samples_complete().run(conn, window)
        conn.rollback()
    assert not passed and metadata["missing_times"] == f"{day} 12:00 UTC", metadata


def test_pg_cron_job_health_before_any_run_is_not_a_pass(stack, cfg):
    warehouse = WarehouseResource(dsn=cfg.dsn(WAREHOUSE_DB, LOADER_ROLE))
    key = key_of("dwh.users")
    with psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True) as loader:
        # February 31st never comes: that job exists and never runs; the other runs every minute.
        jobids = [loader.execute("SELECT cron.schedule(%s, %s, 'SELECT 1')", job).fetchone()[0]
                  for job in (("dwhtest:never", "0 0 31 2 *"), ("dwhtest:every_minute", "* * * * *"))]
        try:
            never = cron_health_check(key, "dwhtest:never")(warehouse=warehouse)
            missing = cron_health_check(key, "dwhtest:missing")(warehouse=warehouse)
            deadline = time.monotonic() + 150
            while (ran := cron_health_check(key, "dwhtest:every_minute")(warehouse=warehouse)).passed is False \
                    and time.monotonic() < deadline:
                time.sleep(3)
        finally:
            for jobid in jobids:
                loader.execute("SELECT cron.unschedule(%s)", (jobid,))
    assert never.passed is False and never.metadata["reason"].value == "no run yet on '0 0 31 2 *'"
    assert missing.passed is False and "no pg_cron job dwhtest:missing" in missing.metadata["reason"].value
    assert ran.passed is True and ran.metadata["status"].value == "succeeded", "a job that ran passes"


def test_the_sql_freshness_rules_are_pythons(loader):
    schedules = [*INTERVALS, "@reboot", "61 * * * *", "*/0 * * * *", "1 2 3", "every minute",
                 *(entry.schedule for entry in catalog.PRODUCT.refreshed())]
    rows = loader.execute("SELECT s, dwh.schedule_interval(s) FROM unnest(%s::text[]) s", (schedules,)).fetchall()
    assert {s: interval for s, interval in rows} == {s: freshness.schedule_interval(s) for s in schedules}
    typical = dict(loader.execute("SELECT table_name, typical_duration FROM dwh.refresh_jobs").fetchall())
    assert typical == {entry.log_table: entry.typical_duration for entry in catalog.PRODUCT.refreshed()}
