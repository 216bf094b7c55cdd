"""The catalog in the database: what ``dwh migrate`` derives from it, as the owner.

- **tables**: a catalog table the database lacks is created (columns, primary key, unique
  keys, indexes, ``PARTITION BY RANGE`` on its partition column) and registered with
  pg_partman for daily partitions. A table that exists is never recreated: when its columns
  differ from the catalog, migrate stops and says which, because a table is changed
  deliberately, by a migration (docs/adding-a-table.md);
- **SQL files**: the shared framework (``sql/routines`` files no entry claims), then each
  copy's routine, then the views (a mart's file holds its view and routine), each after the
  views it reads. All ``CREATE OR REPLACE``, applied on every run;
- **comments**: ``COMMENT ON`` every catalog table, view and column, written only where the
  database's differs (a mart's column is described once, for its table and its view; a
  personal column's begins with ``[personal data]``);
- **grants**: EXECUTE on the refresh routines (and the late-data routines) to the loader;
  SELECT on every catalog relation to the loader; to the reader SELECT on every catalog
  relation, or on its columns but the personal ones, which only the personal reader may read.
  Partitions are granted to nobody: reading a partition directly would skip its parent's
  column privileges;
- **arrival watermarks**: each reconciled fact's row of ``dwh.arrival_watermarks``: its source,
  arrival column, overlap and how the reconciliation counts its days.

Everything here is idempotent: a second run finds nothing to create and no comment to change.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from dwh_assets.warehouse.catalog_model import (
    ARRIVALS_ROUTINE,
    ARRIVALS_ROUTINE_ARGUMENTS,
    Catalog,
    Column,
    SourceSystem,
    Table,
    TableSpec,
    ViewSpec,
    marked,
)
from dwh_assets.warehouse.errors import DwhError


class CatalogError(DwhError):
    """The database or a SQL file disagrees with the catalog; the message says which and what to do."""


def ident(relation: str) -> sql.Identifier:
    return sql.Identifier(*relation.split("."))


# ----- tables -------------------------------------------------------------------------------------


def _column_ddl(table: Table, column: Column) -> sql.Composable:
    parts = [sql.Identifier(column.name), sql.SQL(column.type)]
    if column.identity:
        parts.append(sql.SQL("GENERATED ALWAYS AS IDENTITY"))
    if column.generated:
        parts.append(sql.SQL("GENERATED ALWAYS AS ({}) STORED").format(sql.SQL(column.generated)))
    if table.not_null(column) and column.name not in table.primary_key:
        parts.append(sql.SQL("NOT NULL"))
    if column.default is not None:
        parts.append(sql.SQL("DEFAULT {}").format(sql.SQL(column.default)))
    return sql.SQL(" ").join(parts)


def _columns(names: tuple[str, ...]) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, names))


def create_table(table: Table) -> list[sql.Composable]:
    """``CREATE TABLE`` and its indexes (the catalog's types and expressions are SQL it trusts)."""
    elements = [_column_ddl(table, c) for c in table.columns]
    if table.primary_key:
        elements.append(sql.SQL("PRIMARY KEY ({})").format(_columns(table.primary_key)))
    elements += [sql.SQL("UNIQUE ({})").format(_columns(u)) for u in table.unique]
    statement = sql.SQL("CREATE TABLE {} (\n    {}\n)").format(ident(table.relation), sql.SQL(",\n    ").join(elements))
    if table.partition_by:
        statement = sql.SQL("{} PARTITION BY RANGE ({})").format(statement, sql.Identifier(table.partition_by))
    statements = [statement]
    for index in table.indexes:
        name = sql.Identifier(index.name) if index.name else sql.SQL("")
        statements.append(sql.SQL("CREATE INDEX {} ON {} ({})").format(name, ident(table.relation), _columns(index.columns)))
    return statements


COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
FROM pg_attribute a
WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


def database_columns(conn: psycopg.Connection, relation: str) -> list[tuple[str, str, bool]]:
    """(name, type, not null) of the relation's columns, in order; empty if it does not exist."""
    return [tuple(row) for row in conn.execute(COLUMNS, (relation,)).fetchall()]


def catalog_columns(item: Table | ViewSpec) -> list[tuple[str, str, bool]]:
    if isinstance(item, Table):
        return [(c.name, c.type, item.not_null(c)) for c in item.columns]
    return [(c.name, c.type) for c in item.columns]


def drift(conn: psycopg.Connection, table: Table) -> str | None:
    """How an existing table differs from the catalog, or None."""
    found = database_columns(conn, table.relation)
    wanted = catalog_columns(table)
    if found == wanted:
        return None
    missing = [c for c in wanted if c not in found]
    extra = [c for c in found if c not in wanted]

    def show(cols: list[tuple[str, str, bool]]) -> str:
        return ", ".join(f"{n} {t}{' NOT NULL' if nn else ''}" for n, t, nn in cols) or "none"

    return (f"{table.relation} differs from the catalog: the catalog has {show(missing)}, the database has {show(extra)}"
            + ("" if missing or extra else " (the columns' order differs)"))


@dataclass
class TableSync:
    created: list[str] = field(default_factory=list)
    partitioned: list[str] = field(default_factory=list)
    comments: int = 0

    def summary(self) -> str:
        if not (self.created or self.partitioned or self.comments):
            return "tables unchanged"
        return (f"{len(self.created)} table(s) created, {len(self.partitioned)} partitioned, "
                f"{self.comments} comment(s) written")


def _partman_registered(conn: psycopg.Connection, relation: str) -> bool:
    return conn.execute("SELECT 1 FROM partman.part_config WHERE parent_table = %s", (relation,)).fetchone() is not None


def sync_tables(conn: psycopg.Connection, catalog: Catalog) -> TableSync:
    """Create the catalog tables the database lacks and register their partitions; refuse on drift."""
    problems = []
    missing = []
    for table in catalog.all_tables():
        if not database_columns(conn, table.relation):
            missing.append(table)
        elif (problem := drift(conn, table)) is not None:
            problems.append(problem)
    if problems:
        raise CatalogError(
            "nothing was created; these tables do not match the catalog:\n  - " + "\n  - ".join(problems)
            + "\nChange a table deliberately: a migration (sql/migrations/NNNN.<name>.sql) that alters it, and the "
              "catalog entry to match; then run dwh migrate again.")
    result = TableSync()
    with conn.transaction():
        for table in missing:
            for statement in create_table(table):
                conn.execute(statement)
            result.created.append(table.relation)
        for table in catalog.all_tables():
            if table.partition_by and not _partman_registered(conn, table.relation):
                start = dt.date.today() - dt.timedelta(days=table.premake_back_days)
                conn.execute("SELECT dwh.partman_create_daily(%s, %s, %s)", (table.relation, table.partition_by, start))
                result.partitioned.append(table.relation)
    return result


# ----- SQL files ------------------------------------------------------------------------------------


def framework_files(catalog: Catalog) -> list:
    """Files of the catalog's SQL directories that no entry claims: the shared routines, in name order."""
    claimed = {entry.routine_file for entry in catalog.refreshed()} | {v.sql_file for v in catalog.views}
    if catalog.reconciliation is not None:
        claimed.add(catalog.reconciliation.routine_file)
    return sorted((p for d in catalog.sql_dirs if d.is_dir() for p in d.glob("*.sql") if p.name not in claimed),
                  key=lambda p: p.name)


def entry_files(catalog: Catalog) -> list:
    """Copies' routines, then views (a mart's file: its view and routine), each after what it reads."""
    files = [catalog.sql_path(spec.routine_file) for spec in catalog.tables]
    if catalog.reconciliation is not None and catalog.reconciled():
        files.append(catalog.sql_path(catalog.reconciliation.routine_file))
    files += [catalog.sql_path(view.sql_file) for view in catalog.all_views()]
    return list(dict.fromkeys(files))


def apply_sql_files(conn: psycopg.Connection, files: list) -> int:
    """Repeatable SQL files (``CREATE OR REPLACE``), in one transaction; returns how many."""
    with conn.transaction():
        for path in files:
            try:
                conn.execute(path.read_text())  # no parameters: sent as one simple query, statements and all
            except psycopg.Error as e:
                raise CatalogError(f"{path}: {e.diag.message_primary or e}"
                                        + (f" ({e.diag.message_hint})" if e.diag.message_hint else "")) from None
    return len(files)


# ----- comments ------------------------------------------------------------------------------------


def comments(catalog: Catalog) -> dict[tuple[str, str, str | None], str]:
    """(kind, relation, column or None) -> the COMMENT the catalog gives it."""
    found: dict[tuple[str, str, str | None], str] = {}
    for item in (*catalog.all_tables(), *catalog.all_views()):
        kind = "TABLE" if isinstance(item, Table) else "VIEW"
        found[(kind, item.relation, None)] = item.comment if isinstance(item, Table) else item.description
        personal = catalog.personal_columns(item.relation)
        for column in item.columns:
            found[("COLUMN", item.relation, column.name)] = marked(column.comment, column.name in personal)
    return found


DESCRIPTIONS = """
SELECT d.description FROM pg_description d
WHERE d.classoid = 'pg_class'::regclass AND d.objoid = to_regclass(%s) AND d.objsubid = coalesce(
    (SELECT attnum FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s), 0)
"""


def database_comment(conn: psycopg.Connection, relation: str, column: str | None) -> str | None:
    row = conn.execute(DESCRIPTIONS, (relation, relation, column)).fetchone()
    return row[0] if row else None


def sync_comments(conn: psycopg.Connection, catalog: Catalog) -> int:
    """Write the comments that differ from the catalog's; returns how many."""
    changed = 0
    with conn.transaction():
        for (kind, relation, column), text in comments(catalog).items():
            if database_comment(conn, relation, column) == text:
                continue
            target = ident(relation) if column is None else sql.Identifier(*relation.split("."), column)
            conn.execute(sql.SQL("COMMENT ON {} {} IS {}").format(sql.SQL(kind), target, sql.Literal(text)))
            changed += 1
    return changed


# ----- grants ---------------------------------------------------------------------------------------


def late_data_routines(catalog: Catalog) -> list[tuple[str, str]]:
    """(routine, argument types) of the late-data routines the loader runs, where the catalog has any."""
    routines = []
    if catalog.reconciled():
        routines.append((ARRIVALS_ROUTINE, ARRIVALS_ROUTINE_ARGUMENTS))
        if catalog.reconciliation is not None:
            routines += [(catalog.reconciliation.routine, ""), ("dwh.reconcile", "text")]
    return routines


def grants(catalog: Catalog, loader: str, reader: str, personal_reader: str) -> list[sql.Composable]:
    """Every grant on the catalog's routines and relations, exact whatever was granted before."""
    loader_id = sql.Identifier(loader)
    routines = [(entry.routine, entry.routine_arguments) for entry in catalog.refreshed()] + late_data_routines(catalog)
    statements = [sql.SQL("GRANT EXECUTE ON FUNCTION {}({}) TO {}").format(ident(routine), sql.SQL(arguments), loader_id)
                  for routine, arguments in routines]
    for item in (*catalog.all_tables(), *catalog.all_views()):
        statements.append(sql.SQL("GRANT SELECT ON {} TO {}").format(ident(item.relation), loader_id))
        statements += reader_grants(item, catalog.personal_columns(item.relation), reader, personal_reader)
    return statements


def reader_grants(item: Table | ViewSpec, personal: frozenset[str], reader: str,
                  personal_reader: str) -> list[sql.Composable]:
    """The reader's SELECT on the relation, or on its columns but ``personal``; those to the personal reader.

    Revoked first: a table-level REVOKE takes every column privilege with it, so what stays is
    what the catalog says now (a column marked personal since the last run included).
    """
    relation, reader_id, personal_id = ident(item.relation), sql.Identifier(reader), sql.Identifier(personal_reader)
    revoke = sql.SQL("REVOKE SELECT ON {} FROM {}, {}").format(relation, reader_id, personal_id)
    if not personal:
        return [revoke, sql.SQL("GRANT SELECT ON {} TO {}").format(relation, reader_id)]

    def columns(names: list[str]) -> sql.Composable:
        return sql.SQL(", ").join(map(sql.Identifier, names))

    public = [c.name for c in item.columns if c.name not in personal]
    private = [c.name for c in item.columns if c.name in personal]
    return [revoke,
            sql.SQL("GRANT SELECT ({}) ON {} TO {}").format(columns(public), relation, reader_id),
            sql.SQL("GRANT SELECT ({}) ON {} TO {}").format(columns(private), relation, personal_id)]


# Partitions of the catalog's tables that a role may read directly (a partition's own grants,
# not its parent's column privileges, decide what a query naming it sees).
READABLE_PARTITIONS = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relispartition AND n.nspname IN ('dwh', 'mart')
  AND (has_table_privilege(%(reader)s, c.oid, 'SELECT') OR has_any_column_privilege(%(reader)s, c.oid, 'SELECT')
       OR has_table_privilege(%(personal)s, c.oid, 'SELECT') OR has_any_column_privilege(%(personal)s, c.oid, 'SELECT'))
ORDER BY 1, 2
"""


def revoke_partitions(conn: psycopg.Connection, reader: str, personal_reader: str) -> int:
    """Take from the readers what they may read of partitions directly (the default privileges of a
    warehouse migrated before 0005 gave it to new tables); returns how many partitions."""
    found = conn.execute(READABLE_PARTITIONS, {"reader": reader, "personal": personal_reader}).fetchall()
    for schema, name in found:
        conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}, {}").format(
            sql.Identifier(schema, name), sql.Identifier(reader), sql.Identifier(personal_reader)))
    return len(found)


# ----- arrival watermarks ------------------------------------------------------------------------


ARRIVAL_COLUMNS = ("source", "time_column", "arrival_column", "overlap", "checksum_column", "day_counts")


def arrival_row(spec: TableSpec) -> tuple:
    """A reconciled fact's declaration in dwh.arrival_watermarks (``ARRIVAL_COLUMNS``).

    The reconciliation sums the key per day besides counting when the key is one integer column
    (a row replaced by another of the same day changes the sum); Prometheus is counted by the reader.
    """
    key = spec.table.column(spec.key[0]) if len(spec.key) == 1 else None
    checksum = key.name if key is not None and key.type in ("bigint", "integer") else None
    counts = "prometheus" if spec.system is SourceSystem.PROMETHEUS else "fdw"
    return (spec.sources[0], spec.time_column, spec.arrival.column, spec.arrival.overlap, checksum, counts)


def sync_arrival_watermarks(conn: psycopg.Connection, catalog: Catalog) -> None:
    """Make dwh.arrival_watermarks declare exactly the catalog's reconciled facts. A fact whose
    source or arrival column changed starts its watermark over; nothing else touches its state."""
    wanted = {spec.name: arrival_row(spec) for spec in catalog.reconciled()}
    columns = sql.SQL(", ").join(map(sql.Identifier, ARRIVAL_COLUMNS))
    found = {row[0]: tuple(row[1:]) for row in conn.execute(
        sql.SQL("SELECT table_name, {} FROM dwh.arrival_watermarks").format(columns)).fetchall()}
    if found == wanted:
        return
    restart = sql.SQL(", ").join(sql.SQL("{} = CASE WHEN (t.source, t.arrival_column) IS NOT DISTINCT FROM "
                                         "(excluded.source, excluded.arrival_column) THEN t.{} END").format(
        sql.Identifier(c), sql.Identifier(c)) for c in ("read_after", "seen_up_to", "next_read_after", "next_since"))
    with conn.transaction():
        conn.execute("DELETE FROM dwh.arrival_watermarks WHERE NOT (table_name = ANY(%s))", (list(wanted),))
        for name, row in wanted.items():
            if found.get(name) == row:
                continue
            conn.execute(sql.SQL(
                "INSERT INTO dwh.arrival_watermarks AS t (table_name, {columns}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (table_name) DO UPDATE SET ({columns}) = ({excluded}), {restart}").format(
                    columns=columns, excluded=sql.SQL(", ").join(sql.SQL("excluded.{}").format(sql.Identifier(c))
                                                                 for c in ARRIVAL_COLUMNS), restart=restart),
                (name, *row))
