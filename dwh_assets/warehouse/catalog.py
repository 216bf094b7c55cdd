"""The catalog: one declaration per warehouse table, and the other facts stated once.

pg_cron jobs (``warehouse.cron_jobs``), the grants of ``dwh migrate`` and the Dagster
assets (``warehouse.defs``) are all derived from it. Adding a table = one entry here + its
refresh routine in ``sql/routines/`` + its local table in a migration.

Refresh routines (SQL, in ``sql/routines/refresh_<name>.sql``) share one signature per kind
(``ROUTINE_ARGUMENTS``):

- facts: ``dwh.refresh_<name>(p_start timestamptz, p_end timestamptz) RETURNS dwh.refresh_log``
  replaces exactly the closed-open window ``[p_start, p_end)``;
- dimensions: ``dwh.refresh_<name>(p_snapshot_day date DEFAULT current_date) RETURNS dwh.refresh_log``
  makes the current table equal to the source and writes that day's snapshot;
- marts: ``dwh.refresh_mart(p_mart text) RETURNS dwh.refresh_log``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from enum import Enum

# Every pg_cron job this project owns carries this prefix; the sync never touches others.
CRON_JOB_PREFIX = "dwh:"

# The project's privilege roles, named in the migrations' grants. Each deployment's login
# roles (the configuration's warehouse.owner / loader / reader) are members of them, or are them.
OWNER_GROUP = "dwh_owner"      # owns every object, runs migrations and pg_partman maintenance
LOADER_GROUP = "dwh_loader"    # runs the refresh routines (pg_cron, Dagster), reads sources
READER_GROUP = "dwh_reader"    # reads dwh and mart, nothing else

# Usage metrics copied from Prometheus, by what the marts use them for. A deployment may
# name them differently (prometheus.metrics in its configuration); the marts read the
# names from dwh.settings ('metrics.<purpose>').
DEFAULT_METRICS = {
    "cpu": "dwh_instance_cpu_seconds_total",
    "memory": "dwh_instance_memory_bytes",
    "storage": "dwh_instance_storage_bytes",
}
METRIC_NAME_PATTERN = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

# Control plane schemas imported into src_control_plane (IMPORT FOREIGN SCHEMA), each with
# the tables to import (None: all). The refresh routines read these relations.
CONTROL_PLANE_IMPORTS: dict[str, tuple[str, ...] | None] = {"public": None, "pgmq": ("a_instance_events",)}


class Kind(str, Enum):
    FACT = "fact"
    DIMENSION = "dimension"


class SourceSystem(str, Enum):
    CLERK = "clerk"
    CONTROL_PLANE = "control_plane"
    PROMETHEUS = "prometheus"


@dataclass(frozen=True)
class TableSpec:
    name: str
    kind: Kind
    system: SourceSystem
    # Foreign tables (schema.table) the refresh reads; the first is the primary source.
    sources: tuple[str, ...]
    key: tuple[str, ...]
    description: str
    # pg_cron schedule (GMT) of the routine's recurring job.
    schedule: str
    # Facts: the column the table is partitioned by, and how far back the cron job
    # re-reads for late data (whole days, ending with today).
    time_column: str | None = None
    lookback_days: int = 0
    # pg_partman retention of daily partitions (facts, and dimension snapshots).
    retention_days: int = 400
    # How stale the local copy may get before Dagster calls it overdue.
    freshness: dt.timedelta = dt.timedelta(hours=2)

    @property
    def local_table(self) -> str:
        return f"dwh.{self.name}"

    @property
    def snapshot_table(self) -> str | None:
        return f"dwh.{self.name}_snapshot" if self.kind is Kind.DIMENSION else None

    @property
    def routine(self) -> str:
        return f"dwh.refresh_{self.name}"

    @property
    def routine_arguments(self) -> str:
        return ROUTINE_ARGUMENTS[self.kind]

    @property
    def cron_job_name(self) -> str:
        return f"{CRON_JOB_PREFIX}refresh_{self.name}"

    def cron_command(self) -> str:
        """The SQL pg_cron runs: the same routine Dagster calls."""
        if self.kind is Kind.FACT:
            return (
                f"SELECT {self.routine}(date_trunc('day', now()) - interval '{int(self.lookback_days)} days', "
                f"date_trunc('day', now()) + interval '1 day')"
            )
        return f"SELECT {self.routine}(current_date)"


CATALOG: tuple[TableSpec, ...] = (
    TableSpec(
        name="users",
        kind=Kind.DIMENSION,
        system=SourceSystem.CLERK,
        sources=("src_clerk.users",),
        key=("user_id",),
        description="Clerk users, with the primary email address.",
        schedule="*/15 * * * *",
    ),
    TableSpec(
        name="organizations",
        kind=Kind.DIMENSION,
        system=SourceSystem.CLERK,
        sources=("src_clerk.organizations", "src_control_plane.organizations"),
        key=("organization_id",),
        description="Clerk organizations, with the plan from the control plane.",
        schedule="*/15 * * * *",
    ),
    TableSpec(
        name="organization_memberships",
        kind=Kind.DIMENSION,
        system=SourceSystem.CLERK,
        sources=("src_clerk.organization_memberships",),
        key=("organization_id", "user_id"),
        description="Who belongs to which organization, with their role.",
        schedule="*/15 * * * *",
    ),
    TableSpec(
        name="instances",
        kind=Kind.DIMENSION,
        system=SourceSystem.CONTROL_PLANE,
        sources=("src_control_plane.instances",),
        key=("instance_id",),
        description="Database instances of the control plane (size, owner, lifetime).",
        schedule="*/10 * * * *",
    ),
    TableSpec(
        name="instance_state",
        kind=Kind.FACT,
        system=SourceSystem.CONTROL_PLANE,
        sources=("src_control_plane.instance_state_history",),
        key=("id",),
        description="Instance state transitions (creating, running, stopped, ...).",
        schedule="*/10 * * * *",
        time_column="changed_at",
        lookback_days=1,
    ),
    TableSpec(
        name="events",
        kind=Kind.FACT,
        system=SourceSystem.CONTROL_PLANE,
        sources=("src_control_plane.a_instance_events",),
        key=("msg_id",),
        description="The control plane's event queue archive (pgmq shape).",
        schedule="*/10 * * * *",
        time_column="enqueued_at",
        lookback_days=1,
    ),
    TableSpec(
        name="metrics",
        kind=Kind.FACT,
        system=SourceSystem.PROMETHEUS,
        sources=("src_prometheus.metrics",),
        key=("series_id", "ts"),
        description="Per-instance usage samples (cpu seconds, memory and storage bytes), normalised.",
        schedule="5 * * * *",
        time_column="ts",
        lookback_days=1,
        retention_days=180,
    ),
)

ROUTINE_ARGUMENTS = {Kind.FACT: "timestamptz, timestamptz", Kind.DIMENSION: "date"}
MART_ROUTINE = "dwh.refresh_mart"
MART_ROUTINE_ARGUMENTS = "text"
MART_SCHEDULE = "20 * * * *"

MARTS: dict[str, tuple[str, ...]] = {
    # mart -> the local copies it reads
    "mart.org_daily_usage": ("dwh.organizations", "dwh.instances", "dwh.metrics", "dwh.organization_memberships"),
    "mart.daily_signups": ("dwh.users",),
}

# Plain views the dashboards read (sql/migrations/0020.dashboard_views.sql): computed when
# read, so nothing refreshes them, no pg_cron job and no Dagster run; Dagster shows them as
# external assets downstream of what they read (view -> relations it reads). A snapshot
# table (dwh.<name>_snapshot) is part of its dimension's asset, so the dimension is named.
VIEWS: dict[str, tuple[str, ...]] = {
    "mart.growth_daily": ("dwh.organizations", "dwh.instances"),
    "mart.instance_current_state": ("dwh.instances", "dwh.instance_state"),
    "mart.instance_transitions_daily": ("dwh.instance_state",),
    "mart.cron_job_runs": ("cron.job_run_details",),
    "mart.refresh_health_hourly": ("dwh.refresh_log", "mart.cron_job_runs"),
    "mart.refresh_latest": ("dwh.refresh_log", "mart.cron_job_runs"),
}
# Relations the views read that no refresh produces: written as a side effect of every
# refresh (the log) or by pg_cron itself. External assets too, so the lineage is complete.
BOOKKEEPING: dict[str, str] = {
    "dwh.refresh_log": "One row per committed refresh, written in the refresh's own transaction (pg_cron's and Dagster's).",
    "cron.job_run_details": "pg_cron's run history of the warehouse's jobs (read through dwh.cron_job_runs()).",
}

BY_NAME = {spec.name: spec for spec in CATALOG}

# Maintenance jobs: name -> default schedule. Their commands live in warehouse.cron_jobs.
PARTMAN_MAINTENANCE_JOB = f"{CRON_JOB_PREFIX}partman_maintenance"
PURGE_CRON_HISTORY_JOB = f"{CRON_JOB_PREFIX}purge_cron_history"
MAINTENANCE_SCHEDULES = {PARTMAN_MAINTENANCE_JOB: "7 * * * *", PURGE_CRON_HISTORY_JOB: "30 3 * * *"}


def mart_name(mart: str) -> str:
    """``mart.org_daily_usage`` -> ``org_daily_usage`` (the argument of dwh.refresh_mart)."""
    return mart.split(".", 1)[1]


def mart_job_name(mart: str) -> str:
    return f"{CRON_JOB_PREFIX}refresh_mart_{mart_name(mart)}"


def schedulable_jobs() -> dict[str, str]:
    """Every pg_cron job the project declares, by the name a configuration's [schedules] uses.

    Tables and marts are named without prefix (``users``, ``org_daily_usage``); maintenance
    jobs by their job name without the prefix (``partman_maintenance``). Values are the defaults.
    """
    jobs = {spec.name: spec.schedule for spec in CATALOG}
    jobs.update({mart_name(mart): MART_SCHEDULE for mart in MARTS})
    jobs.update({job.removeprefix(CRON_JOB_PREFIX): schedule for job, schedule in MAINTENANCE_SCHEDULES.items()})
    return jobs


def get(name: str) -> TableSpec:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no table {name!r} in the catalog; known: {', '.join(sorted(BY_NAME))}") from None
