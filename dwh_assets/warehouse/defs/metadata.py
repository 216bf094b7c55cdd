"""What an asset page shows about a table, with the database as the one source of truth.

- definition metadata (static): ``dagster/table_name``, the routine, its pg_cron job and
  default schedule, a code reference to the SQL file that builds the table, owners, tags;
  ``code_version`` is a hash of that SQL file;
- materialization metadata (read from the database after each refresh, whoever ran it):
  ``dagster/column_schema`` with the columns' ``COMMENT``s, ``dagster/column_lineage``
  (source column -> copy column -> mart column), ``dagster/row_count`` and the routine's
  ``dwh.refresh_log`` row.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
import psycopg

from pathlib import Path

from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.catalog_model import Table, ViewSpec

TABLE_NAME = "dagster/table_name"
COLUMN_SCHEMA = "dagster/column_schema"
COLUMN_LINEAGE = "dagster/column_lineage"
ROW_COUNT = "dagster/row_count"
CODE_REFERENCES = "dagster/code_references"


def key_of(relation: str) -> dg.AssetKey:
    """``schema.table`` -> ``AssetKey([schema, table])``."""
    return dg.AssetKey(relation.split(".", 1))


def code_reference(path: Path, label: str) -> dg.CodeReferencesMetadataValue:
    return dg.CodeReferencesMetadataValue(code_references=[
        dg.LocalFileCodeReference(file_path=str(path), line_number=1, label=label)])


def catalog_schema(item: Table | ViewSpec) -> dg.TableSchema:
    """The columns as the catalog declares them: what the asset shows before any materialization."""
    return dg.TableSchema(columns=[
        dg.TableColumn(name=c.name, type=c.type, description=c.comment,
                       constraints=dg.TableColumnConstraints(
                           nullable=not (item.not_null(c) if isinstance(item, Table) else c.not_null)))
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
    """The relation's columns with their types and ``COMMENT``s, as the database has them."""
    rows = conn.execute(COLUMNS, (relation,)).fetchall()
    return dg.TableSchema(columns=[
        dg.TableColumn(name=r["name"], type=r["type"], description=r["description"],
                       constraints=dg.TableColumnConstraints(nullable=not r["not_null"]))
        for r in rows
    ])


def column_names(conn: psycopg.Connection, relation: str) -> list[str]:
    return [r["name"] for r in conn.execute(COLUMNS, (relation,)).fetchall()]


def _dep(column_ref: str) -> dg.TableColumnDep:
    schema, table, column = column_ref.split(".")
    return dg.TableColumnDep(asset_key=dg.AssetKey([schema, table]), column_name=column)


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
    return dg.TableColumnLineage(deps_by_column={c.name: [_dep(ref) for ref in c.lineage] for c in mart.columns if c.lineage})


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
    from psycopg import sql

    return conn.execute(sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(*relation.split(".")))).fetchone()["n"]
