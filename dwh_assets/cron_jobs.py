"""pg_cron jobs derived from the catalog, synced by ``dwh migrate``.

Jobs of this project are named ``dwh:<what>``; the sync schedules what is declared,
re-schedules what changed, unschedules ``dwh:`` jobs no longer declared, and never
touches any other job. It runs as the cluster superuser so that each job can run as
the right role (``cron.schedule_in_database``):

- refresh jobs run as the loader (the Dagster sensor reads their history as the loader:
  ``cron.job_run_details`` is row-level-secured by username);
- pg_partman maintenance runs as the owner (it creates and drops partitions);
- the history purge runs as the superuser (it deletes every role's run history).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dwh_assets import catalog
from dwh_assets.catalog import CRON_JOB_PREFIX
from dwh_assets.config import LOADER_ROLE, OWNER_ROLE, WAREHOUSE_DB, StackConfig
from dwh_assets.stack.postgres import Postgres

MART_SCHEDULE = "20 * * * *"


@dataclass(frozen=True)
class CronJob:
    name: str
    schedule: str
    command: str
    username: str


@dataclass
class SyncResult:
    scheduled: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unscheduled: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not (self.scheduled or self.updated or self.unscheduled):
            return "jobs unchanged"
        return f"{len(self.scheduled)} scheduled, {len(self.updated)} updated, {len(self.unscheduled)} unscheduled"


def history_retention_days() -> int:
    return int(os.environ.get("DWH_CRON_HISTORY_DAYS", "14"))


def mart_job_name(mart: str) -> str:
    return f"{CRON_JOB_PREFIX}refresh_{mart.replace('.', '_')}"


def desired_jobs(superuser: str) -> list[CronJob]:
    jobs = [CronJob(spec.cron_job_name, spec.schedule, spec.cron_command(), LOADER_ROLE) for spec in catalog.CATALOG]
    jobs += [
        CronJob(mart_job_name(mart), MART_SCHEDULE, f"SELECT dwh.refresh_mart('{mart.split('.', 1)[1]}')", LOADER_ROLE)
        for mart in catalog.MARTS
    ]
    jobs.append(CronJob(f"{CRON_JOB_PREFIX}partman_maintenance", "7 * * * *", "CALL partman.run_maintenance_proc()", OWNER_ROLE))
    jobs.append(
        CronJob(
            f"{CRON_JOB_PREFIX}purge_cron_history",
            "30 3 * * *",
            "DELETE FROM cron.job_run_details WHERE coalesce(end_time, start_time) "
            f"< now() - interval '{history_retention_days()} days'",
            superuser,
        )
    )
    return jobs


def sync(cfg: StackConfig, jobs: list[CronJob] | None = None) -> SyncResult:
    jobs = desired_jobs(cfg.server_user) if jobs is None else jobs
    result = SyncResult()
    with Postgres(cfg).connect(WAREHOUSE_DB) as conn:
        current = {
            row[1]: row
            for row in conn.execute(
                "SELECT jobid, jobname, schedule, command, database, username, active FROM cron.job "
                "WHERE starts_with(jobname, %s)",
                (CRON_JOB_PREFIX,),
            ).fetchall()
        }
        wanted = {job.name: job for job in jobs}
        for name, row in current.items():
            job = wanted.get(name)
            if job is None or (row[2], row[3], row[4], row[5], row[6]) != (
                job.schedule, job.command, WAREHOUSE_DB, job.username, True,
            ):
                conn.execute("SELECT cron.unschedule(%s)", (row[0],))
                (result.unscheduled if job is None else result.updated).append(name)
        for name, job in wanted.items():
            if name in current and name not in result.updated:
                continue
            conn.execute(
                "SELECT cron.schedule_in_database(%s, %s, %s, %s, %s, true)",
                (job.name, job.schedule, job.command, WAREHOUSE_DB, job.username),
            )
            if name not in result.updated:
                result.scheduled.append(name)
    return result
