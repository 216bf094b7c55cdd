"""The warehouse's Postgres crashes during the day, in the middle of a large pg_cron refresh
(``pg_ctl stop -m immediate``), and is started again.

On the fault stack (``fault_stack``: its own Postgres, Dagster and Superset; a crash would take
the session stack down with it). The refresh is caught mid-write deterministically: pg_cron's
job ``dwh:refresh_events`` is made to refresh 37 days, a row of the window's last day is
locked, so the refresh's DELETE has emptied the earlier days when it stops and waits for
that row; the crash comes while pg_locks shows it waiting. Before the crash the source gains
late events, so "the window as before" and "the window equal to the source" differ.

After the restart nobody touches anything but the job's schedule (every minute, so its next
run comes soon): pg_cron reports the interrupted run failed, the Dagster daemon (never
restarted) reports it once as a failed check and the next run as a materialization, the
webserver and Superset (never restarted either) answer from the restarted database.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
import requests
import psycopg
import pytest
from psycopg import sql

from dwh_assets.local.config import LOADER_ROLE, WAREHOUSE_DB
from dwh_assets.local.control_plane import add_events
from dwh_assets.local.local_stack import LocalStack
from dwh_assets.local.superset import SupersetApi
from dwh_assets.warehouse import catalog, cron_jobs
from dwh_assets.warehouse.defs import cron_targets
from dwh_assets.warehouse.defs.assets import key_of
from dwh_assets.warehouse.defs.checks import PG_CRON_HEALTH
from dwh_assets_tests.fault_helpers import (
    NEVER,
    connect,
    cron_run,
    refresh,
    stack_environment,
    wait_for,
    waiting_on,
)
from dwh_assets_tests.test_superset import chart_value
from dwh_assets_tests.warehouse_helpers import connect_control_plane, fact_checksum, utc_midnight

W0, W1 = utc_midnight(-40), utc_midnight(-3)  # 37 days of events
LAST_DAY = W1 - dt.timedelta(days=1)
RECENT = (utc_midnight(-1), utc_midnight(1))  # what the job's own command refreshes
EVENTS = catalog.get("events")


@dataclass(frozen=True)
class Crash:
    stack: LocalStack
    jobid: int
    run: dict             # the cron run that was running when the server went down
    before: tuple         # the window's checksum committed before the crash
    log_rows_before: int  # refresh_log rows of the window before the crash
    source: tuple         # the source's checksum of the window (with the late events)
    pids: dict            # Dagster's and Superset's processes before the crash
    users: int            # users in the warehouse (a Superset chart shows the number)
    down_at: dt.datetime  # when the server went down, and when it answered again
    up_at: dt.datetime


@pytest.fixture(scope="module")
def crashed(fault_stack: LocalStack) -> Iterator[Crash]:
    with fault_stack.postgres.connect(WAREHOUSE_DB) as superuser:
        jobid = superuser.execute("SELECT jobid FROM cron.job WHERE jobname = %s", (EVENTS.cron_job_name,)).fetchone()[0]
    try:
        yield crash_during_refresh(fault_stack, jobid)
    finally:
        with fault_stack.postgres.connect(WAREHOUSE_DB) as superuser:
            superuser.execute("SELECT cron.alter_job(%s, schedule := %s, command := %s)",
                              (jobid, EVENTS.schedule, job_command(fault_stack)))


def job_command(local: LocalStack) -> str:
    """The command `dwh migrate` gives dwh:refresh_events."""
    (command,) = [j.command for j in cron_jobs.desired_jobs(local.cfg.deployment()) if j.name == EVENTS.cron_job_name]
    return command


def crash_during_refresh(local: LocalStack, jobid: int) -> Crash:
    cfg = local.cfg
    with connect(cfg) as loader:
        refresh(loader, "refresh_events", W0, W1)
        before = fact_checksum(loader, "events", W0, W1, source=False)
        log_rows_before = events_log_rows(loader)
        refresh(loader, "refresh_users")
        loader.execute("SELECT dwh.refresh_pending_mart('daily_signups')")
        users = loader.execute("SELECT count(*) FROM dwh.users").fetchone()[0]
    with connect_control_plane(cfg) as control_plane:
        add_events(control_plane, seed=777, count=50, window_start=W0 + dt.timedelta(days=2), window_end=W0 + dt.timedelta(days=3))
        source = fact_checksum(control_plane, "events", W0, W1, source=True)
    assert source != before and before[0] > 20_000, "the crashed refresh must have something to change"
    pids = {c.name: c.pid() for c in (local.webserver, local.daemon, local.superset)}
    assert all(pids.values()), pids

    superuser = local.postgres.connect(WAREHOUSE_DB)
    blocker = psycopg.connect(cfg.superuser_dsn(WAREHOUSE_DB))
    try:
        locked = blocker.execute(
            "SELECT msg_id FROM dwh.events WHERE enqueued_at >= %s AND enqueued_at < %s"
            " ORDER BY enqueued_at DESC LIMIT 1 FOR UPDATE", (LAST_DAY, W1)).fetchone()
        assert locked, "the last day of the window needs a row to lock"
        command = sql.SQL("SELECT dwh.refresh_events({}, {})").format(sql.Literal(W0), sql.Literal(W1))
        superuser.execute("SELECT cron.alter_job(%s, schedule := '* * * * *', command := %s)",
                          (jobid, command.as_string(superuser)))
        started_after = superuser.execute("SELECT coalesce(max(runid), 0) FROM cron.job_run_details").fetchone()[0]

        def waiting_mid_delete() -> dict | None:
            run = cron_run(superuser, jobid)
            ok = run and run["runid"] > started_after and run["status"] == "running" \
                and waiting_on(superuser, run["job_pid"], "transactionid")
            return run if ok else None

        run = wait_for(waiting_mid_delete, 150, "pg_cron's refresh to start and stop at the locked row")
        superuser.execute("SELECT cron.alter_job(%s, schedule := %s)", (jobid, NEVER))  # no run until the restart
        # Mid-write: the earlier days' rows carry the refresh's xid as xmax (deleted, uncommitted).
        deleted, earlier = superuser.execute(
            "SELECT count(*) FILTER (WHERE e.xmax::text = a.backend_xid::text), count(*)"
            " FROM dwh.events e, pg_stat_activity a WHERE a.pid = %s AND e.enqueued_at >= %s AND e.enqueued_at < %s",
            (run["job_pid"], W0, LAST_DAY)).fetchone()
        assert deleted == earlier > 0, f"the refresh should have deleted the earlier days: {deleted} of {earlier}"
        local.postgres.stop(mode="immediate")
        down_at = dt.datetime.now(dt.timezone.utc)
    finally:
        for conn in (blocker, superuser):
            try:
                conn.close()
            except psycopg.Error:
                pass
    local.postgres.start()
    up_at = dt.datetime.now(dt.timezone.utc)
    # The job as `dwh migrate` made it, every minute: its next run comes within a minute.
    with local.postgres.connect(WAREHOUSE_DB) as superuser:
        superuser.execute("SELECT cron.alter_job(%s, schedule := '* * * * *', command := %s)", (jobid, job_command(local)))
    return Crash(local, jobid, run, before, log_rows_before, source, pids, users, down_at, up_at)


def events_log_rows(conn: psycopg.Connection) -> int:
    """Log rows of refreshes of this window (the stack's own pg_cron jobs refresh other windows)."""
    return conn.execute("SELECT count(*) FROM dwh.refresh_log WHERE table_name = 'events'"
                        " AND window_start = %s AND window_end = %s", (W0, W1)).fetchone()[0]


def settled_run(crashed: Crash) -> dict:
    """The crashed run once pg_cron has stopped calling it running."""
    with crashed.stack.postgres.connect(WAREHOUSE_DB) as superuser:
        return wait_for(lambda: (r := run_by_id(superuser, crashed.run["runid"])) and r["status"] != "running" and r, 60,
                        "pg_cron to settle the interrupted run")


def run_by_id(superuser: psycopg.Connection, runid: int) -> dict | None:
    cur = superuser.execute("SELECT runid, job_pid, status, return_message, start_time, end_time"
                            " FROM cron.job_run_details WHERE runid = %s", (runid,))
    row = cur.fetchone()
    return None if row is None else dict(zip([c.name for c in cur.description], row))


def next_run(crashed: Crash) -> dict:
    """The job's first run after the restart, once it has ended."""
    with crashed.stack.postgres.connect(WAREHOUSE_DB) as superuser:
        return wait_for(lambda: (r := cron_run(superuser, crashed.jobid)) and r["runid"] > crashed.run["runid"]
                        and r["status"] in ("succeeded", "failed") and r, 150, "the job's next scheduled run")


def health_reports(instance: dg.DagsterInstance, asset: dg.AssetKey) -> list[dict]:
    """The metadata of every pg_cron_job_health evaluation stored for ``asset``."""
    records = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(asset, PG_CRON_HEALTH), limit=1000)
    return [{k: v.value for k, v in r.event.dagster_event.event_specific_data.metadata.items()}
            | {"passed": r.status.value, "reported_at": dt.datetime.fromtimestamp(r.create_timestamp, dt.timezone.utc)}
            for r in records if r.event is not None]


def sensor_materializations(instance: dg.DagsterInstance, asset: dg.AssetKey) -> list[dict]:
    page = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=asset), limit=1000)
    return [{k: v.value for k, v in r.asset_materialization.metadata.items()} | {"partition": r.partition_key}
            for r in page.records]


def test_pg_cron_marks_the_crashed_run_failed(crashed):
    run = settled_run(crashed)
    assert (run["status"], run["return_message"]) == ("failed", "server restarted")


def test_every_interrupted_run_is_reported_failed_exactly_once(crashed):
    """By the Dagster daemon's own sensor, which ran through the restart, read from Dagster's storage."""
    settled_run(crashed)
    jobs = cron_targets()
    with crashed.stack.postgres.connect(WAREHOUSE_DB) as superuser:
        interrupted = superuser.execute(
            "SELECT r.runid, j.jobname FROM cron.job_run_details r JOIN cron.job j USING (jobid)"
            " WHERE r.return_message = 'server restarted' AND j.jobname = ANY(%s)", (list(jobs),)).fetchall()
    assert crashed.run["runid"] in {runid for runid, _ in interrupted}
    with stack_environment(crashed.stack.cfg), dg.DagsterInstance.get() as instance:
        def reported() -> dict | None:
            counts = {}
            for runid, job in interrupted:
                found = [r for r in health_reports(instance, jobs[job].asset_key) if r.get("runid") == runid]
                if not found:
                    return None
                counts[runid] = found
            return counts

        counts = wait_for(reported, 120, "the daemon's sensor to report the interrupted runs", interval=2)
    for runid, found in counts.items():
        assert len(found) == 1, f"run {runid} reported {len(found)} times"
        assert found[0]["passed"] == "FAILED" and "server restarted" in found[0]["reason"]
    print(f"measured: the server was down {crashed.up_at - crashed.down_at} (immediate stop, start, crash recovery); "
          f"{len(counts)} interrupted run(s) reported failed, by "
          f"{max(r['reported_at'] for found in counts.values() for r in found) - crashed.up_at} after it answered")


def test_no_partial_window_and_no_orphan_log_row(crashed):
    settled_run(crashed)
    with connect(crashed.stack.cfg) as loader:
        assert fact_checksum(loader, "events", W0, W1, source=False) == crashed.before
        assert events_log_rows(loader) == crashed.log_rows_before
        orphans = loader.execute("SELECT count(*) FROM dwh.refresh_log WHERE backend_pid = %s AND started_at >= %s",
                                 (crashed.run["job_pid"], crashed.run["start_time"])).fetchone()[0]
        assert orphans == 0


def test_the_next_scheduled_run_catches_up_and_dagster_reports_it(crashed):
    run = next_run(crashed)
    assert run["status"] == "succeeded", run["return_message"]
    with connect(crashed.stack.cfg) as loader, connect_control_plane(crashed.stack.cfg) as source:
        assert fact_checksum(loader, "events", *RECENT, source=False) == fact_checksum(source, "events", *RECENT, source=True)
    with stack_environment(crashed.stack.cfg), dg.DagsterInstance.get() as instance:
        reported = wait_for(lambda: [m for m in sensor_materializations(instance, key_of(EVENTS.local_table))
                                     if m.get("pg_cron_runid") == run["runid"]], 120,
                            "the daemon's sensor to report the run as a materialization", interval=2)
    days = {RECENT[0].date().isoformat(), utc_midnight(0).date().isoformat()}
    assert sorted(m["partition"] for m in reported) == sorted(days), "one materialization per day, each once"
    print(f"measured: the next scheduled run (every minute) ended {run['end_time'] - crashed.up_at} after the restart")


def test_dagster_and_superset_came_back_by_themselves(crashed):
    """Never restarted (the same processes), they answer from the restarted database."""
    run = next_run(crashed)
    local = crashed.stack
    assert {c.name: c.pid() for c in (local.webserver, local.daemon, local.superset)} == crashed.pids
    query = ('{ assetOrError(assetKey: {path: ["dwh", "events"]}) { ... on Asset { assetMaterializations(limit: 5) '
             '{ metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }')
    def latest_runids() -> set[int]:
        answer = requests.post(f"{local.cfg.dagster_url}/graphql", json={"query": query}, timeout=30).json()
        return {entry["intValue"] for m in answer["data"]["assetOrError"]["assetMaterializations"]
                for entry in m["metadataEntries"] if entry["label"] == "pg_cron_runid"}

    assert wait_for(lambda: run["runid"] in latest_runids(), 120, "the webserver to show the run's materialization")
    assert chart_value(SupersetApi(local.cfg), "growth_users_total.yaml") == crashed.users


def test_rerun_restores_equality_with_the_source(crashed):
    settled_run(crashed)
    with connect(crashed.stack.cfg) as loader:
        log = refresh(loader, "refresh_events", W0, W1)
        assert fact_checksum(loader, "events", W0, W1, source=False) == crashed.source
        assert log["rows_inserted"] == crashed.source[0]
        assert events_log_rows(loader) == crashed.log_rows_before + 1
