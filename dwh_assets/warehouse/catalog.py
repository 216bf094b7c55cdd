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
- marts: ``dwh.refresh_mart_<name>(p_start timestamptz, p_end timestamptz) RETURNS dwh.refresh_log``
  replaces the whole UTC days of ``[p_start, p_end)``; ``dwh.refresh_pending_mart(p_mart text)``
  refreshes the days the copies' refreshes queued (what the mart's pg_cron job runs).
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

# The control plane's contract: the relations the refresh routines read, each column they
# read and its type as information_schema.columns.data_type names it (docs/source-contract.md).
# `dwh migrate` checks the real source against it, through the warehouse server, before it
# changes anything. Other tables and columns are allowed; a missing or mistyped one is not.
CONTROL_PLANE_CONTRACT: dict[str, dict[str, str]] = {
    "public.organizations": {"organization_id": "text", "plan": "text"},
    "public.instances": {
        "instance_id": "uuid", "organization_id": "text", "name": "text", "region": "text", "cpu": "integer",
        "memory_gb": "integer", "storage_gb": "integer", "created_at": "timestamp with time zone",
        "updated_at": "timestamp with time zone", "deleted_at": "timestamp with time zone",
    },
    "public.instance_state_history": {
        "id": "bigint", "instance_id": "uuid", "state": "text", "changed_at": "timestamp with time zone",
    },
    "pgmq.a_instance_events": {
        "msg_id": "bigint", "read_ct": "integer", "enqueued_at": "timestamp with time zone",
        "archived_at": "timestamp with time zone", "vt": "timestamp with time zone", "message": "jsonb",
    },
}
# Source types the copies accept for a contract type (they convert on insert without loss).
CONTRACT_COMPATIBLE_TYPES: dict[str, tuple[str, ...]] = {
    "text": ("text", "character varying"),
    "integer": ("integer", "smallint"),
    "bigint": ("bigint", "integer", "smallint"),
}


class Kind(str, Enum):
    FACT = "fact"
    DIMENSION = "dimension"


class SourceSystem(str, Enum):
    CLERK = "clerk"
    CONTROL_PLANE = "control_plane"
    PROMETHEUS = "prometheus"


# Who answers for the warehouse's assets (Dagster owners), and the domains its groups follow.
OWNERS = ("team:data-platform",)


class Group(str, Enum):
    """Dagster asset groups follow the data: a source sits in the group of the copy it feeds."""

    ACCOUNTS = "accounts"      # who: users, organizations, memberships
    FLEET = "fleet"            # what they run: instances, their states and events
    USAGE = "usage"            # how much: metrics
    MARTS = "marts"
    WAREHOUSE = "warehouse"    # the warehouse's own bookkeeping


@dataclass(frozen=True)
class TableSpec:
    name: str
    kind: Kind
    system: SourceSystem
    group: Group
    # Foreign tables (schema.table) the refresh reads; the first is the primary source.
    sources: tuple[str, ...]
    key: tuple[str, ...]
    description: str
    # pg_cron schedule (GMT) of the routine's recurring job.
    schedule: str
    # Column lineage the names don't tell: copy column -> source columns (schema.table.column).
    # Columns named like a column of a source come from it.
    derived_columns: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Other relations the same refresh writes (each an asset of its own).
    also_writes: tuple[str, ...] = ()
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
    def routine_file(self) -> str:
        """The routine's SQL file under sql/routines (its content is the asset's code version)."""
        return f"refresh_{self.name}.sql"

    @property
    def key_needs_check(self) -> bool:
        """A fact's primary key includes its time column; the catalog key alone is then unenforced."""
        return self.kind is Kind.FACT and self.time_column not in self.key

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
        group=Group.ACCOUNTS,
        sources=("src_clerk.users",),
        key=("user_id",),
        description="Clerk users, with the primary email address.",
        schedule="*/15 * * * *",
    ),
    TableSpec(
        name="organizations",
        kind=Kind.DIMENSION,
        system=SourceSystem.CLERK,
        group=Group.ACCOUNTS,
        sources=("src_clerk.organizations", "src_control_plane.organizations"),
        key=("organization_id",),
        description="Clerk organizations, with the plan from the control plane.",
        schedule="*/15 * * * *",
        derived_columns=(("plan", ("src_control_plane.organizations.plan",)),),
    ),
    TableSpec(
        name="organization_memberships",
        kind=Kind.DIMENSION,
        system=SourceSystem.CLERK,
        group=Group.ACCOUNTS,
        sources=("src_clerk.organization_memberships",),
        key=("organization_id", "user_id"),
        description="Who belongs to which organization, with their role.",
        schedule="*/15 * * * *",
        derived_columns=(("created_at", ("src_clerk.organization_memberships.attrs",)),),
    ),
    TableSpec(
        name="instances",
        kind=Kind.DIMENSION,
        system=SourceSystem.CONTROL_PLANE,
        group=Group.FLEET,
        sources=("src_control_plane.instances",),
        key=("instance_id",),
        description="Database instances of the control plane (size, owner, lifetime).",
        schedule="*/10 * * * *",
    ),
    TableSpec(
        name="instance_state",
        kind=Kind.FACT,
        system=SourceSystem.CONTROL_PLANE,
        group=Group.FLEET,
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
        group=Group.FLEET,
        sources=("src_control_plane.a_instance_events",),
        key=("msg_id",),
        description="The control plane's event queue archive (pgmq shape).",
        schedule="*/10 * * * *",
        time_column="enqueued_at",
        lookback_days=1,
        derived_columns=(("event_type", ("src_control_plane.a_instance_events.message",)),),
    ),
    TableSpec(
        name="metrics",
        kind=Kind.FACT,
        system=SourceSystem.PROMETHEUS,
        group=Group.USAGE,
        sources=("src_prometheus.metrics",),
        key=("series_id", "ts"),
        description="Per-instance usage samples (cpu seconds, memory and storage bytes), normalised.",
        schedule="5 * * * *",
        time_column="ts",
        lookback_days=1,
        retention_days=180,
        derived_columns=(
            ("series_id", ("src_prometheus.metrics.metric_name", "src_prometheus.metrics.metric_labels")),
            ("ts", ("src_prometheus.metrics.metric_time",)),
            ("value", ("src_prometheus.metrics.metric_value",)),
        ),
        also_writes=("dwh.metric_series",),
    ),
)

ROUTINE_ARGUMENTS = {Kind.FACT: "timestamptz, timestamptz", Kind.DIMENSION: "date"}


@dataclass(frozen=True)
class MartSpec:
    """An incremental mart: per-day measures in ``mart.<name>_days`` (partitioned by day), read
    through the view ``mart.<name>``; refreshed per window by ``dwh.refresh_mart_<name>``."""

    name: str
    # Local copies it reads (lineage); the first ones listed in stale_when also queue its days.
    reads: tuple[str, ...]
    # Catalog tables whose refreshes queue the days they changed for this mart (dwh.mart_inputs).
    stale_when: tuple[str, ...]
    key: tuple[str, ...]
    description: str
    # pg_cron schedule of the job that refreshes the queued days (dwh.refresh_pending_mart).
    # Column lineage: mart column -> columns of the relations it reads (schema.table.column).
    column_lineage: tuple[tuple[str, tuple[str, ...]], ...] = ()
    schedule: str = "2-59/5 * * * *"  # a few minutes after the copies (*/10, */15), every 5 minutes
    # Days of partitions pg_partman keeps; None keeps them all.
    retention_days: int | None = 400
    freshness: dt.timedelta = dt.timedelta(hours=2)

    @property
    def routine_file(self) -> str:
        return f"refresh_mart_{self.name}.sql"

    @property
    def relation(self) -> str:
        """The view people and dashboards read."""
        return f"mart.{self.name}"

    @property
    def table(self) -> str:
        """The partitioned table the refresh writes."""
        return f"mart.{self.name}_days"

    @property
    def routine(self) -> str:
        return f"dwh.refresh_mart_{self.name}"

    routine_arguments = ROUTINE_ARGUMENTS[Kind.FACT]

    @property
    def cron_job_name(self) -> str:
        return f"{CRON_JOB_PREFIX}refresh_mart_{self.name}"

    def cron_command(self) -> str:
        return f"SELECT {PENDING_MART_ROUTINE}('{self.name}')"


PENDING_MART_ROUTINE = "dwh.refresh_pending_mart"
PENDING_MART_ROUTINE_ARGUMENTS = "text"

MARTS: tuple[MartSpec, ...] = (
    MartSpec(
        name="org_daily_usage",
        reads=("dwh.organizations", "dwh.instances", "dwh.metrics", "dwh.metric_series", "dwh.organization_memberships"),
        # Organization names are joined at read time: a rename queues nothing.
        stale_when=("instances", "metrics", "organization_memberships"),
        key=("organization_id", "day"),
        description="Per organization and UTC day: instances alive, vCPU-hours, storage GB-days, members.",
        column_lineage=(
            ("organization_id", ("dwh.instances.organization_id", "dwh.metric_series.organization_id")),
            ("day", ("dwh.instances.created_at", "dwh.instances.deleted_at", "dwh.metrics.ts")),
            ("organization_name", ("dwh.organizations.name",)),
            ("instances", ("dwh.instances.instance_id", "dwh.instances.created_at", "dwh.instances.deleted_at")),
            ("vcpu_hours", ("dwh.instances.cpu", "dwh.instances.created_at", "dwh.instances.deleted_at")),
            ("storage_gb_days", ("dwh.metrics.value", "dwh.metric_series.metric_name")),
            ("members", ("dwh.organization_memberships.user_id", "dwh.organization_memberships.created_at")),
        ),
    ),
    MartSpec(
        name="daily_signups",
        reads=("dwh.users",),
        stale_when=("users",),
        key=("day",),
        description="Clerk sign-ups per UTC day (with an email), and the running total of users.",
        # One row a day, and the running total needs every day since the first user.
        retention_days=None,
        column_lineage=(
            ("day", ("dwh.users.created_at",)),
            ("signups", ("dwh.users.user_id",)),
            ("with_email", ("dwh.users.email",)),
            ("total_users", ("dwh.users.user_id", "dwh.users.created_at")),
        ),
    ),
)
MARTS += (
    MartSpec(
        name="instance_state_daily",
        reads=("dwh.instance_state",),
        stale_when=("instance_state",),
        key=("day", "state"),
        description="Per UTC day and state: the instance state transitions into it, and the instances that made them.",
        column_lineage=(
            ("day", ("dwh.instance_state.changed_at",)),
            ("state", ("dwh.instance_state.state",)),
            ("transitions", ("dwh.instance_state.id",)),
            ("instances", ("dwh.instance_state.instance_id",)),
        ),
    ),
)
MART_BY_NAME = {mart.name: mart for mart in MARTS}

# Plain views the dashboards read (sql/migrations/0020.dashboard_views.sql): computed when
# read, so nothing refreshes them, no pg_cron job and no Dagster run; Dagster shows them as
# external assets downstream of what they read (view -> relations it reads). A snapshot
# table (dwh.<name>_snapshot) is part of its dimension's asset, so the dimension is named.
VIEWS: dict[str, tuple[str, ...]] = {
    "mart.growth_daily": ("dwh.organizations", "dwh.instances"),
    "mart.instance_current_state": ("dwh.instances", "dwh.instance_state"),
    "mart.cron_job_runs": ("cron.job_run_details",),
    "mart.refresh_health_hourly": ("dwh.refresh_log", "mart.cron_job_runs"),
    "mart.refresh_latest": ("dwh.refresh_log", "mart.cron_job_runs"),
}
# Relations the views read that no refresh produces (dwh.refresh_log is an asset of its own,
# written by every refresh): pg_cron's history, an external asset so the lineage is complete.
BOOKKEEPING: dict[str, str] = {
    "cron.job_run_details": "pg_cron's run history of the warehouse's jobs (read through dwh.cron_job_runs()).",
}

BY_NAME = {spec.name: spec for spec in CATALOG}

# Maintenance jobs: name -> default schedule. Their commands live in warehouse.cron_jobs.
PARTMAN_MAINTENANCE_JOB = f"{CRON_JOB_PREFIX}partman_maintenance"
PURGE_CRON_HISTORY_JOB = f"{CRON_JOB_PREFIX}purge_cron_history"
MAINTENANCE_SCHEDULES = {PARTMAN_MAINTENANCE_JOB: "7 * * * *", PURGE_CRON_HISTORY_JOB: "30 3 * * *"}


def schedulable_jobs() -> dict[str, str]:
    """Every pg_cron job the project declares, by the name a configuration's [schedules] uses.

    Tables and marts are named without prefix (``users``, ``org_daily_usage``); maintenance
    jobs by their job name without the prefix (``partman_maintenance``). Values are the defaults.
    """
    jobs = {spec.name: spec.schedule for spec in CATALOG}
    jobs.update({mart.name: mart.schedule for mart in MARTS})
    jobs.update({job.removeprefix(CRON_JOB_PREFIX): schedule for job, schedule in MAINTENANCE_SCHEDULES.items()})
    return jobs


def get(name: str) -> TableSpec:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no table {name!r} in the catalog; known: {', '.join(sorted(BY_NAME))}") from None
