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
    ARRIVALS_ROUTINE,
    ARRIVALS_ROUTINE_ARGUMENTS,
    CRON_JOB_PREFIX,
    PENDING_MART_ROUTINE,
    PENDING_MART_ROUTINE_ARGUMENTS,
    ROUTINE_ARGUMENTS,
    AcceptedValues,
    ArrivalWatermark,
    Erase,
    Catalog,
    Column,
    Group,
    Index,
    Kind,
    MartSpec,
    Reconciliation,
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
        Column("email", "text", "The primary email address (the one primary_email_address_id names); NULL when there "
                                "is none (an empty string from Clerk is stored as NULL).", personal=True),
        Column("gender", "text", "Gender; NULL when Clerk has none, which it sends as an empty string (most users).",
               personal=True),
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
        Column("slug", "text", "URL slug; NULL when unset (an empty string from Clerk is stored as NULL)."),
        Column("plan", "text", "Billing plan, from the control plane's organizations (free, hobby, pro, enterprise).",
               lineage=("src_control_plane.organizations.plan",)),
        Column("created_by", "text", "The user who created it; NULL when unknown or forgotten (an empty string from "
                                     "Clerk is stored as NULL).", subject=Subject.USER),
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
    arrival=ArrivalWatermark(
        "id", "An identity the control plane takes when it inserts the row: a transition written after the fact "
              "(a reconciler inserting a past changed_at) still gets a higher id than every row before it, while "
              "changed_at says when it happened, not when it arrived.",
        source_index="public.instance_state_history (id), its primary key"),
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
    arrival=ArrivalWatermark(
        "archived_at", "A row enters pgmq's archive when its message is archived, with archived_at = now(). msg_id "
                       "is taken when the message is sent, so a message archived days later (a consumer down over a "
                       "weekend) carries an old msg_id: only archived_at says that the row is new.",
        source_index="pgmq.a_instance_events (archived_at), which pgmq creates with the queue "
                     "(archived_at_idx_instance_events)"),
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
    arrival=ArrivalWatermark(
        None, "Prometheus keeps no arrival time. It takes a sample into its head block only up to about an hour "
              "behind its newest (further only with storage.tsdb.out_of_order_time_window), so re-reading "
              "yesterday and today (lookback_days) finds every sample scraped or remote-written late; an older "
              "sample arrives only in a back-filled block (promtool tsdb create-blocks-from), which the daily "
              "reconciliation's per-day sample count finds."),
    retention_days=180,
    columns=(
        Column("series_id", "bigint", "The series (dwh.metric_series).",
               lineage=("src_prometheus.metrics.metric_name", "src_prometheus.metrics.metric_labels")),
        Column("ts", TS, "Sample time, on the step grid (the partition key).",
               lineage=("src_prometheus.metrics.metric_time",)),
        Column("value", "double precision", "Sample value (counters as they are: seconds, bytes).", not_null=True,
               lineage=("src_prometheus.metrics.metric_value",)),
    ),
    # No index on ts alone: every reader asks for whole days, which the daily partitions narrow
    # to; it was nearly half the cost of inserting a sample (benchmarks/README.md, B8).
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

DAY = Column("day", "date", "The UTC day (the partition key of the stored table). Today's row is the day so far, as of "
                            "the mart's last refresh.", label="Day")

# The dimensions dashboards are filtered by (dashboard_filter): each has the same name in every
# relation that carries it, so one filter applies to every chart of a dashboard that reads it.
ORGANIZATION_NAME = Column("organization_name", "text", "The organization's current name (joined at read time).",
                           stored=False, lineage=("dwh.organizations.name",), label="Organization",
                           dashboard_filter=True)
PLAN = Column("plan", "text", "The organization's current billing plan (joined at read time).", stored=False,
              lineage=("dwh.organizations.plan",), label="Plan", dashboard_filter=True)

ORG_DAILY_USAGE = MartSpec(
    name="org_daily_usage",
    reads=("dwh.organizations", "dwh.instances", "dwh.metrics", "dwh.metric_series", "dwh.organization_memberships"),
    # Organization names and plans are joined at read time (the view): a rename queues nothing.
    stale_when=("instances", "metrics", "organization_memberships"),
    view_reads=("dwh.organizations",),
    key=("organization_id", "day"),
    description="Per organization and UTC day: instances alive, vCPU-hours, storage GiB-days and members. Today's "
                "row is the day so far, as of the mart's last refresh.",
    columns=(
        Column("organization_id", "text", "The organization.", references="dwh.organizations.organization_id",
               lineage=("dwh.instances.organization_id", "dwh.metric_series.organization_id")),
        Column("day", "date", DAY.comment, lineage=("dwh.instances.created_at", "dwh.instances.deleted_at", "dwh.metrics.ts"),
               label=DAY.label),
        ORGANIZATION_NAME,
        PLAN,
        Column("instances", "bigint", "Instances alive at some time of the day.", not_null=True,
               lineage=("dwh.instances.instance_id", "dwh.instances.created_at", "dwh.instances.deleted_at"),
               label="Instances"),
        Column("vcpu_hours", "numeric", "Provisioned vCPU-hours of the day (cpu x hours alive), 3 decimals.", not_null=True,
               lineage=("dwh.instances.cpu", "dwh.instances.created_at", "dwh.instances.deleted_at"),
               label="Provisioned", unit="vCPU-hours"),
        Column("storage_gib_days", "numeric", "Storage in use, GiB-days: the day's storage samples in bytes / 2^30, "
                                              "times the sample step over a day; 3 decimals.",
               not_null=True, lineage=("dwh.metrics.value", "dwh.metric_series.metric_name"),
               label="Storage", unit="GiB-days"),
        Column("members", "bigint", "Members as of the end of the day.", not_null=True,
               lineage=("dwh.organization_memberships.user_id", "dwh.organization_memberships.created_at"),
               label="Members"),
    ),
    checks=(
        WindowCheck("usage_is_not_negative", "No negative instances, vCPU-hours, storage or members on the refreshed days.",
                    "SELECT count(*) AS bad FROM mart.org_daily_usage_days WHERE day >= %(first_day)s "
                    "AND day < %(end_day)s AND least(instances, vcpu_hours, storage_gib_days, members) < 0"),
    ),
)

DAILY_SIGNUPS = MartSpec(
    name="daily_signups",
    reads=("dwh.users",),
    stale_when=("users",),
    key=("day",),
    description="Clerk sign-ups per UTC day (with an email), and the running total of users: every day from the "
                "first sign-up through today (none that day: zeros). Today's row is the day so far, as of the mart's "
                "last refresh.",
    # One row a day, and the running total needs every day since the first user.
    retention_days=None,
    columns=(
        Column("day", "date", DAY.comment, lineage=("dwh.users.created_at",), label=DAY.label),
        Column("signups", "bigint", "Users created that day.", not_null=True, lineage=("dwh.users.user_id",),
               label="Sign-ups"),
        Column("with_email", "bigint", "Of them, users with a primary email address.", not_null=True,
               lineage=("dwh.users.email",), label="With an email", personal=False),  # a count of addresses, none of them
        Column("total_users", "bigint", "Users created up to the end of the day (computed at read time).", stored=False,
               lineage=("dwh.users.user_id", "dwh.users.created_at"), label="Users"),
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
    reads=("dwh.instance_state", "dwh.instances", "dwh.organizations"),
    # The owner and region come from the instances' copy, which may arrive after a first transition.
    stale_when=("instance_state", "instances"),
    view_reads=("dwh.organizations",),
    key=("day", "organization_id", "region", "state"),
    description="Per UTC day, organization, region and state: the instance state transitions into it, and the "
                "instances that made them. Today's row is the day so far, as of the mart's last refresh.",
    columns=(
        Column("day", "date", DAY.comment, lineage=("dwh.instance_state.changed_at",), label=DAY.label),
        Column("state", "text", "The state entered (accepted_values.instance_states).", accepted=INSTANCE_STATES,
               lineage=("dwh.instance_state.state",), label="State", dashboard_filter=True),
        Column("transitions", "bigint", "State changes into it that day.", not_null=True,
               lineage=("dwh.instance_state.id",), label="Transitions"),
        Column("instances", "bigint", "Distinct instances that entered it that day.", not_null=True,
               lineage=("dwh.instance_state.instance_id",), label="Instances"),
        Column("organization_id", "text", "The organization that owns the instances; unknown until the instance "
                                          "reaches dwh.instances.",
               lineage=("dwh.instances.organization_id",)),
        Column("region", "text", "The instances' cloud region; unknown until the instance reaches dwh.instances.",
               lineage=("dwh.instances.region",), label="Region", dashboard_filter=True),
        ORGANIZATION_NAME,
        PLAN,
    ),
)

# ----- plain views (dashboards) ------------------------------------------------------------------------

GROWTH_DAILY = ViewSpec(
    "mart.growth_daily",
    "Per UTC day, organization and region: the organization and its live instances at the end of the day (today: "
    "now), from the day's dimension snapshots where they were taken, else reconstructed from lifetimes. From the "
    "first sign-up, organization or day of history, whichever came first (a day without any organization: one row "
    "of NULLs). Count organizations with count(DISTINCT organization_id).",
    (
        Column("day", "date", "The UTC day.", label="Day"),
        Column("organization_id", "text", "An organization that existed at the end of the day (NULL: none did)."),
        ORGANIZATION_NAME,
        PLAN,
        Column("region", "text", "The region of its live instances (NULL: it had none).", label="Region",
               dashboard_filter=True),
        Column("instances", "bigint", "Its instances alive at the end of the day in that region.", label="Live instances"),
        Column("source", "text", "snapshot: from that day's dimension snapshots; reconstructed: from created_at / "
                                 "deleted_at of the current tables."),
    ),
    reads=("dwh.organizations", "dwh.instances", "dwh.organizations_snapshot", "dwh.instances_snapshot", "dwh.users"),
    sql_file="growth_daily.sql",
)

INSTANCE_CURRENT_STATE = ViewSpec(
    "mart.instance_current_state",
    "Each instance with its owner, region, size and latest state.",
    (
        Column("instance_id", "uuid", "The instance."),
        Column("organization_id", "text", "The organization that owns it."),
        ORGANIZATION_NAME,
        PLAN,
        Column("region", "text", "Cloud region.", label="Region", dashboard_filter=True),
        Column("cpu", "integer", "Provisioned vCPUs.", label="Provisioned", unit="vCPUs"),
        Column("memory_gb", "integer", "Provisioned memory, GB.", label="Memory", unit="GB"),
        Column("size", "text", "vCPUs and memory, as one label.", label="Size"),
        Column("state", "text", "Its latest state; deleted once deleted_at has passed, unknown without a transition "
                                "in the retained history.", label="State", dashboard_filter=True),
        Column("state_since", TS, "When it entered that state."),
    ),
    reads=("dwh.instances", "dwh.instance_state", "dwh.organizations"),
    sql_file="instance_current_state.sql",
)

CRON_JOB_RUNS = ViewSpec(
    "mart.cron_job_runs",
    "The warehouse's pg_cron jobs, the loader's refreshes and the owner's maintenance, and their runs (14 days): "
    "status, duration, failures.",
    (
        Column("jobname", "text", "The pg_cron job (dwh:...).", label="Job"),
        Column("table_name", "text", "What its runs refresh, named as dwh.refresh_log names it (a maintenance job: its own name).",
               label="Table", dashboard_filter=True),
        Column("runs_as", "text", "The role that owns and runs it: the loader (refreshes) or the owner (maintenance).",
               label="Runs as"),
        Column("schedule", "text", "Its schedule (GMT).", label="Schedule (GMT)"),
        Column("active", "boolean", "Whether pg_cron runs it."),
        Column("runid", "bigint", "The run (NULL: the job has not run in 14 days)."),
        Column("status", "text", "pg_cron's status of the run."),
        Column("started_at", TS, "When the run started."),
        Column("hour", TS, "The hour it started in.", label="Hour"),
        Column("finished_at", TS, "When it ended."),
        Column("duration_ms", "double precision", "How long it ran, in milliseconds.", label="Duration", unit="ms"),
        Column("failed", "integer", "1 for a failed run, else 0.", label="Failed runs"),
        Column("return_message", "text", "pg_cron's message, cut to 300 characters."),
    ),
    reads=("cron.job_run_details",),
    sql_file="cron_job_runs.sql",
    group=Group.WAREHOUSE,
)

# A refresh that replaced data: a window (facts, marts) or a snapshot (dimensions). A mart's pg_cron
# job that found no day to refresh logs a run of neither, which proves the mart current but
# refreshed nothing.
REFRESH_HEALTH_HOURLY = ViewSpec(
    "mart.refresh_health_hourly",
    "Per table and hour (the last 48 hours complete): refreshes that replaced data, rows, duration, lock waits, "
    "failed pg_cron runs.",
    (
        Column("hour", TS, "The hour.", label="Hour"),
        Column("table_name", "text", "What was refreshed, as dwh.refresh_log names it.", label="Table",
               dashboard_filter=True),
        Column("refreshes", "bigint", "Committed refreshes that replaced data (pg_cron's and Dagster's alike); a mart "
                                      "job's runs that found no day to refresh are not counted.", label="Refreshes"),
        Column("failures", "bigint", "Failed pg_cron runs.", label="Failed runs"),
        Column("rows_written", "bigint", "Rows inserted, updated and deleted.", label="Rows written"),
        Column("rows_read", "bigint", "Rows read from the sources.", label="Rows read"),
        Column("avg_duration_ms", "numeric", "Mean refresh duration, milliseconds.", label="Mean duration", unit="ms"),
        Column("max_duration_ms", "numeric", "Longest refresh duration, milliseconds.", label="Longest duration", unit="ms"),
        Column("lock_wait_ms", "numeric", "Time spent waiting for a concurrent refresh, milliseconds.", label="Lock wait",
               unit="ms"),
        Column("refreshes_that_waited", "bigint", "Refreshes that waited for a lock."),
    ),
    reads=("dwh.refresh_log", "mart.cron_job_runs"),
    sql_file="refresh_health_hourly.sql",
    group=Group.WAREHOUSE,
)

REFRESH_LATEST = ViewSpec(
    "mart.refresh_latest",
    "Each refreshed table: when it was last known current, its age in minutes, refreshes that replaced data and "
    "failed pg_cron runs in 24 hours.",
    (
        Column("table_name", "text", "What was refreshed, as dwh.refresh_log names it.", label="Table",
               dashboard_filter=True),
        Column("last_refresh", TS, "When it was last known current: its last committed refresh, or a mart job's last "
                                   "run that found no day to refresh.", label="Last refresh (UTC)"),
        Column("minutes_ago", "numeric", "Its age, in minutes.", label="Minutes ago"),
        Column("refreshes_24h", "bigint", "Refreshes in the last 24 hours that replaced data.", label="Refreshes (24 h)"),
        Column("failures_24h", "bigint", "Failed pg_cron runs in the last 24 hours.", label="Failed runs (24 h)"),
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

LATE_DATA = ViewSpec(
    "mart.late_data",
    "Per fact: how its scheduled refresh follows late rows (the arrival watermark) and what the latest daily "
    "reconciliation with the source found.",
    (
        Column("table_name", "text", "The fact."),
        Column("arrival_column", "text", "The source column that says a row is new; NULL: the re-read horizon "
                                         "(Prometheus)."),
        Column("seen_up_to", "text", "The newest arrival a committed refresh has seen."),
        Column("late_days_replaced", "bigint", "Days outside its window that scheduled refreshes replaced because "
                                               "late rows arrived for them."),
        Column("last_late_day", "date", "The latest such day."),
        Column("late_days_too_old", "bigint", "Days that received rows older than the history the warehouse keeps "
                                              "(not copied)."),
        Column("last_too_old_day", "date", "The latest such day."),
        Column("reconciled_at", TS, "When the latest reconciliation of the fact ended."),
        Column("days_compared", "integer", "Days it compared with the source."),
        Column("differing_days", "integer", "Days whose count differed from the source's."),
        Column("repaired_days", "integer", "Of them, days it replaced from the source."),
        Column("kept_days", "integer", "Of them, days the source no longer holds (left as they are)."),
        Column("repaired", "text", "The repaired days, as a list."),
        Column("error", "text", "Why the fact could not be reconciled, if it could not."),
    ),
    reads=("dwh.reconciliation",),
    sql_file="late_data.sql",
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
# lineage is complete; the views read it through the SECURITY DEFINER functions named here, one
# per role whose jobs they show).
CRON_HISTORY = "cron.job_run_details"
READ_THROUGH = {"dwh.cron_job_runs": CRON_HISTORY, "dwh.cron_owner_job_runs": CRON_HISTORY}

PRODUCT = Catalog(
    tables=(USERS, ORGANIZATIONS, ORGANIZATION_MEMBERSHIPS, INSTANCES, INSTANCE_STATE, EVENTS, METRICS),
    marts=(ORG_DAILY_USAGE, DAILY_SIGNUPS, INSTANCE_STATE_DAILY),
    views=(GROWTH_DAILY, INSTANCE_CURRENT_STATE, CRON_JOB_RUNS, REFRESH_HEALTH_HOURLY, REFRESH_LATEST, REFRESH_FRESHNESS,
           QUALITY_GATE, LATE_DATA, METRIC_SAMPLES),
    sql_dirs=(ROUTINES_DIR, VIEWS_DIR),
    external=((CRON_HISTORY, "pg_cron's run history of the warehouse's jobs (read through dwh.cron_job_runs() and "
                             "dwh.cron_owner_job_runs())."),),
    reconciliation=Reconciliation(),
)

# Configuration tables `dwh migrate` writes (not data: no lineage, no asset).
CONFIGURATION = ("dwh.settings", "dwh.refresh_jobs", "dwh.mart_inputs", "dwh.mart_pending", "dwh.cron_probe",
                 "dwh.subject_columns", "dwh.quality_gates", "dwh.copy_gate", "dwh.arrival_watermarks")
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
