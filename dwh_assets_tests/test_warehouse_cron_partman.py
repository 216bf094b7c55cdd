"""pg_cron and pg_partman in the real cluster: jobs run, partitions come and go, sync is safe.

One test waits for pg_cron's next minute (the only wait of this file): it schedules a
successful refresh, a failing refresh and a partman maintenance job for the same minute
and checks all three runs, so the sensor's contract (a succeeded run has its refresh_log
row, same backend pid, inside the run's time) is proven on real runs.
"""

from __future__ import annotations

import datetime as dt
import time

import psycopg
import pytest
from psycopg import sql

from dwh_assets.warehouse import catalog, cron_jobs
from dwh_assets.local.config import LOADER_ROLE, OWNER_ROLE, WAREHOUSE_DB
from dwh_assets_tests.warehouse_helpers import connect_control_plane, fact_checksum, utc_midnight

DAY = dt.timedelta(days=1)
# pg_cron starts jobs at the top of a minute; allow the rest of this one and the next.
CRON_WAIT_SECONDS = 130
# pg_cron 1.4's background workers stamp start_time after the worker started and end_time
# when the launcher reads the worker's CommandComplete (before its COMMIT, and possibly
# after earlier messages): a refresh may start a few ms before start_time and end after
# end_time. The backend pid is the real key; the times only rule out pid reuse.
RUN_TIME_SLACK = dt.timedelta(minutes=1)
PARTITIONED = [spec.local_table if spec.kind is catalog.Kind.FACT else spec.snapshot_table for spec in catalog.CATALOG]


def partition(parent: str, day: dt.date) -> str:
    return f"{parent}_p{day:%Y_%m_%d}"


def exists(conn: psycopg.Connection, relation: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (relation,)).fetchone()[0]


def bounds(conn: psycopg.Connection, relation: str) -> str:
    return conn.execute("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = %s::regclass", (relation,)).fetchone()[0]


def utc_bounds(day: dt.date) -> str:
    return f"FOR VALUES FROM ('{day} 00:00:00+00') TO ('{day + DAY} 00:00:00+00')"


def schedule(conn: psycopg.Connection, name: str, when: str, command: str, username: str) -> int:
    return conn.execute(
        "SELECT cron.schedule_in_database(%s, %s, %s, %s, %s, true)", (name, when, command, WAREHOUSE_DB, username)
    ).fetchone()[0]


def unschedule(conn: psycopg.Connection, *jobids: int) -> None:
    # By id: unschedule(name) only finds the calling user's own jobs.
    for jobid in jobids:
        conn.execute("SELECT cron.unschedule(%s) FROM cron.job WHERE jobid = %s", (jobid, jobid))


def cron_jobs_by_name(conn: psycopg.Connection) -> dict[tuple[str, str], tuple]:
    """(job name, role) -> (jobid, schedule, command, database, username, active): names are unique per role."""
    return {(row[0], row[5]): row[1:] for row in conn.execute(
        "SELECT jobname, jobid, schedule, command, database, username, active FROM cron.job"
    ).fetchall()}


# ----- pg_cron really runs the jobs -----------------------------------------------------------


def test_pg_cron_runs_refreshes_and_the_log_matches_the_run(cfg, superuser):
    start, end = utc_midnight(-9), utc_midnight(-8)
    literal = lambda v: sql.Literal(v).as_string(superuser)  # noqa: E731
    jobs = {
        "ok": (f"SELECT dwh.refresh_events({literal(start)}, {literal(end)})", LOADER_ROLE),
        "failing": (f"SELECT dwh.refresh_events({literal(end)}, {literal(start)})", LOADER_ROLE),
        "maintenance": ("CALL partman.run_maintenance_proc()", OWNER_ROLE),
    }
    since = superuser.execute("SELECT coalesce(max(runid), 0) FROM cron.job_run_details").fetchone()[0]
    ids = {key: schedule(superuser, f"dwh:test_{key}", "* * * * *", command, user) for key, (command, user) in jobs.items()}
    try:
        runs = wait_for_runs(superuser, ids, since)
    finally:
        unschedule(superuser, *ids.values())

    ok = runs["ok"]
    assert ok["status"] == "succeeded" and ok["username"] == LOADER_ROLE, ok
    # The sensor's contract: the committed refresh left a log row from the job's backend, during the run.
    logs = superuser.execute(
        "SELECT table_name, window_start, window_end, rows_inserted FROM dwh.refresh_log"
        " WHERE backend_pid = %s AND started_at >= %s - %s AND finished_at <= %s + %s",
        (ok["job_pid"], ok["start_time"], RUN_TIME_SLACK, ok["end_time"], RUN_TIME_SLACK),
    ).fetchall()
    assert len(logs) == 1, (ok, logs)
    table, window_start, window_end, inserted = logs[0]
    assert (table, window_start, window_end) == ("events", start, end)
    with connect_control_plane(cfg) as cp:
        source = fact_checksum(cp, "events", start, end, source=True)
    assert inserted == source[0] > 0
    assert fact_checksum(superuser, "events", start, end, source=False) == source

    failing = runs["failing"]
    assert failing["status"] == "failed" and "is empty or reversed" in failing["return_message"], failing
    assert superuser.execute(
        "SELECT count(*) FROM dwh.refresh_log WHERE backend_pid = %s AND started_at >= %s - %s",
        (failing["job_pid"], failing["start_time"], RUN_TIME_SLACK),
    ).fetchone()[0] == 0, "a failed run must leave no refresh_log row"

    maintenance = runs["maintenance"]
    assert maintenance["status"] == "succeeded" and maintenance["username"] == OWNER_ROLE, maintenance


def wait_for_runs(conn: psycopg.Connection, ids: dict[str, int], since: int) -> dict[str, dict]:
    """The first finished run of each job after runid ``since``, waiting up to CRON_WAIT_SECONDS."""
    deadline = time.monotonic() + CRON_WAIT_SECONDS
    while True:
        cur = conn.execute(
            "SELECT DISTINCT ON (jobid) * FROM cron.job_run_details"
            " WHERE runid > %s AND jobid = ANY(%s) AND status IN ('succeeded', 'failed') ORDER BY jobid, runid",
            (since, list(ids.values())),
        )
        rows = {row["jobid"]: row for row in (dict(zip([c.name for c in cur.description], r)) for r in cur.fetchall())}
        # "succeeded" is logged before the worker commits: wait until the workers have exited.
        if len(rows) == len(ids) and not conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", ([r["job_pid"] for r in rows.values()],)
        ).fetchone()[0]:
            return {key: rows[jobid] for key, jobid in ids.items()}
        if time.monotonic() > deadline:
            pending = sorted(key for key, jobid in ids.items() if jobid not in rows)
            raise AssertionError(f"pg_cron did not finish {pending} within {CRON_WAIT_SECONDS}s; is pg_cron loaded?")
        time.sleep(2)


def test_every_declared_job_is_scheduled_as_its_role(cfg, superuser):
    current = cron_jobs_by_name(superuser)
    deployment = cfg.deployment()
    for job in cron_jobs.desired_jobs(deployment):
        role = deployment.logins()[job.runner].user
        assert (job.name, role) in current, f"{job.name} is not scheduled for {role}"
        _, when, command, database, username, active = current[(job.name, role)]
        assert (when, command, database, active) == (job.schedule, job.command, WAREHOUSE_DB, True)
    assert current[("dwh:partman_maintenance", OWNER_ROLE)][2:5] == ("CALL partman.run_maintenance_proc()", WAREHOUSE_DB, OWNER_ROLE)
    assert {role for _, role in current if _.startswith("dwh:")} == {OWNER_ROLE, LOADER_ROLE}, "no superuser jobs"


# ----- the sync of jobs -------------------------------------------------------------------------


def test_sync_keeps_foreign_jobs_and_removes_obsolete_dwh_jobs(cfg, superuser):
    deployment = cfg.deployment()
    declared = {(job.name, deployment.logins()[job.runner].user) for job in cron_jobs.desired_jobs(deployment)}
    users = ("dwh:refresh_users", LOADER_ROLE)
    # No colon: a name that merely starts like ours is still someone else's job.
    foreign = schedule(superuser, "dwh_nightly_report", "0 4 * * *", "SELECT 1", cfg.server_user)
    # Another role's dwh: job is not this deployment's to remove (the sync works as each role).
    others = schedule(superuser, "dwh:refresh_users", "0 6 * * *", "SELECT 1", cfg.server_user)
    obsolete = schedule(superuser, "dwh:obsolete", "0 5 * * *", "SELECT 1", LOADER_ROLE)
    superuser.execute("SELECT cron.alter_job(%s, schedule := '0 0 * * *')", (cron_jobs_by_name(superuser)[users][0],))
    before = cron_jobs_by_name(superuser)
    try:
        result = cron_jobs.sync(deployment, WAREHOUSE_DB)
        after = cron_jobs_by_name(superuser)
        assert (result.scheduled, result.updated, result.unscheduled) == (
            [], [f"dwh:refresh_users ({LOADER_ROLE})"], [f"dwh:obsolete ({LOADER_ROLE})"])
        assert after[("dwh_nightly_report", cfg.server_user)] == before[("dwh_nightly_report", cfg.server_user)]
        assert after[("dwh:refresh_users", cfg.server_user)] == before[("dwh:refresh_users", cfg.server_user)]
        assert ("dwh:obsolete", LOADER_ROLE) not in after
        assert after[users][1] == catalog.get("users").schedule
        # Jobs that were already right keep their ids (no churn in pg_cron's history).
        for key in declared - {users}:
            assert after[key] == before[key], key
        assert cron_jobs.sync(deployment, WAREHOUSE_DB).summary() == "jobs unchanged"
    finally:
        unschedule(superuser, foreign, others, obsolete)


# ----- pg_partman ------------------------------------------------------------------------------


def test_partman_premakes_a_week_of_utc_day_partitions(owner):
    owner.execute("CALL partman.run_maintenance_proc()")
    today = dt.datetime.now(dt.timezone.utc).date()
    for parent in PARTITIONED:
        config = owner.execute(
            "SELECT partition_interval, premake, infinite_time_partitions FROM partman.part_config WHERE parent_table = %s",
            (parent,),
        ).fetchone()
        assert config == ("1 day", 7, True), parent
        for offset in range(8):
            name = partition(parent, today + offset * DAY)
            assert exists(owner, name), f"{name} is missing (premake)"
        if "snapshot" not in parent:
            assert bounds(owner, partition(parent, today)) == utc_bounds(today)


def test_partman_retention_follows_the_catalog(owner):
    retention = dict(owner.execute(
        "SELECT parent_table, retention FROM partman.part_config WHERE NOT retention_keep_table"
    ).fetchall())
    for spec in catalog.CATALOG:
        parent = spec.local_table if spec.kind is catalog.Kind.FACT else spec.snapshot_table
        assert retention.get(parent) == f"{spec.retention_days} days", parent


def test_retention_drops_partitions_that_aged_out(owner):
    today = dt.datetime.now(dt.timezone.utc).date()
    old, kept = today - 200 * DAY, today - 90 * DAY
    saved = owner.execute("SELECT retention FROM partman.part_config WHERE parent_table = 'dwh.events'").fetchone()[0]
    owner.execute("UPDATE partman.part_config SET retention = '100 days' WHERE parent_table = 'dwh.events'")
    try:
        created = owner.execute(
            "SELECT dwh.ensure_partitions('dwh.events', %s, %s)", (utc_midnight(-200), utc_midnight(-199))
        ).fetchone()[0]
        assert created == 1 and exists(owner, partition("dwh.events", old))
        owner.execute("CALL partman.run_maintenance_proc()")
        assert not exists(owner, partition("dwh.events", old)), "retention did not drop the aged-out partition"
        assert exists(owner, partition("dwh.events", kept)), "retention dropped a partition inside retention"
    finally:
        owner.execute("UPDATE partman.part_config SET retention = %s WHERE parent_table = 'dwh.events'", (saved,))


def test_refresh_refuses_windows_older_than_retention(loader):
    start = utc_midnight(-catalog.get("metrics").retention_days - 20)
    with pytest.raises(psycopg.errors.RaiseException, match="starts before the retention"):
        loader.execute("SELECT dwh.refresh_metrics(%s, %s)", (start, start + DAY))


def test_partitions_are_utc_days_whatever_the_session_time_zone(loader, owner):
    """A backfill from a client in another time zone must not misname or misplace partitions."""
    start = utc_midnight(-120)
    days = [start.date(), start.date() + DAY]
    for day in days:
        owner.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("dwh", f"events_p{day:%Y_%m_%d}")))
    loader.execute("SET TimeZone = 'America/New_York'")
    try:
        loader.execute("SELECT dwh.refresh_events(%s, %s)", (start, start + 2 * DAY))
    finally:
        loader.execute("RESET TimeZone")
    for day in days:
        assert bounds(owner, partition("dwh.events", day)) == utc_bounds(day)
        owner.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("dwh", f"events_p{day:%Y_%m_%d}")))
