"""B3 sensor tick: the pg_cron sensor with 10,000 and with 1,000,000 rows in cron.job_run_details.

For each size, ``cron.job_run_details`` is filled (set-based, as the superuser) with a
synthetic but realistic history of the stack's own ``dwh:`` jobs: one day of their real
schedules repeated backwards (so 1,000,000 rows are years of runs; ~817 a day), each run
with the job's id, user, database and command, a plausible pid (``kernel.pid_max`` of this
machine), 50 ms .. 5 s long, every 25th failed. Every succeeded run of a refresh job also
has its ``dwh.refresh_log`` row (same pid, a start inside the run, the window or snapshot
day its command writes), as a committed refresh leaves one: both tables grow together.
Then 100 new runs follow (none of their pids alive) and the tick that reads them is timed:
``evaluate_cron_runs`` with the loader's real connection (opened per tick, as the sensor
does) and a judge over the catalog's targets, started with the cursor just below the new
runs. One untimed tick, then ``TICKS`` timed ones; the median is reported.

A tick is correct when it judged exactly the 100 new runs (one check evaluation each),
turned every committed one into materializations, left no run open and moved the cursor to
the last new run. The synthetic rows are removed afterwards.
"""

from __future__ import annotations

import datetime as dt
import inspect
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psutil
import psycopg

from benchmarks.harness import BenchContext, BenchResult, Goal, Measurement, Row, make_row
from dwh_assets.warehouse.catalog import BY_NAME, CRON_JOB_PREFIX
from dwh_assets.warehouse.defs import cron_targets
from dwh_assets.warehouse.defs.cron_sensor import REFRESH_LOGS, RUN_COLUMNS, CronCursor, CronRunJudge, TickReport, build_cron_sensor, evaluate_cron_runs
from dwh_assets.warehouse.defs.partitions import daily_partitions
from dwh_assets.warehouse.defs.resources import WarehouseResource

NAME = "B3"
TITLE = "pg_cron sensor tick: 10k vs 1M rows in cron.job_run_details, 100 new runs each time"
# The tick is timed in this process against Postgres; no Dagster daemon or webserver.
NEEDS_DAGSTER = False

FULL_SIZES = (10_000, 1_000_000)
NEW_RUNS = 100
TICKS = 31
FAILED_EVERY = 25
APPLICATION = "B3 synthetic pg_cron run"
# The sensor's log query before B3 bounded finished_at (see REFRESH_LOGS); explained for comparison.
REFRESH_LOGS_BEFORE_FIX = ("SELECT * FROM dwh.refresh_log WHERE backend_pid = ANY(%(pids)s) "
                           "AND started_at >= %(since)s ORDER BY id")
UTC = dt.timezone.utc


@dataclass(frozen=True)
class Job:
    jobid: int
    jobname: str
    username: str
    database: str
    command: str
    schedule: str
    log_table: str | None  # refresh_log.table_name of its committed runs (refresh jobs only)
    kind: str | None  # "window", "snapshot" or None (the sensor's JobTarget.partitioned)
    lookback_days: int


@dataclass
class Case:
    size: int
    history_rows: int
    new_runids: list[int]
    committed: list[int]
    seconds: list[float]
    report: TickReport
    plans: dict[str, list[str]]


def run(ctx: BenchContext) -> BenchResult:
    small = max(1_000, round(FULL_SIZES[0] * ctx.scale))
    sizes = (small, max(10 * small, round(FULL_SIZES[1] * ctx.scale)))
    with ctx.superuser() as conn:
        run_mark = conn.execute("SELECT coalesce(max(runid), 0) FROM cron.job_run_details").fetchone()[0]
        log_mark = conn.execute("SELECT coalesce(max(id), 0) FROM dwh.refresh_log").fetchone()[0]
        jobs = catalog_jobs(conn)
    slots = day_slots(jobs)
    judge = catalog_judge(ctx)
    warehouse = WarehouseResource(dsn=ctx.dsn())
    cases = []
    try:
        for size in sizes:
            remove_synthetic(ctx, run_mark, log_mark)
            cases.append(measure_case(ctx, warehouse, judge, jobs, slots, size))
    finally:
        remove_synthetic(ctx, run_mark, log_mark)

    rows = [case_row(case) for case in cases]
    for row in rows:
        row.ratio, row.ratio_to = row.rows_per_s / rows[0].rows_per_s, f"{sizes[0]:,} rows"
    growth = rows[1].seconds / rows[0].seconds
    goal = Goal(NAME, f"tick at {sizes[1]:,} history rows within 2x of {sizes[0]:,}", f"{growth:.2f}x",
                growth <= 2.0, note=f"median {rows[0].seconds * 1000:.1f} ms vs {rows[1].seconds * 1000:.1f} ms")
    details = {
        "jobs": [j.jobname for j in jobs],
        "runs_per_day": len(slots),
        "pid_max": pid_max(),
        "ticks_timed": TICKS,
        "cases": {
            f"{c.size:,}": {
                "history_rows": c.history_rows,
                "new_runids": [c.new_runids[0], c.new_runids[-1]],
                "committed_new_runs": len(c.committed),
                "tick_ms": [round(s * 1000, 2) for s in c.seconds],
                "tick_ms_median_min_max": [round(statistics.median(c.seconds) * 1000, 2),
                                           round(min(c.seconds) * 1000, 2), round(max(c.seconds) * 1000, 2)],
                "query_ms": {name: plan_ms(plan) for name, plan in c.plans.items()},
                "events_per_tick": len(c.report.events),
                "explain": c.plans,
            }
            for c in cases
        },
    }
    return BenchResult(rows=rows, goals=[goal], details=details)


# ----- the synthetic history (untimed) ----------------------------------------------------------


def catalog_jobs(conn: psycopg.Connection) -> list[Job]:
    """The stack's pg_cron jobs, with what a committed run of each writes to dwh.refresh_log."""
    targets = cron_targets()
    jobs = []
    for jobid, name, username, database, command, schedule in conn.execute(
        "SELECT jobid, jobname, username, database, command, schedule FROM cron.job"
        " WHERE starts_with(jobname, %s) ORDER BY jobid", (CRON_JOB_PREFIX,)
    ):
        target = targets.get(name)
        spec = BY_NAME.get(target.log_table) if target else None
        jobs.append(Job(jobid, name, username, database, command, schedule,
                        target.log_table if target else None, target.partitioned if target else None,
                        spec.lookback_days if spec else 0))
    return jobs


def day_slots(jobs: list[Job]) -> list[tuple[int, int]]:
    """One UTC day of the jobs' schedules: (second of the day, index into ``jobs``), in time order."""
    from croniter import croniter

    day = dt.datetime(2026, 1, 1, tzinfo=UTC)
    slots = []
    for k, job in enumerate(jobs):
        ticks = croniter(job.schedule, day - dt.timedelta(seconds=1))
        while (t := ticks.get_next(dt.datetime)) < day + dt.timedelta(days=1):
            slots.append((int((t - day).total_seconds()), k))
    return sorted(slots)


def pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return 32768


INSERT_RUNS = """
WITH slot AS (
    SELECT * FROM unnest(%(offsets)s::int[], %(job_index)s::int[]) WITH ORDINALITY AS s(offset_s, k, i)
), job AS (
    SELECT * FROM unnest(%(jobids)s::bigint[], %(usernames)s::text[], %(databases)s::text[], %(commands)s::text[])
        WITH ORDINALITY AS j(jobid, username, database, command, k)
), run AS (
    SELECT g.n, j.jobid, j.username, j.database, j.command,
           coalesce((%(pids)s::int[])[array_position(%(numbers)s::bigint[], g.n)],
                    300 + mod(hashtextextended('pid:' || g.n, 0) & 2147483647, %(pid_span)s))::int AS pid,
           mod(hashtextextended('status:' || g.n, 0) & 2147483647, %(failed_every)s) = 0 AS failed,
           %(base)s + div(g.n, %(slots)s) * interval '1 day' + s.offset_s * interval '1 second'
               + mod(hashtextextended('jitter:' || g.n, 0) & 2147483647, 900) * interval '1 millisecond' AS start_time,
           (50 + mod(hashtextextended('took:' || g.n, 0) & 2147483647, 4950)) * interval '1 millisecond' AS took
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g(n)
    JOIN slot s ON s.i = mod(g.n, %(slots)s) + 1
    JOIN job j ON j.k = s.k + 1
    WHERE %(numbers)s::bigint[] IS NULL OR g.n = ANY(%(numbers)s::bigint[])
)
INSERT INTO cron.job_run_details (jobid, job_pid, database, username, command, status, return_message,
                                  start_time, end_time)
SELECT jobid, pid, database, username, command,
       CASE WHEN failed THEN 'failed' ELSE 'succeeded' END,
       CASE WHEN failed THEN 'ERROR:  canceling statement due to lock timeout' ELSE '1 row' END,
       start_time, start_time + took
FROM run ORDER BY n
RETURNING runid, status, jobid
"""

# A committed refresh's log row: its backend is the run's worker, it starts inside the run.
INSERT_LOGS = """
INSERT INTO dwh.refresh_log (table_name, window_start, window_end, snapshot_day, rows_inserted, rows_updated,
                             rows_deleted, started_at, finished_at, backend_pid, application)
SELECT t.log_table,
       CASE WHEN t.kind = 'window' THEN date_trunc('day', r.start_time) - t.lookback * interval '1 day' END,
       CASE WHEN t.kind = 'window' THEN date_trunc('day', r.start_time) + interval '1 day' END,
       CASE WHEN t.kind = 'snapshot' THEN r.start_time::date END,
       mod(r.runid * 7919, 5000), mod(r.runid * 104729, 200), 0,
       r.start_time + interval '5 milliseconds', r.end_time - interval '5 milliseconds', r.job_pid, %(application)s
FROM cron.job_run_details r
JOIN unnest(%(jobids)s::bigint[], %(log_tables)s::text[], %(kinds)s::text[], %(lookbacks)s::int[])
    AS t(jobid, log_table, kind, lookback) USING (jobid)
WHERE r.runid > %(after)s AND r.status = 'succeeded'
"""


def insert_runs(conn: psycopg.Connection, jobs: list[Job], slots: list[tuple[int, int]], base: dt.datetime,
                numbers: range | list[int], pids: list[int] | None = None) -> list[tuple[int, str, int]]:
    """The schedule's runs number ``numbers`` (0 = the first slot on ``base``); (runid, status, jobid)."""
    after = conn.execute("SELECT coalesce(max(runid), 0) FROM cron.job_run_details").fetchone()[0]
    inserted = conn.execute(INSERT_RUNS, {
        "offsets": [s[0] for s in slots], "job_index": [s[1] for s in slots],
        "jobids": [j.jobid for j in jobs], "usernames": [j.username for j in jobs],
        "databases": [j.database for j in jobs], "commands": [j.command for j in jobs],
        "pids": pids, "pid_span": pid_max() - 300, "failed_every": FAILED_EVERY, "base": base, "slots": len(slots),
        "first": numbers[0] if numbers else 0, "last": numbers[-1] if numbers else -1,
        "numbers": None if isinstance(numbers, range) else list(numbers),
    }).fetchall()
    refresh = [j for j in jobs if j.log_table]
    conn.execute(INSERT_LOGS, {
        "jobids": [j.jobid for j in refresh], "log_tables": [j.log_table for j in refresh],
        "kinds": [j.kind for j in refresh], "lookbacks": [j.lookback_days for j in refresh],
        "after": after, "application": APPLICATION,
    })
    return inserted


def build_case(ctx: BenchContext, jobs: list[Job], slots: list[tuple[int, int]], size: int) -> tuple[int, list, list]:
    """History up to ``size`` rows, then NEW_RUNS runs; (history rows added, new runids, committed new runids)."""
    # The new runs are the next runs of the refresh jobs: the sensor reads only the loader's runs.
    new_numbers: list[int] = []
    with ctx.superuser() as conn:
        conn.execute("SET TimeZone = 'UTC'")
        existing = conn.execute("SELECT count(*) FROM cron.job_run_details").fetchone()[0]
        history = max(0, size - existing)
        n = history
        while len(new_numbers) < NEW_RUNS:
            if jobs[slots[n % len(slots)][1]].log_table:
                new_numbers.append(n)
            n += 1
        # The newest run falls on yesterday (UTC): every run lies in the past, on a partition day.
        today = dt.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        base = today - dt.timedelta(days=new_numbers[-1] // len(slots) + 1)
        ctx.progress(f"B3: {size:,} rows: inserting {history:,} history runs (+ their refresh_log rows) ...")
        insert_runs(conn, jobs, slots, base, range(history))
        alive = {r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity")}
        rng = random.Random(f"b3-{size}")
        pids = [p for p in rng.sample(range(300, pid_max()), NEW_RUNS + len(alive)) if p not in alive][:NEW_RUNS]
        new = insert_runs(conn, jobs, slots, base, new_numbers, pids)
        # What autovacuum does after such growth; the planner sees the real sizes.
        conn.execute("VACUUM ANALYZE cron.job_run_details")
        conn.execute("VACUUM ANALYZE dwh.refresh_log")
    by_id = {j.jobid: j for j in jobs}
    committed = [runid for runid, status, jobid in new if status == "succeeded" and by_id[jobid].log_table]
    return history, [r[0] for r in new], committed


def remove_synthetic(ctx: BenchContext, run_mark: int, log_mark: int) -> None:
    with ctx.superuser() as conn:
        conn.execute("DELETE FROM cron.job_run_details WHERE runid > %s", (run_mark,))
        conn.execute("DELETE FROM dwh.refresh_log WHERE id > %s AND application = %s", (log_mark, APPLICATION))
        conn.execute("VACUUM cron.job_run_details")
        conn.execute("VACUUM dwh.refresh_log")


# ----- the measured ticks -----------------------------------------------------------------------


def catalog_judge(ctx: BenchContext) -> CronRunJudge:
    """The judge the sensor builds each tick, with the sensor's default thresholds."""
    defaults = inspect.signature(build_cron_sensor).parameters
    keys = set(daily_partitions(ctx.cfg.history_start).get_partition_keys())
    return CronRunJudge(cron_targets(), keys, stuck_after=defaults["stuck_after"].default,
                        commit_grace=defaults["commit_grace"].default,
                        schedule_grace=defaults["schedule_grace"].default)


def measure_case(ctx: BenchContext, warehouse: WarehouseResource, judge: CronRunJudge, jobs: list[Job],
                 slots: list[tuple[int, int]], size: int) -> Case:
    history, new_runids, committed = build_case(ctx, jobs, slots, size)
    cursor = CronCursor(runid=new_runids[0] - 1).dump()
    evaluate_cron_runs(warehouse, judge, cursor)  # untimed: the daemon's ticks find warm caches too
    seconds, report = [], None
    for _ in range(TICKS):
        started = time.perf_counter()
        report = evaluate_cron_runs(warehouse, judge, cursor)
        seconds.append(time.perf_counter() - started)
    ctx.progress(f"B3: {size:,} rows: median tick {statistics.median(seconds) * 1000:.1f} ms "
                 f"({min(seconds) * 1000:.1f} .. {max(seconds) * 1000:.1f})")
    return Case(size, history, new_runids, committed, seconds, report, explain(ctx, new_runids[0] - 1))


def judged(report: TickReport) -> tuple[list[int], list[int]]:
    """Runids the tick judged (one check evaluation per ended run) and those it materialised."""
    checked = sorted(int(e.metadata["runid"].value) for e in report.events if isinstance(e, dg.AssetCheckEvaluation)
                     and "runid" in e.metadata)
    materialised = sorted({int(e.metadata["pg_cron_runid"].value) for e in report.events
                           if isinstance(e, dg.AssetMaterialization)})
    return checked, materialised


def summary(runids: list[int], committed: list[int], cursor: int | None, open_runs: list[int]) -> str:
    """What a tick read, in one comparable line."""
    span = f"{runids[0]}..{runids[-1]}" if runids else "none"
    return (f"{len(runids)} runs ({span}, sum {sum(runids)}), {len(committed)} materialised (sum {sum(committed)}), "
            f"cursor {cursor}, {len(open_runs)} open")


def case_row(case: Case) -> Row:
    checked, materialised = judged(case.report)
    measured = summary(checked, materialised, case.report.cursor.runid, case.report.cursor.open_runs)
    expected = summary(case.new_runids, case.committed, case.new_runids[-1], [])
    rss = psutil.Process().memory_info().rss
    m = Measurement(rows=case.report.runs_read, seconds=statistics.median(case.seconds), client_base_rss=rss,
                    client_peak_rss=rss, server_peak_uss=None)
    return make_row(NAME, f"{case.size:,} rows in cron.job_run_details", f"evaluate_cron_runs, median of {TICKS} ticks",
                    m, measured, expected, [round(s, 4) for s in case.seconds],
                    note="rows = runs read; RSS: the benchmark process")


def explain(ctx: BenchContext, cursor_runid: int) -> dict[str, list[str]]:
    """The tick's queries on the history, as the loader runs them (row-level security included), analysed."""
    with ctx.connect() as conn:
        runs = conn.execute(RUN_COLUMNS + "WHERE r.runid > %s ORDER BY r.runid LIMIT %s", (cursor_runid, 500)).fetchall()
        params = {"pids": sorted({r[3] for r in runs if r[3]}), "since": min(r[6] for r in runs) - dt.timedelta(seconds=5)}
        plans = {
            "new_runs": (RUN_COLUMNS + "WHERE r.runid > %s ORDER BY r.runid LIMIT %s", (cursor_runid, 500)),
            "refresh_logs": (REFRESH_LOGS, params),
            "refresh_logs_before_fix": (REFRESH_LOGS_BEFORE_FIX, params),
        }
        return {name: [line for (line,) in conn.execute("EXPLAIN (ANALYZE, BUFFERS, SUMMARY OFF) " + query, args)]
                for name, (query, args) in plans.items()}


def plan_ms(plan: list[str]) -> float:
    """Total execution time of an EXPLAIN ANALYZE plan: its top node's end time."""
    return float(plan[0].split("actual time=")[1].split("..")[1].split()[0])
