"""Dagster definitions of the warehouse, all derived from ``dwh_assets.warehouse.catalog``.

``build_definitions`` assembles them from the code location's settings (``defs.settings``);
``dwh_assets.definitions`` is the code location, which calls it when Dagster loads it.
"""

from __future__ import annotations

import warnings

import dagster as dg

# Three Dagster 1.13 APIs this code location needs are still marked beta: BackfillPolicy (the
# only way to run a partition range as one step, one SQL window), code references (the link
# from an asset to its SQL file) and multi_observable_source_asset (the only observable asset
# that takes specs with dependencies: views, dashboards). Silence exactly those warnings,
# which every CLI call and every daemon reload would otherwise print once per asset.
for _beta in (r"Parameter `backfill_policy` .* is currently in beta",
              r"Class `(CodeReferencesMetadataValue|LocalFileCodeReference)` is currently in beta",
              r"Function `multi_observable_source_asset` is currently in beta"):
    warnings.filterwarnings("ignore", message=_beta, category=dg.BetaWarning)

from dwh_assets.warehouse import catalog  # noqa: E402 (after the filter: these modules define assets)
from dwh_assets.warehouse.defs.assets import (  # noqa: E402
    copy_assets,
    mart_assets,
    refresh_log_spec,
    side_specs,
    source_specs,
)
from dwh_assets.warehouse.defs.alert_sensor import AlertWebhookResource, build_alert_sensor  # noqa: E402
from dwh_assets.warehouse.defs.checks import (  # noqa: E402
    FRESHNESS,
    PG_CRON_HEALTH,
    checks_of,
    freshness_checks,
    health_checks,
    reconciliation_asset_checks,
    reconciliation_checks,
)
from dwh_assets.warehouse.defs.cron_sensor import JobTarget, build_cron_sensor  # noqa: E402
from dwh_assets.warehouse.defs.dashboard_assets import bookkeeping_specs, dashboard_specs, view_specs  # noqa: E402
from dwh_assets.warehouse.defs.metadata import key_of, relation_of  # noqa: E402
from dwh_assets.warehouse.defs.observations import (  # noqa: E402
    Dependents,
    build_observation_sensor,
    observable_assets,
)
from dwh_assets.warehouse.defs.partitions import daily_partitions  # noqa: E402
from dwh_assets.warehouse.defs.resources import WarehouseResource  # noqa: E402
from dwh_assets.warehouse.defs.schedules import nightly_job, nightly_schedule  # noqa: E402
from dwh_assets.warehouse.defs.settings import CodeLocationSettings  # noqa: E402


def cron_targets(entries: catalog.Catalog = catalog.PRODUCT) -> dict[str, JobTarget]:
    """pg_cron job name -> what its runs materialise and the refresh_log rows they write."""
    targets = {entry.cron_job_name: JobTarget(key_of(entry.relation), entry.log_table, "window" if entry.daily else None,
                                              entry)
               for entry in entries.refreshed()}
    reconciliation = entries.reconciliation
    if reconciliation is not None and entries.reconciled():
        targets[reconciliation.cron_job_name] = JobTarget(key_of(reconciliation.relation), reconciliation.log_table,
                                                          None, reconciliation)
    return targets


def check_keys(entries: catalog.Catalog = catalog.PRODUCT) -> list[dg.AssetCheckKey]:
    """Every check the code location defines: each entry's data checks and freshness, each pg_cron
    job's health (the reconciliation's too) and what the reconciliation found per fact."""
    keys = [dg.AssetCheckKey(key_of(entry.relation), name) for entry in entries.refreshed()
            for name in (*(c.name for c in checks_of(entry)), FRESHNESS)]
    keys += [dg.AssetCheckKey(target.asset_key, PG_CRON_HEALTH) for target in cron_targets(entries).values()]
    return keys + [dg.AssetCheckKey(check.asset, check.name) for check in reconciliation_checks(entries)]


def alerting(settings: CodeLocationSettings, entries: catalog.Catalog) -> dict:
    """The alert sensor and its webhook, when [alerts] names one."""
    if not settings.alerts:
        return {"sensors": [], "resources": {}}
    webhook = AlertWebhookResource(url=settings.alerts_webhook_url,
                                   url_file=str(settings.alerts_webhook_url_file or "") or None,
                                   label=settings.alerts_label, timeout_seconds=settings.alerts_timeout_seconds)
    return {"sensors": [build_alert_sensor(check_keys(entries), minimum_interval_seconds=settings.sensor_interval_seconds)],
            "resources": {"alert_webhook": webhook}}


def build_definitions(settings: CodeLocationSettings, entries: catalog.Catalog = catalog.PRODUCT) -> dg.Definitions:
    """Everything the code location shows, from ``entries`` (the product's catalog unless extended)."""
    partitions = daily_partitions(settings.history_start)
    job = nightly_job(settings.nightly_days, entries)
    targets = cron_targets(entries)
    alert = alerting(settings, entries)
    dashboards = dashboard_specs(settings.dashboards_dir, settings.superset_url)
    dependents = Dependents(entries, {d.key: tuple(relation_of(dep.asset_key) for dep in d.deps) for d in dashboards})
    # What Dagster never builds: observed (by the sensor below, or "Observe" in the UI).
    sources = source_specs(entries)
    relations = [refresh_log_spec(entries), *bookkeeping_specs(entries), *view_specs(entries), *dashboards]
    observed = [*sources, *relations]
    return dg.Definitions(
        assets=[observable_assets("observe_sources", sources, dependents),
                observable_assets("observe_relations", relations, dependents),
                *side_specs(entries), *copy_assets(entries, partitions),
                *mart_assets(entries, partitions)],
        asset_checks=[*health_checks({name: target.asset_key for name, target in targets.items()}),
                      *freshness_checks(entries), *reconciliation_asset_checks(entries)],
        jobs=[job],
        schedules=[nightly_schedule(job, settings.history_start, settings.nightly_days, settings.nightly_cron)],
        sensors=[build_cron_sensor(targets, partitions, minimum_interval_seconds=settings.sensor_interval_seconds),
                 build_observation_sensor(dependents, {spec.key for spec in observed},
                                          minimum_interval_seconds=settings.sensor_interval_seconds),
                 *alert["sensors"]],
        resources={"warehouse": WarehouseResource(dsn=settings.warehouse_dsn), **alert["resources"]},
        # Every step is one SQL call that works inside Postgres: a process per step would
        # only add start-up time, and refreshes of one table serialise on advisory locks anyway.
        executor=dg.in_process_executor,
    )


__all__ = ["CodeLocationSettings", "build_definitions", "check_keys", "cron_targets", "key_of"]
