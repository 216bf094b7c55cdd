"""A control plane that stalls mid-query: it accepts the connection and the query, then hangs
(here a lock held on the source table, as a long migration of the control plane would).

The bound is the job's timeout from the deployment configuration (``[timeouts]``, here
``DWH_TIMEOUTS__INSTANCE_STATE``), derived into the pg_cron command as its statement_timeout.
pg_cron runs exactly that command as the loader; the run fails naming the source while the
lock is still held (so the timeout ended it, not the lock), the window is unchanged, the
sensor reports a failed pg_cron_job_health check with the reason, and the next run after the
lock is gone succeeds and is reported as a materialization.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
import psycopg

from dwh_assets.local.config import LOADER_ROLE, WAREHOUSE_DB
from dwh_assets.warehouse import catalog, cron_jobs
from dwh_assets.warehouse.defs.assets import key_of
from dwh_assets.warehouse.defs.checks import PG_CRON_HEALTH
from dwh_assets.warehouse.defs.cron_sensor import CronCursor, CronRunJudge, JobTarget, evaluate_cron_runs
from dwh_assets.warehouse.defs.resources import WarehouseResource
from dwh_assets_tests.fault_helpers import TableState, connect, cron_run, schedule_every_minute, unschedule, wait_for
from dwh_assets_tests.warehouse_helpers import connect_control_plane, fact_checksum, utc_midnight

JOB = "test:stalled_instance_state"
TIMEOUT_SECONDS = 3
SOURCE = "control plane table public.instance_state_history (src_control_plane.instance_state_history)"


def settled(superuser: psycopg.Connection, jobid: int, after: int) -> dict | None:
    """The job's latest run after runid ``after``, once it has ended."""
    run = cron_run(superuser, jobid)
    return run if run and run["runid"] > after and run["status"] in ("succeeded", "failed") else None


def run_of(event) -> int | None:
    """The pg_cron run an event reports: a health check's ``runid``, a materialization's or data check's ``pg_cron_runid``."""
    value = event.metadata.get("runid") or event.metadata.get("pg_cron_runid")
    return None if value is None else value.value


def sensor_events(cfg, runid: int, window: tuple[dt.datetime, dt.datetime]) -> list:
    """What the pg_cron sensor reports for that run (its judging of the test job, as the daemon's tick does)."""
    days = {(window[0] + dt.timedelta(days=i)).date().isoformat() for i in range((window[1] - window[0]).days)}
    judge = CronRunJudge({JOB: JobTarget(key_of("dwh.instance_state"), "instance_state", "window",
                                         catalog.get("instance_state"))}, days,
                         stuck_after=dt.timedelta(hours=1), commit_grace=dt.timedelta(seconds=60),
                         schedule_grace=dt.timedelta(minutes=5))
    warehouse = WarehouseResource(dsn=cfg.dsn(WAREHOUSE_DB, LOADER_ROLE))
    report = evaluate_cron_runs(warehouse, judge, CronCursor(runid=runid - 1).dump())
    return [e for e in report.events if run_of(e) == runid]


def test_a_stalled_control_plane_is_bounded_by_the_jobs_timeout(cfg, superuser, monkeypatch):
    monkeypatch.setenv("DWH_TIMEOUTS__INSTANCE_STATE", str(TIMEOUT_SECONDS))
    (command,) = [job.command for job in cron_jobs.desired_jobs(cfg.deployment())
                  if job.name == catalog.get("instance_state").cron_job_name]
    assert command.startswith(f"SET statement_timeout = '{TIMEOUT_SECONDS}s'; ")
    with connect(cfg) as loader, connect_control_plane(cfg) as source:
        try:
            _stall_and_recover(cfg, superuser, loader, source, command)
        finally:  # whatever failed, no job of this test keeps refreshing the table every minute
            unschedule(superuser, JOB)


def _stall_and_recover(cfg, superuser, loader, source, command: str) -> None:
    window = (utc_midnight(-1), utc_midnight(1))  # what the command refreshes
    before = TableState.of(loader, "instance_state", window)
    locker = psycopg.connect(cfg.superuser_dsn("control_plane"))
    try:
        locker.execute("LOCK TABLE public.instance_state_history IN ACCESS EXCLUSIVE MODE")
        jobid = schedule_every_minute(superuser, JOB, command)
        failed = wait_for(lambda: settled(superuser, jobid, 0), 150, "pg_cron's run of the stalled refresh to end")
        assert locker.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS, "the lock was held throughout"
    finally:
        locker.close()  # the stall ends: the lock is released
        released = dt.datetime.now(dt.timezone.utc)
    assert failed["status"] == "failed"
    assert failed["return_message"].startswith(
        f"ERROR:  dwh.refresh_instance_state: source {SOURCE} did not answer within the run's timeout "
        f"(statement_timeout {TIMEOUT_SECONDS}s)"), failed["return_message"]
    before.assert_unchanged(loader, failed["job_pid"])

    (check,) = sensor_events(cfg, failed["runid"], window)
    assert isinstance(check, dg.AssetCheckEvaluation) and not check.passed
    assert (check.asset_key, check.check_name) == (key_of("dwh.instance_state"), PG_CRON_HEALTH)
    assert "did not answer within the run's timeout" in check.metadata["reason"].value

    recovered = wait_for(lambda: settled(superuser, jobid, failed["runid"]), 150, "the next run of the job")
    # Kept, inactive: the sensor reads a run through its job (an unscheduled job's runs are not its).
    superuser.execute("SELECT cron.alter_job(%s, active := false)", (jobid,))
    assert_recovered(cfg, loader, source, recovered, failed, released, window)

def assert_recovered(cfg, loader, source, recovered: dict, failed: dict, released: dt.datetime, window) -> None:
    """The run after the stall succeeded, made the window equal to the source, and the sensor reports it."""
    assert recovered["status"] == "succeeded", recovered["return_message"]
    print(f"measured: the stalled run failed after {failed['end_time'] - failed['start_time']} (timeout "
          f"{TIMEOUT_SECONDS}s); the next run ended {recovered['end_time'] - released} after the stall ended")
    assert fact_checksum(loader, "instance_state", *window, source=False) == \
        fact_checksum(source, "instance_state", *window, source=True)
    # Judged once pg_cron's worker has left (it logs `succeeded` before it commits): until then nothing.
    events = wait_for(lambda: sensor_events(cfg, recovered["runid"], window), 300,
                      "the sensor to judge the run that succeeded")
    assert not [e.metadata["reason"].value for e in events if isinstance(e, dg.AssetCheckEvaluation) and not e.passed]
    materialized = {e.partition for e in events if isinstance(e, dg.AssetMaterialization) and e.asset_key == key_of("dwh.instance_state")}
    assert materialized == {day.date().isoformat() for day in window[:1]} | {utc_midnight(0).date().isoformat()}
    assert all(e.passed for e in events if isinstance(e, dg.AssetCheckEvaluation))
