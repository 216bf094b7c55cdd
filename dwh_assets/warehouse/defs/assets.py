"""Assets derived from the catalog: source foreign tables -> local copies -> marts.

- every source foreign table is an external ``AssetSpec`` (Dagster never runs it);
- every catalog entry is an asset that calls its refresh routine, the same SQL pg_cron runs;
- every mart is an asset that rebuilds its materialized view after the copies it reads.

Keys are ``[schema, table]`` of the warehouse object; groups are the source systems.
Metadata of a materialization comes from the routine's ``dwh.refresh_log`` row.
"""


import datetime as dt
from typing import Any

import dagster as dg

from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.defs.partitions import today_utc, window_of_days
from dwh_assets.warehouse.defs.resources import WarehouseResource

MARTS_GROUP = "marts"


def key_of(relation: str) -> dg.AssetKey:
    """``schema.table`` -> ``AssetKey([schema, table])``."""
    return dg.AssetKey(relation.split(".", 1))


# Which FDW serves a source system's foreign tables; for Clerk and Prometheus it is the
# deployment's backend choice (dwh.settings 'backend.<system>'), written by `dwh migrate`.
SOURCE_FDW = {
    catalog.SourceSystem.CONTROL_PLANE: "postgres_fdw (server control_plane)",
    catalog.SourceSystem.CLERK: "file_fdw + source reader (backend reader) or clerk_fdw (backend tembo)",
    catalog.SourceSystem.PROMETHEUS: "file_fdw + source reader (backend reader) or prometheus_fdw (backend tembo)",
}


def source_specs() -> list[dg.AssetSpec]:
    specs: dict[str, dg.AssetSpec] = {}
    for spec in catalog.CATALOG:
        for relation in spec.sources:
            system = catalog.SourceSystem(relation.split(".", 1)[0].removeprefix("src_"))
            specs[relation] = dg.AssetSpec(
                key=key_of(relation),
                description=f"Foreign table {relation} ({system.value} source).",
                group_name=system.value,
                kinds={"postgres"},
                metadata={"fdw": SOURCE_FDW[system], "relation": relation},
            )
    return list(specs.values())


def refresh_metadata(log: dict[str, Any]) -> dict[str, dg.MetadataValue]:
    """Materialization metadata, as the routine logged it (never recomputed)."""
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


def _partition_days(context: dg.AssetExecutionContext) -> tuple[dt.date, dt.date]:
    keys = context.partition_key_range
    first, last = dt.date.fromisoformat(keys.start), dt.date.fromisoformat(keys.end)
    if first > last:
        raise dg.Failure(
            description=f"partition range {keys.start}...{keys.end} is reversed: write it as {keys.end}...{keys.start}",
            allow_retries=False,
        )
    return first, last


def _copy_asset_args(spec: catalog.TableSpec, partitions: dg.PartitionsDefinition, how: str) -> dict[str, Any]:
    """What every local copy declares: key, lineage, group, partitions, freshness."""
    return dict(
        key=key_of(spec.local_table),
        deps=[key_of(s) for s in spec.sources],
        description=f"{spec.description} {how}",
        group_name=spec.system.value,
        kinds={"postgres"},
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        freshness_policy=dg.FreshnessPolicy.time_window(fail_window=spec.freshness),
        metadata={"routine": spec.routine, "pg_cron_job": spec.cron_job_name, "table_kind": spec.kind.value},
    )


def _fact_asset(spec: catalog.TableSpec, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(**_copy_asset_args(spec, partitions, f"Daily partitions by {spec.time_column}; a range is one window."))
    def refresh_fact(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        first, last = _partition_days(context)
        start, end = window_of_days(first, last)
        context.log.info(f"{spec.routine}: replacing [{start.isoformat()}, {end.isoformat()}) ({(last - first).days + 1} day(s))")
        log = warehouse.refresh_fact(spec, start, end)
        return dg.MaterializeResult(metadata=refresh_metadata(log))

    return refresh_fact


def _dimension_asset(spec: catalog.TableSpec, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(**_copy_asset_args(spec, partitions, f"Current state, plus a daily snapshot partition ({spec.snapshot_table})."))
    def refresh_dimension(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        first, last = _partition_days(context)
        today = today_utc()
        if first != today or last != today:
            asked = first.isoformat() if first == last else f"{first.isoformat()}...{last.isoformat()}"
            raise dg.Failure(
                description=(
                    f"{spec.local_table} is a copy of a current-state source: partition {asked} cannot be rebuilt, "
                    f"only today's ({today.isoformat()}, UTC). Past snapshots stay as they were taken "
                    f"in {spec.snapshot_table}; materialise --partition {today.isoformat()} instead."
                ),
                allow_retries=False,
            )
        log = warehouse.refresh_dimension(spec, today)
        return dg.MaterializeResult(metadata=refresh_metadata(log))

    return refresh_dimension


def copy_assets(partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    return [
        _fact_asset(spec, partitions) if spec.kind is catalog.Kind.FACT else _dimension_asset(spec, partitions)
        for spec in catalog.CATALOG
    ]


def _mart_asset(mart: str, reads: tuple[str, ...]) -> dg.AssetsDefinition:
    @dg.asset(
        key=key_of(mart),
        deps=[key_of(r) for r in reads],
        description=f"Materialized view {mart}, rebuilt from the local copies {', '.join(reads)}.",
        group_name=MARTS_GROUP,
        kinds={"postgres"},
        freshness_policy=dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=2)),
        metadata={"routine": "dwh.refresh_mart"},
    )
    def refresh_mart(warehouse: WarehouseResource) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=refresh_metadata(warehouse.refresh_mart(mart)))

    return refresh_mart


def mart_assets() -> list[dg.AssetsDefinition]:
    return [_mart_asset(mart, reads) for mart, reads in catalog.MARTS.items()]


def fact_keys() -> list[dg.AssetKey]:
    return [key_of(s.local_table) for s in catalog.CATALOG if s.kind is catalog.Kind.FACT]


def dimension_keys() -> list[dg.AssetKey]:
    return [key_of(s.local_table) for s in catalog.CATALOG if s.kind is catalog.Kind.DIMENSION]


def mart_keys() -> list[dg.AssetKey]:
    return [key_of(m) for m in catalog.MARTS]

