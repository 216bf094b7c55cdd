"""B6 steady-state hour: one hour of a running warehouse at 60 and at 365 days of history.

Two warehouses of the same fleet (the demo world at ``stack_scale(--scale)``: 1,000
instances at ``--scale 1``) differ only in their history: 60 days and 365 days, each
materialised completely (dimensions, the facts over the whole history, the marts). The
control plane of each gets events at the same rate per alive instance-day (the demo's:
``EVENTS_PER_SCALE`` over the 60-day world), and the generator spreads them in proportion
to the instances alive on each day, so a day's window at the end of either history holds
about as many events (the two worlds' fleets are equal at the end, not over the history);
Prometheus is back-filled over each history, as ``dwh up`` does.

The **hour** is what pg_cron runs in one hour (``HOUR`` UTC, an ordinary hour: the daily
purge at 03:30 is not in it), derived from the deployment's schedules
(``warehouse.cron_jobs.desired_jobs``, the catalog's defaults): every refresh due in that
hour, in the order of its minute, each running exactly ``job.command`` (the SQL pg_cron
runs, with its lookback window) on a fresh connection as the job's role; pg_partman's
hourly maintenance; the marts' jobs (``dwh.refresh_pending_mart(<name>)`` every 5
minutes: the days the copies queued, refreshed incrementally); then the data checks of
every refresh the hour logged (``defs.checks.checks_by_log_table``, as the pg_cron
sensor evaluates them in the tick that reports the refresh). Nothing else runs on either stack meanwhile: their pg_cron
jobs are paused.

The facts' jobs run their scheduled command, so the hour includes every arrival watermark
lookup (``dwh.refresh_with_arrivals``: one pushed-down ``GROUP BY`` per events and state
refresh; the warm-up hour starts the watermarks). The **daily reconciliation**
(``dwh:reconcile_facts``, 02:40, not in the hour) is measured next to it, once per round in
a process of its own, on the same warehouse: its own cost, and the hour with it.

The hours run in fresh processes (``benchmarks.child``), alternating between the two
warehouses (60, 365, 60, 365, ... ``--repeat`` times each, after one untimed warm-up
hour each), and the fastest of each is compared: the goal is the 365-day hour within
1.3x of the 60-day hour. Each step's time is kept (``details``); the table lists the
hour and its step kinds, the reconciliation and the hour with it. The host's load average
before and after each measurement is kept too (``details.load``): the machine is shared.

**Checked**: every job, mart refresh and check ran without an error, and every refresh
left exactly one ``dwh.refresh_log`` row (``copy = source``: the hour's work is ``jobs /
refresh_log rows / errors``, compared with what the schedule demands). Checks that ran and
did not pass are named in the table (``not passed``).

``--b6-homes DIR60,DIR365`` measures two stacks made by ``dwh up`` instead (e.g. at
``DWH_SCALE=10``): running, materialised, the same scale, 60 and 365 days of history.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psycopg

from benchmarks.harness import BenchContext, BenchError, BenchResult, Goal, Row, bench_stack, make_row, stack_scale
from dwh_assets.local.config import LOADER_ROLE, OWNER_ROLE, WAREHOUSE_DB, StackConfig
from dwh_assets.local.control_plane import ensure_control_plane
from dwh_assets.local.generator import EVENTS_PER_SCALE, build_world
from dwh_assets.local.local_stack import LocalStack
from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.cron_jobs import desired_jobs

NAME = "B6"
TITLE = "steady-state hour: the pg_cron refreshes due in one hour, the marts and the checks, at 60 vs 365 days of history"
NEEDS_DAGSTER = False

HISTORIES = (60, 365)
HOUR = 12
GOAL_RATIO = 1.3
# The demo's event rate: EVENTS_PER_SCALE over the instance-time of this many days' world.
EVENT_RATE_DAYS = 60
UTC = dt.timezone.utc
STEP_TARGET = "benchmarks.b6_steady_hour:run_hour"
RECONCILE_TARGET = "benchmarks.b6_steady_hour:run_reconciliation"


# ----- the hour's schedule ----------------------------------------------------------------------


def cron_field(field: str, value: int, lo: int, hi: int) -> bool:
    """Does one field of a five-field cron schedule match ``value`` (``*``, ``*/n``, ``a-b/n``, lists)?"""
    for part in field.split(","):
        spec, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if spec == "*":
            first, last = lo, hi
        elif "-" in spec:
            first, last = (int(x) for x in spec.split("-", 1))
        else:
            first = int(spec)
            last = hi if step_text else first
        if first <= value <= last and (value - first) % step == 0:
            return True
    return False


def runs_in_hour(schedule: str, day: dt.date, hour: int) -> list[int]:
    """Minutes of ``hour`` (UTC, pg_cron runs in GMT) on ``day`` at which ``schedule`` fires."""
    fields = schedule.split()
    if len(fields) != 5:
        raise BenchError(f"{schedule!r} is not a five-field cron schedule")
    minute, hours, dom, month, dow = fields
    weekday = day.isoweekday() % 7  # cron: 0 (or 7) = Sunday
    if not (cron_field(hours, hour, 0, 23) and cron_field(month, day.month, 1, 12)):
        return []
    dom_ok = cron_field(dom, day.day, 1, 31)
    dow_ok = cron_field(dow, weekday, 0, 7) or (weekday == 0 and cron_field(dow, 7, 0, 7))
    # cron's rule: when both day fields are restricted, either may match.
    if not ((dom_ok or dow_ok) if dom != "*" and dow != "*" else (dom_ok and dow_ok)):
        return []
    return [m for m in range(60) if cron_field(minute, m, 0, 59)]


@dataclass(frozen=True)
class Step:
    minute: int
    job: str
    runner: str
    command: str
    # "refresh" (a catalog table), "mart", "maintenance"
    kind: str
    mart: str = ""

    @property
    def label(self) -> str:
        return self.job.removeprefix(catalog.CRON_JOB_PREFIX)


def hour_plan(cfg: StackConfig, day: dt.date, hour: int = HOUR) -> list[Step]:
    """The pg_cron jobs due in ``hour`` of ``day``, in the order they start."""
    marts = {mart.cron_job_name: mart.name for mart in catalog.MARTS}
    refreshes = {spec.cron_job_name for spec in catalog.CATALOG}
    steps = []
    for order, job in enumerate(desired_jobs(cfg.deployment())):
        for minute in runs_in_hour(job.schedule, day, hour):
            kind = "mart" if job.name in marts else "refresh" if job.name in refreshes else "maintenance"
            steps.append((minute, order, Step(minute, job.name, job.runner, job.command, kind, marts.get(job.name, ""))))
    return [step for _, _, step in sorted(steps, key=lambda s: (s[0], s[1]))]




# ----- one hour, in a child process ---------------------------------------------------------------


def run_hour(probe, *, dsns: dict[str, str], steps: list[dict], history_start: str, breakdown: str) -> int:
    """Run the hour's steps and the checks; write each step's time to ``breakdown``; rows written."""
    from psycopg.rows import dict_row

    from dwh_assets.warehouse.defs.checks import checks_by_log_table

    started = dt.datetime.now(UTC)
    out: list[dict] = []
    for raw in steps:
        step = Step(**raw)
        t0 = time.perf_counter()
        error = None
        with psycopg.connect(dsns[step.runner], autocommit=True) as conn:
            probe.watch_backend(conn)
            try:
                conn.execute(step.command)
            except psycopg.Error as e:
                error = f"{type(e).__name__}: {e}".strip()
        out.append({"minute": step.minute, "step": step.label, "kind": step.kind,
                    "seconds": time.perf_counter() - t0, "error": error})
    checks = checks_by_log_table()
    with psycopg.connect(dsns["loader"], autocommit=True, row_factory=dict_row) as conn:
        probe.watch_backend(conn)
        logs = conn.execute("SELECT * FROM dwh.refresh_log WHERE started_at >= %s ORDER BY id", (started,)).fetchall()
        for log in logs:
            if log["window_start"] is None and log["table_name"].startswith("mart."):
                continue  # a mart job that found no queued day: nothing to check
            for check in checks.get(log["table_name"], []):
                t0 = time.perf_counter()
                try:
                    passed, error = bool(check.run(conn, log)[0]), None
                except psycopg.Error as e:  # a check that raises is a failed check, reported
                    passed, error = False, f"{type(e).__name__}: {e}"
                out.append({"step": f"check {check.asset.to_user_string()} {check.name}", "kind": "check",
                            "seconds": time.perf_counter() - t0, "passed": passed, "error": error})
    with psycopg.connect(dsns["loader"]) as conn:
        logged = conn.execute(
            "SELECT table_name, count(*), sum(rows_inserted) FROM dwh.refresh_log WHERE started_at >= %s GROUP BY 1",
            (started,)).fetchall()
    Path(breakdown).write_text(json.dumps({"steps": out, "logged": [[t, int(n), int(r)] for t, n, r in logged]}))
    return sum(int(r) for _, _, r in logged)


def run_reconciliation(probe, *, dsn: str, breakdown: str) -> int:
    """The daily reconciliation's job command, as pg_cron runs it; what it found per fact to ``breakdown``."""
    from psycopg.rows import dict_row

    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        probe.watch_backend(conn)
        started = conn.execute("SELECT now() AS now").fetchone()["now"]
        conn.execute(catalog.PRODUCT.reconciliation.cron_command())
        found = conn.execute(
            "SELECT table_name, days_compared, source_rows, copy_rows, cardinality(differing_days) AS differing, "
            "error, extract(epoch FROM finished_at - started_at) AS seconds FROM dwh.reconciliation "
            "WHERE started_at >= %s ORDER BY id", (started,)).fetchall()
    Path(breakdown).write_text(json.dumps(found, default=str))
    return sum(int(r["days_compared"]) for r in found)


# ----- the two warehouses -------------------------------------------------------------------------


def events_for(cfg: StackConfig) -> tuple[int, float]:
    """Events for ``cfg``'s world at the demo's rate per alive instance-day; its instance-days."""
    day = dt.timedelta(days=1)
    demo = build_world(cfg.seed, cfg.scale, cfg.anchor_day, EVENT_RATE_DAYS).instance_time() / day
    days = build_world(cfg.seed, cfg.scale, cfg.anchor_day, cfg.history_days).instance_time() / day
    return max(1, round(EVENTS_PER_SCALE * cfg.scale * days / demo)), days


def fill(stack: LocalStack, progress) -> dict:
    """Events at the common rate per instance-day, then the first materialisation, through the routines."""
    cfg = stack.cfg
    n_events, alive_days = events_for(cfg)
    load = ensure_control_plane(cfg, n_events=n_events)
    progress(f"B6: {cfg.history_days} days: control plane {load}")
    today = dt.datetime.now(UTC).date()
    start = dt.datetime.combine(cfg.history_start, dt.time(), UTC)
    end = dt.datetime.combine(today, dt.time(), UTC) + dt.timedelta(days=1)
    timings = {}
    with psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True) as conn:
        for spec in catalog.CATALOG:
            t0 = time.perf_counter()
            if spec.kind is catalog.Kind.DIMENSION:
                conn.execute(f"SELECT {spec.routine}(%s)", (today,))
            else:
                conn.execute(f"SELECT {spec.routine}(%s, %s)", (start, end))
            timings[spec.name] = round(time.perf_counter() - t0, 1)
            progress(f"B6: {cfg.history_days} days: {spec.local_table} filled in {timings[spec.name]} s")
        for mart in catalog.MARTS:
            t0 = time.perf_counter()
            conn.execute(f"SELECT {mart.routine}(%s, %s)", (start, end))
            timings[mart.name] = round(time.perf_counter() - t0, 1)
    with stack.postgres.connect(WAREHOUSE_DB) as conn:
        conn.execute("VACUUM ANALYZE")  # as autovacuum would have, long before a steady hour
    return {"events": n_events, "instance_days": round(alive_days, 1), "fill_seconds": timings}


def sizes(stack: LocalStack) -> dict:
    """Rows, daily partitions and the database's size: what the history made of the warehouse."""
    facts = [spec.local_table for spec in catalog.CATALOG if spec.kind is catalog.Kind.FACT]
    with psycopg.connect(stack.cfg.dsn(WAREHOUSE_DB, OWNER_ROLE)) as conn:
        partitions = {t: conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = %s::regclass",
                                      (t,)).fetchone()[0] for t in facts}
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in [*facts, *(m.table for m in catalog.MARTS)]}
        db = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return {"partitions": partitions, "rows": counts, "database_bytes": db}


def run(ctx: BenchContext) -> BenchResult:
    result = BenchResult(details={"hour_utc": HOUR, "goal_ratio": GOAL_RATIO, "stacks": {}})
    with ExitStack() as stacks:
        warehouses: dict[int, LocalStack] = {}
        for days in HISTORIES:
            home = ctx.b6_homes.get(days)
            if home is not None:
                stack = stacks.enter_context(bench_stack(ctx.scale, dagster=False, home=home, progress=ctx.progress))
                if stack.cfg.history_days != days:
                    raise BenchError(f"{home} holds {stack.cfg.history_days} days of history, B6 wants {days} there")
                details = {"reused": str(home)}
            else:
                ctx.progress(f"B6: a stack with {days} days of history at scale {stack_scale(ctx.scale)} ...")
                stack = stacks.enter_context(bench_stack(ctx.scale, dagster=False, history_days=days,
                                                         progress=lambda _line: None))
                details = fill(stack, ctx.progress)
            warehouses[days] = stack
            result.details["stacks"][days] = details | {"scale": stack.cfg.scale, **sizes(stack)}
        if len({s.cfg.scale for s in warehouses.values()}) != 1:
            raise BenchError(f"B6 compares one fleet size; the stacks have scales {[s.cfg.scale for s in warehouses.values()]}")
        plan, runs, reconciliations, load = measure_hours(ctx, NAME, warehouses, lambda days: f"{days} days",
                                                          reconcile=True)
    result.details["plan"] = [f"{s.minute:02d} {s.label}" for s in plan]
    result.details["runs"] = runs
    result.details["reconciliations"] = reconciliations
    result.details["load"] = load
    result.rows, best = hour_rows(NAME, plan, runs, lambda days: f"{days} days of history")
    result.rows += reconciliation_rows(runs, reconciliations)
    short, long_ = HISTORIES
    ratio = best[long_] / best[short]
    result.goals = [Goal(NAME, f"the hour at {long_} days within {GOAL_RATIO}x of the hour at {short} days",
                         f"{ratio:.2f}x ({best[long_]:.1f} s vs {best[short]:.1f} s)", ratio <= GOAL_RATIO)]
    return result


def measure_hours(ctx: BenchContext, bench: str, warehouses: dict, name, reconcile: bool = False):  # noqa: ANN001, ANN201
    """The hour on each warehouse, alternating (a, b, a, b, ...) after one untimed warm-up hour
    each; ``name(key)`` says which warehouse in progress lines. With ``reconcile``, the daily
    reconciliation after each hour. The plan, each one's runs, its reconciliations, the load."""
    today = dt.datetime.now(UTC).date()
    runs: dict[object, list[dict]] = {key: [] for key in warehouses}
    reconciliations: dict[object, list[dict]] = {key: [] for key in warehouses}
    load: list[dict] = []
    plans = {key: hour_plan(stack.cfg, today) for key, stack in warehouses.items()}
    if len({tuple(plan) for plan in plans.values()}) != 1:
        raise BenchError(f"{bench}: the warehouses schedule different hours")
    for rnd in range(ctx.repeat + 1):  # round 0: warm-up, not timed
        for key, stack in warehouses.items():
            ctx.progress(f"{bench}: {'warm-up' if rnd == 0 else f'run {rnd}'}: the hour at {name(key)} ...")
            cfg = stack.cfg
            load_before = os.getloadavg()[0]
            with tempfile.NamedTemporaryFile(prefix="hour-", suffix=".json") as breakdown:
                m = ctx.measure(STEP_TARGET, preload=("dagster", "dwh_assets.warehouse.defs.checks"),
                                dsns={"loader": cfg.dsn(WAREHOUSE_DB, LOADER_ROLE),
                                      "owner": cfg.dsn(WAREHOUSE_DB, OWNER_ROLE)},
                                steps=[s.__dict__ for s in plans[key]],
                                history_start=cfg.history_start.isoformat(), breakdown=breakdown.name)
                report = json.loads(Path(breakdown.name).read_text())
            if reconcile:
                with tempfile.NamedTemporaryFile(prefix="reconcile-", suffix=".json") as breakdown:
                    r = ctx.measure(RECONCILE_TARGET, dsn=cfg.dsn(WAREHOUSE_DB, LOADER_ROLE), breakdown=breakdown.name)
                    found = json.loads(Path(breakdown.name).read_text())
            load.append({"round": rnd, "warehouse": name(key), "load_1m_before": round(load_before, 2),
                         "load_1m_after": round(os.getloadavg()[0], 2)})
            if rnd:
                runs[key].append({"measurement": m.__dict__, **report})
                if reconcile:
                    reconciliations[key].append({"measurement": r.__dict__, "facts": found})
            done = f"{m.seconds:.1f} s" + (f"; the reconciliation {r.seconds:.1f} s" if reconcile else "")
            ctx.progress(f"{bench}: the hour at {name(key)}: {done} (load {load_before:.1f})")
    return next(iter(plans.values())), runs, reconciliations, load


def _reconciled(run: dict) -> str:
    """What a reconciliation did: facts compared, kept days, days that differed, errors."""
    facts = run["facts"]
    return (f"{len(facts)} facts, {sum(int(f['days_compared']) for f in facts)} days compared, "
            f"{sum(int(f['differing'] or 0) for f in facts)} differing, {sum(1 for f in facts if f['error'])} errors")


def reconciliation_rows(runs: dict[int, list[dict]], reconciliations: dict[int, list[dict]]) -> list[Row]:
    """The daily reconciliation at each history (its fastest run), and the hour with it (the fastest of
    each, added: the day's one reconciliation next to one steady hour). A filled warehouse equals its
    sources: every kept day compared, none differing."""
    rows = []
    for days, measured in reconciliations.items():
        if not measured:
            continue
        fastest = min(measured, key=lambda r: r["measurement"]["seconds"])
        m = fastest["measurement"]
        hour = min(run["measurement"]["seconds"] for run in runs[days])
        compared = sum(int(f["days_compared"]) for f in fastest["facts"])
        per_fact = "; ".join(f"{f['table_name']} {float(f['seconds']):.2f} s ({f['days_compared']} days)"
                             for f in fastest["facts"])
        for method, seconds, note in (("the daily reconciliation", m["seconds"], per_fact),
                                      ("the hour + the reconciliation", hour + m["seconds"], "")):
            rows.append(Row(
                benchmark=NAME, case=f"{days} days of history", method=method, rows=int(m["rows"]), seconds=seconds,
                client_peak_mb=round(m["client_peak_rss"] / 2**20, 1),
                client_base_mb=round(m["client_base_rss"] / 2**20, 1),
                server_peak_mb=None if m["server_peak_uss"] is None else round(m["server_peak_uss"] / 2**20, 1),
                server_programs_peak_mb=None, checksum=_reconciled(fastest),
                source_checksum=f"{len(fastest['facts'])} facts, {compared} days compared, 0 differing, 0 errors",
                runs=[round(r["measurement"]["seconds"], 3) for r in measured], note=note))
    short, long_ = HISTORIES
    by_method = {(r.case, r.method): r for r in rows}
    for r in rows:
        other = by_method.get((f"{short} days of history", r.method))
        if r.case.startswith(f"{long_} ") and other is not None and other.seconds > 0:
            r.ratio, r.ratio_to = r.seconds / other.seconds, f"{short}-day time"
    return rows


def _work(plan: list[Step], report: dict) -> str:
    """What the hour did: its jobs, the refresh_log rows they committed, the steps that raised.

    A check that ran and did not pass is a result, not an error of the hour (a tiny world
    can have days without an instance alive, which the metrics completeness check flags):
    those are listed per run in ``details`` and counted in the table.
    """
    failed = sum(1 for s in report["steps"] if s.get("error"))
    logs = sum(n for _, n, _ in report["logged"])
    return f"{len(plan)} jobs, {logs} refresh_log rows, {failed} errors"


def _expected(plan: list[Step]) -> str:
    logs = sum(1 for s in plan if s.kind in ("refresh", "mart"))
    return f"{len(plan)} jobs, {logs} refresh_log rows, 0 errors"


def _kind_of(step: dict) -> str:
    """Steps grouped for the table: each refresh job, the marts, maintenance, the checks."""
    if step["kind"] == "check":
        return "asset checks (all)"
    if step["kind"] == "mart":
        return "marts (dwh.refresh_pending_mart)"
    return step["step"]


def hour_rows(bench: str, plan: list[Step], runs: dict[object, list[dict]], case) -> tuple[list[Row], dict[object, float]]:  # noqa: ANN001
    """The table: each warehouse's fastest hour and its step kinds, each with its ratio to the
    first warehouse's (``case(key)`` names a warehouse); and the fastest hour of each."""
    rows, best = [], {}
    for key, measured in runs.items():
        fastest = min(measured, key=lambda r: r["measurement"]["seconds"])
        m = fastest["measurement"]
        best[key] = m["seconds"]
        row = Row(benchmark=bench, case=case(key), method="the whole hour", rows=m["rows"],
                  seconds=m["seconds"], client_peak_mb=round(m["client_peak_rss"] / 2**20, 1),
                  client_base_mb=round(m["client_base_rss"] / 2**20, 1),
                  server_peak_mb=None if m["server_peak_uss"] is None else round(m["server_peak_uss"] / 2**20, 1),
                  server_programs_peak_mb=None if m["server_programs_peak_rss"] is None
                  else round(m["server_programs_peak_rss"] / 2**20, 1),
                  checksum=_work(plan, fastest), source_checksum=_expected(plan),
                  runs=[round(r["measurement"]["seconds"], 3) for r in measured])
        rows.append(row)
        kinds: dict[str, list[dict]] = {}
        for step in fastest["steps"]:
            kinds.setdefault(_kind_of(step), []).append(step)
        for kind, steps in kinds.items():
            not_passed = [s["step"].removeprefix("check ") for s in steps if s.get("passed") is False]
            rows.append(Row(benchmark=bench, case=case(key), method=f"{kind} ({len(steps)}x)",
                            rows=0, seconds=sum(s["seconds"] for s in steps), client_peak_mb=row.client_peak_mb,
                            client_base_mb=row.client_base_mb, server_peak_mb=None, server_programs_peak_mb=None,
                            checksum=row.checksum, source_checksum=row.source_checksum,
                            note=f"not passed: {', '.join(not_passed)}" if not_passed else ""))
    base = next(iter(runs))
    by_method = {(r.case, r.method): r for r in rows if r.case == case(base)}
    for r in rows:
        reference = by_method.get((case(base), r.method))
        if r.case != case(base) and reference is not None and reference.seconds > 0:
            r.ratio, r.ratio_to = r.seconds / reference.seconds, case(base)
    return rows, best
