"""B5 Dagster overhead: what a one-partition ``dagster asset materialize`` of a fact adds to the
routine's own time, with 60 and with 365 days of history in the table, side by side.

The run is the real CLI against the stack's instance (runs and events in Postgres), one
process per run, as a user types it: ``dagster asset materialize -m dwh_assets.definitions
--select dwh/events --partition DAY``. It executes the routine, the asset's data checks
(scoped to the window) and its metadata queries (column schema, lineage), and the
``pg_cron_job_health`` check step. For each run:

    overhead = wall time of the CLI process - the routine's own duration (dwh.refresh_log)

measured ``--repeat`` times (the median is reported) at two history sizes of ``dwh.events``:
60 days (B1's world: 1,000,000 x scale events), then 365 days (305 older days of events
at the same daily rate, added to the control plane and copied in, untimed). The same day
is refreshed in both. A third row is the floor: the same CLI materialising a do-nothing
asset (``benchmarks/noop_defs.py``) against the same instance: what Dagster itself costs.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.b1_refresh import FULL_DIMENSION, FULL_EVENTS, load_sources
from benchmarks.harness import REPO_ROOT, BenchContext, BenchError, BenchResult, Goal, Row, utc_midnight
from dwh_assets.local.config import CONTROL_PLANE_DB
from dwh_assets.local.control_plane import add_events
from dwh_assets.local.dagster import venv_bin

NAME = "B5"
TITLE = "Dagster overhead of a one-partition fact run, 60 vs 365 days of history"
NEEDS_DAGSTER = False
MODULE = "dwh_assets.definitions"
NOOP = REPO_ROOT / "benchmarks" / "noop_defs.py"
HISTORY_DAYS = (60, 365)
GOAL_SECONDS = 3.0


def run(ctx: BenchContext) -> BenchResult:
    start, end = load_sources(ctx, round(FULL_EVENTS * ctx.scale), round(FULL_DIMENSION * ctx.scale))
    day = (end - dt.timedelta(days=10)).date()
    env = dict(os.environ) | ctx.cfg.client_env()
    rows: list[Row] = []
    details: dict = {"partition": day.isoformat(), "runs_per_case": ctx.repeat}
    with tempfile.TemporaryDirectory(prefix="dwh-b5-") as logs:
        log = Path(logs) / "dagster.log"
        floor = [cli(["-f", str(NOOP), "--select", "noop"], env, log) for _ in range(ctx.repeat)]
        for days in HISTORY_DAYS:
            first = fill_history(ctx, start, end, days)
            env["DWH_HISTORY_START"] = first.isoformat()
            cli(["-m", MODULE, "--select", "dwh/events", "--partition", day.isoformat()], env, log)  # warm, untimed
            walls, routines = [], []
            for _ in range(ctx.repeat):
                mark = log_mark(ctx)
                walls.append(cli(["-m", MODULE, "--select", "dwh/events", "--partition", day.isoformat()], env, log))
                routines.append(routine_seconds(ctx, mark))
            rows.append(row(ctx, days, walls, routines))
            details[f"history_{days}_days"] = {"events_in_table": events_in_table(ctx), "walls": walls,
                                                "routines": routines}
            ctx.progress(f"B5: {days} days of history: median overhead {rows[-1].seconds:.2f}s")
    floor_row = Row(NAME, "do-nothing asset (the Dagster CLI's own floor)", "dagster asset materialize -f noop_defs.py",
                    0, statistics.median(floor), 0.0, 0.0, None, None, "-", "-", runs=[round(s, 2) for s in floor])
    base = rows[0].seconds
    for r in rows:
        r.ratio, r.ratio_to = r.seconds / base, "60 days"
    rows.append(floor_row)
    goals = [Goal(NAME, f"one-partition run adds <= {GOAL_SECONDS:.0f}s over the routine, {days} days",
                  f"{r.seconds:.2f}s", r.seconds <= GOAL_SECONDS,
                  note=f"the CLI's floor (a do-nothing asset) is {floor_row.seconds:.2f}s")
             for days, r in zip(HISTORY_DAYS, rows)]
    goals.append(Goal(NAME, "overhead does not grow with history (365 vs 60 days <= 1.3x)",
                      f"{rows[1].seconds / rows[0].seconds:.2f}x", rows[1].seconds / rows[0].seconds <= 1.3))
    return BenchResult(rows=rows, goals=goals, details=details)


def cli(args: list[str], env: dict, log: Path) -> float:
    """One ``dagster asset materialize`` process; its wall time."""
    argv = [venv_bin("dagster"), "asset", "materialize", *args]
    with log.open("w") as out:
        started = time.perf_counter()
        done = subprocess.run(argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = "\n".join(log.read_text().strip().splitlines()[-15:])
        raise BenchError(f"`dagster asset materialize {' '.join(args)}` failed (exit {done.returncode}):\n{tail}")
    return seconds


def fill_history(ctx: BenchContext, start: dt.datetime, end: dt.datetime, days: int) -> dt.date:
    """Make dwh.events hold ``days`` days of history ending where the world's ends (untimed)."""
    first = (end - dt.timedelta(days=days)).date()
    older = utc_midnight(first)
    if older < start:
        with ctx.superuser(CONTROL_PLANE_DB) as cp:
            per_day = cp.execute("SELECT count(*) / greatest(1, extract(day FROM max(enqueued_at) - min(enqueued_at))) "
                                 "FROM pgmq.a_instance_events").fetchone()[0]
            have = cp.execute("SELECT min(enqueued_at) FROM pgmq.a_instance_events").fetchone()[0]
            if have > older:
                ctx.progress(f"B5: adding {int(per_day * (have - older).days):,} older events to the control plane ...")
                add_events(cp, seed=ctx.cfg.seed + days, count=int(per_day * (have - older).days),
                           window_start=older, window_end=have)
    with ctx.connect() as conn:
        conn.execute("SET statement_timeout = 0")
        ctx.progress(f"B5: copying {days} days of events into dwh.events ...")
        conn.execute("SELECT dwh.refresh_events(%s, %s)", (older, utc_midnight(end.date())))
    return first


def log_mark(ctx: BenchContext) -> int:
    with ctx.connect() as conn:
        return conn.execute("SELECT coalesce(max(id), 0) FROM dwh.refresh_log").fetchone()[0]


def routine_seconds(ctx: BenchContext, mark: int) -> float:
    with ctx.connect() as conn:
        rows = conn.execute("SELECT duration_ms FROM dwh.refresh_log WHERE id > %s AND table_name = 'events' "
                            "AND application = 'dagster'", (mark,)).fetchall()
    if len(rows) != 1:
        raise BenchError(f"expected one refresh of events from the run, found {len(rows)}")
    return rows[0][0] / 1000


def events_in_table(ctx: BenchContext) -> int:
    with ctx.connect() as conn:
        return conn.execute("SELECT count(*) FROM dwh.events").fetchone()[0]


def row(ctx: BenchContext, days: int, walls: list[float], routines: list[float]) -> Row:
    overheads = [w - r for w, r in zip(walls, routines)]
    return Row(NAME, f"dwh/events, one partition, {days} days of history in the table",
               "dagster asset materialize --partition DAY (wall - routine)", 0, statistics.median(overheads),
               0.0, 0.0, None, None, "-", "-", runs=[round(o, 2) for o in overheads],
               note=f"routine median {statistics.median(routines):.2f}s, wall median {statistics.median(walls):.2f}s")
