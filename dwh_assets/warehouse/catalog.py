"""The catalog: every table, mart and view of the warehouse, each declared once.

Start here. Each entry states what its relation holds (columns with types, comments and
lineage; key; partition column), when it is refreshed (pg_cron schedule, freshness), what
must hold of it (references, accepted values, window checks) and which SQL file refreshes
it. Everything else is derived (docs/catalog.md):

- ``dwh migrate`` creates the tables a database lacks, registers their daily partitions with
  pg_partman, writes every ``COMMENT``, the grants, ``dwh.mart_inputs``, ``dwh.refresh_jobs``
  and the pg_cron jobs (``warehouse.catalog_ddl``, ``warehouse.cron_jobs``);
- the Dagster definitions (``warehouse.defs``) build one asset per entry, with its checks,
  column schema and lineage, and the sensor's job -> asset mapping;
- the dashboards' dataset descriptions (Superset) and ``docs/catalog.md``.

Adding a table or a mart is one entry here plus one SQL file (docs/adding-a-table.md). The
grammar (``TableSpec``, ``MartSpec``, ``ViewSpec``, ``Column``) is ``catalog_model``.

Refresh routines share one signature per kind (``ROUTINE_ARGUMENTS``):

- facts: ``dwh.refresh_<name>(p_start timestamptz, p_end timestamptz) RETURNS dwh.refresh_log``
  replaces exactly the closed-open window ``[p_start, p_end)``;
- dimensions: ``dwh.refresh_<name>(p_snapshot_day date DEFAULT current_date) RETURNS dwh.refresh_log``
  makes the current table equal to the source and writes that day's snapshot (through
  ``dwh.refresh_dimension``, which takes the routine's staging query);
- marts: ``dwh.refresh_mart_<name>(p_start timestamptz, p_end timestamptz) RETURNS dwh.refresh_log``
  replaces the whole UTC days of ``[p_start, p_end)``; ``dwh.refresh_pending_mart(p_mart text)``
  refreshes the days the copies' refreshes queued (what the mart's pg_cron job runs).
"""

from __future__ import annotations

import re

from dwh_assets.warehouse.catalog_model import (  # noqa: F401 (the grammar, re-exported for readers of the catalog)
    CRON_JOB_PREFIX,
    PENDING_MART_ROUTINE,
    PENDING_MART_ROUTINE_ARGUMENTS,
    ROUTINE_ARGUMENTS,
    AcceptedValues,
    Erase,
    Catalog,
    Column,
    Group,
    Index,
    Kind,
    MartSpec,
    SourceSystem,
    Subject,
    SubjectColumn,
    Table,
    TableSpec,
    ViewSpec,
    WindowCheck,
)
from dwh_assets.warehouse.sql_files import ROUTINES_DIR, VIEWS_DIR

# The project's privilege roles, named in the migrations' grants. Each deployment's login
# roles (the configuration's warehouse.owner / loader / reader) are members of them, or are them.
OWNER_GROUP = "dwh_owner"      # owns every object, runs migrations and pg_partman maintenance
LOADER_GROUP = "dwh_loader"    # runs the refresh routines (pg_cron, Dagster), reads sources
READER_GROUP = "dwh_reader"    # reads dwh and mart, nothing else, and no personal column
# Reads the personal columns too (a member of the reader): granted deliberately, by hand, to a login.
PERSONAL_READER_GROUP = "dwh_personal_reader"

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

# Who answers for the warehouse's assets (Dagster owners).
OWNERS = ("team:data-platform",)

# The states an instance moves through at the control plane (the demo's generator uses them too).
INSTANCE_STATES = AcceptedValues("instance_states", ("creating", "running", "stopping", "stopped", "starting", "deleted"))

TS = "timestamp with time zone"
ATTRS = "'{}'::jsonb"

# ----- accounts (Clerk) ----------------------------------------------------------------------------

USERS = TableSpec(
    name="users",
    kind=Kind.DIMENSION,
    system=SourceSystem.CLERK,
    group=Group.ACCOUNTS,
    sources=("src_clerk.users",),
    key=("user_id",),
    description="Clerk users, with the primary email address, kept equal to the source.",
    schedule="*/15 * * * *",
    columns=(
        Column("user_id", "text", "Clerk user id (user_...).", subject=Subject.USER),
        Column("first_name", "text", "First name.", personal=True),
        Column("last_name", "text", "Last name.", personal=True),
        Column("email", "text", "The primary email address (the one primary_email_address_id names), NULL when there is none.",
               personal=True),
        Column("gender", "text", "Gender, as Clerk holds it (often NULL).", personal=True),
        Column("created_at", TS, "When the user signed up.", not_null=True),
        Column("updated_at", TS, "When Clerk last changed the user.", not_null=True),
        Column("last_sign_in_at", TS, "Last sign-in, NULL if never.", personal=True),
        Column("phone_numbers", "integer", "How many phone numbers the user has (the numbers are in attrs).",
               not_null=True, default="0", personal=True),
        Column("username", "text", "Username, if the Clerk instance uses them.", personal=True),
        Column("attrs", "jsonb", "The whole Clerk user object, as JSON (fields without a column of their own).",
               not_null=True, default=ATTRS, personal=True),
    ),
    indexes=(Index(("created_at",), "users_created_at"),),
)

ORGANIZATIONS = TableSpec(
    name="organizations",
    kind=Kind.DIMENSION,
    system=SourceSystem.CLERK,
    group=Group.ACCOUNTS,
    sources=("src_clerk.organizations", "src_control_plane.organizations"),
    key=("organization_id",),
    description="Clerk organizations, with the plan from the control plane, kept equal to the sources.",
    schedule="*/15 * * * *",
    columns=(
        Column("organization_id", "text", "Clerk organization id (org_...).", subject=Subject.ORGANIZATION),
        Column("name", "text", "Organization name.", not_null=True),
        Column("slug", "text", "URL slug, NULL when unset."),
        Column("plan", "text", "Billing plan, from the control plane's organizations (free, hobby, pro, enterprise).",
               lineage=("src_control_plane.organizations.plan",)),
        Column("created_by", "text", "The user who created it, NULL when unknown (or forgotten).", subject=Subject.USER),
        Column("created_at", TS, "When it was created.", not_null=True),
        Column("updated_at", TS, "When Clerk last changed it.", not_null=True),
        Column("attrs", "jsonb", "The whole Clerk organization object, as JSON.", not_null=True, default=ATTRS),
    ),
)

ORGANIZATION_MEMBERSHIPS = TableSpec(
    name="organization_memberships",
    kind=Kind.DIMENSION,
    system=SourceSystem.CLERK,
    group=Group.ACCOUNTS,
    sources=("src_clerk.organization_memberships",),
    key=("organization_id", "user_id"),
    description="Who belongs to which organization, with their role.",
    schedule="*/15 * * * *",
    columns=(
        Column("organization_id", "text", "The organization.", references="dwh.organizations.organization_id",
               subject=Subject.ORGANIZATION),
        Column("user_id", "text", "The member.", references="dwh.users.user_id", subject=Subject.USER),
        Column("role", "text", "The member's role (org:admin, org:member, ...).", not_null=True),
        Column("created_at", TS, "When the membership began (from the Clerk object), NULL when unknown.",
               lineage=("src_clerk.organization_memberships.attrs",)),
        # Clerk's membership object carries the member's public_user_data: names, email, image.
        Column("attrs", "jsonb", "The whole Clerk membership object, as JSON (with the member's names and email).",
               not_null=True, default=ATTRS, personal=True),
    ),
    indexes=(Index(("user_id",), "organization_memberships_user"),),
)

# ----- fleet (control plane) -----------------------------------------------------------------------

INSTANCES = TableSpec(
    name="instances",
    kind=Kind.DIMENSION,
    system=SourceSystem.CONTROL_PLANE,
    group=Group.FLEET,
    sources=("src_control_plane.instances",),
    key=("instance_id",),
    description="Database instances of the control plane (size, owner, lifetime), kept equal to the source.",
    schedule="*/10 * * * *",
    columns=(
        Column("instance_id", "uuid", "Instance id."),
        Column("organization_id", "text", "The Clerk organization that owns it.", not_null=True,
               references="dwh.organizations.organization_id"),
        Column("name", "text", "Instance name.", not_null=True),
        Column("region", "text", "Cloud region.", not_null=True),
        Column("cpu", "integer", "Provisioned vCPUs.", not_null=True),
        Column("memory_gb", "integer", "Provisioned memory, GB.", not_null=True),
        Column("storage_gb", "integer", "Provisioned storage, GB.", not_null=True),
        Column("created_at", TS, "When it was created.", not_null=True),
        Column("updated_at", TS, "When the control plane last changed it.", not_null=True),
        Column("deleted_at", TS, "When it was deleted, NULL while it exists."),
    ),
    indexes=(Index(("organization_id",), "instances_organization"),),
)

INSTANCE_STATE = TableSpec(
    name="instance_state",
    kind=Kind.FACT,
    system=SourceSystem.CONTROL_PLANE,
    group=Group.FLEET,
    sources=("src_control_plane.instance_state_history",),
    key=("id",),
    description="Instance state transitions (" + ", ".join(INSTANCE_STATES.values) + ").",
    schedule="*/10 * * * *",
    time_column="changed_at",
    lookback_days=1,
    columns=(
        Column("id", "bigint", "Transition id at the control plane.", not_null=True),
        Column("instance_id", "uuid", "The instance.", not_null=True),
        Column("state", "text", "The state entered (accepted_values.instance_states).", not_null=True,
               accepted=INSTANCE_STATES),
        Column("changed_at", TS, "When it entered it (the partition key).", not_null=True),
    ),
    indexes=(Index(("instance_id", "changed_at")),),
)

EVENTS = TableSpec(
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
    columns=(
        Column("msg_id", "bigint", "Queue message id.", not_null=True),
        Column("read_ct", "integer", "How often the message was read before it was archived.", not_null=True),
        Column("enqueued_at", TS, "When the message was enqueued (the partition key).", not_null=True),
        Column("archived_at", TS, "When it was archived.", not_null=True),
        Column("vt", TS, "Visibility timeout at archive time.", not_null=True),
        Column("message", "jsonb", "The message, as JSON.", not_null=True),
        Column("event_type", "text", "message->>'event', stored for filtering.", generated="message ->> 'event'",
               lineage=("src_control_plane.a_instance_events.message",)),
    ),
)

# ----- usage (Prometheus) --------------------------------------------------------------------------

METRIC_SERIES = Table(
    "dwh.metric_series",
    "Each Prometheus label set once: the metric name and its labels; written by the refresh of dwh.metrics.",
    (
        Column("series_id", "bigint", "Identity of the series, referenced by dwh.metrics.", identity=True,
               lineage=("src_prometheus.metrics.metric_name", "src_prometheus.metrics.metric_labels")),
        Column("metric_name", "text", "Prometheus metric name.", not_null=True,
               lineage=("src_prometheus.metrics.metric_name",)),
        Column("labels", "jsonb", "The series labels (without __name__), as JSON.", not_null=True,
               lineage=("src_prometheus.metrics.metric_labels",)),
        Column("instance_id", "text", "labels->>'instance_id'.", generated="labels ->> 'instance_id'"),
        Column("organization_id", "text", "labels->>'organization_id'.", generated="labels ->> 'organization_id'"),
    ),
    primary_key=("series_id",),
    unique=(("metric_name", "labels"),),
)

METRICS = TableSpec(
    name="metrics",
    kind=Kind.FACT,
    system=SourceSystem.PROMETHEUS,
    group=Group.USAGE,
    sources=("src_prometheus.metrics",),
    key=("series_id", "ts"),
    description="Per-instance usage samples (cpu seconds, memory and storage bytes) at the metrics step, normalised.",
    schedule="5 * * * *",
    time_column="ts",
    lookback_days=1,
    retention_days=180,
    columns=(
        Column("series_id", "bigint", "The series (dwh.metric_series).",
               lineage=("src_prometheus.metrics.metric_name", "src_prometheus.metrics.metric_labels")),
        Column("ts", TS, "Sample time, on the step grid (the partition key).",
               lineage=("src_prometheus.metrics.metric_time",)),
        Column("value", "double precision", "Sample value (counters as they are: seconds, bytes).", not_null=True,
               lineage=("src_prometheus.metrics.metric_value",)),
    ),
    indexes=(Index(("ts",)),),
    also_writes=(METRIC_SERIES,),
    checks=(
        # One scan of the window with its bounds as values, so the planner keeps only the window's
        # partitions (a per-day correlated subquery opened every partition of the history each day).
        # The missing sample times are listed as UTC ranges (a Prometheus that was down: its gap).
        # Days start counting at the first complete day of history: Prometheus holds nothing before
        # the earliest sample, so the day it falls in is partial on every deployment.
        WindowCheck("samples_complete", "Every full past day of the window, from the first complete day of history "
                                        "(the first midnight at or after the earliest sample), holds every sample time "
                                        "of the metrics step.", """
            WITH step AS (SELECT dwh.setting('metrics.step_seconds', '3600')::int * interval '1 second' AS s),
            days AS (
                SELECT d FROM generate_series(date_trunc('day', %(start)s::timestamptz, 'UTC'),
                                              %(end)s::timestamptz - interval '1 day', interval '1 day') d
                WHERE d >= %(start)s AND d + interval '1 day' <= least(%(end)s, date_trunc('day', now(), 'UTC'))
                  AND d >= coalesce((SELECT min(m.ts) FROM dwh.metrics m), '-infinity')),
            stamps AS (SELECT DISTINCT m.ts FROM dwh.metrics m WHERE m.ts >= %(start)s AND m.ts < %(end)s),
            missing AS (
                SELECT t, t - row_number() OVER (ORDER BY t) * step.s AS run
                FROM days, step, generate_series(d, d + interval '1 day' - step.s, step.s) t
                WHERE NOT EXISTS (SELECT FROM stamps WHERE stamps.ts = t)),
            gaps AS (SELECT min(t) AS first, max(t) AS last, count(*) AS times FROM missing GROUP BY run)
            SELECT (SELECT count(DISTINCT date_trunc('day', t, 'UTC')) FROM missing) AS bad,
                   (SELECT count(*) FROM days) AS days_checked,
                   (SELECT count(*) FROM missing) AS missing_sample_times,
                   coalesce((SELECT left(string_agg(to_char(first AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')
                                       || CASE WHEN times > 1 THEN to_char(last AT TIME ZONE 'UTC', ' "to" HH24:MI') ELSE '' END
                                       || CASE WHEN (first AT TIME ZONE 'UTC')::date <> (last AT TIME ZONE 'UTC')::date
                                               THEN to_char(last AT TIME ZONE 'UTC', ' "on" YYYY-MM-DD') ELSE '' END,
                                       ', ' ORDER BY first), 1000) || ' UTC' FROM gaps), 'none') AS missing_times"""),
    ),
)

# ----- marts -----------------------------------------------------------------------------------------

DAY = Column("day", "date", "The UTC day (the partition key of the stored table).")

ORG_DAILY_USAGE = MartSpec(
    name="org_daily_usage",
    reads=("dwh.organizations", "dwh.instances", "dwh.metrics", "dwh.metric_series", "dwh.organization_memberships"),
    # Organization names are joined at read time (the view): a rename queues nothing.
    stale_when=("instances", "metrics", "organization_memberships"),
    view_reads=("dwh.organizations",),
    key=("organization_id", "day"),
    description="Per organization and UTC day: instances alive, vCPU-hours, storage GB-days and members.",
    columns=(
        Column("organization_id", "text", "The organization.", references="dwh.organizations.organization_id",
               lineage=("dwh.instances.organization_id", "dwh.metric_series.organization_id")),
        Column("day", "date", DAY.comment, lineage=("dwh.instances.created_at", "dwh.instances.deleted_at", "dwh.metrics.ts")),
        Column("organization_name", "text", "The organization's current name (joined at read time).", stored=False,
               lineage=("dwh.organizations.name",)),
        Column("instances", "bigint", "Instances alive at some time of the day.", not_null=True,
               lineage=("dwh.instances.instance_id", "dwh.instances.created_at", "dwh.instances.deleted_at")),
        Column("vcpu_hours", "numeric", "Provisioned vCPU-hours of the day (cpu x hours alive), 3 decimals.", not_null=True,
               lineage=("dwh.instances.cpu", "dwh.instances.created_at", "dwh.instances.deleted_at")),
        Column("storage_gb_days", "numeric", "Storage in use, GB-days (the storage samples of the day), 3 decimals.",
               not_null=True, lineage=("dwh.metrics.value", "dwh.metric_series.metric_name")),
        Column("members", "bigint", "Members as of the end of the day.", not_null=True,
               lineage=("dwh.organization_memberships.user_id", "dwh.organization_memberships.created_at")),
    ),
    checks=(
        WindowCheck("usage_is_not_negative", "No negative instances, vCPU-hours, storage or members on the refreshed days.",
                    "SELECT count(*) AS bad FROM mart.org_daily_usage_days WHERE day >= %(first_day)s "
                    "AND day < %(end_day)s AND least(instances, vcpu_hours, storage_gb_days, members) < 0"),
    ),
)

DAILY_SIGNUPS = MartSpec(
    name="daily_signups",
    reads=("dwh.users",),
    stale_when=("users",),
    key=("day",),
    description="Clerk sign-ups per UTC day (with an email), and the running total of users.",
    # One row a day, and the running total needs every day since the first user.
    retention_days=None,
    columns=(
        Column("day", "date", DAY.comment, lineage=("dwh.users.created_at",)),
        Column("signups", "bigint", "Users created that day.", not_null=True, lineage=("dwh.users.user_id",)),
        Column("with_email", "bigint", "Of them, users with a primary email address.", not_null=True,
               lineage=("dwh.users.email",), personal=False),  # a count of addresses, none of them
        Column("total_users", "bigint", "Users created up to the end of the day (computed at read time).", stored=False,
               lineage=("dwh.users.user_id", "dwh.users.created_at")),
    ),
    checks=(
        WindowCheck("signups_match_users", "The refreshed days' sign-ups equal the users created on them.", """
            SELECT count(*) AS bad,
                   (SELECT coalesce(sum(signups), 0) FROM mart.daily_signups_days
                     WHERE day >= %(first_day)s AND day < %(end_day)s) AS mart_signups,
                   (SELECT count(*) FROM dwh.users WHERE created_at >= %(start)s AND created_at < %(end)s) AS users_created
            FROM generate_series(%(first_day)s::date, %(end_day)s::date - 1, interval '1 day') d
            WHERE coalesce((SELECT signups FROM mart.daily_signups_days WHERE day = d::date), 0)
               <> (SELECT count(*) FROM dwh.users
                    WHERE created_at >= d::date::timestamp AT TIME ZONE 'UTC'
                      AND created_at < (d::date + 1)::timestamp AT TIME ZONE 'UTC')"""),
    ),
)

INSTANCE_STATE_DAILY = MartSpec(
    name="instance_state_daily",
    reads=("dwh.instance_state",),
    stale_when=("instance_state",),
    key=("day", "state"),
    description="Per UTC day and state: the instance state transitions into it, and the instances that made them.",
    columns=(
        Column("day", "date", DAY.comment, lineage=("dwh.instance_state.changed_at",)),
        Column("state", "text", "The state entered (accepted_values.instance_states).", accepted=INSTANCE_STATES,
               lineage=("dwh.instance_state.state",)),
        Column("transitions", "bigint", "State changes into it that day.", not_null=True,
               lineage=("dwh.instance_state.id",)),
        Column("instances", "bigint", "Distinct instances that entered it that day.", not_null=True,
               lineage=("dwh.instance_state.instance_id",)),
    ),
)

# ----- plain views (dashboards) ------------------------------------------------------------------------

GROWTH_DAILY = ViewSpec(
    "mart.growth_daily",
    "Organizations and live instances per UTC day: the dimension snapshot where one was taken, else reconstructed "
    "from lifetimes.",
    (
        Column("day", "date", "The UTC day, from the history start through today."),
        Column("organizations", "bigint", "Organizations that existed at the end of the day."),
        Column("instances", "bigint", "Instances alive at the end of the day."),
        Column("source", "text", "snapshot: counted from that day's dimension snapshots; reconstructed: from "
                                 "created_at / deleted_at of the current tables."),
    ),
    reads=("dwh.organizations", "dwh.instances", "dwh.organizations_snapshot", "dwh.instances_snapshot"),
    sql_file="growth_daily.sql",
)

INSTANCE_CURRENT_STATE = ViewSpec(
    "mart.instance_current_state",
    "Each instance with region, size and its latest state.",
    (
        Column("instance_id", "uuid", "The instance."),
        Column("organization_id", "text", "The organization that owns it."),
        Column("region", "text", "Cloud region."),
        Column("cpu", "integer", "Provisioned vCPUs."),
        Column("memory_gb", "integer", "Provisioned memory, GB."),
        Column("size", "text", "vCPUs and memory, as one label."),
        Column("state", "text", "Its latest state; deleted once deleted_at has passed, unknown without a transition "
                                "in the retained history."),
        Column("state_since", TS, "When it entered that state."),
    ),
    reads=("dwh.instances", "dwh.instance_state"),
    sql_file="instance_current_state.sql",
)

CRON_JOB_RUNS = ViewSpec(
    "mart.cron_job_runs",
    "pg_cron jobs of the warehouse and their runs (14 days): status, duration, failures.",
    (
        Column("jobname", "text", "The pg_cron job (dwh:...)."),
        Column("table_name", "text", "What its runs refresh, named as dwh.refresh_log names it (a maintenance job: its own name)."),
        Column("schedule", "text", "Its schedule (GMT)."),
        Column("active", "boolean", "Whether pg_cron runs it."),
        Column("runid", "bigint", "The run (NULL: the job has not run in 14 days)."),
        Column("status", "text", "pg_cron's status of the run."),
        Column("started_at", TS, "When the run started."),
        Column("hour", TS, "The hour it started in."),
        Column("finished_at", TS, "When it ended."),
        Column("duration_ms", "double precision", "How long it ran, in milliseconds."),
        Column("failed", "integer", "1 for a failed run, else 0."),
        Column("return_message", "text", "pg_cron's message, cut to 300 characters."),
    ),
    reads=("cron.job_run_details",),
    sql_file="cron_job_runs.sql",
    group=Group.WAREHOUSE,
)

REFRESH_HEALTH_HOURLY = ViewSpec(
    "mart.refresh_health_hourly",
    "Per table and hour (the last 48 hours complete): committed refreshes, rows, duration, lock waits, failed "
    "pg_cron runs.",
    (
        Column("hour", TS, "The hour."),
        Column("table_name", "text", "What was refreshed, as dwh.refresh_log names it."),
        Column("refreshes", "bigint", "Committed refreshes (pg_cron's and Dagster's alike)."),
        Column("failures", "bigint", "Failed pg_cron runs."),
        Column("rows_written", "bigint", "Rows inserted, updated and deleted."),
        Column("rows_read", "bigint", "Rows read from the sources."),
        Column("avg_duration_ms", "numeric", "Mean refresh duration, milliseconds."),
        Column("max_duration_ms", "numeric", "Longest refresh duration, milliseconds."),
        Column("lock_wait_ms", "numeric", "Time spent waiting for a concurrent refresh, milliseconds."),
        Column("refreshes_that_waited", "bigint", "Refreshes that waited for a lock."),
    ),
    reads=("dwh.refresh_log", "mart.cron_job_runs"),
    sql_file="refresh_health_hourly.sql",
    group=Group.WAREHOUSE,
)

REFRESH_LATEST = ViewSpec(
    "mart.refresh_latest",
    "Each refreshed table: its last committed refresh, age in minutes, refreshes and failed pg_cron runs in 24 hours.",
    (
        Column("table_name", "text", "What was refreshed, as dwh.refresh_log names it."),
        Column("last_refresh", TS, "When its last committed refresh finished."),
        Column("minutes_ago", "numeric", "Its age, in minutes."),
        Column("refreshes_24h", "bigint", "Committed refreshes in the last 24 hours."),
        Column("failures_24h", "bigint", "Failed pg_cron runs in the last 24 hours."),
    ),
    reads=("dwh.refresh_log", "mart.cron_job_runs"),
    sql_file="refresh_latest.sql",
    group=Group.WAREHOUSE,
)

REFRESH_FRESHNESS = ViewSpec(
    "mart.refresh_freshness",
    "Each refresh job: its table's last committed refresh against two intervals of its live pg_cron schedule plus "
    "its typical duration; late when older, or when the job is inactive or gone.",
    (
        Column("jobname", "text", "The pg_cron job."),
        Column("table_name", "text", "What it refreshes, as dwh.refresh_log names it."),
        Column("schedule", "text", "Its pg_cron schedule now (NULL: no such job)."),
        Column("active", "boolean", "Whether pg_cron runs it."),
        Column("last_refresh", TS, "When the table's last committed refresh finished (anyone's)."),
        Column("expected_within", "interval", "How old the last refresh may be: two schedule intervals plus the "
                                              "typical duration."),
        Column("minutes_ago", "numeric", "The last refresh's age, in minutes."),
        Column("late", "boolean", "Older than expected_within, never refreshed, or without a job."),
        Column("status", "text", "fresh, or late and why."),
    ),
    reads=("dwh.refresh_log", "mart.cron_job_runs"),
    sql_file="refresh_freshness.sql",
    group=Group.WAREHOUSE,
)

QUALITY_GATE = ViewSpec(
    "mart.quality_gate",
    "Each mart's queued days and those the quality gate holds back (a copy it reads failed a blocking check), with "
    "the reason; released by the copy's next passing refresh.",
    (
        Column("mart", "text", "The mart."),
        Column("queued_days", "bigint", "Days queued for its pg_cron job."),
        Column("held_days", "bigint", "Of them, days held back by the quality gate."),
        Column("held", "text", "The held days, comma-separated (empty: none)."),
        Column("held_since", TS, "When the first of them was held."),
        Column("held_reason", "text", "The failed checks of the copies, with their counts and refresh (empty: none)."),
    ),
    reads=(),
    sql_file="quality_gate.sql",
    group=Group.WAREHOUSE,
)

METRIC_SAMPLES = ViewSpec(
    "dwh.metric_samples",
    "dwh.metrics with its series' name and labels: the denormalised shape prometheus_fdw returns.",
    (
        Column("metric_name", "text", "Prometheus metric name."),
        Column("labels", "jsonb", "The series labels, as JSON."),
        Column("instance_id", "text", "labels->>'instance_id'."),
        Column("organization_id", "text", "labels->>'organization_id'."),
        Column("ts", TS, "Sample time."),
        Column("value", "double precision", "Sample value."),
    ),
    reads=("dwh.metrics", "dwh.metric_series"),
    sql_file="metric_samples.sql",
    group=Group.USAGE,
)

# Relations the views read that no entry creates: pg_cron's history (an external asset, so the
# lineage is complete; the views read it through the SECURITY DEFINER function named here).
CRON_HISTORY = "cron.job_run_details"
READ_THROUGH = {"dwh.cron_job_runs": CRON_HISTORY}

PRODUCT = Catalog(
    tables=(USERS, ORGANIZATIONS, ORGANIZATION_MEMBERSHIPS, INSTANCES, INSTANCE_STATE, EVENTS, METRICS),
    marts=(ORG_DAILY_USAGE, DAILY_SIGNUPS, INSTANCE_STATE_DAILY),
    views=(GROWTH_DAILY, INSTANCE_CURRENT_STATE, CRON_JOB_RUNS, REFRESH_HEALTH_HOURLY, REFRESH_LATEST, REFRESH_FRESHNESS,
           QUALITY_GATE, METRIC_SAMPLES),
    sql_dirs=(ROUTINES_DIR, VIEWS_DIR),
    external=((CRON_HISTORY, "pg_cron's run history of the warehouse's jobs (read through dwh.cron_job_runs())."),),
)

# Configuration tables `dwh migrate` writes (not data: no lineage, no asset).
CONFIGURATION = ("dwh.settings", "dwh.refresh_jobs", "dwh.mart_inputs", "dwh.mart_pending", "dwh.cron_probe",
                 "dwh.subject_columns", "dwh.quality_gates", "dwh.copy_gate")
# What `dwh forget` keeps (created by a migration; the owner's alone): the key of its hashes, its log.
ERASURE_KEY = "dwh.erasure_key"
ERASURE_LOG = "dwh.erasure_log"
# The refresh log every refresh writes (an asset of its own; created by migration 0002).
REFRESH_LOG = "dwh.refresh_log"

# Maintenance jobs: name -> default schedule. Their commands live in warehouse.cron_jobs.
PARTMAN_MAINTENANCE_JOB = f"{CRON_JOB_PREFIX}partman_maintenance"
PURGE_CRON_HISTORY_JOB = f"{CRON_JOB_PREFIX}purge_cron_history"
MAINTENANCE_SCHEDULES = {PARTMAN_MAINTENANCE_JOB: "7 * * * *", PURGE_CRON_HISTORY_JOB: "30 3 * * *"}

# The product catalog's entries by the names the rest of the code has always used.
CATALOG = PRODUCT.tables
MARTS = PRODUCT.marts
BY_NAME = {spec.name: spec for spec in CATALOG}
MART_BY_NAME = {mart.name: mart for mart in MARTS}


def schedulable_jobs(catalog: Catalog = PRODUCT) -> dict[str, str]:
    """Every pg_cron job the project declares, by the name a configuration's [schedules] uses.

    Tables and marts are named without prefix (``users``, ``org_daily_usage``); maintenance
    jobs by their job name without the prefix (``partman_maintenance``). Values are the defaults.
    """
    return catalog.schedulable_jobs(MAINTENANCE_SCHEDULES)


def get(name: str) -> TableSpec:
    return PRODUCT.get(name)
