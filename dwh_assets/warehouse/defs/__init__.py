"""Dagster definitions of the warehouse, all derived from ``dwh_assets.warehouse.catalog``.

``build_definitions`` assembles them; ``dwh_assets.definitions`` is the code location.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.defs.assets import copy_assets, key_of, mart_assets, source_specs
from dwh_assets.warehouse.defs.checks import all_checks, job_assets
from dwh_assets.warehouse.defs.dashboards import bookkeeping_specs, dashboard_specs, view_specs
from dwh_assets.warehouse.defs.cron_sensor import JobTarget, build_cron_sensor, sensor_interval_seconds
from dwh_assets.warehouse.defs.partitions import daily_partitions
from dwh_assets.warehouse.defs.resources import WarehouseResource
from dwh_assets.warehouse.defs.schedules import nightly_job, nightly_schedule

WAREHOUSE_DSN_ENV = "DWH_WAREHOUSE_DSN"


def cron_targets() -> dict[str, JobTarget]:
    """pg_cron job name -> what its runs materialise and the refresh_log rows they write."""
    targets = {}
    for job, key in job_assets().items():
        relation = ".".join(key.path)
        spec = catalog.BY_NAME.get(key.path[-1]) if key.path[0] == "dwh" else None
        if spec is None:
            targets[job] = JobTarget(key, relation, None)
        else:
            targets[job] = JobTarget(key, spec.name, "window" if spec.kind is catalog.Kind.FACT else "snapshot")
    return targets


def build_definitions(history_start: dt.date) -> dg.Definitions:
    partitions = daily_partitions(history_start)
    job = nightly_job()
    return dg.Definitions(
        assets=[*source_specs(), *copy_assets(partitions), *mart_assets(),
                *bookkeeping_specs(), *view_specs(), *dashboard_specs()],
        asset_checks=all_checks(history_start),
        jobs=[job],
        schedules=[nightly_schedule(job, history_start)],
        sensors=[build_cron_sensor(cron_targets(), partitions, minimum_interval_seconds=sensor_interval_seconds())],
        resources={"warehouse": WarehouseResource(dsn=dg.EnvVar(WAREHOUSE_DSN_ENV))},
        # Every step is one SQL call that works inside Postgres: a process per step would
        # only add start-up time, and refreshes of one table serialise on advisory locks anyway.
        executor=dg.in_process_executor,
    )


__all__ = ["build_definitions", "cron_targets", "key_of"]
