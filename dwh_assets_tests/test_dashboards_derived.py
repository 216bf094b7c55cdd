"""What the dashboards take from the catalog, without a server (``superset_derived``).

- each dashboard offers the filters an analyst reaches for (organization, plan, region, instance
  state; the table on the health dashboard) and a time range, each applied to exactly the charts
  whose data has its column: the sign-up charts (Clerk users belong to no single organization)
  and the "now" numbers are left alone, and say so;
- the filters' scopes name the layout's chart ids, which the export gives back unchanged;
- the datasets' columns are their relations' in the catalog, named by it; a metric over a column
  with a unit says the unit; every instance state has a colour of its own;
- every chart carries the query context Superset's Explore built for it (the chart data API runs
  it), agreeing with the chart's own metrics and filters.
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml

from dwh_assets.local import superset
from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.superset_derived import (
    DERIVED_FILTER_PREFIX,
    TIME_FILTER_NAME,
    describe_chart,
    describe_dashboard,
    describe_dataset,
    exported_dashboard,
    native_filters,
)
from dwh_assets.warehouse.superset_export import load_bundle

# Superset's names for the catalog's types (what it reads from PostgreSQL).
SUPERSET_TYPES = {"text": "TEXT", "bigint": "BIGINT", "integer": "INTEGER", "numeric": "NUMERIC", "date": "DATE",
                  "timestamp with time zone": "TIMESTAMP WITH TIME ZONE", "uuid": "UUID", "boolean": "BOOLEAN",
                  "double precision": "DOUBLE PRECISION", "interval": "INTERVAL"}


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


def dashboard(bundle, slug):
    return next(d for d in bundle.dashboards.values() if d.slug == slug)


def filters_by_name(bundle, slug) -> dict[str, dict]:
    return {f["name"]: f for f in native_filters(bundle, dashboard(bundle, slug))}


def out_of_scope(bundle, slug, native_filter) -> set[str]:
    names = {number: chart.name for number, chart in enumerate(bundle.dashboard_charts(dashboard(bundle, slug)), 1)}
    return {names[i] for i in native_filter["scope"]["excluded"]}


def test_each_dashboard_offers_the_filters_an_analyst_reaches_for(bundle):
    assert list(filters_by_name(bundle, "usage-by-organization")) == [TIME_FILTER_NAME, "Organization", "Plan"]
    assert list(filters_by_name(bundle, "fleet")) == [TIME_FILTER_NAME, "Organization", "Plan", "Region", "State"]
    assert list(filters_by_name(bundle, "growth")) == [TIME_FILTER_NAME, "Organization", "Plan", "Region"]
    assert list(filters_by_name(bundle, "warehouse-health")) == [TIME_FILTER_NAME, "Table"]


def test_the_organization_filter_changes_every_chart_of_usage_and_fleet(bundle):
    for slug in ("usage-by-organization", "fleet"):
        for name, native_filter in filters_by_name(bundle, slug).items():
            if name != TIME_FILTER_NAME:
                assert native_filter["scope"]["excluded"] == [], f"{slug}: {name}"


def test_growth_filters_leave_the_sign_ups_alone_and_say_why(bundle):
    sign_ups = {"Users (sign-ups in the time range)", "Sign-ups per day (today so far included)",
                "Cumulative users (today so far included)"}
    for name in ("Organization", "Plan", "Region"):
        native_filter = filters_by_name(bundle, "growth")[name]
        assert out_of_scope(bundle, "growth", native_filter) == sign_ups, name
        assert "Not applied to 'Users (sign-ups in the time range)'" in native_filter["description"]


def test_the_time_range_leaves_the_numbers_of_now_alone(bundle):
    fleet = filters_by_name(bundle, "fleet")[TIME_FILTER_NAME]
    assert out_of_scope(bundle, "fleet", fleet) == {"Live instances today", "Provisioned vCPUs today",
                                                    "Instances by state", "Live instances by region",
                                                    "Live instances by size"}
    growth = filters_by_name(bundle, "growth")[TIME_FILTER_NAME]
    assert out_of_scope(bundle, "growth", growth) == {"Organizations now", "Live instances now"}
    health = filters_by_name(bundle, "warehouse-health")[TIME_FILTER_NAME]
    assert out_of_scope(bundle, "warehouse-health", health) == {"Freshness: last refresh per table",
                                                                "Failed pg_cron runs (24 h)", "pg_cron jobs (14 days)",
                                                                "Late data: watermarks and the daily reconciliation",
                                                                "Late tables (freshness from pg_cron schedules)",
                                                                "Mart days held by the quality gate"}
    assert out_of_scope(bundle, "usage-by-organization", filters_by_name(bundle, "usage-by-organization")[TIME_FILTER_NAME]) == set()


COMPLETE_DAYS = "day < CURRENT_DATE"


def test_a_chart_of_a_daily_mart_leaves_today_out_or_says_it_is_the_day_so_far(bundle):
    # Superset 6.1 draws no chart description on a dashboard: the title or the number's subheader says it.
    daily = {mart.relation for mart in catalog.PRODUCT.marts if "day" in {c.name for c in mart.columns}}
    charts = [c for c in bundle.charts.values() if bundle.datasets[c.dataset_uuid].relation in daily]
    assert len(charts) >= 8
    for chart in charts:
        complete = any(f.get("sqlExpression") == COMPLETE_DAYS for f in chart.params.get("adhoc_filters") or [])
        said = f"{chart.name} {chart.params.get('subheader') or ''}"
        if complete:
            assert chart.name.endswith("(complete days)"), chart.name
        else:
            assert "today so far included" in said, f"{chart.name!r} shows today's partial day without saying so"


def test_a_select_filter_offers_the_values_of_a_mart_without_null(bundle):
    state = filters_by_name(bundle, "fleet")["State"]
    (target,) = state["targets"]
    assert bundle.datasets[target["datasetUuid"]].relation == "mart.instance_state_daily"  # every state ever entered
    assert target["column"] == {"name": "state"}
    assert state["adhoc_filters"] == [{"clause": "WHERE", "expressionType": "SIMPLE", "subject": "state",
                                       "operator": "IS NOT NULL", "comparator": None}]


def test_the_import_numbers_the_layout_and_the_scopes_name_it(bundle):
    for dash in bundle.dashboards.values():
        sent = describe_dashboard(yaml.safe_load(dash.path.read_text()), bundle)
        ids = {item["meta"]["uuid"]: item["meta"]["chartId"] for item in sent["position"].values()
               if isinstance(item, dict) and item.get("type") == "CHART"}
        assert sorted(ids.values()) == list(range(1, len(ids) + 1)), dash.slug
        for native_filter in sent["metadata"]["native_filter_configuration"]:
            assert set(native_filter["scope"]["excluded"]) <= set(ids.values()), (dash.slug, native_filter["name"])
        described = {str(ids[c.uuid]) for c in bundle.dashboard_charts(dash) if c.description}
        assert set(sent["metadata"]["expanded_slices"]) == described, dash.slug


def test_the_export_takes_out_what_the_import_derives_and_keeps_the_rest(bundle):
    dash = dashboard(bundle, "growth")
    repository = yaml.safe_load(dash.path.read_text())
    sent = describe_dashboard(repository, bundle)
    # What Superset gives back: its own chart ids everywhere, the scopes' charts computed, one filter of a user's own.
    theirs = {number: 100 + number for number in range(1, 7)}
    back = copy.deepcopy(sent)
    for item in back["position"].values():
        if isinstance(item, dict) and item.get("type") == "CHART":
            item["meta"]["chartId"] = theirs[item["meta"]["chartId"]]
    metadata = back["metadata"]
    for native_filter in metadata["native_filter_configuration"]:
        native_filter["scope"]["excluded"] = [theirs[i] for i in native_filter["scope"]["excluded"]]
        native_filter["chartsInScope"] = sorted(theirs.values())
    own = {"id": "NATIVE_FILTER-mine", "name": "Mine", "scope": {"rootPath": ["ROOT_ID"], "excluded": [104]},
           "chartsInScope": [101, 102, 103, 105, 106]}
    metadata["native_filter_configuration"].append(own)
    metadata["expanded_slices"] = {str(theirs[int(k)]): v for k, v in metadata["expanded_slices"].items()}
    exported = exported_dashboard(back)
    assert exported["position"] == repository["position"]
    assert exported["metadata"]["native_filter_configuration"] == [
        {"id": "NATIVE_FILTER-mine", "name": "Mine", "scope": {"rootPath": ["ROOT_ID"], "excluded": [4]}}]
    assert exported["metadata"]["expanded_slices"] == {}
    assert not any(str(f["id"]).startswith(DERIVED_FILTER_PREFIX) for f in exported["metadata"]["native_filter_configuration"])


def test_every_instance_state_has_a_colour_of_its_own(bundle):
    states = (*catalog.INSTANCE_STATES.values, "unknown")  # unknown: mart.instance_current_state without a transition
    for dash in bundle.dashboards.values():
        relations = {catalog.PRODUCT.relation(r) for r in bundle.dashboard_relations(dash)}
        if not any("state" in {c.name for c in relation.columns} for relation in relations):
            continue
        colours = yaml.safe_load(dash.path.read_text())["metadata"]["label_colors"]
        assert set(states) <= set(colours), f"{dash.slug}: no fixed colour for {set(states) - set(colours)}"
        assert len(set(colours[s].lower() for s in states)) == len(states), f"{dash.slug}: two states share a colour"


# ----- datasets -------------------------------------------------------------------------------------


def test_each_dataset_has_its_relations_columns(bundle):
    for dataset in bundle.datasets.values():
        data = yaml.safe_load(dataset.path.read_text())
        relation = catalog.PRODUCT.relation(dataset.relation)
        found = {c["column_name"]: c["type"] for c in data["columns"]}
        assert found == {c.name: SUPERSET_TYPES[c.type] for c in relation.columns}, dataset.relation
        labelled = {c.name for c in relation.columns if c.label}
        assert all(c["verbose_name"] is None for c in data["columns"] if c["column_name"] in labelled), \
            f"{dataset.relation}: column names live in the catalog"


def test_datasets_get_the_catalogs_names_and_units(bundle):
    (usage,) = [d for d in bundle.datasets.values() if d.relation == "mart.org_daily_usage"]
    sent = describe_dataset(yaml.safe_load(usage.path.read_text()))
    names = {c["column_name"]: c["verbose_name"] for c in sent["columns"]}
    assert names["storage_gib_days"] == "Storage (GiB-days)"
    assert names["organization_name"] == "Organization"
    assert names["organization_id"] is None


def test_a_metric_over_a_column_with_a_unit_says_the_unit(bundle):
    for chart in bundle.charts.values():
        relation = catalog.PRODUCT.relation(bundle.datasets[chart.dataset_uuid].relation)
        units = {c.name: c.unit for c in relation.columns if c.unit}
        for metric in _metrics(chart.params):
            for column, unit in units.items():
                if re.search(rf"\b{column}\b", metric["sqlExpression"]):
                    assert unit in metric["label"], f"{chart.name}: {metric['label']!r} does not say {unit}"


# ----- saved query contexts ---------------------------------------------------------------------------


def _metrics(params: dict) -> list[dict]:
    found = [params["metric"]] if isinstance(params.get("metric"), dict) else []
    return found + [m for m in params.get("metrics") or [] if isinstance(m, dict)]


def test_every_chart_keeps_the_query_context_explore_built_for_it(bundle):
    for chart in bundle.charts.values():
        text = yaml.safe_load(chart.path.read_text()).get("query_context")
        assert text, f"{chart.path.name}: no query context (save the chart in Explore, then export)"
        context = json.loads(text)
        assert "form_data" not in context and "datasource" not in context, f"{chart.path.name}: ids or params kept"
        (query, *_) = context["queries"]
        wanted = {(m["label"], m["sqlExpression"]) for m in _metrics(chart.params)}
        assert {(m["label"], m["sqlExpression"]) for m in query.get("metrics") or []} == wanted, \
            f"{chart.path.name}: its query context runs other metrics than its params (save it in Explore again)"
        for adhoc in chart.params.get("adhoc_filters") or []:
            if adhoc.get("expressionType") == "SQL":
                assert adhoc["sqlExpression"] in query["extras"]["where"], f"{chart.path.name}: {adhoc['sqlExpression']}"
        for column in chart.params.get("groupby") or []:
            assert column in [c if isinstance(c, str) else c.get("label") for c in query["columns"]], chart.path.name


def test_the_import_gives_the_query_context_its_form_data_back(bundle):
    chart = bundle.charts[next(iter(bundle.charts))]
    data = yaml.safe_load(chart.path.read_text())
    sent = json.loads(describe_chart(data)["query_context"])
    assert sent["form_data"] == data["params"] and sent["queries"] == json.loads(data["query_context"])["queries"]
    exported = dict(data, params=dict(data["params"], slice_id=9, datasource="3__table"),
                    query_context=json.dumps(dict(sent, datasource={"id": 3, "type": "table"})))
    assert superset._normalise(chart.path.relative_to(bundle.root), exported)
    assert exported == data
