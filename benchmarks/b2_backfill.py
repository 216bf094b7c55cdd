"""B2 backfill: 90 daily partitions of dwh/events as one single-run range against one run per partition.

Both methods go through the real ``dagster`` CLI against the stack's instance (runs and
events in the cluster's ``dagster`` database), sequentially, one process per run:

(a) ``dagster asset materialize --select dwh/events --partition-range FIRST...LAST``: the
    asset's ``BackfillPolicy.single_run()``, one run and one refresh window;
(b) ``dagster asset materialize --select dwh/events --partition DAY`` for every day: one run
    per partition, what a backfill does without ``single_run`` (each run is its own process
    that loads the code location, as Dagster's run launcher starts it).

The CLI on both sides keeps it like for like: ``dg.materialize`` per partition in one Python
process would skip the process start and the code-location load every real run pays.
As ``--select`` does by default, each run also executes the asset's checks.

The data is B1's world (1,000,000 events over the 60 days of generated history, times
``--scale``). Its 60 days are shorter than 90, so the benchmark's partitions start
earlier than the stack's: the runs get ``DWH_HISTORY_START`` = the window's first day
(the code location reads its partitions from it), and the 30 oldest days hold no source
events. Refreshing an empty day is still a full refresh (lock, partitions, delete,
insert, log, materialization); both methods copy the same rows, so the empty days change
neither side's data work. ``--scale`` below 1 shortens the window (``round(90 * scale)``
days, at least 2) as well as the data.

Each method starts from an empty ``dwh.events`` (partitions created beforehand, untimed)
and must leave the window equal to the control plane (checksum) with a materialization of
every partition in Dagster's storage, from exactly 1 run (a) or one run per day (b).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from psycopg import sql

from benchmarks.b1_refresh import EVENTS, FULL_DIMENSION, FULL_EVENTS, load_sources
from benchmarks.harness import (
    REPO_ROOT,
    BenchContext,
    BenchError,
    BenchResult,
    Goal,
    Measurement,
    Row,
    checksum,
    make_row,
    utc_midnight,
)
from dwh_assets.local.config import CONTROL_PLANE_DB
from dwh_assets.warehouse.defs.assets import key_of
from dwh_assets.warehouse.defs.settings import HISTORY_START
from dwh_assets.local.dagster import venv_bin

NAME = "B2"
TITLE = "backfill of 90 daily partitions: one single-run range vs one run per partition (dagster CLI)"
# The CLI needs only the instance directory the stack prepares, not the webserver or the
# daemon (whose sensor ticks would share the machine with the runs).
NEEDS_DAGSTER = False

FULL_DAYS = 90
ASSET = "dwh.events"
MODULE = "dwh_assets.definitions"
METHODS = {
    "range": "(a) single-run range: --partition-range, 1 run",
    "each": "(b) one run per partition: --partition, {n} runs",
}
PROGRESS_EVERY = 10


@dataclass
class CliRun:
    seconds: float
    peak_rss: int


@dataclass
class Attempt:
    seconds: float
    peak_rss: int
    checksum: str  # the window's checksum, plus what is wrong when something is
    breakdown: dict


@dataclass
class Window:
    days: list[dt.date]

    @property
    def keys(self) -> list[str]:
        return [d.isoformat() for d in self.days]

    @property
    def start(self) -> dt.datetime:
        return utc_midnight(self.days[0])

    @property
    def end(self) -> dt.datetime:
        return utc_midnight(self.days[-1]) + dt.timedelta(days=1)

    @property
    def where(self) -> tuple[str, tuple]:
        return "WHERE enqueued_at >= %s AND enqueued_at < %s", (self.start, self.end)


def run(ctx: BenchContext) -> BenchResult:
    n_days = max(2, min(FULL_DAYS, round(FULL_DAYS * ctx.scale)))
    n_events = max(1, round(FULL_EVENTS * ctx.scale))
    ctx.progress(f"B2: source data is B1's world ({n_events:,} events); {n_days} daily partitions")
    load_sources(ctx, n_events, max(1, round(FULL_DIMENSION * ctx.scale)))
    anchor = ctx.cfg.anchor_day
    window = Window([anchor - dt.timedelta(days=n_days - i) for i in range(n_days)])
    env = dict(os.environ) | ctx.cfg.client_env() | {
        HISTORY_START.env_var_name: min(window.days[0], ctx.cfg.history_start).isoformat()
    }
    with ctx.superuser() as conn:
        # Partitions for the whole window exist before either method runs: neither pays for them.
        conn.execute("SELECT dwh.ensure_partitions(%s, %s, %s)", (ASSET, window.start, window.end))
    where, params = window.where
    with ctx.superuser(CONTROL_PLANE_DB) as conn:
        source_sum = checksum(conn, EVENTS.source, EVENTS.row_text, where, params)
        source_days = conn.execute(
            sql.SQL("SELECT count(DISTINCT date_trunc('day', enqueued_at)) FROM {} ").format(
                sql.Identifier(*EVENTS.source.split("."))) + sql.SQL(where), params,
        ).fetchone()[0]

    details: dict = {
        "asset": "/".join(key_of(ASSET).path),
        "window": [window.start.isoformat(), window.end.isoformat()],
        "partitions": n_days,
        "partitions_with_source_events": source_days,
        "partitions_start": env[HISTORY_START.env_var_name],
        "events_in_window": int(source_sum.split(":")[0]),
    }
    warm_up(env)
    with dg.DagsterInstance.get() as instance, tempfile.TemporaryDirectory(prefix="dwh-b2-") as logs:
        rows = [
            measure(ctx, instance, window, env, "range", source_sum, details, Path(logs)),
            measure(ctx, instance, window, env, "each", source_sum, details, Path(logs)),
        ]
    range_row, each_row = rows
    for row in rows:
        row.ratio, row.ratio_to = row.rows_per_s / each_row.rows_per_s, "(b)"
    speedup = each_row.seconds / range_row.seconds
    goal = Goal(NAME, "single-run range >= 10x faster than one run per partition", f"{speedup:.1f}x", speedup >= 10.0,
                note=f"{range_row.seconds:.1f}s vs {each_row.seconds:.1f}s for {n_days} partitions")
    return BenchResult(rows=rows, goals=[goal], details=details)


# ----- the measured runs ------------------------------------------------------------------------


def measure(ctx: BenchContext, instance: dg.DagsterInstance, window: Window, env: dict, method: str,
            source_sum: str, details: dict, logs: Path) -> Row:
    """``ctx.repeat`` backfills by ``method`` from an empty table, each verified; the fastest."""
    label = METHODS[method].format(n=len(window.days))
    attempts: list[Attempt] = []
    for _ in range(ctx.repeat):
        empty_events(ctx)
        ctx.checkpoint()
        record_mark = instance.event_log_storage.get_maximum_record_id() or 0
        log_mark = refresh_log_mark(ctx)
        ctx.progress(f"B2: {label} ...")
        started = time.perf_counter()
        runs = backfill(window, env, method, logs, ctx)
        seconds = time.perf_counter() - started
        copy_sum, wrong, breakdown = verify(ctx, instance, window, method, record_mark, log_mark, runs)
        attempts.append(Attempt(seconds, max(r.peak_rss for r in runs), f"{copy_sum} ({wrong})" if wrong else copy_sum,
                                breakdown))
        ctx.progress(f"B2: {label}: {seconds:.1f}s" + (f" — WRONG: {wrong}" if wrong else ""))
    best = min(attempts, key=lambda a: a.seconds)
    # A wrong attempt wins over a fast one: the row must say so.
    copy_sum = next((a.checksum for a in attempts if a.checksum != source_sum), best.checksum)
    measurement = Measurement(rows=int(best.checksum.split(":")[0]), seconds=best.seconds, client_base_rss=0,
                              client_peak_rss=best.peak_rss, server_peak_uss=None)
    details[f"{method}_runs"] = best.breakdown
    return make_row(NAME, f"dwh/events, {len(window.days)} daily partitions", label, measurement, copy_sum,
                    source_sum, [round(a.seconds, 2) for a in attempts],
                    note="client RSS: peak of a dagster CLI process")


def backfill(window: Window, env: dict, method: str, logs: Path, ctx: BenchContext) -> list[CliRun]:
    if method == "range":
        return [dagster_materialize(["--partition-range", f"{window.keys[0]}...{window.keys[-1]}"], env, logs)]
    runs = []
    for i, key in enumerate(window.keys, 1):
        runs.append(dagster_materialize(["--partition", key], env, logs))
        if i % PROGRESS_EVERY == 0:
            ctx.progress(f"B2:   {i}/{len(window.keys)} partitions, {sum(r.seconds for r in runs):.0f}s")
    return runs


def dagster_materialize(partition_args: list[str], env: dict, logs: Path) -> CliRun:
    """One ``dagster asset materialize`` process: its wall time and peak RSS."""
    argv = [venv_bin("dagster"), "asset", "materialize", "-m", MODULE, "--select", "/".join(key_of(ASSET).path),
            *partition_args]
    log = logs / "dagster.log"
    with log.open("w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak = PeakRss(proc.pid)
        returncode = proc.wait()
        seconds = time.perf_counter() - started
        peak.stop()
    if returncode != 0:
        tail = "\n".join(log.read_text().strip().splitlines()[-15:])
        raise BenchError(f"`dagster asset materialize {' '.join(partition_args)}` failed "
                         f"(exit {returncode}):\n{tail}")
    return CliRun(seconds=seconds, peak_rss=peak.value)


class PeakRss:
    """Samples a process' VmHWM until stopped (not wait4's ru_maxrss: it inherits this process' peak)."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.value = 0
        self._status = Path(f"/proc/{pid}/status")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while True:
            try:
                for line in self._status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.value = max(self.value, int(line.split()[1]) * 1024)
            except (OSError, ValueError):
                return  # the process has exited
            if self._stop.wait(interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def warm_up(env: dict) -> None:
    """Load the code location once, untimed: the first method must not pay for a cold file cache."""
    subprocess.run([venv_bin("dagster"), "asset", "list", "-m", MODULE, "--select", "/".join(key_of(ASSET).path)],
                   cwd=REPO_ROOT, env=env, capture_output=True, check=False)


def empty_events(ctx: BenchContext) -> None:
    with ctx.superuser() as conn:
        conn.execute("TRUNCATE dwh.events")


def refresh_log_mark(ctx: BenchContext) -> int:
    with ctx.superuser() as conn:
        return conn.execute("SELECT coalesce(max(id), 0) FROM dwh.refresh_log").fetchone()[0]


# ----- correctness ------------------------------------------------------------------------------


def verify(ctx: BenchContext, instance: dg.DagsterInstance, window: Window, method: str, record_mark: int,
           log_mark: int, runs: list[CliRun]) -> tuple[str, str, dict]:
    """The window's checksum, what is wrong (empty when nothing), and where the time went."""
    where, params = window.where
    with ctx.superuser() as conn:
        copy_sum = checksum(conn, ASSET, EVENTS.row_text, where, params)
        windows = conn.execute("SELECT window_start, window_end FROM dwh.refresh_log WHERE id > %s"
                               " AND table_name = 'events' ORDER BY id", (log_mark,)).fetchall()
    by_partition = materializing_runs(instance, window, record_mark)
    problems = []
    missing = [k for k in window.keys if not by_partition.get(k)]
    if missing:
        problems.append(f"{len(missing)} of {len(window.keys)} partitions have no new materialization "
                        f"(first: {missing[0]})")
    run_ids = sorted({r for ids in by_partition.values() for r in ids})
    expected_runs = 1 if method == "range" else len(window.keys)
    if len(run_ids) != expected_runs:
        problems.append(f"materializations came from {len(run_ids)} runs, expected {expected_runs}")
    expected_windows = [(window.start, window.end)] if method == "range" else [
        (utc_midnight(d), utc_midnight(d) + dt.timedelta(days=1)) for d in window.days]
    if windows != expected_windows:
        problems.append(f"dwh.refresh_log holds {len(windows)} events refresh(es), not the {len(expected_windows)} "
                        "window(s) the runs should have written")
    return copy_sum, "; ".join(problems), time_breakdown(instance, run_ids, runs)


def materializing_runs(instance: dg.DagsterInstance, window: Window, record_mark: int) -> dict[str, set[str]]:
    """Partition -> run ids of the materializations recorded after ``record_mark``."""
    found: dict[str, set[str]] = {}
    records_filter = dg.AssetRecordsFilter(asset_key=key_of(ASSET), asset_partitions=window.keys,
                                           after_storage_id=record_mark)
    cursor = None
    while True:
        page = instance.fetch_materializations(records_filter, limit=1000, cursor=cursor, ascending=True)
        for record in page.records:
            found.setdefault(record.partition_key, set()).add(record.run_id)
        if not page.has_more:
            return found
        cursor = page.cursor


def time_breakdown(instance: dg.DagsterInstance, run_ids: list[str], runs: list[CliRun]) -> dict:
    """Mean seconds per run: CLI process, the run as Dagster timed it, its asset step and its checks."""
    run_seconds, asset_seconds, check_seconds = [], [], []
    for run_id in run_ids:
        stats = instance.get_run_stats(run_id)
        if stats.start_time and stats.end_time:
            run_seconds.append(stats.end_time - stats.start_time)
        for step in instance.get_run_step_stats(run_id):
            if step.start_time is None or step.end_time is None:
                continue
            (asset_seconds if step.step_key == "__".join(key_of(ASSET).path) else check_seconds).append(
                step.end_time - step.start_time)
    n = max(1, len(runs))
    cli = sum(r.seconds for r in runs) / n
    run = sum(run_seconds) / n
    return {
        "runs": len(run_ids),
        "mean_cli_process_s": round(cli, 3),
        "mean_dagster_run_s": round(run, 3),
        "mean_outside_run_s": round(cli - run, 3),  # interpreter start, imports, code location, run record
        "mean_asset_step_s": round(sum(asset_seconds) / n, 3),
        "mean_check_steps_s": round(sum(check_seconds) / n, 3),
        "peak_cli_rss_mb": round(max(r.peak_rss for r in runs) / 1024 / 1024, 1),
    }
