"""Crash mid-refresh: the server stopped hard (``pg_ctl stop -m immediate``) in the middle
of a large pg_cron refresh, then started again.

On a throwaway stack of its own (the crash would take the session stack down with it).
The refresh is caught mid-write deterministically: a row of the window's last day is
locked, so the refresh's DELETE has emptied the earlier days when it stops and waits for
that row; the crash comes while pg_locks shows it waiting. Before the crash the source
gains late events, so "the window as before" and "the window equal to the source" differ.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from dwh_assets.local.config import LOADER_ROLE, WAREHOUSE_DB, load_config
from dwh_assets.local.control_plane import add_events
from dwh_assets.local.local_stack import LocalStack
from dwh_assets_tests.conftest import make_home, stack_env
from dwh_assets_tests.fault_helpers import (
    connect,
    cron_run,
    refresh,
    schedule_every_minute,
    stop_scheduling,
    wait_for,
    waiting_on,
)
from dwh_assets_tests.tiers import integration_fixture
from dwh_assets_tests.warehouse_helpers import connect_control_plane, fact_checksum, utc_midnight

W0, W1 = utc_midnight(-40), utc_midnight(-3)  # 37 days of events
LAST_DAY = W1 - dt.timedelta(days=1)
JOB = "test:crash_refresh_events"


@dataclass(frozen=True)
class Crash:
    stack: LocalStack
    jobid: int
    run: dict             # the cron run that was running when the server went down
    before: tuple         # the window's checksum committed before the crash
    log_rows_before: int  # refresh_log rows of the window before the crash
    source: tuple         # the source's checksum of the window (with the late events)


@integration_fixture(scope="module")
def crashed() -> Iterator[Crash]:
    home = make_home("dwh-test-crash-")
    saved = dict(os.environ)
    os.environ.update(stack_env(home))
    local = LocalStack(load_config(create=True), progress=lambda _: None)
    try:
        local.up(dagster=False)
        yield crash_during_refresh(local)
    finally:
        local.down()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(home, ignore_errors=True)


def crash_during_refresh(local: LocalStack) -> Crash:
    cfg = local.cfg
    with connect(cfg) as loader:
        refresh(loader, "refresh_events", W0, W1)
        before = fact_checksum(loader, "events", W0, W1, source=False)
        log_rows_before = events_log_rows(loader)
    with connect_control_plane(cfg) as control_plane:
        add_events(control_plane, seed=777, count=50, window_start=W0 + dt.timedelta(days=2), window_end=W0 + dt.timedelta(days=3))
        source = fact_checksum(control_plane, "events", W0, W1, source=True)
    assert source != before and before[0] > 20_000, "the crashed refresh must have something to change"

    superuser = local.postgres.connect(WAREHOUSE_DB)
    blocker = psycopg.connect(cfg.superuser_dsn(WAREHOUSE_DB))
    try:
        locked = blocker.execute(
            "SELECT msg_id FROM dwh.events WHERE enqueued_at >= %s AND enqueued_at < %s"
            " ORDER BY enqueued_at DESC LIMIT 1 FOR UPDATE", (LAST_DAY, W1)).fetchone()
        assert locked, "the last day of the window needs a row to lock"
        command = sql.SQL("SELECT dwh.refresh_events({}, {})").format(sql.Literal(W0), sql.Literal(W1))
        jobid = schedule_every_minute(superuser, JOB, command.as_string(superuser), LOADER_ROLE)

        def waiting_mid_delete() -> dict | None:
            run = cron_run(superuser, jobid)
            ok = run and run["status"] == "running" and waiting_on(superuser, run["job_pid"], "transactionid")
            return run if ok else None

        run = wait_for(waiting_mid_delete, 150, "pg_cron's refresh to start and stop at the locked row")
        stop_scheduling(superuser, jobid)
        # Mid-write: the earlier days' rows carry the refresh's xid as xmax (deleted, uncommitted).
        deleted, earlier = superuser.execute(
            "SELECT count(*) FILTER (WHERE e.xmax::text = a.backend_xid::text), count(*)"
            " FROM dwh.events e, pg_stat_activity a WHERE a.pid = %s AND e.enqueued_at >= %s AND e.enqueued_at < %s",
            (run["job_pid"], W0, LAST_DAY)).fetchone()
        assert deleted == earlier > 0, f"the refresh should have deleted the earlier days: {deleted} of {earlier}"
        local.postgres.stop(mode="immediate")
    finally:
        for conn in (blocker, superuser):
            try:
                conn.close()
            except psycopg.Error:
                pass
    local.postgres.start()
    return Crash(local, jobid, run, before, log_rows_before, source)


def events_log_rows(conn: psycopg.Connection) -> int:
    """Log rows of refreshes of this window (the stack's own pg_cron jobs refresh other windows)."""
    return conn.execute("SELECT count(*) FROM dwh.refresh_log WHERE table_name = 'events'"
                        " AND window_start = %s AND window_end = %s", (W0, W1)).fetchone()[0]


def settled_run(crashed: Crash) -> dict:
    """The crashed job's latest run once pg_cron has stopped calling it running."""
    with crashed.stack.postgres.connect(WAREHOUSE_DB) as superuser:
        return wait_for(lambda: (r := cron_run(superuser, crashed.jobid)) and r["status"] != "running" and r, 60,
                        "pg_cron to settle the interrupted run")


def test_pg_cron_marks_the_crashed_run_failed(crashed):
    run = settled_run(crashed)
    assert run["runid"] == crashed.run["runid"], "no other run of the job started"
    assert (run["status"], run["return_message"]) == ("failed", "server restarted")


def test_sensor_reports_the_crashed_run_as_a_failed_check(crashed):
    """What Dagster shows: the interrupted pg_cron run is a failed pg_cron_job_health check, no materialization."""
    import dagster as dg

    from dwh_assets.warehouse.defs.assets import key_of
    from dwh_assets.warehouse.defs.checks import PG_CRON_HEALTH
    from dwh_assets.warehouse.defs.cron_sensor import CronCursor, CronRunJudge, JobTarget, evaluate_cron_runs
    from dwh_assets.warehouse.defs.resources import WarehouseResource

    cfg = crashed.stack.cfg
    settled_run(crashed)
    judge = CronRunJudge({JOB: JobTarget(key_of("dwh.events"), "events", "window")}, set(),
                         stuck_after=dt.timedelta(hours=1), commit_grace=dt.timedelta(seconds=60),
                         schedule_grace=dt.timedelta(minutes=5))
    warehouse = WarehouseResource(dsn=cfg.dsn(WAREHOUSE_DB, LOADER_ROLE))
    report = evaluate_cron_runs(warehouse, judge, CronCursor(runid=crashed.run["runid"] - 1).dump())
    runs = [e for e in report.events if e.metadata.get("runid") and e.metadata["runid"].value == crashed.run["runid"]]
    assert len(runs) == 1
    check = runs[0]
    assert isinstance(check, dg.AssetCheckEvaluation) and not check.passed
    assert (check.asset_key, check.check_name) == (key_of("dwh.events"), PG_CRON_HEALTH)
    assert "server restarted" in check.metadata["reason"].value
    assert not [e for e in report.events if isinstance(e, dg.AssetMaterialization)]


def test_no_partial_window_and_no_orphan_log_row(crashed):
    with connect(crashed.stack.cfg) as loader:
        assert fact_checksum(loader, "events", W0, W1, source=False) == crashed.before
        assert events_log_rows(loader) == crashed.log_rows_before
        orphans = loader.execute("SELECT count(*) FROM dwh.refresh_log WHERE backend_pid = %s AND started_at >= %s",
                                 (crashed.run["job_pid"], crashed.run["start_time"])).fetchone()[0]
        assert orphans == 0


def test_rerun_restores_equality_with_the_source(crashed):
    with connect(crashed.stack.cfg) as loader:
        log = refresh(loader, "refresh_events", W0, W1)
        assert fact_checksum(loader, "events", W0, W1, source=False) == crashed.source
        assert log["rows_inserted"] == crashed.source[0]
        assert events_log_rows(loader) == crashed.log_rows_before + 1
