"""What an asset page shows about a table, with the database as the one source of truth.

- definition metadata (static): ``dagster/table_name``, the routine, its pg_cron job and
  default schedule, a code reference to the SQL file that builds the table, owners, tags;
  ``code_version`` is a hash of that SQL file;
- materialization metadata (read from the database after each refresh, whoever ran it):
  ``dagster/column_schema`` with the columns' ``COMMENT``s (a personal column tagged
  ``personal_data``, as in the definition's schema), ``dagster/column_lineage``
  (source column -> copy column -> mart column), ``dagster/row_count`` (the rows the table
  holds after the refresh), ``rows_in_window`` (the refreshed window's) and the routine's
  ``dwh.refresh_log`` row.

Dagster 1.13's open-source UI draws ``dagster/column_lineage`` nowhere (its column-lineage
views are Dagster+ only), so the same lineage is also rendered as a markdown table
(``column_lineage``: "column <- source columns"), on the definition from the catalog and on
each materialization from the database.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
from psycopg import sql

from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.catalog_model import PERSONAL_MARK, Column, Table, ViewSpec, marked

TABLE_NAME = "dagster/table_name"
COLUMN_SCHEMA = "dagster/column_schema"
COLUMN_LINEAGE = "dagster/column_lineage"
ROW_COUNT = "dagster/row_count"
PARTITION_ROW_COUNT = "dagster/partition_row_count"
ROWS_IN_WINDOW = "rows_in_window"
CODE_REFERENCES = "dagster/code_references"
# The rendered lineage table, what an open-source UI user reads (see the module docstring).
LINEAGE_TABLE = "column_lineage"
# Foreign tables mirror the names of the copies they feed: their schemas start with this.
SOURCE_SCHEMA_PREFIX = "src_"
# The tag of a column holding personal data (docs/personal-data.md).
PERSONAL_TAG = "personal_data"


def key_of(relation: str) -> dg.AssetKey:
    """``schema.table`` -> ``AssetKey([schema, table])``; a source foreign table
    ``src_<system>.<table>`` -> ``AssetKey(["<system>.<table>"])``, the source system's own name.

    The lineage graph labels a node with its key's last part only, and zoomed out cuts it to
    18 characters at a ``_`` or ``.``: a source keyed ``[src_clerk, users]`` would be a second
    "users" next to ``dwh/users``, and ``src_clerk.organizations`` and
    ``src_control_plane.organizations`` would both read "src….organizations". Keyed
    "clerk.organizations" and "control_plane.organizations" they stay apart at any zoom.
    """
    schema, table = relation.split(".", 1)
    if schema.startswith(SOURCE_SCHEMA_PREFIX):
        return dg.AssetKey([f"{schema.removeprefix(SOURCE_SCHEMA_PREFIX)}.{table}"])
    return dg.AssetKey([schema, table])


def relation_of(key: dg.AssetKey) -> str:
    """The relation an asset key stands for: the inverse of ``key_of``."""
    if len(key.path) == 1:
        system, table = key.path[0].split(".", 1)
        return f"{SOURCE_SCHEMA_PREFIX}{system}.{table}"
    return ".".join(key.path)


def code_reference(path: Path, label: str) -> dg.CodeReferencesMetadataValue:
    return dg.CodeReferencesMetadataValue(code_references=[
        dg.LocalFileCodeReference(file_path=str(path), line_number=1, label=label)])


def personal_tags(personal: bool) -> dict[str, str]:
    """A personal column's tag in Dagster's column schema (its description begins with the mark too)."""
    return {PERSONAL_TAG: "true"} if personal else {}


def catalog_schema(item: Table | ViewSpec, personal: frozenset[str] = frozenset()) -> dg.TableSchema:
    """The columns as the catalog declares them: what the asset shows before any materialization."""
    return dg.TableSchema(columns=[
        dg.TableColumn(name=c.name, type=c.type, description=marked(c.comment, c.name in personal),
                       constraints=dg.TableColumnConstraints(
                           nullable=not (item.not_null(c) if isinstance(item, Table) else c.not_null)),
                       tags=personal_tags(c.name in personal))
        for c in item.columns
    ])


def table_definition_metadata(relation: str, routine: str | None = None, routine_file: Path | None = None,
                              job: str | None = None, schedule: str | None = None,
                              schema: dg.TableSchema | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {TABLE_NAME: relation}
    if schema is not None:
        meta[COLUMN_SCHEMA] = schema
    if routine:
        meta["routine"] = routine
    if routine_file:
        meta[CODE_REFERENCES] = code_reference(routine_file, f"{routine} (SQL)")
    if job:
        meta["pg_cron_job"] = job
        meta["pg_cron_schedule"] = f"{schedule} (GMT; the catalog's default, a deployment may override it)"
    return meta


# ----- read from the database after a refresh ------------------------------------------------------

COLUMNS = """
SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS not_null,
       col_description(a.attrelid, a.attnum) AS description
FROM pg_attribute a
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


def column_schema(conn: psycopg.Connection, relation: str) -> dg.TableSchema:
    """The relation's columns with their types and ``COMMENT``s, as the database has them (a personal
    column's comment carries the catalog's mark, which becomes its tag)."""
    rows = conn.execute(COLUMNS, (relation,)).fetchall()
    return dg.TableSchema(columns=[
        dg.TableColumn(name=r["name"], type=r["type"], description=r["description"],
                       constraints=dg.TableColumnConstraints(nullable=not r["not_null"]),
                       tags=personal_tags((r["description"] or "").startswith(PERSONAL_MARK)))
        for r in rows
    ])


def column_names(conn: psycopg.Connection, relation: str) -> list[str]:
    return [r["name"] for r in conn.execute(COLUMNS, (relation,)).fetchall()]


def _dep(column_ref: str) -> dg.TableColumnDep:
    relation, column = column_ref.rsplit(".", 1)
    return dg.TableColumnDep(asset_key=key_of(relation), column_name=column)


def catalog_copy_lineage(spec: catalog.TableSpec) -> dg.TableColumnLineage:
    """A copy's lineage as the catalog states it: a column's own ``lineage``, else the primary
    source's column of the same name (what the definition shows before any refresh)."""
    return dg.TableColumnLineage(deps_by_column={
        c.name: [_dep(ref) for ref in (c.lineage or (f"{spec.sources[0]}.{c.name}",))]
        for c in spec.columns if not c.generated or c.lineage
    })


def catalog_lineage(columns: tuple[Column, ...]) -> dg.TableColumnLineage:
    """The columns' declared lineage (marts, plain tables a refresh also writes)."""
    return dg.TableColumnLineage(deps_by_column={c.name: [_dep(ref) for ref in c.lineage] for c in columns if c.lineage})


def snapshot_lineage(spec: catalog.TableSpec) -> dg.TableColumnLineage:
    """A dimension's snapshot: each of its columns (no personal one) from the table's column of the same name."""
    kept = {c.name for c in spec.snapshot.columns}
    return dg.TableColumnLineage(deps_by_column={
        c.name: [_dep(f"{spec.local_table}.{c.name}")] for c in spec.columns if c.name in kept})


def lineage_table(lineage: dg.TableColumnLineage) -> dg.MarkdownMetadataValue:
    """``dagster/column_lineage`` as a markdown table the open-source UI renders: column <- source columns."""
    rows = [f"| `{column}` | {', '.join(f'`{relation_of(d.asset_key)}.{d.column_name}`' for d in deps)} |"
            for column, deps in lineage.deps_by_column.items()]
    if not rows:
        return dg.MetadataValue.md("No column lineage is declared for this relation.")
    return dg.MetadataValue.md("\n".join(["| column | &larr; source columns |", "| --- | --- |", *rows]))


def lineage_metadata(lineage: dg.TableColumnLineage) -> dict[str, Any]:
    """The lineage twice: Dagster's standard entry, and the table a person can read."""
    return {COLUMN_LINEAGE: lineage, LINEAGE_TABLE: lineage_table(lineage)}


def copy_column_lineage(conn: psycopg.Connection, spec: catalog.TableSpec) -> dg.TableColumnLineage:
    """Each copy column from the source column of the same name, or as the catalog says."""
    derived = {c.name: c.lineage for c in spec.columns if c.lineage}
    source_columns = {source: set(column_names(conn, source)) for source in spec.sources}
    deps: dict[str, list[dg.TableColumnDep]] = {}
    for column in column_names(conn, spec.local_table):
        if column in derived:
            deps[column] = [_dep(ref) for ref in derived[column]]
            continue
        named = [f"{source}.{column}" for source, columns in source_columns.items() if column in columns]
        if named:
            deps[column] = [_dep(named[0])]
    return dg.TableColumnLineage(deps_by_column=deps)


def mart_column_lineage(mart: catalog.MartSpec) -> dg.TableColumnLineage:
    return catalog_lineage(mart.columns)


def refresh_metadata(log: dict[str, Any]) -> dict[str, dg.MetadataValue]:
    """The routine's dwh.refresh_log row, as materialization metadata (never recomputed)."""
    meta: dict[str, Any] = {
        "rows_inserted": dg.MetadataValue.int(int(log["rows_inserted"])),
        "rows_updated": dg.MetadataValue.int(int(log["rows_updated"])),
        "rows_deleted": dg.MetadataValue.int(int(log["rows_deleted"])),
        "duration_ms": dg.MetadataValue.float(float(log["duration_ms"])),
        "lock_wait_ms": dg.MetadataValue.float(float(log["lock_wait_ms"])),
        "refresh_log_id": dg.MetadataValue.int(int(log["id"])),
        "backend_pid": dg.MetadataValue.int(int(log["backend_pid"])),
    }
    if log.get("rows_source") is not None:
        meta["rows_source"] = dg.MetadataValue.int(int(log["rows_source"]))
    if log.get("window_start") is not None:
        meta["window"] = dg.MetadataValue.text(f"[{log['window_start'].isoformat()}, {log['window_end'].isoformat()})")
    if log.get("snapshot_day") is not None:
        meta["snapshot_day"] = dg.MetadataValue.text(log["snapshot_day"].isoformat())
    return meta


def describe_refresh(log: dict[str, Any]) -> str:
    """One line for a run's log: the table, its window or snapshot, its rows and time."""
    if log.get("window_start") is not None:
        where = f"[{log['window_start']:%Y-%m-%d %H:%M}, {log['window_end']:%Y-%m-%d %H:%M})"
    elif log.get("snapshot_day") is not None:
        where = f"snapshot {log['snapshot_day']}"
    else:
        where = "no window"
    return (f"{log['table_name']} {where}: +{log['rows_inserted']:,} ~{log['rows_updated']:,} "
            f"-{log['rows_deleted']:,} rows in {float(log['duration_ms']) / 1000:.2f}s")


def count_rows(conn: psycopg.Connection, relation: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(*relation.split(".")))).fetchone()["n"]


def rows_by_day(conn: psycopg.Connection, relation: str, column: str, start: dt.datetime,
                end: dt.datetime) -> dict[dt.date, int]:
    """Rows of ``relation`` per UTC day of the window ``[start, end)``, by ``column`` (a fact's
    timestamptz, a mart's date ``day``): compared as it is, so only the window's partitions are read."""
    name = sql.Identifier(column)
    is_date = conn.execute("SELECT atttypid = 'date'::regtype AS d FROM pg_attribute WHERE attrelid = %s::regclass "
                           "AND attname = %s", (relation, column)).fetchone()["d"]
    day = name if is_date else sql.SQL("({} AT TIME ZONE 'UTC')::date").format(name)
    bounds = (start.astimezone(dt.timezone.utc).date(), _end_day(end)) if is_date else (start, end)
    rows = conn.execute(sql.SQL("SELECT {day} AS day, count(*) AS n FROM {rel} WHERE {col} >= %s AND {col} < %s "
                                "GROUP BY 1").format(day=day, rel=sql.Identifier(*relation.split(".")), col=name),
                        bounds).fetchall()
    return {r["day"]: int(r["n"]) for r in rows}


def _end_day(end: dt.datetime) -> dt.date:
    """The first UTC day not in a window ending at ``end``."""
    utc = end.astimezone(dt.timezone.utc)
    return utc.date() + dt.timedelta(days=1) if utc.time() != dt.time() else utc.date()
