"""What the import adds to the dashboards' files, derived from the catalog and the charts.

The repository's files (``dashboards/``, ``superset_export``) hold what a person chose: the
layout, the charts, their descriptions. What follows from the catalog is added at every import
and taken out again by the export (``exported``), so it lives in one place:

- a dataset's description and its columns' descriptions and names (``Column.label``/``unit``:
  ``Storage (GiB-days)``);
- each dashboard's native filters: a time range applied to the charts that filter on a time
  column (the "today" numbers carry no filter badge), and one filter per dimension the catalog
  marks (``Column.dashboard_filter``: organization, plan, region, instance state, table) that
  any of its charts reads, applied to exactly the charts whose relation has that column;
- the charts' ids in the layout (1, 2, ... in layout order; Superset's import maps them to its
  own), which the filters' scopes name, and the charts whose description shows under the title
  (marked so; Superset 6.1 draws none, so titles and subheaders carry what must be seen);
- a chart's saved query context gets its form data back: the chart's params.
"""

from __future__ import annotations

import copy
import json

from dwh_assets.warehouse.catalog import PRODUCT, Catalog, Column, ViewSpec
from dwh_assets.warehouse.catalog_model import marked
from dwh_assets.warehouse.superset_export import Bundle, Chart, Dashboard

# Native filters derived here carry this id prefix; the export leaves them out, others stay.
DERIVED_FILTER_PREFIX = "NATIVE_FILTER-dwh-"
TIME_FILTER_NAME = "Time range"
EMPTY_DATA_MASK = {"extraFormData": {}, "filterState": {}, "ownState": {}}
# What a chart filters on to be in the time range filter's scope (an adhoc filter of its own).
TEMPORAL_RANGE = "TEMPORAL_RANGE"


def describe_dataset(data: dict, catalog: Catalog = PRODUCT) -> dict:
    """A dataset file with its relation's and columns' descriptions and names from the catalog."""
    relation = catalog.relation(f"{data.get('schema')}.{data.get('table_name')}")
    columns = {c.name: c for c in relation.columns}
    personal = catalog.personal_columns(relation.relation)
    described = dict(data, description=relation.description if isinstance(relation, ViewSpec) else relation.comment)
    described["columns"] = [_describe_column(col, columns.get(col.get("column_name")), personal)
                            for col in data.get("columns") or []]
    return described


def _describe_column(data: dict, column: Column | None, personal: frozenset[str]) -> dict:
    if column is None:
        return dict(data, description=None)
    return dict(data, description=marked(column.comment, column.name in personal), verbose_name=column.verbose_name)


def numbered(chart_uuids) -> dict[str, int]:
    """Each chart's id in a dashboard file: 1, 2, ... in layout order."""
    return {chart_uuid: number for number, chart_uuid in enumerate(dict.fromkeys(chart_uuids), start=1)}


def describe_chart(data: dict) -> dict:
    """A chart file with its query context whole again: the context's form data is the chart's params.

    The repository keeps the queries Superset's Explore built for the chart (what its Save stores,
    and what the chart data API, reports and cache warm-up run) without that copy of the params.
    """
    if not data.get("query_context"):
        return data
    context = json.loads(data["query_context"])
    context["form_data"] = data.get("params") or {}
    return dict(data, query_context=json.dumps(context))


def chart_ids(position: dict) -> dict[str, int]:
    """Each chart's id in a dashboard file's layout (uuid -> id)."""
    return numbered(item["meta"]["uuid"] for item in position.values()
                    if isinstance(item, dict) and item.get("type") == "CHART")


def _relation_columns(bundle: Bundle, chart: Chart, catalog: Catalog) -> dict[str, Column]:
    relation = catalog.relation(bundle.datasets[chart.dataset_uuid].relation)
    return {c.name: c for c in relation.columns}


def _filters_on_time(chart: Chart) -> bool:
    return any(f.get("operator") == TEMPORAL_RANGE for f in chart.params.get("adhoc_filters") or [])


def _filter(filter_id: str, name: str, filter_type: str, targets: list[dict], excluded: list[int],
            description: str, control_values: dict) -> dict:
    return {
        "id": filter_id, "name": name, "filterType": filter_type, "type": "NATIVE_FILTER", "targets": targets,
        "cascadeParentIds": [], "controlValues": control_values, "defaultDataMask": copy.deepcopy(EMPTY_DATA_MASK),
        "scope": {"rootPath": ["ROOT_ID"], "excluded": excluded}, "description": description,
    }


def _not_applied(charts: list[Chart], reason: str) -> str:
    if not charts:
        return ""
    return f" Not applied to {', '.join(repr(c.name) for c in charts)}: {reason}."


def native_filters(bundle: Bundle, dashboard: Dashboard, catalog: Catalog = PRODUCT) -> list[dict]:
    """The dashboard's derived native filters: the time range, then one per dimension its charts read."""
    charts = bundle.dashboard_charts(dashboard)
    ids = numbered(dashboard.chart_uuids)
    columns = {chart.uuid: _relation_columns(bundle, chart, catalog) for chart in charts}
    filters = []
    untimed = [c for c in charts if not _filters_on_time(c)]
    if len(untimed) < len(charts):
        filters.append(_filter(
            f"{DERIVED_FILTER_PREFIX}time_range", TIME_FILTER_NAME, "filter_time", [{}], [ids[c.uuid] for c in untimed],
            "The days the charts cover." + _not_applied(untimed, "they show the current state, or a window of their own"),
            {"enableEmptyFilter": False}))
    dimensions: dict[str, Column] = {}
    for chart in charts:
        dimensions.update({name: column for name, column in columns[chart.uuid].items()
                           if column.dashboard_filter and name not in dimensions})
    marts = {mart.relation for mart in catalog.marts}
    for name, column in dimensions.items():
        having = [c for c in charts if name in columns[c.uuid]]
        # The values offered: a mart's, whose days keep every value seen over the history, else the first chart's.
        source = next((c for c in having if bundle.datasets[c.dataset_uuid].relation in marts), having[0])
        without = [c for c in charts if name not in columns[c.uuid]]
        select = _filter(
            f"{DERIVED_FILTER_PREFIX}{name}", column.label or name, "filter_select",
            [{"column": {"name": name}, "datasetUuid": source.dataset_uuid}], [ids[c.uuid] for c in without],
            f"{column.comment}{_not_applied(without, f'their data has no {(column.label or name).lower()}')}",
            {"enableEmptyFilter": False, "defaultToFirstItem": False, "multiSelect": True, "searchAllOptions": False,
             "inverseSelection": False})
        # NULL is no value to pick (a day without organizations, an organization without instances).
        select["adhoc_filters"] = [{"clause": "WHERE", "expressionType": "SIMPLE", "subject": name,
                                    "operator": "IS NOT NULL", "comparator": None}]
        select["time_range"] = "No filter"
        filters.append(select)
    return filters


def describe_dashboard(data: dict, bundle: Bundle, catalog: Catalog = PRODUCT) -> dict:
    """A dashboard file with its charts' ids, its derived native filters and the descriptions it shows."""
    dashboard = next(d for d in bundle.dashboards.values() if d.uuid == str(data["uuid"]))
    described = copy.deepcopy(data)
    ids = chart_ids(described["position"])
    for item in described["position"].values():
        if isinstance(item, dict) and item.get("type") == "CHART":
            item["meta"]["chartId"] = ids[item["meta"]["uuid"]]
    metadata = described.setdefault("metadata", {})
    own = [f for f in metadata.get("native_filter_configuration") or [] if not _derived(f)]
    metadata["native_filter_configuration"] = native_filters(bundle, dashboard, catalog) + own
    metadata["expanded_slices"] = {str(ids[c.uuid]): True for c in bundle.dashboard_charts(dashboard) if c.description}
    return described


def _derived(native_filter: dict) -> bool:
    return str(native_filter.get("id", "")).startswith(DERIVED_FILTER_PREFIX)


def exported_dashboard(data: dict) -> dict:
    """A dashboard as Superset exports it, without what ``describe_dashboard`` derives.

    Superset's chart ids become the file's (1, 2, ... in layout order) wherever the dashboard's
    own filters name them; the derived filters and the shown descriptions are left out.
    """
    position = data.get("position") or {}
    ours = chart_ids(position)
    theirs = {item["meta"].get("chartId"): ours[item["meta"]["uuid"]] for item in position.values()
              if isinstance(item, dict) and item.get("type") == "CHART"}
    for item in position.values():
        if isinstance(item, dict) and item.get("type") == "CHART":
            item["meta"]["chartId"] = ours[item["meta"]["uuid"]]
    metadata = data.get("metadata") or {}
    own = [f for f in metadata.get("native_filter_configuration") or [] if not _derived(f)]
    for native_filter in own:
        scope = native_filter.get("scope") or {}
        scope["excluded"] = [theirs[i] for i in scope.get("excluded") or [] if i in theirs]
        native_filter.pop("chartsInScope", None)  # recomputed by the dashboard from the scope
        native_filter.pop("tabsInScope", None)
    if metadata:
        metadata["native_filter_configuration"] = own
        metadata["expanded_slices"] = {}
    return data
