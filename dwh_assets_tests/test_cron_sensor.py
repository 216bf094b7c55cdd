"""The pg_cron sensor against real pg_cron runs.

Four throwaway jobs run once each (scheduled for one coming minute), as the loader (the role the
sensor reads history as): one refresh that commits, one that fails, one that pg_cron
logs ``succeeded`` although its refresh rolled back, and one that hangs. The sensor,
evaluated like the daemon does, must report exactly: a materialization for the first,
failed ``pg_cron_job_health`` checks for the other three, an advanced cursor, and
nothing new on the next tick.
"""

from __future__ import annotations

import datetime as dt
import time

import dagster as dg
import pytest

from dwh_assets.local.config import LOADER_ROLE, WAREHOUSE_DB
from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.defs import CodeLocationSettings, build_definitions, cron_targets
from dwh_assets.warehouse.defs.assets import key_of
from dwh_assets.warehouse.defs.checks import FRESHNESS, PG_CRON_HEALTH
from dwh_assets.warehouse.defs.cron_sensor import CronCursor, CronRunJudge, JobTarget, build_cron_sensor, remember_jobs
from dwh_assets.warehouse.defs.partitions import daily_partitions
from dwh_assets.warehouse.defs.resources import WarehouseResource
from dwh_assets_tests.warehouse_helpers import run_refresh_jobs_once

UTC = dt.timezone.utc
STUCK_AFTER = dt.timedelta(seconds=20)

JOBS = {
    # job name: (command, asset it stands for, refresh_log table, partitioning)
    "dwhtest:ok": ("SELECT dwh.refresh_instances(current_date)", "dwh.instances", "instances", None),
    "dwhtest:fails": ("SELECT dwh.refresh_events(now(), now() - interval '1 day')", "dwh.events", "events", "window"),
    "dwhtest:rolled_back": (
        "DO $$ BEGIN PERFORM dwh.refresh_users(current_date); RAISE EXCEPTION 'undo'; "
        "EXCEPTION WHEN raise_exception THEN NULL; END $$",
        "dwh.users", "users", None,
    ),
    "dwhtest:stuck": ("SELECT pg_sleep(600)", "dwh.organizations", "organizations", None),
}


def _wait(what: str, predicate, timeout: float, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def next_minute(conn, lead: dt.timedelta = dt.timedelta(seconds=15)) -> dt.datetime:
    """The first whole minute (server time, UTC) at least ``lead`` ahead."""
    now = conn.execute("SELECT now()").fetchone()[0].astimezone(UTC)
    return (now + lead + dt.timedelta(minutes=1)).replace(second=0, microsecond=0)


@pytest.fixture(scope="module")
def cron_runs(stack, cfg):
    """Schedule the four jobs for one minute (they run once), let them run; yields (start cursor, runs).

    A one-off schedule instead of pausing jobs after their first run: pg_cron cancels the
    running task of a job that is paused or removed.
    """
    import psycopg

    run_refresh_jobs_once(cfg)  # a fresh session stack is empty: instances' references_resolve needs organizations
    with stack.postgres.connect(WAREHOUSE_DB) as su:
        su.autocommit = True
        start_runid = su.execute("SELECT coalesce(max(runid), 0) FROM cron.job_run_details").fetchone()[0]
        at = next_minute(su)
        once = f"{at.minute} {at.hour} {at.day} {at.month} *"
        jobids = {
            name: su.execute("SELECT cron.schedule_in_database(%s, %s, %s, %s, %s)",
                             (name, once, command, WAREHOUSE_DB, LOADER_ROLE)).fetchone()[0]
            for name, (command, *_rest) in JOBS.items()
        }
        try:
            def first_runs():
                rows = su.execute("SELECT jobid, min(runid) FROM cron.job_run_details WHERE jobid = ANY(%s) "
                                  "AND runid > %s GROUP BY jobid", (list(jobids.values()), start_runid)).fetchall()
                return dict(rows) if len(rows) == len(jobids) else None

            runids = _wait("each job's run", first_runs, timeout=150)
            seen: list = []

            def settled():
                rows = su.execute("SELECT jobid, status, start_time, job_pid FROM cron.job_run_details WHERE runid = ANY(%s)",
                                  (list(runids.values()),)).fetchall()
                seen[:] = [rows, su.execute("SELECT pid, wait_event_type, wait_event, left(query, 80) FROM pg_stat_activity "
                                            "WHERE pid = ANY(%s)", ([r[3] for r in rows],)).fetchall()]
                by_job = {r[0]: r for r in rows}
                stuck = by_job[jobids["dwhtest:stuck"]]
                others_done = all(by_job[jobids[n]][1] in ("succeeded", "failed") for n in JOBS if n != "dwhtest:stuck")
                stuck_long = stuck[1] == "running" and stuck[2] is not None and \
                    dt.datetime.now(UTC) - stuck[2] > STUCK_AFTER + dt.timedelta(seconds=2)
                pids = [r[3] for r in rows if r[1] == "succeeded"]
                alive = su.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchone()[0]
                return others_done and stuck_long and alive == 0

            try:
                _wait("the runs to finish (and the stuck one to pass its threshold)", settled, timeout=90)
            except AssertionError as e:
                raise AssertionError(f"{e}; runs and their backends: {seen}") from None
            yield CronCursor(runid=start_runid).dump(), {name: runids[jobid] for name, jobid in jobids.items()}
        finally:
            su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(600)%%' "
                       "AND pid <> pg_backend_pid()")
            for jobid in jobids.values():
                try:
                    su.execute("SELECT cron.unschedule(%s)", (jobid,))
                except psycopg.Error:
                    pass  # already unscheduled


def _test_sensor(cfg):
    targets = {name: JobTarget(key_of(asset), table, part, catalog.get(table))
               for name, (_c, asset, table, part) in JOBS.items()}
    return build_cron_sensor(targets, daily_partitions(cfg.history_start), stuck_after=STUCK_AFTER,
                             schedule_grace=dt.timedelta(minutes=5))


def _tick(cfg, sensor, cursor: str | None):
    warehouse = WarehouseResource(dsn=cfg.dsn(WAREHOUSE_DB, LOADER_ROLE))
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"warehouse": warehouse})
        return sensor(context)


def test_sensor_reports_each_kind_of_pg_cron_run_exactly_once(cfg, loader, cron_runs):
    start_cursor, runids = cron_runs
    sensor = _test_sensor(cfg)
    result = _tick(cfg, sensor, start_cursor)

    materializations = [e for e in result.asset_events if isinstance(e, dg.AssetMaterialization)]
    checks = [e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    today = dt.datetime.now(UTC).date().isoformat()

    # the committed refresh: a materialization of the table and of today's snapshot, with the logged counts
    assert [(m.asset_key, m.partition) for m in materializations] == [
        (key_of("dwh.instances"), None), (key_of("dwh.instances_snapshot"), None)]
    meta = materializations[0].metadata
    assert meta["pg_cron_runid"].value == runids["dwhtest:ok"]
    log = loader.execute("SELECT rows_inserted, rows_updated, rows_deleted, backend_pid FROM dwh.refresh_log WHERE id = %s",
                         (meta["refresh_log_id"].value,)).fetchone()
    assert (meta["rows_inserted"].value, meta["rows_updated"].value, meta["rows_deleted"].value) == log[:3]
    pid = loader.execute("SELECT job_pid FROM cron.job_run_details WHERE runid = %s", (runids["dwhtest:ok"],)).fetchone()[0]
    assert log[3] == pid
    # ... with the table metadata a Dagster run records
    assert meta["dagster/row_count"].value == loader.execute("SELECT count(*) FROM dwh.instances").fetchone()[0]
    assert [c.name for c in meta["dagster/column_schema"].value.columns][:2] == ["instance_id", "organization_id"]
    assert materializations[1].metadata["snapshot_day"].value == today

    health = [c for c in checks if c.check_name == PG_CRON_HEALTH]
    data = {(c.asset_key, c.check_name): c for c in checks if c.check_name not in (PG_CRON_HEALTH, FRESHNESS)}
    # every target's freshness, on the sensor's first tick (later ticks: when a verdict changes)
    assert {c.asset_key for c in checks if c.check_name == FRESHNESS} == {key_of(a) for _c, a, _t, _p in JOBS.values()}
    failed = {c.asset_key: c for c in health if not c.passed}
    passed = {c.asset_key for c in health if c.passed}
    assert passed == {key_of("dwh.instances")}
    assert set(failed) == {key_of("dwh.events"), key_of("dwh.users"), key_of("dwh.organizations")}
    assert "empty or reversed" in failed[key_of("dwh.events")].metadata["reason"].value
    assert "committed no refresh" in failed[key_of("dwh.users")].metadata["reason"].value
    assert "still running" in failed[key_of("dwh.organizations")].metadata["reason"].value
    for name, key in (("dwhtest:fails", "dwh.events"), ("dwhtest:rolled_back", "dwh.users"), ("dwhtest:stuck", "dwh.organizations")):
        assert failed[key_of(key)].metadata["runid"].value == runids[name]
    # the committed refresh's data checks, evaluated in the same tick (and only its)
    assert set(data) == {(key_of("dwh.instances"), "row_count_matches_source"), (key_of("dwh.instances"), "references_resolve")}
    assert all(c.passed and c.metadata["pg_cron_runid"].value == runids["dwhtest:ok"] for c in data.values()), \
        {key: (c.passed, {k: v.value for k, v in c.metadata.items()}) for key, c in data.items()}
    assert result.skip_reason.skip_message.startswith("reported 1 committed pg_cron refresh(es)")

    cursor = CronCursor.parse(result.cursor)
    assert cursor.runid >= max(runids.values())
    assert cursor.open_runs == [runids["dwhtest:stuck"]]

    again = _tick(cfg, sensor, result.cursor)
    assert again.asset_events == []
    assert CronCursor.parse(again.cursor).runid >= cursor.runid


def test_sensor_reports_the_stuck_run_when_it_finally_ends(cfg, superuser, cron_runs):
    start_cursor, runids = cron_runs
    sensor = _test_sensor(cfg)
    first = _tick(cfg, sensor, start_cursor)
    superuser.execute("SELECT pg_terminate_backend(job_pid) FROM cron.job_run_details WHERE runid = %s",
                      (runids["dwhtest:stuck"],))
    _wait("pg_cron to record the end of the stuck run",
          lambda: superuser.execute("SELECT status FROM cron.job_run_details WHERE runid = %s",
                                    (runids["dwhtest:stuck"],)).fetchone()[0] not in ("running", "starting"), timeout=30)
    later = _tick(cfg, sensor, first.cursor)
    assert [(e.asset_key, e.passed) for e in later.asset_events] == [(key_of("dwh.organizations"), False)]
    assert CronCursor.parse(later.cursor).open_runs == []


def test_missed_schedule_is_reported_once_per_tick():
    judge = CronRunJudge({"dwh:refresh_users": JobTarget(key_of("dwh.users"), "users", None)}, set(),
                         stuck_after=dt.timedelta(hours=1), commit_grace=dt.timedelta(seconds=60),
                         schedule_grace=dt.timedelta(minutes=2))
    now = dt.datetime(2026, 11, 24, 12, 10, 30, tzinfo=UTC)
    job = {"jobname": "dwh:refresh_users", "schedule": "*/15 * * * *", "active": True}
    cursor = CronCursor(last_start={"dwh:refresh_users": "2026-11-24T11:45:01+00:00"})
    events = judge.missed([job], cursor, now, open_jobs=set())
    assert len(events) == 1 and not events[0].passed
    assert "12:00" in events[0].metadata["reason"].value
    assert judge.missed([job], cursor, now, open_jobs=set()) == []  # same tick: once
    on_time = CronCursor(last_start={"dwh:refresh_users": "2026-11-24T12:00:00.8+00:00"})
    assert judge.missed([job], on_time, now, open_jobs=set()) == []
    assert judge.missed([job | {"active": False}], CronCursor(last_start=cursor.last_start), now, set()) == []
    for schedule in ("30 seconds", "@reboot", "0 0 31 2 *"):  # pg_cron accepts these; none has a tick to miss
        assert judge.missed([job | {"schedule": schedule}], CronCursor(last_start=cursor.last_start), now, set()) == []


def test_the_cursor_keeps_only_what_pg_cron_cannot_tell_the_next_tick():
    """A job's latest start is read from pg_cron each tick: the cursor holds a runid, a jobid and a time."""
    jobs = [spec.cron_job_name for spec in (*catalog.CATALOG, *catalog.MARTS)]
    now = dt.datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC)
    rows = [{"jobid": i + 1, "jobname": job, "last_start": None} for i, job in enumerate(jobs)]
    fresh = CronCursor(runid=48213)
    remember_jobs(fresh, rows, now)  # the first tick: no job has run yet
    assert fresh.dump() == f'{{"jobid":{len(jobs)},"runid":48213,"since":"2026-11-24T12:00:00Z"}}'
    later = now + dt.timedelta(hours=1)
    remember_jobs(fresh, [*rows, {"jobid": 99, "jobname": "dwh:refresh_new", "last_start": None}], later)
    assert fresh.first_seen == {"dwh:refresh_new": later.isoformat()}  # a job created after the first tick
    fresh.last_start = {"dwh:refresh_new": later.isoformat()}
    assert "first_seen" not in fresh.dump()  # ... until it runs
    # a cursor an earlier version wrote (with every job's last start) still reads
    assert CronCursor.parse('{"runid":3,"last_start":{"dwh:refresh_users":"2026-11-24T12:00:00Z"}}').runid == 3
    assert CronCursor.parse(fresh.dump()) == CronCursor(runid=48213, since="2026-11-24T12:00:00Z", jobid=99)


def test_a_job_that_never_ran_is_missed_after_a_tick_it_existed_for():
    judge = CronRunJudge({"dwh:refresh_users": JobTarget(key_of("dwh.users"), "users", None)}, set(),
                         stuck_after=dt.timedelta(hours=1), commit_grace=dt.timedelta(seconds=60),
                         schedule_grace=dt.timedelta(minutes=2))
    job = {"jobname": "dwh:refresh_users", "schedule": "*/15 * * * *", "active": True}
    cursor = CronCursor(since="2026-11-24T12:03:00Z")
    assert judge.missed([job], cursor, dt.datetime(2026, 11, 24, 12, 10, tzinfo=UTC), set()) == []
    missed = judge.missed([job], cursor, dt.datetime(2026, 11, 24, 12, 20, tzinfo=UTC), set())
    assert len(missed) == 1 and "12:15" in missed[0].metadata["reason"].value


def test_code_location_maps_every_pg_cron_job_to_its_asset(cfg, superuser):
    defs = build_definitions(CodeLocationSettings(cfg.history_start))
    jobs = {r[0] for r in superuser.execute(
        "SELECT jobname FROM cron.job WHERE username = %s AND jobname LIKE 'dwh:%%'", (LOADER_ROLE,)).fetchall()}
    targets = cron_targets()
    # The loader's one maintenance job (purging its own run history) materialises nothing.
    assert jobs - {catalog.PURGE_CRON_HISTORY_JOB} == set(targets)
    graph = defs.resolve_asset_graph()
    for target in targets.values():
        assert graph.has(target.asset_key)
    sensor = defs.resolve_sensor_def("pg_cron_runs")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_a_run_that_commits_several_refreshes_reports_each():
    """A fact's scheduled refresh with late days, and the reconciliation with its repairs: one pg_cron
    run, several dwh.refresh_log rows from its backend, each reported as what it refreshed."""
    reconciliation = catalog.PRODUCT.reconciliation
    events = catalog.get("events")
    targets = {events.cron_job_name: JobTarget(key_of("dwh.events"), "events", "window", events),
               reconciliation.cron_job_name: JobTarget(key_of(reconciliation.relation), reconciliation.log_table,
                                                       None, reconciliation)}
    days = [dt.date(2026, 11, d) for d in (1, 20, 21, 22)]
    judge = CronRunJudge(targets, {d.isoformat() for d in days}, stuck_after=dt.timedelta(hours=1),
                         commit_grace=dt.timedelta(seconds=60), schedule_grace=dt.timedelta(minutes=2))
    start = dt.datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

    def run(job: str, runid: int) -> dict:
        return {"jobname": job, "runid": runid, "status": "succeeded", "job_pid": 7, "start_time": start,
                "end_time": start + dt.timedelta(seconds=5), "return_message": "1 row"}

    def log(table: str, first: dt.date | None, days_: int = 1, log_id: int = 1) -> dict:
        window = (None, None) if first is None else (
            dt.datetime.combine(first, dt.time(), UTC), dt.datetime.combine(first + dt.timedelta(days=days_), dt.time(), UTC))
        return {"id": log_id, "table_name": table, "window_start": window[0], "window_end": window[1],
                "snapshot_day": None, "rows_inserted": 1, "rows_updated": 0, "rows_deleted": 1, "rows_source": 1,
                "duration_ms": 1.0, "lock_wait_ms": 0.0, "backend_pid": 7, "started_at": start}

    late_day, window = log("events", days[0], log_id=1), log("events", days[2], 2, log_id=2)
    events_out, keep = judge.judge(run(events.cron_job_name, 1), start + dt.timedelta(minutes=5), False,
                                   [late_day, window], CronCursor())
    assert not keep
    assert [(e.asset_key, e.partition) for e in events_out if isinstance(e, dg.AssetMaterialization)] == [
        (key_of("dwh.events"), "2026-11-01"), (key_of("dwh.events"), "2026-11-21"), (key_of("dwh.events"), "2026-11-22")]
    assert [e.passed for e in events_out if isinstance(e, dg.AssetCheckEvaluation)] == [True]

    repair, own = log("events", days[1], log_id=3), log(reconciliation.log_table, None, log_id=4)
    out, _ = judge.judge(run(reconciliation.cron_job_name, 2), start + dt.timedelta(minutes=5), False, [repair, own],
                         CronCursor())
    assert [(e.asset_key, e.partition) for e in out if isinstance(e, dg.AssetMaterialization)] == [
        (key_of("dwh.events"), "2026-11-20"), (key_of(reconciliation.relation), None)]
    # The repairs alone do not prove the reconciliation committed: its own row does.
    out, _ = judge.judge(run(reconciliation.cron_job_name, 3), start + dt.timedelta(minutes=5), False, [repair],
                         CronCursor())
    assert [(e.check_name, e.passed) for e in out] == [(PG_CRON_HEALTH, False)]
