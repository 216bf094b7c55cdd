"""Fill the warehouse once after ``dwh up``, through Dagster, as a user would from the shell.

Two ``dg launch --assets`` runs, recorded in Dagster's Postgres storage:

1. the dimensions (current state, and today's snapshot);
2. the facts and the marts, the whole history ``history_start...today`` as one range run
   (``BackfillPolicy.single_run``: one window per table, through the routines pg_cron runs;
   the marts after the facts they read).

Output of each run goes to ``logs/materialize.log``; progress lines name the run and its
row counts (read back from ``dwh.refresh_log``).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import time
from collections.abc import Callable

import psycopg

from dwh_assets.warehouse import catalog
from dwh_assets.local.config import LOADER_ROLE, REPO_ROOT, WAREHOUSE_DB, StackConfig
from dwh_assets.local.dagster import venv_bin, prepare_dagster_home
from dwh_assets.local.process import StackError

CODE_LOCATION_MODULE = "dwh_assets.definitions"


def asset_path(relation: str) -> str:
    """``schema.table`` as the CLI's ``--select`` spells an asset key."""
    return relation.replace(".", "/")


def planned_runs(cfg: StackConfig, today: dt.date) -> list[tuple[str, list[str]]]:
    dims = [s.local_table for s in catalog.CATALOG if s.kind is catalog.Kind.DIMENSION]
    ranged = [s.local_table for s in catalog.CATALOG if s.kind is catalog.Kind.FACT] + [m.relation for m in catalog.MARTS]
    select = lambda rels: ",".join(asset_path(r) for r in rels)  # noqa: E731
    return [
        (f"dimensions, snapshot {today}", ["--assets", select(dims)]),
        (f"facts and marts, {cfg.history_start}...{today} as one run",
         ["--assets", select(ranged), "--partition-range", f"{cfg.history_start.isoformat()}...{today.isoformat()}"]),
    ]


def _logged_rows(cfg: StackConfig, since: dt.datetime) -> list[tuple]:
    """The run's refreshes: dwh.refresh_log rows since ``since``, without those of the pg_cron
    jobs that ran meanwhile (their backends are the runs' job_pid; the stack's pg_cron lives
    in the warehouse database and the loader sees its own jobs' runs)."""
    with psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE)) as conn:
        return conn.execute(
            "SELECT table_name, rows_inserted, rows_updated, rows_deleted, duration_ms FROM dwh.refresh_log l "
            "WHERE finished_at >= %(since)s AND NOT EXISTS (SELECT FROM cron.job_run_details d "
            "WHERE d.job_pid = l.backend_pid AND d.start_time >= %(since)s) ORDER BY id",
            {"since": since},
        ).fetchall()


def materialize_all(cfg: StackConfig, progress: Callable[[str], None] = print) -> None:
    prepare_dagster_home(cfg)
    env = os.environ | cfg.client_env()
    today = dt.datetime.now(dt.timezone.utc).date()
    log_path = cfg.log_file("materialize")
    with open(log_path, "a") as log:
        for title, args in planned_runs(cfg, today):
            argv = [venv_bin("dg"), "launch", "-m", CODE_LOCATION_MODULE, *args]
            progress(f"  dg launch {' '.join(args)}")
            since = dt.datetime.now(dt.timezone.utc)
            t0 = time.monotonic()
            log.write(f"\n=== {title}: {' '.join(argv)}\n")
            log.flush()
            done = subprocess.run(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                raise StackError(f"materialising {title} failed (exit {done.returncode}); see {log_path}")
            for table, ins, upd, dele, ms in _logged_rows(cfg, since):
                progress(f"    {table}: +{ins:,} ~{upd:,} -{dele:,} rows in {ms / 1000:.1f}s")
            progress(f"    {title}: done in {time.monotonic() - t0:.1f}s")
    refresh_pending_marts(cfg, progress)


def refresh_pending_marts(cfg: StackConfig, progress: Callable[[str], None] = print) -> None:
    """What the marts' pg_cron jobs do within minutes, done now: days the copies' refreshes
    queued outside the history window (e.g. sign-ups of users older than it)."""
    with psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True) as conn:
        for mart in catalog.MARTS:
            log = conn.execute("SELECT window_start, window_end, rows_inserted FROM dwh.refresh_pending_mart(%s)",
                               (mart.name,)).fetchone()
            if log[0] is not None:
                progress(f"    {mart.relation}: queued days [{log[0]:%Y-%m-%d}, {log[1]:%Y-%m-%d}) refreshed, "
                         f"{log[2]:,} rows (what its pg_cron job {mart.cron_job_name} would do)")
