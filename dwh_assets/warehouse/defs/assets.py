"""Assets derived from the catalog: source foreign tables -> local copies -> marts.

- every source foreign table is an external ``AssetSpec`` (Dagster never runs it), kind
  ``foreign table``, in the group of the copy it feeds;
- a **fact** is partitioned by day (its event time); a range of days is one run and one
  window of the routine pg_cron also runs (``BackfillPolicy.single_run``);
- a **dimension** is not partitioned: its source knows only the current state, so a
  refresh makes the copy equal to it and records that day's snapshot. The snapshot table
  is an asset of its own, materialised (with its ``snapshot_day``) by the same refresh;
- a **mart** is partitioned like the facts, so a range of a fact and its marts is one run;
  between runs, its pg_cron job refreshes the days its inputs' refreshes queued;
- relations a refresh writes besides its table (``dwh.metric_series``) and the refresh log
  are assets too, so every relation a mart or a dashboard reads is in the lineage.

Keys are ``[schema, table]``; groups follow the data (``catalog.Group``). Materialization
metadata comes from the routine's ``dwh.refresh_log`` row and the database's catalog
(``defs.metadata``); check results from ``defs.checks``, in the same step.
"""


import datetime as dt
from typing import Any

import dagster as dg
import psycopg
from psycopg import sql

from dwh_assets.warehouse import catalog, sql_files
from dwh_assets.warehouse.catalog import Catalog
from dwh_assets.warehouse.defs import metadata as md
from dwh_assets.warehouse.defs.checks import RefreshCheck, mart_checks, refresh_checks
from dwh_assets.warehouse.defs.metadata import key_of
from dwh_assets.warehouse.defs.partitions import today_utc, window_of_days
from dwh_assets.warehouse.defs.resources import WarehouseResource, qualified

SOURCE_KIND = {
    catalog.SourceSystem.CONTROL_PLANE: "postgres",
    catalog.SourceSystem.CLERK: "clerk",
    catalog.SourceSystem.PROMETHEUS: "prometheus",
}
# Which FDW serves a source system's foreign tables; for Clerk and Prometheus it is the
# deployment's backend choice (dwh.settings 'backend.<system>'), written by `dwh migrate`.
SOURCE_FDW = {
    catalog.SourceSystem.CONTROL_PLANE: "postgres_fdw (server control_plane)",
    catalog.SourceSystem.CLERK: "file_fdw + source reader (backend reader) or clerk_fdw (backend tembo)",
    catalog.SourceSystem.PROMETHEUS: "file_fdw + source reader (backend reader) or prometheus_fdw (backend tembo)",
}
REFRESH_LOG = catalog.REFRESH_LOG
# The shared refresh framework: it writes every dwh.refresh_log row (the log's code version).
REFRESH_FRAMEWORK_FILE = "01_refresh_framework.sql"


def _tags(layer: str, system: catalog.SourceSystem | None = None) -> dict[str, str]:
    return {"layer": layer, **({"source_system": system.value} if system else {})}


def source_specs(entries: Catalog) -> list[dg.AssetSpec]:
    specs: dict[str, dg.AssetSpec] = {}
    for spec in entries.tables:
        for relation in spec.sources:
            if relation in specs:
                continue
            system = catalog.SourceSystem(relation.split(".", 1)[0].removeprefix("src_"))
            specs[relation] = dg.AssetSpec(
                key=key_of(relation),
                description=f"Source: foreign table {relation}, read live from {system.value} through "
                            f"{SOURCE_FDW[system].split(' (')[0]}. Dagster never builds it.",
                group_name=spec.group.value,
                kinds={SOURCE_KIND[system], "foreign table"},
                owners=list(catalog.OWNERS),
                tags=_tags("source", system),
                metadata={md.TABLE_NAME: relation, "fdw": SOURCE_FDW[system]},
            )
    return list(specs.values())


def side_specs(entries: Catalog) -> list[dg.AssetSpec]:
    """Relations a refresh writes besides its own table: materialised by those refreshes."""
    specs = []
    for spec in entries.tables:
        written = [*spec.also_writes, *([spec.snapshot] if spec.snapshot else [])]
        routine_file = entries.sql_path(spec.routine_file)
        for table in written:
            relation = table.relation
            snapshot = relation == spec.snapshot_table
            what = ("daily snapshots of " + spec.local_table + " (partitioned by snapshot_day)"
                    if snapshot else "written by the refresh of " + spec.local_table)
            lineage = md.snapshot_lineage(spec) if snapshot else md.catalog_lineage(table.columns)
            specs.append(dg.AssetSpec(
                key=key_of(relation), deps=[key_of(spec.local_table)] if snapshot else [key_of(s) for s in spec.sources],
                description=f"{relation}: {what}; recorded on every refresh of {spec.local_table}.",
                group_name=spec.group.value, kinds={"postgres", "table"}, owners=list(catalog.OWNERS),
                tags=_tags("copy", spec.system), code_version=sql_files.code_version(routine_file),
                metadata=md.table_definition_metadata(relation, spec.routine, routine_file,
                                                      schema=md.catalog_schema(table, entries.personal_columns(relation)))
                | md.lineage_metadata(lineage),
            ))
    reconciliation = entries.reconciliation
    if reconciliation is not None and entries.reconciled():
        routine_file = entries.sql_path(reconciliation.routine_file)
        specs.append(dg.AssetSpec(
            key=key_of(reconciliation.relation), deps=[key_of(spec.local_table) for spec in entries.reconciled()],
            description=f"{reconciliation.description}{_automation_text(reconciliation.cron_job_name, reconciliation.schedule)}",
            group_name=catalog.Group.WAREHOUSE.value, kinds={"postgres", "table"}, owners=list(catalog.OWNERS),
            tags=_tags("bookkeeping"), code_version=sql_files.code_version(routine_file),
            metadata=md.table_definition_metadata(reconciliation.relation, reconciliation.routine, routine_file,
                                                  reconciliation.cron_job_name, reconciliation.schedule,
                                                  md.catalog_schema(reconciliation.table)),
        ))
    return specs


def refresh_log_spec(entries: Catalog) -> dg.AssetSpec:
    """The refresh log: every refresh adds a row, so it is observed, never materialised."""
    framework = entries.sql_path(REFRESH_FRAMEWORK_FILE)
    return dg.AssetSpec(
        key=key_of(REFRESH_LOG), description="One row per committed refresh (same transaction as its data): "
                                              "table, window or snapshot, rows, duration, lock wait, backend pid.",
        group_name=catalog.Group.WAREHOUSE.value, kinds={"postgres", "table"}, owners=list(catalog.OWNERS),
        tags=_tags("bookkeeping"), code_version=sql_files.code_version(framework),
        metadata={md.TABLE_NAME: REFRESH_LOG, md.CODE_REFERENCES: md.code_reference(framework, "dwh.log_refresh (SQL)")},
    )


def _partition_days(context: dg.AssetExecutionContext) -> tuple[dt.date, dt.date]:
    keys = context.partition_key_range
    first, last = dt.date.fromisoformat(keys.start), dt.date.fromisoformat(keys.end)
    if first > last:
        raise dg.Failure(
            description=f"partition range {keys.start}...{keys.end} is reversed: write it as {keys.end}...{keys.start}",
            allow_retries=False,
        )
    return first, last


def _freshness_policy(entry: catalog.TableSpec) -> dg.FreshnessPolicy | None:
    """Dagster's own freshness of a copy (its daemon turns the asset red): the catalog's schedule, two
    intervals plus the typical duration. The sensor's fresh_within_schedule judges the live schedule."""
    return dg.FreshnessPolicy.time_window(fail_window=entry.freshness) if entry.freshness else None


def _automation_text(job: str, schedule: str) -> str:
    return f" pg_cron job `{job}` refreshes it on `{schedule}` (GMT, the catalog's default); the pg_cron_runs sensor reports each run."


def _materialization(conn: psycopg.Connection, relation: str, log: dict[str, Any],
                     lineage: dg.TableColumnLineage) -> dict[str, Any]:
    """What every refresh reports: its log row, the columns and lineage, and the rows the relation now holds."""
    return md.refresh_metadata(log) | md.lineage_metadata(lineage) | {
        md.COLUMN_SCHEMA: md.column_schema(conn, relation),
        md.ROW_COUNT: dg.MetadataValue.int(md.count_rows(conn, relation)),
    }


def window_rows(conn: psycopg.Connection, entry: catalog.TableSpec | catalog.MartSpec,
                log: dict[str, Any]) -> dict[dt.date, int] | None:
    """Rows per day of the refreshed window, after the refresh; None without a window (dimensions)."""
    if log.get("window_start") is None:
        return None
    if isinstance(entry, catalog.MartSpec):
        return md.rows_by_day(conn, entry.table, "day", log["window_start"], log["window_end"])
    return md.rows_by_day(conn, entry.local_table, entry.time_column, log["window_start"], log["window_end"])


def window_metadata(days: dict[dt.date, int] | None, partition: str | None = None) -> dict[str, Any]:
    """``rows_in_window`` and, for one day's partition, ``dagster/partition_row_count``."""
    if days is None:
        return {}
    meta: dict[str, Any] = {md.ROWS_IN_WINDOW: dg.MetadataValue.int(sum(days.values()))}
    if partition is not None:
        meta[md.PARTITION_ROW_COUNT] = dg.MetadataValue.int(days.get(dt.date.fromisoformat(partition), 0))
    return meta


def copy_materialization(conn: psycopg.Connection, spec: catalog.TableSpec, log: dict[str, Any]) -> dict[str, Any]:
    """Metadata of a copy's materialization: ``dagster/row_count`` is the whole table's."""
    return _materialization(conn, spec.local_table, log, md.copy_column_lineage(conn, spec))


def side_materializations(conn: psycopg.Connection, spec: catalog.TableSpec, log: dict[str, Any],
                          extra: dict[str, Any] | None = None) -> list[dg.AssetMaterialization]:
    """What the same refresh wrote besides its table: today's snapshot, the metric series."""
    events = []
    extra = extra or {}
    if spec.snapshot_table and log.get("snapshot_day") is not None:
        rows = conn.execute(sql.SQL("SELECT count(*) AS n FROM {} WHERE snapshot_day = %s").format(
            qualified(spec.snapshot_table)), (log["snapshot_day"],)).fetchone()["n"]
        events.append(dg.AssetMaterialization(
            asset_key=key_of(spec.snapshot_table), description=f"snapshot of {log['snapshot_day']}",
            metadata={"snapshot_day": log["snapshot_day"].isoformat(), "rows_in_snapshot_day": int(rows),
                      md.ROW_COUNT: md.count_rows(conn, spec.snapshot_table), "refresh_log_id": int(log["id"]),
                      md.COLUMN_SCHEMA: md.column_schema(conn, spec.snapshot_table)}
            | md.lineage_metadata(md.snapshot_lineage(spec)) | extra))
    for table in spec.also_writes:
        events.append(dg.AssetMaterialization(
            asset_key=key_of(table.relation), description=f"written by {spec.routine}",
            metadata={md.ROW_COUNT: md.count_rows(conn, table.relation), "refresh_log_id": int(log["id"]),
                      md.COLUMN_SCHEMA: md.column_schema(conn, table.relation)}
            | md.lineage_metadata(md.catalog_lineage(table.columns)) | extra))
    return events


def _copy_asset_args(entries: Catalog, spec: catalog.TableSpec, checks: list[RefreshCheck], how: str) -> dict[str, Any]:
    """What every local copy declares: key, lineage, group, freshness, checks, code version, columns."""
    sql_path = entries.sql_path(spec.routine_file)
    return dict(
        key=key_of(spec.local_table),
        deps=[key_of(s) for s in spec.sources],
        description=f"{spec.description} {how}{_automation_text(spec.cron_job_name, spec.schedule)}",
        group_name=spec.group.value,
        kinds={"postgres", "table"},
        owners=list(catalog.OWNERS),
        tags=_tags("copy", spec.system),
        code_version=sql_files.code_version(sql_path),
        freshness_policy=_freshness_policy(spec),
        check_specs=[c.spec() for c in checks],
        metadata=md.table_definition_metadata(spec.local_table, spec.routine, sql_path, spec.cron_job_name,
                                              spec.schedule, md.catalog_schema(spec.table, entries.personal_columns(spec.local_table)))
        | md.lineage_metadata(md.catalog_copy_lineage(spec)) | {"table_kind": spec.kind.value},
    )


def _fact_asset(entries: Catalog, spec: catalog.TableSpec, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    checks = refresh_checks(spec)

    @dg.asset(**_copy_asset_args(entries, spec, checks, f"Partitioned by day of {spec.time_column}; a range of days is one window."),
              partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run())
    def refresh_fact(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
        first, last = _partition_days(context)
        start, end = window_of_days(first, last)
        with warehouse.connect() as conn:
            log = warehouse.refresh_fact(conn, spec, start, end)
            context.log.info(md.describe_refresh(log))
            for event in side_materializations(conn, spec, log):
                context.log_event(event)
            days = window_rows(conn, spec, log)
            single = first.isoformat() if first == last else None
            return dg.MaterializeResult(metadata=copy_materialization(conn, spec, log) | window_metadata(days, single),
                                        check_results=[c.result(conn, log) for c in checks])

    return refresh_fact


def _dimension_asset(entries: Catalog, spec: catalog.TableSpec) -> dg.AssetsDefinition:
    checks = refresh_checks(spec)

    @dg.asset(**_copy_asset_args(entries, spec, checks, f"The current state of its source; each refresh also records "
                                               f"that day's snapshot in {spec.snapshot_table}."))
    def refresh_dimension(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
        with warehouse.connect() as conn:
            log = warehouse.refresh_dimension(conn, spec, today_utc())
            context.log.info(md.describe_refresh(log))
            for event in side_materializations(conn, spec, log):
                context.log_event(event)
            return dg.MaterializeResult(metadata=copy_materialization(conn, spec, log),
                                        check_results=[c.result(conn, log) for c in checks])

    return refresh_dimension


def copy_assets(entries: Catalog, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    return [
        _fact_asset(entries, spec, partitions) if spec.kind is catalog.Kind.FACT else _dimension_asset(entries, spec)
        for spec in entries.tables
    ]


def mart_materialization(conn: psycopg.Connection, mart: catalog.MartSpec, log: dict[str, Any]) -> dict[str, Any]:
    """Metadata of a mart's materialization: ``dagster/row_count`` counts the view's rows."""
    return _materialization(conn, mart.relation, log, md.mart_column_lineage(mart))


def _mart_asset(entries: Catalog, mart: catalog.MartSpec, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    checks = mart_checks(mart)
    sql_path = entries.sql_path(mart.routine_file)

    @dg.asset(
        key=key_of(mart.relation),
        deps=[key_of(r) for r in mart.reads],
        description=(f"{mart.description} Stored per day in {mart.table} (partitioned), read through the view "
                     f"{mart.relation}; refreshed per window of days. Its pg_cron job `{mart.cron_job_name}` "
                     f"(`{mart.schedule}`) refreshes the days that refreshes of "
                     f"{', '.join('dwh.' + c for c in mart.stale_when)} changed, within minutes of them."),
        group_name=mart.group.value,
        kinds={"postgres", "view"},
        owners=list(catalog.OWNERS),
        tags=_tags("mart"),
        code_version=sql_files.code_version(sql_path),
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        # No FreshnessPolicy: Dagster's counts materializations only, and a mart's job that finds no
        # queued day materializes nothing (daily_signups when nobody signs up): it would turn red
        # while the mart is current. fresh_within_schedule counts every run of its job instead.
        check_specs=[c.spec() for c in checks],
        metadata=md.table_definition_metadata(mart.relation, mart.routine, sql_path, mart.cron_job_name, mart.schedule,
                                              md.catalog_schema(mart.view, entries.personal_columns(mart.relation)))
        | md.lineage_metadata(md.mart_column_lineage(mart)) | {"stored_in": mart.table},
    )
    def refresh_mart(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
        first, last = _partition_days(context)
        start, end = window_of_days(first, last)
        with warehouse.connect() as conn:
            log = warehouse.refresh_mart(conn, mart, start, end)
            context.log.info(md.describe_refresh(log))
            days = window_rows(conn, mart, log)
            single = first.isoformat() if first == last else None
            return dg.MaterializeResult(metadata=mart_materialization(conn, mart, log) | window_metadata(days, single),
                                        check_results=[c.result(conn, log) for c in checks])

    return refresh_mart


def mart_assets(entries: Catalog, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    return [_mart_asset(entries, mart, partitions) for mart in entries.marts]


def fact_keys(entries: Catalog = catalog.PRODUCT) -> list[dg.AssetKey]:
    return [key_of(s.local_table) for s in entries.tables if s.kind is catalog.Kind.FACT]


def dimension_keys(entries: Catalog = catalog.PRODUCT) -> list[dg.AssetKey]:
    return [key_of(s.local_table) for s in entries.tables if s.kind is catalog.Kind.DIMENSION]


def mart_keys(entries: Catalog = catalog.PRODUCT) -> list[dg.AssetKey]:
    return [key_of(m.relation) for m in entries.marts]
