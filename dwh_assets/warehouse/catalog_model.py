"""What a catalog entry can say: the grammar ``catalog.py`` is written in.

A ``Catalog`` holds three kinds of entries, each stated once and everything else derived:

- ``TableSpec``, a **local copy** of a source (a fact or a dimension): its columns, key,
  partition column, sources, schedule, retention, freshness, references, accepted values and
  any extra checks. Its partitioned table (and a dimension's snapshot table), their pg_partman
  registration, comments and grants, the pg_cron job, the Dagster asset and its checks are
  derived; its SQL file holds only the refresh routine.
- ``MartSpec``, an **incremental mart**: per-day measures in ``mart.<name>_days`` read through
  the view ``mart.<name>``. Its columns are the view's; ``stored=False`` marks the few the view
  joins at read time. Its SQL file holds the view and the refresh routine.
- ``ViewSpec``, a **plain view** computed when read (dashboards): its columns and the relations
  it reads. Its SQL file holds the view.

``Column`` carries what a column is (type as PostgreSQL's ``format_type`` prints it, comment,
lineage), what must hold of it (``references``, ``accepted``) and what it says about people:
``personal`` (personal data: readable by ``dwh_personal_reader`` only, never kept in a snapshot)
and ``subject`` (whose id it holds: where ``dwh forget`` looks). A new per-column or
per-relation fact is one more field here, read by whatever derives from it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from functools import cached_property
from enum import Enum
from pathlib import Path

from dwh_assets.warehouse.freshness import expected_within

# Every pg_cron job this project owns carries this prefix; the sync never touches others.
CRON_JOB_PREFIX = "dwh:"


class Kind(str, Enum):
    FACT = "fact"
    DIMENSION = "dimension"


class SourceSystem(str, Enum):
    CLERK = "clerk"
    CONTROL_PLANE = "control_plane"
    PROMETHEUS = "prometheus"


class Subject(str, Enum):
    """Whom ``dwh forget --<subject> ID`` erases: the people and organizations of Clerk."""

    USER = "user"
    ORGANIZATION = "organization"


class Erase(str, Enum):
    """What ``dwh forget`` does where a subject's id is held (and what a refresh does to the source's rows)."""

    ROW = "row"        # the id is (part of) the row's key: the row is about the subject, it goes
    VALUE = "value"    # the id only mentions the subject: the value is cleared, the row stays


# How a personal column's COMMENT (and its description in Dagster and the docs) begins.
PERSONAL_MARK = "[personal data]"


def marked(comment: str, personal: bool) -> str:
    return f"{PERSONAL_MARK} {comment}" if personal else comment


class Group(str, Enum):
    """Dagster asset groups follow the data: a source sits in the group of the copy it feeds."""

    ACCOUNTS = "accounts"      # who: users, organizations, memberships
    FLEET = "fleet"            # what they run: instances, their states and events
    USAGE = "usage"            # how much: metrics
    MARTS = "marts"
    WAREHOUSE = "warehouse"    # the warehouse's own bookkeeping


# ----- columns ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AcceptedValues:
    """A closed set of values, which a deployment may replace (``[accepted_values]`` of its
    configuration). ``dwh migrate`` writes the deployment's set into ``dwh.settings`` under
    ``setting``; the checks read it there, so a deployment's extra value is not a failure."""

    name: str                   # the key in the deployment configuration, e.g. "instance_states"
    values: tuple[str, ...]     # the default set

    @property
    def setting(self) -> str:
        return f"accepted_values.{self.name}"


@dataclass(frozen=True)
class Column:
    name: str
    type: str                        # as format_type() prints it: "text", "timestamp with time zone", ...
    comment: str
    not_null: bool = False
    default: str | None = None       # an SQL expression
    generated: str | None = None     # GENERATED ALWAYS AS (<expression>) STORED
    identity: bool = False           # GENERATED ALWAYS AS IDENTITY
    # Column lineage: the columns it is computed from (schema.table.column). Empty on a copy:
    # the source column of the same name.
    lineage: tuple[str, ...] = ()
    # Every value exists in this column (schema.table.column): the references_resolve check.
    references: str | None = None
    # Every value is one of these: the accepted_values check.
    accepted: AcceptedValues | None = None
    # Marts only: False for a column the view computes at read time (not in mart.<name>_days).
    stored: bool = True
    # Personal data (docs/personal-data.md): True, or False for a column computed from personal
    # columns that holds none (a count); None: as its lineage, personal when a column it is
    # computed from is (Catalog.personal_columns).
    personal: bool | None = None
    # The subject whose id the column holds (dwh forget): its rows go where the column is part
    # of the entry's key, else the value is cleared (in attrs too, the Clerk object it came from).
    subject: Subject | None = None
    # What a person calls it, and the unit of its values: the dashboards' column names
    # (Superset's verbose_name) and what a chart's metric over it must say (GiB-days, ms).
    label: str | None = None
    unit: str | None = None
    # A dimension dashboards are filtered by: a dashboard whose charts read it offers a filter
    # named by its label, applied to exactly the charts whose relation has it.
    dashboard_filter: bool = False

    @property
    def verbose_name(self) -> str | None:
        if self.label is None:
            return None
        return f"{self.label} ({self.unit})" if self.unit else self.label


@dataclass(frozen=True)
class Index:
    columns: tuple[str, ...]
    name: str | None = None   # None: the name PostgreSQL gives it (<table>_<columns>_idx)


# ----- physical tables ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """A table the catalog creates: ``catalog_ddl`` renders it, registers its partitions and comments."""

    relation: str                                 # schema.name
    comment: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    partition_by: str | None = None               # daily range partitions (pg_partman) on this column
    # Days of partitions before today pg_partman creates when it registers the table.
    premake_back_days: int = 90
    indexes: tuple[Index, ...] = ()
    unique: tuple[tuple[str, ...], ...] = ()

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.relation} has no column {name!r}")

    def not_null(self, column: Column) -> bool:
        return column.not_null or column.identity or column.name in self.primary_key


@dataclass(frozen=True)
class ArrivalWatermark:
    """How the scheduled refresh of a fact finds the days that received rows after it copied them.

    With a ``column`` (a source column whose value grows as rows arrive, whatever their event
    time), the pg_cron job runs ``dwh.refresh_with_arrivals``: it looks up the UTC days of the
    rows that arrived past the watermark (one pushed-down ``GROUP BY`` on that column, which the
    source indexes: ``source_index``), replaces those days besides its own window and moves the
    watermark, all in one transaction. The lookup re-reads ``overlap`` of arrivals, so a row whose
    inserting transaction commits that much after it took its value is still found. Without a
    column (Prometheus), the job's window is the re-read horizon: ``lookback_days``. Either way
    the nightly reconciliation compares every retained day with the source.
    """

    column: str | None
    reason: str                     # why this column (or none): docs/catalog.md
    source_index: str = ""          # the index on it the source is expected to have (docs/source-contract.md)
    overlap: dt.timedelta = dt.timedelta(minutes=30)


@dataclass(frozen=True)
class WindowCheck:
    """A data check: a query over the refreshed window counting the offending rows (zero passes).

    The query sees ``%(start)s``, ``%(end)s`` (the window, timestamptz) and ``%(first_day)s``,
    ``%(end_day)s`` (its UTC days, ``[first_day, end_day)``); it returns one row whose column
    ``bad`` is the count, and whose other columns become the check's metadata.
    """

    name: str
    description: str
    query: str
    blocking: bool = False


# ----- entries --------------------------------------------------------------------------------------


ROUTINE_ARGUMENTS = {Kind.FACT: "timestamptz, timestamptz", Kind.DIMENSION: "date"}
# A fact's scheduled refresh when it declares an arrival watermark: the late days, then its window.
ARRIVALS_ROUTINE = "dwh.refresh_with_arrivals"
ARRIVALS_ROUTINE_ARGUMENTS = "text, timestamptz, timestamptz"


@dataclass(frozen=True)
class TableSpec:
    """A local copy: ``dwh.<name>``, refreshed by ``dwh.refresh_<name>`` (``refresh_<name>.sql``)."""

    name: str
    kind: Kind
    system: SourceSystem
    group: Group
    # Foreign tables (schema.table) the refresh reads; the first is the primary source.
    sources: tuple[str, ...]
    # The natural key; a fact's primary key adds its partition column (PostgreSQL requires it).
    key: tuple[str, ...]
    description: str                 # what it holds (the table's COMMENT, the asset's description)
    columns: tuple[Column, ...]
    # pg_cron schedule (GMT) of the routine's recurring job (the default; a deployment may override).
    schedule: str
    # Facts: the column the table is partitioned by, and how far back the cron job re-reads
    # for late data (whole days, ending with today).
    time_column: str | None = None
    lookback_days: int = 0
    # Facts: how the scheduled refresh finds rows that arrived late (None: only its window).
    arrival: ArrivalWatermark | None = None
    # pg_partman retention of daily partitions (facts, and dimension snapshots).
    retention_days: int = 400
    # How long its refresh usually takes: with two schedule intervals, how stale it may get
    # before it is overdue (``freshness``).
    typical_duration: dt.timedelta = dt.timedelta(minutes=1)
    # How long one pg_cron run may take (the job's statement_timeout; a deployment may override):
    # a source that stalls mid-query fails the run, naming the source, instead of holding it forever.
    timeout: dt.timedelta = dt.timedelta(minutes=10)
    indexes: tuple[Index, ...] = ()
    unique: tuple[tuple[str, ...], ...] = ()
    # Other tables the same refresh writes (each an asset of its own).
    also_writes: tuple[Table, ...] = ()
    checks: tuple[WindowCheck, ...] = ()

    @property
    def local_table(self) -> str:
        return f"dwh.{self.name}"

    @property
    def relation(self) -> str:
        """What its asset stands for: the local table."""
        return self.local_table

    @property
    def daily(self) -> bool:
        """Refreshed per window of days (a Dagster partition a day), or as a whole."""
        return self.kind is Kind.FACT

    @property
    def primary_key(self) -> tuple[str, ...]:
        if self.kind is Kind.FACT and self.time_column not in self.key:
            return (*self.key, self.time_column)
        return self.key

    @property
    def table(self) -> Table:
        return Table(self.local_table, self.description, self.columns, self.primary_key,
                     self.time_column, indexes=self.indexes, unique=self.unique)

    @property
    def snapshot_table(self) -> str | None:
        return f"dwh.{self.name}_snapshot" if self.kind is Kind.DIMENSION else None

    @property
    def snapshot(self) -> Table | None:
        """A dimension's daily snapshots: its columns but the personal ones, after the day.

        History is for counting (how many existed on a day), which needs no personal data; a
        person's data kept in 400 daily copies would leave the warehouse only with the last one.
        """
        if self.kind is not Kind.DIMENSION:
            return None
        day = Column("snapshot_day", "date", "The day the snapshot was taken (the partition key).", not_null=True)
        kept = [c for c in self.columns if not c.personal]
        return Table(self.snapshot_table,
                     f"Daily snapshots of {self.local_table}: its rows as of each snapshot_day, without its personal "
                     "columns (partitioned by day).",
                     # Type and NOT NULL, as CREATE TABLE ... (LIKE ...) copies them; nothing computed.
                     (day, *(Column(c.name, c.type, c.comment, not_null=self.table.not_null(c), subject=c.subject)
                             for c in kept)),
                     # No index on snapshot_day: each partition holds one day, read whole.
                     partition_by="snapshot_day", premake_back_days=7)

    def subject_columns(self) -> tuple[SubjectColumn, ...]:
        """Where this entry's tables hold a subject's id, and what dwh forget does there."""
        found = []
        for column in self.columns:
            if column.subject is None:
                continue
            erase = Erase.ROW if column.name in self.key else Erase.VALUE
            for table in (self.table, self.snapshot):
                if table is not None:
                    found.append(SubjectColumn(self.name, table.relation, column.name, column.subject, erase))
        return tuple(found)

    @property
    def tables(self) -> tuple[Table, ...]:
        """Every table this entry creates: its own, its snapshots, what its refresh also writes."""
        return (self.table, *((self.snapshot,) if self.snapshot else ()), *self.also_writes)

    @property
    def partitioned_table(self) -> str:
        """Where pg_partman keeps this entry's daily partitions (and their retention)."""
        return self.local_table if self.kind is Kind.FACT else self.snapshot_table

    @property
    def log_table(self) -> str:
        """What its refresh writes in dwh.refresh_log.table_name."""
        return self.name

    @property
    def routine(self) -> str:
        return f"dwh.refresh_{self.name}"

    @property
    def routine_arguments(self) -> str:
        return ROUTINE_ARGUMENTS[self.kind]

    @property
    def routine_file(self) -> str:
        """The routine's SQL file (its content is the asset's code version)."""
        return f"refresh_{self.name}.sql"

    @property
    def key_needs_check(self) -> bool:
        """A fact's primary key includes its time column; the catalog key alone is then unenforced."""
        return self.primary_key != self.key

    @property
    def cron_job_name(self) -> str:
        return f"{CRON_JOB_PREFIX}refresh_{self.name}"

    @property
    def freshness(self) -> dt.timedelta | None:
        """How old its latest refresh may get on the catalog's schedule (``warehouse.freshness``)."""
        return expected_within(self.schedule, self.typical_duration)

    def cron_window(self) -> str:
        """A fact's scheduled window, as SQL: today and the lookback before it (UTC days)."""
        return (f"date_trunc('day', now()) - interval '{int(self.lookback_days)} days', "
                f"date_trunc('day', now()) + interval '1 day'")

    def cron_command(self) -> str:
        """The SQL pg_cron runs: the routine Dagster calls, or the routine for the window and the late days."""
        if self.kind is Kind.FACT and self.arrival is not None:
            return f"SELECT {ARRIVALS_ROUTINE}('{self.name}', {self.cron_window()})"
        if self.kind is Kind.FACT:
            return f"SELECT {self.routine}({self.cron_window()})"
        return f"SELECT {self.routine}(current_date)"


@dataclass(frozen=True)
class SubjectColumn:
    """A column holding a subject's id (``dwh.subject_columns``, which dwh forget and the refreshes read)."""

    copy: str          # the entry, as dwh.refresh_log names it (its refresh lock)
    relation: str      # its table or its snapshot table
    column: str
    subject: Subject
    erase: Erase


PENDING_MART_ROUTINE = "dwh.refresh_pending_mart"
PENDING_MART_ROUTINE_ARGUMENTS = "text"


@dataclass(frozen=True)
class MartSpec:
    """An incremental mart: per-day measures in ``mart.<name>_days`` (partitioned by day), read
    through the view ``mart.<name>``; refreshed per window by ``dwh.refresh_mart_<name>``. Its SQL
    file (``refresh_mart_<name>.sql``) holds the view and the routine."""

    name: str
    # Relations it reads, routine and view (lineage).
    reads: tuple[str, ...]
    # Catalog tables whose refreshes queue the days they changed for this mart (dwh.mart_inputs).
    stale_when: tuple[str, ...]
    key: tuple[str, ...]
    description: str
    # The view's columns; those with stored=True, in order, are mart.<name>_days's.
    columns: tuple[Column, ...]
    # pg_cron schedule of the job that refreshes the queued days (dwh.refresh_pending_mart):
    # a few minutes after the copies (*/10, */15), every 5 minutes.
    schedule: str = "2-59/5 * * * *"
    # Days of partitions pg_partman keeps; None keeps them all.
    retention_days: int | None = 400
    typical_duration: dt.timedelta = dt.timedelta(minutes=1)
    # How long one pg_cron run may take (the job's statement_timeout; a deployment may override).
    timeout: dt.timedelta = dt.timedelta(minutes=10)
    checks: tuple[WindowCheck, ...] = ()
    # What the view joins at read time besides its table (and its routine reads too, or not).
    view_reads: tuple[str, ...] = ()
    group: Group = Group.MARTS

    @property
    def relation(self) -> str:
        """The view people and dashboards read."""
        return f"mart.{self.name}"

    @property
    def table(self) -> str:
        """The partitioned table the refresh writes."""
        return f"mart.{self.name}_days"

    daily = True

    @property
    def stored_table(self) -> Table:
        return Table(self.table, f"{self.description} Stored per UTC day, partitioned by day; read it through "
                                 f"the view {self.relation}.",
                     tuple(c for c in self.columns if c.stored), self.key, "day")

    @property
    def view(self) -> ViewSpec:
        return ViewSpec(self.relation, self.description, self.columns, (self.table, *self.view_reads), self.routine_file)

    @property
    def tables(self) -> tuple[Table, ...]:
        return (self.stored_table,)

    @property
    def partitioned_table(self) -> str:
        return self.table

    @property
    def log_table(self) -> str:
        return self.relation

    @property
    def routine_file(self) -> str:
        return f"refresh_mart_{self.name}.sql"

    @property
    def routine(self) -> str:
        return f"dwh.refresh_mart_{self.name}"

    routine_arguments = ROUTINE_ARGUMENTS[Kind.FACT]

    @property
    def cron_job_name(self) -> str:
        return f"{CRON_JOB_PREFIX}refresh_mart_{self.name}"

    @property
    def freshness(self) -> dt.timedelta | None:
        return expected_within(self.schedule, self.typical_duration)

    def cron_command(self) -> str:
        return f"SELECT {PENDING_MART_ROUTINE}('{self.name}')"


@dataclass(frozen=True)
class Reconciliation:
    """The daily comparison of every kept day of the facts with their sources, and its pg_cron job.

    ``dwh.reconcile_facts()`` counts each day at the source (a ``GROUP BY`` postgres_fdw pushes
    down; for Prometheus one ``count()`` query per metric, summed per day by the reader), compares
    the counts with the copy's, replaces the days that differ and records what it found in
    ``dwh.reconciliation`` (its asset; its runs are logged in ``dwh.refresh_log`` as ``log_table``).
    Every fact with an ``arrival`` is reconciled.
    """

    schedule: str = "40 2 * * *"
    description: str = ("What the daily reconciliation of the facts with their sources found: per fact and run, "
                        "the days compared, those that differed, those it replaced from the source.")

    name = "reconcile_facts"           # in a configuration's [schedules]
    routine = "dwh.reconcile_facts"
    routine_file = "reconcile_facts.sql"
    relation = "dwh.reconciliation"
    log_table = "reconciliation"

    @property
    def cron_job_name(self) -> str:
        return f"{CRON_JOB_PREFIX}{self.name}"

    def cron_command(self) -> str:
        return f"SELECT count(*) FROM {self.routine}()"

    @property
    def table(self) -> Table:
        days = "'{}'::date[]"
        return Table(self.relation, self.description, (
            Column("id", "bigint", "Identity of the row.", identity=True),
            Column("table_name", "text", "The fact reconciled (dwh.refresh_log.table_name of its refreshes).", not_null=True),
            Column("first_day", "date", "The first day compared: the history's start or the retention's, the later."),
            Column("end_day", "date", "The day after the last compared (today: today's rows are still arriving)."),
            Column("days_compared", "integer", "Days compared with the source.", not_null=True, default="0"),
            Column("source_rows", "bigint", "Rows (samples) of those days at the source."),
            Column("copy_rows", "bigint", "Rows (samples) of those days in the copy, before any repair."),
            Column("differing_days", "date[]", "Days whose count (or key sum) differed from the source's.",
                   not_null=True, default=days),
            Column("repaired_days", "date[]", "Of them, the days replaced from the source in the same transaction.",
                   not_null=True, default=days),
            Column("kept_days", "date[]", "Of them, the days left as they are: the source holds nothing for them "
                                          "any more (Prometheus' own retention).", not_null=True, default=days),
            Column("error", "text", "Why the fact could not be reconciled (its source failed); NULL when it was."),
            Column("started_at", "timestamp with time zone", "When this fact's reconciliation started.", not_null=True),
            Column("finished_at", "timestamp with time zone", "When it ended.", not_null=True),
            Column("backend_pid", "integer", "The backend that ran it (a pg_cron run's, for the Dagster sensor).",
                   not_null=True, default="pg_backend_pid()"),
        ), primary_key=("id",), indexes=(Index(("table_name", "finished_at"), "reconciliation_table_finished"),))


@dataclass(frozen=True)
class ViewSpec:
    """A plain view (computed when read: nothing refreshes it), in its own SQL file."""

    relation: str
    description: str
    columns: tuple[Column, ...]
    # Relations it reads (lineage): tables, views, or a set-returning function's relation.
    reads: tuple[str, ...]
    sql_file: str
    group: Group = Group.MARTS

    @property
    def name(self) -> str:
        return self.relation.split(".", 1)[1]


@dataclass(frozen=True)
class Catalog:
    """The warehouse's tables, marts and views, and where their SQL files are.

    ``migrate`` and the Dagster definitions take one (the product's, ``catalog.PRODUCT``, by
    default); ``extended`` adds entries, e.g. a deployment's own mart or a test's.
    """

    tables: tuple[TableSpec, ...]
    marts: tuple[MartSpec, ...]
    views: tuple[ViewSpec, ...]
    # Directories searched, in order, for an entry's SQL file.
    sql_dirs: tuple[Path, ...] = field(default_factory=tuple)
    # Relations that no entry creates but views read (an external asset each): relation -> description.
    external: tuple[tuple[str, str], ...] = ()
    # The daily reconciliation of the facts that declare an arrival watermark (None: not run).
    reconciliation: Reconciliation | None = None

    def extended(self, *, tables: tuple[TableSpec, ...] = (), marts: tuple[MartSpec, ...] = (),
                 views: tuple[ViewSpec, ...] = (), sql_dirs: tuple[Path, ...] = ()) -> Catalog:
        return replace(self, tables=self.tables + tables, marts=self.marts + marts, views=self.views + views,
                       sql_dirs=sql_dirs + self.sql_dirs)

    # ----- lookups ------------------------------------------------------------------------------

    def get(self, name: str) -> TableSpec:
        for spec in self.tables:
            if spec.name == name:
                return spec
        raise KeyError(f"no table {name!r} in the catalog; known: {', '.join(sorted(s.name for s in self.tables))}")

    def mart(self, name: str) -> MartSpec:
        for mart in self.marts:
            if mart.name == name:
                return mart
        raise KeyError(f"no mart {name!r} in the catalog; known: {', '.join(sorted(m.name for m in self.marts))}")

    def refreshed(self) -> tuple[TableSpec | MartSpec, ...]:
        """Every entry with a refresh routine and a pg_cron job: copies, then marts."""
        return (*self.tables, *self.marts)

    def reconciled(self) -> tuple[TableSpec, ...]:
        """The facts whose arrivals the scheduled refresh follows and the reconciliation compares."""
        return tuple(spec for spec in self.tables if spec.kind is Kind.FACT and spec.arrival is not None)

    def all_tables(self) -> tuple[Table, ...]:
        tables = tuple(t for entry in self.refreshed() for t in entry.tables)
        return tables + ((self.reconciliation.table,) if self.reconciliation is not None else ())

    def all_views(self) -> tuple[ViewSpec, ...]:
        """Marts' views and plain views, each after the views it reads."""
        views = [m.view for m in self.marts] + list(self.views)
        by_relation = {v.relation: v for v in views}
        ordered: dict[str, ViewSpec] = {}

        def visit(view: ViewSpec, path: tuple[str, ...] = ()) -> None:
            if view.relation in path:
                raise ValueError(f"views read each other in a cycle: {' -> '.join((*path, view.relation))}")
            for relation in view.reads:
                if relation in by_relation:
                    visit(by_relation[relation], (*path, view.relation))
            ordered.setdefault(view.relation, view)

        for view in views:
            visit(view)
        return tuple(ordered.values())

    def relation(self, relation: str) -> Table | ViewSpec:
        """The table or view of that name (schema.name)."""
        for item in (*self.all_tables(), *self.all_views()):
            if item.relation == relation:
                return item
        raise KeyError(f"no relation {relation} in the catalog")

    @cached_property
    def _personal(self) -> dict[str, frozenset[str]]:
        columns = {(item.relation, c.name): c for item in (*self.all_tables(), *self.all_views()) for c in item.columns}

        def personal(key: tuple[str, str], path: tuple[tuple[str, str], ...] = ()) -> bool:
            column = columns[key]
            if column.personal is not None or key in path:
                return bool(column.personal)
            # Lineage into a source (src_*) or outside the catalog carries no mark.
            return any(personal(ref, (*path, key)) for ref in (tuple(r.rsplit(".", 1)) for r in column.lineage)
                       if ref in columns)

        found: dict[str, set[str]] = {}
        for key in columns:
            found.setdefault(key[0], set())
            if personal(key):
                found[key[0]].add(key[1])
        return {relation: frozenset(names) for relation, names in found.items()}

    def personal_columns(self, relation: str) -> frozenset[str]:
        """The relation's columns holding personal data: marked so, or computed from one (``Column.personal``)."""
        return self._personal.get(relation, frozenset())

    def subject_columns(self) -> tuple[SubjectColumn, ...]:
        return tuple(found for spec in self.tables for found in spec.subject_columns())

    def accepted_values(self) -> tuple[AcceptedValues, ...]:
        found: dict[str, AcceptedValues] = {}
        for item in (*self.all_tables(), *self.all_views()):
            for column in item.columns:
                if column.accepted:
                    found.setdefault(column.accepted.name, column.accepted)
        return tuple(found.values())

    def timed_jobs(self) -> dict[str, dt.timedelta]:
        """Every refresh job, by the name a configuration's [timeouts] uses -> its default timeout."""
        return {entry.name: entry.timeout for entry in self.refreshed()}

    def schedulable_jobs(self, maintenance: dict[str, str]) -> dict[str, str]:
        """Every pg_cron job, by the name a configuration's [schedules] uses -> its default schedule."""
        jobs = {entry.name: entry.schedule for entry in self.refreshed()}
        if self.reconciliation is not None:
            jobs[self.reconciliation.name] = self.reconciliation.schedule
        jobs.update({job.removeprefix(CRON_JOB_PREFIX): schedule for job, schedule in maintenance.items()})
        return jobs

    def sql_path(self, file_name: str) -> Path:
        """The first of ``sql_dirs`` that holds ``file_name``."""
        for directory in self.sql_dirs:
            if (directory / file_name).is_file():
                return directory / file_name
        raise FileNotFoundError(f"no SQL file {file_name} in {', '.join(map(str, self.sql_dirs))}: every catalog "
                                f"entry needs one (docs/adding-a-table.md)")
