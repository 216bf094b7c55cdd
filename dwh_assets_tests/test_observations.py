"""What the observation sensor observes after a change, from the catalog alone (no server).

The sensor against the real stack is in test_dagster_ui.py (the asset pages show each
observed asset as "Observed").
"""

from __future__ import annotations

import dagster as dg

from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.defs.dashboard_assets import dashboard_key
from dwh_assets.warehouse.defs.metadata import key_of
from dwh_assets.warehouse.defs.observations import Dependents, ObservationCursor, Observed

DASHBOARDS = {
    dashboard_key("usage_by_organization"): ("mart.org_daily_usage", "dwh.metric_samples"),
    dashboard_key("warehouse_health"): ("mart.refresh_health_hourly", "mart.refresh_latest"),
}


def dependents() -> Dependents:
    return Dependents(catalog.PRODUCT, DASHBOARDS)


def users(keys: set[dg.AssetKey]) -> set[str]:
    return {k.to_user_string() for k in keys}


def test_a_metrics_refresh_is_observed_in_its_source_its_views_the_log_and_its_dashboard():
    deps = dependents()
    observed = users(deps.keys_reading(deps.changed_relations({"metrics"})))
    assert observed == {"prometheus.metrics", "dwh/metric_samples", "dwh/refresh_log", "superset/usage_by_organization",
                        # the refresh log feeds the health views, and so their dashboard
                        "mart/refresh_health_hourly", "mart/refresh_latest", "mart/refresh_freshness",
                        "superset/warehouse_health"}


def test_a_pg_cron_run_is_observed_in_its_history_and_what_reads_it():
    deps = dependents()
    assert users(deps.keys_reading({catalog.CRON_HISTORY})) == {
        "cron/job_run_details", "mart/cron_job_runs", "mart/refresh_health_hourly", "mart/refresh_latest",
        "mart/refresh_freshness", "superset/warehouse_health"}


def test_a_dimension_refresh_observes_both_its_sources_and_the_views_over_its_snapshots():
    deps = dependents()
    observed = users(deps.keys_reading(deps.changed_relations({"organizations"})))
    assert {"clerk.organizations", "control_plane.organizations", "mart/growth_daily"} <= observed
    assert "clerk.users" not in observed and "prometheus.metrics" not in observed


def test_observations_carry_a_data_version_both_ways():
    found = Observed(key_of("src_clerk.users"), "read", {"rows_read": 600}, "64")
    assert found.event().tags["dagster/data_version"] == "64"
    assert found.result().data_version == dg.DataVersion("64")
    assert ObservationCursor.parse(ObservationCursor(64, 7).dump()) == ObservationCursor(64, 7)
    assert len(ObservationCursor(10**9, 10**9).dump()) < 60
