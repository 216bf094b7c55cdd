"""Superset dashboards and the views they read, as external assets in the lineage.

Like dagster-tableau and dagster-sigma model BI workbooks, each dashboard of the
package's ``dashboards/`` (Superset's export format, parsed by
``dwh_assets.warehouse.superset_export``) is an ``AssetSpec`` Dagster never materialises: key
``[superset, <slug>]``, group ``dashboards``, kind ``superset``, its URL in the metadata,
downstream of the relations its charts' datasets read. Those are marts or the catalog's
plain views (the catalog's ``views``), themselves external assets downstream of the copies they
read, so the lineage runs source -> copy -> mart/view -> dashboard.

The dashboards directory and the Superset address in the URLs are settings of the code
location (``DWH_DASHBOARDS_DIR``, default the package's; ``DWH_SUPERSET_URL``, which ``dwh
env`` exports for the stack). Nothing here talks to Superset.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from dwh_assets.warehouse import catalog, sql_files
from dwh_assets.warehouse.defs import metadata as md
from dwh_assets.warehouse.defs.metadata import key_of
from dwh_assets.warehouse.superset_export import load_bundle

DASHBOARDS_GROUP = "dashboards"


def dashboard_key(slug: str) -> dg.AssetKey:
    return dg.AssetKey(["superset", slug.replace("-", "_")])


def view_specs(entries: catalog.Catalog = catalog.PRODUCT) -> list[dg.AssetSpec]:
    """The catalog's plain views: computed when read, so observed, never materialised."""
    return [
        dg.AssetSpec(
            key=key_of(view.relation),
            deps=[key_of(r) for r in view.reads],
            description=f"{view.description} A view (no refresh: computed when read) over {', '.join(view.reads)}.",
            group_name=view.group.value,
            kinds={"postgres", "view"},
            owners=list(catalog.OWNERS),
            code_version=sql_files.code_version(entries.sql_path(view.sql_file)),
            metadata={md.TABLE_NAME: view.relation, "relation_kind": "view",
                      md.COLUMN_SCHEMA: md.catalog_schema(view, entries.personal_columns(view.relation)),
                      md.CODE_REFERENCES: md.code_reference(entries.sql_path(view.sql_file), f"{view.relation} (SQL)")}
            | md.lineage_metadata(md.catalog_lineage(view.columns)),
        )
        for view in entries.views
    ]


def bookkeeping_specs(entries: catalog.Catalog = catalog.PRODUCT) -> list[dg.AssetSpec]:
    return [
        dg.AssetSpec(key=key_of(relation), description=text, group_name=catalog.Group.WAREHOUSE.value, kinds={"postgres"},
                     owners=list(catalog.OWNERS), metadata={md.TABLE_NAME: relation})
        for relation, text in entries.external
    ]


def dashboard_specs(directory: Path, superset_url: str) -> list[dg.AssetSpec]:
    """One external asset per dashboard of ``directory``, its URL under ``superset_url``."""
    bundle = load_bundle(directory)
    base = superset_url.rstrip("/")
    specs = []
    for dash in sorted(bundle.dashboards.values(), key=lambda d: d.slug or d.uuid):
        relations = bundle.dashboard_relations(dash)
        charts = bundle.dashboard_charts(dash)
        specs.append(dg.AssetSpec(
            key=dashboard_key(dash.slug or dash.uuid),
            deps=[key_of(r) for r in relations],
            description=dash.description or dash.title,
            group_name=DASHBOARDS_GROUP,
            kinds={"superset"},
            code_version=sql_files.code_version(dash.path),
            metadata={
                "url": dg.MetadataValue.url(f"{base}{dash.url_path}"),
                "dashboard_title": dash.title,
                "dashboard_uuid": dash.uuid,
                "file": str(dash.path.relative_to(bundle.root.parent)),
                "charts": dg.MetadataValue.md("\n".join(
                    f"- {c.name} ({c.viz_type}): {bundle.datasets[c.dataset_uuid].relation}" for c in charts)),
                "reads": ", ".join(relations),
            },
        ))
    return specs
