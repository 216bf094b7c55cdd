"""Prove that pg_cron can run a job as each role, in each database its jobs run in.

pg_cron runs a job by connecting as the job's role, over libpq to ``cron.host`` or in a
background worker (``cron.use_background_workers``). Scheduling succeeds either way; a
job that cannot log in only fails later, with pg_cron's bare "connection failed". So after
the sync, ``dwh migrate`` schedules a one-shot job per (role, database) — ``SELECT
current_user`` every minute, named ``dwh:probe:<database>`` — waits for its first run,
removes it, and names the fix when it failed.

pg_cron's finest schedule is a minute (1.4): a probe costs up to a minute. So a role and
database are probed only when the jobs there changed since the last probe, or the last
probe failed; ``dwh.cron_probe`` records each outcome.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import psycopg

from dwh_assets.warehouse.catalog import CRON_JOB_PREFIX
from dwh_assets.warehouse.connect import connect
from dwh_assets.warehouse.cron_jobs import CronJob, Runner, desired_jobs, schedule
from dwh_assets.warehouse.deployment import DeploymentConfig

PROBE_PREFIX = f"{CRON_JOB_PREFIX}probe:"
PROBE_COMMAND = "SELECT current_user"
# One schedule tick (a minute), the launcher's own poll, a busy host.
DEADLINE_SECONDS = 180


@dataclass(frozen=True)
class Probe:
    runner: Runner
    role: str
    database: str
    fingerprint: str  # of the role's jobs in that database


@dataclass
class Outcome:
    probe: Probe
    succeeded: bool
    message: str


def probes(cfg: DeploymentConfig, cron_database: str, jobs: list[CronJob] | None = None) -> list[Probe]:
    """One probe per (role, database) that has jobs, with a fingerprint of those jobs."""
    grouped: dict[tuple[Runner, str], list[CronJob]] = {}
    for job in desired_jobs(cfg) if jobs is None else jobs:
        grouped.setdefault((job.runner, job.database(cfg.warehouse.database, cron_database)), []).append(job)
    found = []
    for (runner, database), group in sorted(grouped.items()):
        text = "\n".join(sorted(f"{j.name}\t{j.schedule}\t{j.command}" for j in group))
        found.append(Probe(runner, cfg.logins()[runner].user, database, hashlib.sha256(text.encode()).hexdigest()[:16]))
    return found


def due(conn: psycopg.Connection, wanted: list[Probe]) -> list[Probe]:
    """The probes whose jobs changed since the last probe, or whose last probe failed (read as the owner)."""
    last = {(r[0], r[1]): (r[2], r[3]) for r in conn.execute(
        "SELECT role, database, jobs, succeeded FROM dwh.cron_probe").fetchall()}
    return [p for p in wanted if last.get((p.role, p.database)) != (p.fingerprint, True)]


def record(conn: psycopg.Connection, outcomes: list[Outcome]) -> None:
    with conn.transaction():
        for o in outcomes:
            conn.execute(
                "INSERT INTO dwh.cron_probe (role, database, jobs, succeeded, message, probed_at) VALUES (%s, %s, %s, %s, %s, now()) "
                "ON CONFLICT (role, database) DO UPDATE SET jobs = excluded.jobs, succeeded = excluded.succeeded, "
                "message = excluded.message, probed_at = excluded.probed_at",
                (o.probe.role, o.probe.database, o.probe.fingerprint, o.succeeded, o.message))


def run(cfg: DeploymentConfig, cron_database: str, todo: list[Probe], deadline_seconds: float = DEADLINE_SECONDS) -> list[Outcome]:
    """Schedule every probe at once, wait for each one's first finished run, remove them."""
    conns = {runner: connect(cfg, runner, cron_database) for runner in {p.runner for p in todo}}
    scheduled: dict[Probe, int] = {}
    try:
        for p in todo:
            job = CronJob(PROBE_PREFIX + p.database, "* * * * *", PROBE_COMMAND, p.runner)
            scheduled[p] = schedule(conns[p.runner], job, p.database, cron_database)
        return _wait(conns, scheduled, deadline_seconds)
    finally:
        for p, jobid in scheduled.items():
            conns[p.runner].execute("SELECT cron.unschedule(%s)", (jobid,))
        for conn in conns.values():
            conn.close()


def _wait(conns: dict[Runner, psycopg.Connection], scheduled: dict[Probe, int], deadline_seconds: float) -> list[Outcome]:
    outcomes: dict[Probe, Outcome] = {}
    deadline = time.monotonic() + deadline_seconds
    while len(outcomes) < len(scheduled) and time.monotonic() < deadline:
        for p, jobid in scheduled.items():
            if p in outcomes:
                continue
            row = conns[p.runner].execute(
                "SELECT status, return_message FROM cron.job_run_details WHERE jobid = %s "
                "AND status IN ('succeeded', 'failed') ORDER BY runid LIMIT 1", (jobid,)).fetchone()
            if row is not None:
                outcomes[p] = Outcome(p, row[0] == "succeeded", row[1] or "")
        time.sleep(1)
    for p in scheduled:
        outcomes.setdefault(p, Outcome(p, False, f"no run finished within {deadline_seconds:.0f} s"))
    return [outcomes[p] for p in scheduled]


def explain(o: Outcome) -> str:
    """What failed and what to do, in one sentence."""
    p = o.probe
    head = f"pg_cron cannot run jobs as {p.role} in database {p.database} ({o.message.strip() or 'no message'})"
    if "connection failed" in o.message or "password" in o.message:
        fix = (f"pg_cron logs in over libpq to cron.host as {p.role}: give the database server's OS user a passfile "
               f"line for it (~/.pgpass: host:port:{p.database}:{p.role}:password, mode 0600), or let that connection "
               "in without a password (a local socket with peer/trust in pg_hba.conf), or set "
               "cron.use_background_workers = on (on a managed service: the provider's parameter)")
    elif "background worker" in o.message or "no run finished" in o.message:
        fix = ("check that pg_cron's launcher runs (the PostgreSQL log) and, with cron.use_background_workers = on, "
               "that max_worker_processes leaves room for cron.max_running_jobs workers")
    else:
        fix = f"the probe ran `{PROBE_COMMAND}` as {p.role}; the message above is the server's reason"
    return f"{head}: {fix}; `dwh migrate` probes again until it succeeds"
