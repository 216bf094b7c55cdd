"""The pg_cron sensor: what pg_cron did inside Postgres, shown in Dagster.

Each tick reads the runs of the project's pg_cron jobs that are new since the cursor
(``runid`` order, bounded batches) plus the few runs still open from earlier ticks, and
judges every run once it has ended (docs/architecture.md, "pg_cron facts"):

- ``succeeded`` and its worker gone from ``pg_stat_activity`` (pg_cron 1.4 writes
  ``succeeded`` *before* the worker commits): a ``dwh.refresh_log`` row of the job's table
  with the run's pid and a start inside the run is the proof of a committed refresh -> an
  ``AssetMaterialization`` per partition it touched (facts, marts) or of the table
  (dimensions, with their snapshot), with the table metadata a Dagster run records, and
  the refresh's data checks as ``AssetCheckEvaluation``s (``defs.checks``), in the same tick.
  A run may commit several refreshes (a fact's scheduled refresh replaces late days besides
  its window, the reconciliation the days that differed): each is reported the same way;
  a mart job that found no queued day logs a refresh of no window: a passed health check only;
  no such row -> failed check "succeeded but committed no refresh";
- ``failed`` -> failed check with pg_cron's message (a server restart says so);
- still running past ``stuck_after`` -> failed check, once; judged again when it ends;
- when caught up, an active job whose latest schedule tick passed without a run ->
  failed check "missed its schedule", once per tick;
- when caught up, each asset's ``fresh_within_schedule`` from its job's live schedule and
  its latest refresh (``warehouse.freshness``), reported when the verdict changes: a job
  deactivated, or pg_cron not running at all, turns it red once the table is overdue;
- each mart whose job ran, or whose copies were refreshed, in the tick: ``no_days_held``
  (days the quality gate holds back, with the reason).

Run health belongs to the check ``pg_cron_job_health`` of the job's asset. The cursor (a
small JSON object in Dagster's storage, shown on the sensor's page) holds the last runid read
and the runs still open, so reading runs costs O(new runs), not O(history); each job's latest
start comes from pg_cron's history when the missed-schedule check needs it. Each tick says
what it reported as its skip reason ("reported 3 committed pg_cron refresh(es) ..."): a
sensor that launches no run is "skipped" to Dagster 1.13, whose tick list counts run
requests only (docs/dagster-ui.md).

The daemon evaluates the sensor at most every ``DWH_SENSOR_INTERVAL_SECONDS`` seconds
(``defs.settings``; default 30, tests and demos lower it to see pg_cron runs sooner).
"""


import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import dagster as dg
from croniter import CroniterBadCronError, CroniterBadDateError, croniter

import psycopg

from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.defs import assets
from dwh_assets.warehouse.defs.checks import (
    FRESHNESS,
    PG_CRON_HEALTH,
    checks_of,
    freshness_evaluation,
    last_refreshes,
    mart_checks,
)
from dwh_assets.warehouse.defs.metadata import refresh_metadata
from dwh_assets.warehouse.defs.partitions import days_of_window
from dwh_assets.warehouse.defs.resources import WarehouseResource
from dwh_assets.warehouse.quality_gate import HELD_CHECK

UTC = dt.timezone.utc
OPEN_STATUSES = ("starting", "running", "sending", "connecting")
def _short_time(value: str) -> str:
    """ISO time to the second, UTC, ``Z``: what the cursor stores (readable, small)."""
    return dt.datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class CronCursor:
    """What a tick must remember, and no more: usually just ``{"runid":N}``.

    Each job's latest start is read from pg_cron's history on every tick (``last_start`` is
    never stored). A job that has not run yet is judged from when the sensor first saw it:
    ``since`` (its first tick) for the jobs there were then, ``first_seen`` for a job created
    later (a pg_cron jobid above ``jobid``), kept until it runs. ``missed_reported`` is kept
    only while the job is still behind its schedule.
    """

    runid: int | None = None  # every run up to here has been read
    open_runs: list[int] = field(default_factory=list)  # read but not yet ended
    stuck_reported: list[int] = field(default_factory=list)
    since: str | None = None  # the sensor's first tick that read the jobs
    jobid: int | None = None  # the highest pg_cron jobid of a watched job seen so far
    first_seen: dict[str, str] = field(default_factory=dict)  # job created after ``since`` that has not run yet
    missed_reported: dict[str, str] = field(default_factory=dict)  # job -> schedule tick reported
    fresh: dict[str, bool] = field(default_factory=dict)  # job -> the freshness verdict last reported
    last_start: dict[str, str] = field(default_factory=dict, compare=False)  # job -> latest start (this tick only)

    @classmethod
    def parse(cls, raw: str | None) -> "CronCursor":
        values = json.loads(raw) if raw else {}
        values.pop("last_start", None)  # written by earlier versions; now read from pg_cron each tick
        return cls(**values)

    def dump(self) -> str:
        """Compact, sorted JSON with times to the second; empty fields are left out."""
        started = {job: dt.datetime.fromisoformat(t) for job, t in self.last_start.items()}
        values = asdict(self)
        del values["last_start"]
        values["since"] = _short_time(self.since) if self.since else None
        values["first_seen"] = {job: _short_time(t) for job, t in self.first_seen.items() if job not in started}
        values["missed_reported"] = {job: _short_time(tick) for job, tick in self.missed_reported.items()
                                     if job not in started or started[job] < dt.datetime.fromisoformat(tick)}
        return json.dumps({k: v for k, v in values.items() if v not in ([], {}, None)}, sort_keys=True,
                          separators=(",", ":"))


@dataclass(frozen=True)
class JobTarget:
    asset_key: dg.AssetKey
    log_table: str  # dwh.refresh_log.table_name its routine writes
    partitioned: str | None  # "window" (facts, marts: a partition per day) or None (dimensions)
    spec: catalog.TableSpec | catalog.MartSpec | catalog.Reconciliation | None = None


@dataclass
class TickReport:
    events: list[dg.AssetMaterialization | dg.AssetCheckEvaluation] = field(default_factory=list)
    cursor: CronCursor = field(default_factory=CronCursor)
    runs_read: int = 0
    # (job, run, log) of every committed refresh judged this tick, for the table metadata and checks.
    committed: list[tuple[str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)

    def summary(self) -> str:
        materialized = sum(isinstance(e, dg.AssetMaterialization) for e in self.events)
        failed = sum(isinstance(e, dg.AssetCheckEvaluation) and not e.passed for e in self.events)
        runs = len({run["runid"] for _, run, _ in self.committed})
        return (f"reported {runs} committed pg_cron refresh(es) of {self.runs_read} run(s) read: "
                f"{materialized} materialization(s), {failed} failed check(s); cursor at runid {self.cursor.runid}")


class CronRunJudge:
    """Turns pg_cron run rows into Dagster events; pure apart from the queries it is given."""

    def __init__(self, targets: dict[str, JobTarget], partition_keys: set[str], *,
                 stuck_after: dt.timedelta, commit_grace: dt.timedelta, schedule_grace: dt.timedelta):
        self.targets = targets
        self.partition_keys = partition_keys
        self.stuck_after = stuck_after
        self.commit_grace = commit_grace
        self.schedule_grace = schedule_grace

    def _failed(self, job: str, reason: str, run: dict[str, Any] | None = None) -> dg.AssetCheckEvaluation:
        meta: dict[str, Any] = {"job": job, "reason": reason}
        if run is not None:
            meta.update(runid=int(run["runid"]), status=run["status"],
                        start_time=str(run["start_time"]), job_pid=int(run["job_pid"] or 0))
        return dg.AssetCheckEvaluation(
            asset_key=self.targets[job].asset_key, check_name=PG_CRON_HEALTH, passed=False,
            severity=dg.AssetCheckSeverity.ERROR, metadata=meta,
        )

    def _passed(self, job: str, run: dict[str, Any]) -> dg.AssetCheckEvaluation:
        return dg.AssetCheckEvaluation(
            asset_key=self.targets[job].asset_key, check_name=PG_CRON_HEALTH, passed=True,
            metadata={"job": job, "runid": int(run["runid"]), "status": run["status"]},
        )

    def committed(self, job: str, logs: list[dict[str, Any]]) -> bool:
        """Whether the run's refreshes include one of its job's own table: the proof it committed."""
        return any(log["table_name"] == self.targets[job].log_table for log in logs)

    def target_of(self, job: str, log: dict[str, Any]) -> JobTarget | None:
        """What a refresh of the run materialises: the job's own table, or another refresh it ran."""
        target = self.targets[job]
        if log["table_name"] == target.log_table:
            return target
        return next((t for t in self.targets.values() if t.log_table == log["table_name"]), None)

    def materializations(self, job: str, run: dict[str, Any], log: dict[str, Any]) -> list[dg.AssetMaterialization]:
        target = self.target_of(job, log)
        if target is None:
            return []
        meta = refresh_metadata(log) | {"pg_cron_runid": dg.MetadataValue.int(int(run["runid"])),
                                        "pg_cron_job": dg.MetadataValue.text(job)}
        partitions: list[str | None] = [None]
        if target.partitioned == "window":
            if log["window_start"] is None:
                return []  # a mart job that found no queued day: nothing was rebuilt
            days = days_of_window(log["window_start"], log["window_end"])
            partitions = [d.isoformat() for d in days if d.isoformat() in self.partition_keys]
        return [dg.AssetMaterialization(asset_key=target.asset_key, partition=p, metadata=meta,
                                        description=f"refreshed by pg_cron job {job} (run {run['runid']})")
                for p in partitions]

    def judge(self, run: dict[str, Any], now: dt.datetime, pid_alive: bool, logs: list[dict[str, Any]],
              cursor: CronCursor) -> tuple[list, bool]:
        """Events for one run (``logs``: the refreshes it committed) and whether it stays open for a later tick."""
        job, status, runid = run["jobname"], run["status"], int(run["runid"])
        if status == "succeeded":
            ended = run["end_time"] or now
            if pid_alive and now - ended < self.commit_grace:
                return [], True  # the worker has not committed yet
            if not self.committed(job, logs):
                return [self._failed(job, "pg_cron logged the run succeeded but it committed no refresh "
                                          "(no dwh.refresh_log row from its backend): the refresh rolled back", run)], False
            return [*(m for log in logs for m in self.materializations(job, run, log)), self._passed(job, run)], False

        if status == "failed":
            message = (run["return_message"] or "no message").strip()
            return [self._failed(job, f"pg_cron run failed: {message[:1000]}", run)], False
        started = run["start_time"] or now
        if now - started > self.stuck_after and runid not in cursor.stuck_reported:
            cursor.stuck_reported.append(runid)
            return [self._failed(job, f"run still {status} after {now - started} "
                                      f"(stuck threshold {self.stuck_after})", run)], True
        return [], True

    def missed(self, jobs: list[dict[str, Any]], cursor: CronCursor, now: dt.datetime,
               open_jobs: set[str]) -> list[dg.AssetCheckEvaluation]:
        events = []
        for job in jobs:
            name = job["jobname"]
            if not job["active"] or name in open_jobs:
                continue
            try:
                tick = croniter(job["schedule"], now - self.schedule_grace).get_prev(dt.datetime)
            except (CroniterBadCronError, CroniterBadDateError):
                continue  # pg_cron's '30 seconds' / '@reboot' or a date that never comes: no tick to miss
            seen = [dt.datetime.fromisoformat(t) for t in
                    (cursor.last_start.get(name), cursor.first_seen.get(name) or cursor.since) if t]
            if not seen or max(seen) >= tick - dt.timedelta(seconds=1):
                continue
            if cursor.missed_reported.get(name) == tick.isoformat():
                continue
            cursor.missed_reported[name] = tick.isoformat()
            last = cursor.last_start.get(name, "never (since the sensor started)")
            events.append(self._failed(name, f"missed its schedule {job['schedule']!r}: no run started for the "
                                             f"tick at {tick.isoformat()} (last start: {last})"))
        return events


    def freshness(self, conn: psycopg.Connection, jobs: list[dict[str, Any]], cursor: CronCursor,
                  now: dt.datetime) -> list[dg.AssetCheckEvaluation]:
        """Each target's freshness from its job's live schedule; reported when the verdict changes."""
        specs = {job: target.spec for job, target in self.targets.items()
                 if isinstance(target.spec, (catalog.TableSpec, catalog.MartSpec))}  # the reconciliation has none
        rows = {job["jobname"]: job for job in jobs}
        last = last_refreshes(conn, sorted({spec.log_table for spec in specs.values()}))
        events = []
        for job, spec in specs.items():
            passed, metadata = freshness_evaluation(spec, rows.get(job), last[spec.log_table], now)
            if cursor.fresh.get(job) == passed:
                continue
            cursor.fresh[job] = passed
            events.append(dg.AssetCheckEvaluation(asset_key=self.targets[job].asset_key, check_name=FRESHNESS,
                                                  passed=passed, severity=dg.AssetCheckSeverity.ERROR,
                                                  metadata=metadata))
        return events


# The log rows of the runs' workers. finished_at bounds the (backend_pid, finished_at) index scan:
# a refresh that started after ``since`` finished after it, so older refreshes of recycled pids
# are never visited and the query stays O(new runs) however long dwh.refresh_log grows (B3).
REFRESH_LOGS = ("SELECT * FROM dwh.refresh_log WHERE backend_pid = ANY(%(pids)s) "
                "AND finished_at >= %(since)s AND started_at >= %(since)s ORDER BY id")
# Each job with its latest start in the history pg_cron keeps (one scan of it, when caught up).
JOB_ROWS = ("SELECT j.jobid, j.jobname, j.schedule, j.active, max(r.start_time) AS last_start FROM cron.job j "
            "LEFT JOIN cron.job_run_details r USING (jobid) WHERE j.jobname = ANY(%s) GROUP BY 1, 2, 3, 4")
RUN_COLUMNS = ("SELECT r.runid, r.jobid, j.jobname, r.job_pid, r.status, r.return_message, r.start_time, r.end_time "
               "FROM cron.job_run_details r JOIN cron.job j USING (jobid) ")


def evaluate_cron_runs(warehouse: WarehouseResource, judge: CronRunJudge, raw_cursor: str | None, *,
                       batch_size: int = 500, max_batches: int = 4, now: dt.datetime | None = None) -> TickReport:
    """One sensor tick: read new and open runs, judge them, report their refreshes, move the cursor."""
    cursor = CronCursor.parse(raw_cursor)
    jobs = list(judge.targets)
    report = TickReport(cursor=cursor)
    with warehouse.connect() as conn, warehouse.cron_connect(conn) as cron:
        now = now or conn.execute("SELECT now() AS now").fetchone()["now"]
        if cursor.runid is None:
            # First tick: start with the latest batch instead of replaying all history.
            top = cron.execute("SELECT coalesce(max(runid), 0) AS top FROM cron.job_run_details").fetchone()["top"]
            cursor.runid = max(0, int(top) - batch_size)
        runs = cron.execute(RUN_COLUMNS + "WHERE r.runid = ANY(%s) AND j.jobname = ANY(%s) ORDER BY r.runid",
                            (cursor.open_runs, jobs)).fetchall() if cursor.open_runs else []
        caught_up = False
        for _ in range(max_batches):
            batch = cron.execute(RUN_COLUMNS + "WHERE r.runid > %s ORDER BY r.runid LIMIT %s",
                                 (cursor.runid, batch_size)).fetchall()
            if batch:
                cursor.runid = int(batch[-1]["runid"])
            runs += [r for r in batch if r["jobname"] in judge.targets]
            if len(batch) < batch_size:
                caught_up = True
                break
        report.runs_read = len(runs)
        pids = sorted({int(r["job_pid"]) for r in runs if r["job_pid"]})
        alive = {row["pid"] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchall()} if pids else set()
        logs = conn.execute(REFRESH_LOGS, {
            "pids": pids,
            "since": min((r["start_time"] for r in runs if r["start_time"]), default=now) - dt.timedelta(seconds=5),
        }).fetchall() if pids else []
        job_rows = cron.execute(JOB_ROWS, (jobs,)).fetchall() if caught_up else []
        for job in job_rows:
            if job["last_start"] is not None:
                cursor.last_start[job["jobname"]] = job["last_start"].isoformat()

        still_open: list[int] = []
        for run in runs:
            name = run["jobname"]
            run_logs = _matching_logs(run, logs, now)
            events, keep = judge.judge(run, now, int(run["job_pid"] or 0) in alive, run_logs, cursor)
            report.events += events
            if keep:
                still_open.append(int(run["runid"]))
            elif run["status"] == "succeeded" and judge.committed(name, run_logs):
                report.committed += [(name, run, log) for log in run_logs if judge.target_of(name, log) is not None]
        schedules = {row["jobname"]: row["schedule"] for row in job_rows}
        report.events = _with_table_reports(conn, judge, report, schedules)
    cursor.open_runs = still_open
    cursor.stuck_reported = [r for r in cursor.stuck_reported if r in still_open]
    remember_jobs(cursor, job_rows, now)
    open_jobs = {r["jobname"] for r in runs if int(r["runid"]) in still_open}
    report.events += judge.missed(job_rows, cursor, now, open_jobs)
    if caught_up:
        with warehouse.connect() as conn:
            report.events += judge.freshness(conn, job_rows, cursor, now)
    return report


def _with_table_reports(conn: psycopg.Connection, judge: CronRunJudge, report: TickReport,
                        schedules: dict[str, str]) -> list:
    """The judged events, each committed refresh's materializations completed with what a Dagster
    run records (column schema and lineage, row count, the snapshot or series it also wrote), and
    its data checks evaluated now, in the same tick."""
    checks = {t.log_table: checks_of(t.spec) for t in judge.targets.values() if t.spec is not None}
    by_log = {int(log["id"]): (job, log) for job, _run, log in report.committed}
    tables: dict[int, tuple[dict[str, Any], dict | None]] = {}  # per refresh: its table metadata, its window's rows by day
    events: list = []
    for event in report.events:
        if not isinstance(event, dg.AssetMaterialization):
            events.append(event)
            continue
        log_id = int(event.metadata["refresh_log_id"].value)
        job, log = by_log[log_id]
        if log_id not in tables:
            tables[log_id] = _table_report(conn, judge.target_of(job, log).spec, log)
        table, days = tables[log_id]
        extra = {"pg_cron_schedule": schedules.get(job, "")} if job in schedules else {}
        events.append(dg.AssetMaterialization(asset_key=event.asset_key, partition=event.partition,
                                              description=event.description,
                                              metadata={**event.metadata, **table, **extra,
                                                        **assets.window_metadata(days, event.partition)}))
    for job, run, log in report.committed:
        target = judge.target_of(job, log)
        spec = target.spec
        if spec is None or log.get("window_start") is None and target.partitioned == "window":
            continue  # nothing refreshed (a mart job with nothing it may refresh): no data to check
        extra = {"pg_cron_runid": int(run["runid"]), "pg_cron_job": job}
        if isinstance(spec, catalog.TableSpec):
            events += assets.side_materializations(conn, spec, log, extra)
        events += [c.evaluation(conn, log, extra) for c in checks.get(log["table_name"], [])
                   if c.name != HELD_CHECK]
    return events + _held_days(conn, judge, report)


def _held_days(conn: psycopg.Connection, judge: CronRunJudge, report: TickReport) -> list[dg.AssetCheckEvaluation]:
    """``no_days_held`` of every mart whose job ran or whose copies were refreshed this tick, once each."""
    refreshed = {judge.target_of(job, log).spec for job, _run, log in report.committed}
    marts = [spec for spec in (t.spec for t in judge.targets.values()) if isinstance(spec, catalog.MartSpec)
             and (spec in refreshed or any(isinstance(r, catalog.TableSpec) and r.name in spec.stale_when
                                           for r in refreshed))]
    return [check.evaluation(conn, {}, {}) for mart in marts for check in mart_checks(mart) if check.name == HELD_CHECK]


def remember_jobs(cursor: CronCursor, job_rows: list[dict[str, Any]], now: dt.datetime) -> None:
    """When the sensor first saw each job: its first tick for the jobs there were, or now for a new one."""
    if not job_rows:
        return
    if cursor.since is None:
        cursor.since = now.isoformat()
    elif cursor.jobid is not None:
        for job in job_rows:
            if int(job["jobid"]) > cursor.jobid and job["last_start"] is None:
                cursor.first_seen.setdefault(job["jobname"], now.isoformat())
    cursor.jobid = max([*(int(job["jobid"]) for job in job_rows), *([cursor.jobid] if cursor.jobid else [])])


def _table_report(conn: psycopg.Connection, spec: catalog.TableSpec | catalog.MartSpec | catalog.Reconciliation | None,
                  log: dict[str, Any]) -> tuple[dict[str, Any], dict | None]:
    """What a Dagster run of the same refresh records, once per refresh however many partitions it touched."""
    if isinstance(spec, catalog.TableSpec):
        return assets.copy_materialization(conn, spec, log), assets.window_rows(conn, spec, log)
    if isinstance(spec, catalog.MartSpec):
        return assets.mart_materialization(conn, spec, log), assets.window_rows(conn, spec, log)
    return {}, None


def _matching_logs(run: dict[str, Any], logs: list[dict[str, Any]], now: dt.datetime) -> list[dict[str, Any]]:
    """The refreshes a succeeded run committed: its backend's log rows that started inside it, in order."""
    if run["status"] != "succeeded" or not run["start_time"]:
        return []
    lo = run["start_time"] - dt.timedelta(seconds=1)
    hi = (run["end_time"] or now) + dt.timedelta(seconds=1)
    return [log for log in logs if log["backend_pid"] == run["job_pid"] and lo <= log["started_at"] <= hi]


def build_cron_sensor(targets: dict[str, JobTarget], partitions: dg.PartitionsDefinition, *,
                      name: str = "pg_cron_runs", stuck_after: dt.timedelta = dt.timedelta(minutes=30),
                      commit_grace: dt.timedelta = dt.timedelta(seconds=60),
                      schedule_grace: dt.timedelta = dt.timedelta(minutes=3),
                      minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Reports what pg_cron did inside Postgres: a materialization (with its data checks) for "
                    "every committed refresh, failed pg_cron_job_health checks for failed, stuck, missed or "
                    "rolled-back runs. pg_cron is this warehouse's automation: each copy's and mart's job is "
                    "named in its description.",
    )
    def pg_cron_runs(context: dg.SensorEvaluationContext, warehouse: WarehouseResource) -> dg.SensorResult:
        judge = CronRunJudge(targets, set(partitions.get_partition_keys()), stuck_after=stuck_after,
                             commit_grace=commit_grace, schedule_grace=schedule_grace)
        report = evaluate_cron_runs(warehouse, judge, context.cursor)
        context.log.info(report.summary())
        # The tick requests no run; its message says what it reported instead of "skipped".
        return dg.SensorResult(asset_events=report.events, cursor=report.cursor.dump(), skip_reason=report.summary())

    return pg_cron_runs
