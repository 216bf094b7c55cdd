"""pg_cron jobs derived from the catalog and the deployment's schedules, synced by ``dwh migrate``.

Jobs of this project are named ``dwh:<what>``; the sync schedules what is declared,
re-schedules what changed, unschedules ``dwh:`` jobs no longer declared, and never
touches any other job. Each job is scheduled *by the role that runs it*, connected to
the database pg_cron lives in (``cron.database_name``): ``cron.schedule`` when that is
the warehouse database, ``cron.schedule_in_database`` into the warehouse otherwise. So
no superuser is needed, and ``cron.job`` / ``cron.job_run_details`` (row-level-secured by
username) show each role its own jobs:

- refresh jobs run as the loader (the Dagster sensor reads their history as the loader),
  among them one per mart that refreshes the days the copies' refreshes queued, and the
  daily reconciliation of the facts with their sources; each refresh is bounded by its
  timeout (the catalog's, or ``[timeouts]`` of the deployment);
- pg_partman maintenance runs as the owner (it creates and drops partitions);
- each of them purges its own run history daily (pg_cron keeps it forever otherwise), in
  the database pg_cron lives in, where ``cron.job_run_details`` is.

After a sync, ``cron_probe`` proves that pg_cron can run a job as each role in each database.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import psycopg

from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.catalog import CRON_JOB_PREFIX, Catalog
from dwh_assets.warehouse.connect import connect
from dwh_assets.warehouse.deployment import DeploymentConfig

Runner = Literal["owner", "loader"]


@dataclass(frozen=True)
class CronJob:
    name: str
    schedule: str
    command: str
    runner: Runner  # the role that owns and runs the job
    # Runs in the database pg_cron lives in (its own tables) instead of the warehouse.
    in_cron_database: bool = False

    def database(self, warehouse: str, cron_database: str) -> str:
        return cron_database if self.in_cron_database else warehouse


@dataclass
class SyncResult:
    scheduled: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unscheduled: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not (self.scheduled or self.updated or self.unscheduled):
            return "jobs unchanged"
        return f"{len(self.scheduled)} scheduled, {len(self.updated)} updated, {len(self.unscheduled)} unscheduled"

    def lines(self) -> list[str]:
        lines = [f"{verb} {name}" for verb, names in (("schedule", self.scheduled), ("update", self.updated),
                                                      ("unschedule", self.unscheduled)) for name in names]
        return lines + [f"{len(self.unchanged)} job(s) unchanged"]


def with_timeout(command: str, timeout: dt.timedelta) -> str:
    """``command`` bounded by ``timeout``: pg_cron sends the string as one simple query, in a session of
    the run's own, where the SET bounds each statement after it and nothing else."""
    return f"SET statement_timeout = '{max(1, int(timeout.total_seconds()))}s'; {command}"


def purge_command(days: int) -> str:
    # Row-level security limits the DELETE to the running role's own history.
    return f"DELETE FROM cron.job_run_details WHERE coalesce(end_time, start_time) < now() - interval '{int(days)} days'"


def desired_jobs(cfg: DeploymentConfig, entries: Catalog = catalog.PRODUCT) -> list[CronJob]:
    """A refresh job per catalog table and mart (the loader's), the facts' daily reconciliation (the
    loader's: it replaces the days that differ), pg_partman maintenance, the purges."""
    jobs = [CronJob(entry.cron_job_name, cfg.schedules.get(entry.name) or entry.schedule,
                    with_timeout(entry.cron_command(), cfg.timeout(entry)), "loader")
            for entry in entries.refreshed()]
    reconciliation = entries.reconciliation
    if reconciliation is not None and entries.reconciled():
        jobs.append(CronJob(reconciliation.cron_job_name, cfg.schedules.get(reconciliation.name) or reconciliation.schedule,
                            reconciliation.cron_command(), "loader"))
    maintenance = catalog.PARTMAN_MAINTENANCE_JOB
    jobs.append(CronJob(maintenance, cfg.schedule(maintenance.removeprefix(CRON_JOB_PREFIX)),
                        "CALL partman.run_maintenance_proc()", "owner"))
    purge = catalog.PURGE_CRON_HISTORY_JOB
    for runner in ("owner", "loader"):
        jobs.append(CronJob(purge, cfg.schedule(purge.removeprefix(CRON_JOB_PREFIX)),
                            purge_command(cfg.refresh.cron_history_days), runner, in_cron_database=True))
    return jobs


def _current(conn: psycopg.Connection) -> dict[str, tuple]:
    """This role's project jobs: name -> (jobid, schedule, command, database, active, nodename, nodeport)."""
    rows = conn.execute(
        "SELECT jobname, jobid, schedule, command, database, active, nodename, nodeport FROM cron.job "
        "WHERE username = current_user AND starts_with(jobname, %s)",
        (CRON_JOB_PREFIX,),
    ).fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def _node(conn: psycopg.Connection, database: str, cron_database: str) -> tuple[str, int]:
    """Where pg_cron connects to run a job scheduled now (``cron.host``, the server's port).

    A job keeps the node it was scheduled with: jobs restored from a dump of another server still
    name that server's socket and port, and would run there. ``cron.host`` is readable by superusers
    only, so a job is scheduled and rolled back to see it.
    """
    with conn.transaction(force_rollback=True):
        jobid = schedule(conn, CronJob(f"{CRON_JOB_PREFIX}node", "0 0 31 2 *", "SELECT 1", "loader"), database, cron_database)
        return conn.execute("SELECT nodename, nodeport FROM cron.job WHERE jobid = %s", (jobid,)).fetchone()


def _diff(current: dict[str, tuple], wanted: Iterable[CronJob], databases: tuple[str, str], role: str,
          result: SyncResult, node: tuple[str, int] | None = None) -> tuple[list, list]:
    """(jobids to unschedule, jobs to schedule), recording ``<job> (<role>)`` in ``result``.

    ``databases``: (the warehouse, the database pg_cron lives in); ``node``: where pg_cron runs a job
    scheduled now (``_node``), which every job must name (None: not compared).
    """
    wanted = {job.name: job for job in wanted}
    drop, add = [], []
    for name, (jobid, schedule, command, db, active, *job_node) in current.items():
        job = wanted.get(name)
        if job is None:
            drop.append(jobid)
            result.unscheduled.append(f"{name} ({role})")
        elif (schedule, command, db, active) != (job.schedule, job.command, job.database(*databases), True) \
                or (node is not None and tuple(job_node) != tuple(node)):
            drop.append(jobid)
            add.append(job)
            result.updated.append(f"{name} ({role})")
        else:
            result.unchanged.append(f"{name} ({role})")
    for name, job in wanted.items():
        if name not in current:
            add.append(job)
            result.scheduled.append(f"{name} ({role})")
    return drop, add


def _by_runner(jobs: list[CronJob]) -> dict[Runner, list[CronJob]]:
    grouped: dict[Runner, list[CronJob]] = {"owner": [], "loader": []}
    for job in jobs:
        grouped[job.runner].append(job)
    return grouped


def schedule(conn: psycopg.Connection, job: CronJob, database: str, cron_database: str) -> int:
    """Schedule ``job`` as the connected role (connected to ``cron_database``) to run in ``database``; its jobid."""
    if database == cron_database:
        return conn.execute("SELECT cron.schedule(%s, %s, %s)", (job.name, job.schedule, job.command)).fetchone()[0]
    # username NULL: the job runs as the caller (naming any user needs a superuser).
    return conn.execute("SELECT cron.schedule_in_database(%s, %s, %s, %s, NULL, true)",
                        (job.name, job.schedule, job.command, database)).fetchone()[0]


def sync(cfg: DeploymentConfig, cron_database: str, jobs: list[CronJob] | None = None) -> SyncResult:
    """Make each role's ``dwh:`` jobs equal to ``jobs`` (default: ``desired_jobs``)."""
    jobs = desired_jobs(cfg) if jobs is None else jobs
    databases = (cfg.warehouse.database, cron_database)
    result = SyncResult()
    for runner, wanted in _by_runner(jobs).items():
        with connect(cfg, runner, cron_database) as conn:
            node = _node(conn, cfg.warehouse.database, cron_database)
            drop, add = _diff(_current(conn), wanted, databases, cfg.logins()[runner].user, result, node)
            with conn.transaction():
                for jobid in drop:
                    conn.execute("SELECT cron.unschedule(%s)", (jobid,))
                for job in add:
                    schedule(conn, job, job.database(*databases), cron_database)
    return result


def plan(cfg: DeploymentConfig, cron_database: str, existing_roles: Iterable[str] = (),
         jobs: list[CronJob] | None = None) -> SyncResult:
    """What ``sync`` would do, read as each role (a role that does not exist yet has no jobs)."""
    result = SyncResult()
    existing = set(existing_roles)
    for runner, wanted in _by_runner(desired_jobs(cfg) if jobs is None else jobs).items():
        current: dict[str, tuple] = {}
        node = None
        if cfg.logins()[runner].user in existing:
            with connect(cfg, runner, cron_database) as conn:
                current = _current(conn)
                node = _node(conn, cfg.warehouse.database, cron_database)
        _diff(current, wanted, (cfg.warehouse.database, cron_database), cfg.logins()[runner].user, result, node)
    return result
