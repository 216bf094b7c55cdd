"""Dashboards as code, without a server: the YAML bundle, its checks, and the lineage derived from it.

- the package's ``dashboards/`` parses, holds the four dashboards, and every chart reads a relation the
  catalog declares (a mart or a view), so every dashboard lands in the asset graph;
- each dashboard is an external asset (group ``dashboards``, kind ``superset``, its URL in
  the metadata) downstream of those relations, and the lineage reaches back to the sources;
- a broken file is refused with its name; the import ZIP and the export keep no password
  and no instance-specific id.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import zipfile
from pathlib import Path

import dagster as dg
import pytest
import yaml

from dwh_assets.local import superset
from dwh_assets.local.config import StackConfig
from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.defs import CodeLocationSettings, build_definitions
from dwh_assets.warehouse.defs.metadata import key_of
from dwh_assets.warehouse.defs.dashboard_assets import DASHBOARDS_GROUP, dashboard_key, dashboard_specs
from dwh_assets.warehouse.superset_export import PACKAGED_DASHBOARDS, BundleError, load_bundle
from dwh_assets_tests.test_layering import load_code_location

SLUGS = {"usage-by-organization", "growth", "fleet", "warehouse-health"}


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


@pytest.fixture(scope="module")
def graph():
    return build_definitions(CodeLocationSettings(dt.date(2026, 1, 1))).resolve_asset_graph()


def test_the_repository_holds_the_four_dashboards(bundle):
    assert {d.slug for d in bundle.dashboards.values()} == SLUGS
    for dash in bundle.dashboards.values():
        assert len(dash.chart_uuids) >= 4, dash.title
    assert len(bundle.databases) == 1


def test_every_chart_reads_a_declared_mart_or_view(bundle):
    declared = {view.relation for view in catalog.PRODUCT.all_views()}
    read = {bundle.datasets[c.dataset_uuid].relation for c in bundle.charts.values()}
    assert read <= declared, f"datasets over relations the catalog does not declare: {read - declared}"


def test_the_warehouse_connection_is_the_reader_without_a_password(bundle):
    (database,) = bundle.databases.values()
    assert database.sqlalchemy_uri == "postgresql+psycopg2://dwh_reader@127.0.0.1:55432/warehouse"
    data = yaml.safe_load(database.path.read_text())
    assert data["allow_dml"] is False and not data.get("password")


def test_dashboards_are_external_assets_downstream_of_what_their_charts_read(bundle, graph):
    for dash in bundle.dashboards.values():
        node = graph.get(dashboard_key(dash.slug))
        assert not node.is_materializable
        assert node.group_name == DASHBOARDS_GROUP
        assert node.kinds == {"superset"}
        assert node.parent_keys == {key_of(r) for r in bundle.dashboard_relations(dash)}


def test_the_lineage_runs_from_the_sources_to_each_dashboard(graph):
    expected = {
        "usage_by_organization": {"prometheus.metrics", "clerk.organizations", "dwh/metrics", "mart/org_daily_usage"},
        "growth": {"clerk.users", "dwh/users", "mart/daily_signups", "dwh/instances", "mart/growth_daily"},
        "fleet": {"control_plane.instances", "control_plane.instance_state_history", "mart/instance_current_state"},
        "warehouse_health": {"dwh/refresh_log", "cron/job_run_details", "mart/refresh_health_hourly"},
    }
    for name, ancestors in expected.items():
        found = {"/".join(k.path) for k in graph.upstream_key_iterator(dg.AssetKey(["superset", name]))}
        assert ancestors <= found, f"{name} is missing upstream {ancestors - found}"


def test_views_are_observed_not_materialised(graph):
    for view in catalog.PRODUCT.views:
        node = graph.get(key_of(view.relation))
        assert not node.is_materializable and "view" in node.kinds
        assert node.parent_keys == {key_of(r) for r in view.reads}


def test_dashboard_url_comes_from_the_superset_address(monkeypatch):
    for name, value in (("DWH_WAREHOUSE_DSN", "host=db.example"), ("DWH_HISTORY_START", "2026-01-01"),
                        ("DWH_SUPERSET_URL", "http://127.0.0.1:18088/")):
        monkeypatch.setenv(name, value)
    settings = CodeLocationSettings.from_environment()
    specs = {s.key: s for s in dashboard_specs(settings.dashboards_dir, settings.superset_url)}
    url = specs[dashboard_key("growth")].metadata["url"]
    assert url == dg.MetadataValue.url("http://127.0.0.1:18088/superset/dashboard/growth/")


@pytest.mark.integration  # loads the code location in a Python of its own
def test_the_code_location_loads_the_dashboards_with_only_its_environment():
    done = load_code_location({"DWH_WAREHOUSE_DSN": "host=db.example port=5432 dbname=warehouse user=dwh_loader",
                               "DWH_HISTORY_START": "2026-01-01"})
    assert done.returncode == 0, done.stderr[-3000:]
    keys = set(json.loads(done.stdout.splitlines()[-1])["keys"])
    assert {"superset/usage_by_organization", "superset/growth", "superset/fleet", "superset/warehouse_health",
            "mart/growth_daily"} <= keys


# ----- broken input ---------------------------------------------------------------------------------


@pytest.fixture()
def copy(tmp_path) -> Path:
    root = tmp_path / "dashboards"
    shutil.copytree(PACKAGED_DASHBOARDS, root)
    return root


def _edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_a_file_that_is_not_yaml_is_named(copy):
    (copy / "charts" / "growth_cumulative.yaml").write_text("slice_name: [unclosed\nuuid: x\n")
    with pytest.raises(BundleError, match=r"charts/growth_cumulative.yaml: not valid YAML"):
        load_bundle(copy)


def test_a_missing_key_is_named(copy):
    _edit(copy / "charts" / "fleet_live.yaml", lambda d: d.pop("dataset_uuid"))
    with pytest.raises(BundleError, match=r"charts/fleet_live.yaml: missing dataset_uuid"):
        load_bundle(copy)


def test_a_dangling_reference_is_named(copy):
    _edit(copy / "charts" / "fleet_live.yaml", lambda d: d.update(dataset_uuid="00000000-0000-0000-0000-000000000000"))
    with pytest.raises(BundleError, match=r"charts/fleet_live.yaml: dataset_uuid 0{8}-.* names no file in datasets/"):
        load_bundle(copy)


def test_a_layout_naming_an_unknown_chart_is_named(copy):
    (copy / "charts" / "fleet_live.yaml").unlink()
    with pytest.raises(BundleError, match=r"dashboards/fleet.yaml: the layout names chart"):
        load_bundle(copy)


def test_a_duplicate_uuid_is_named(copy):
    first = yaml.safe_load((copy / "charts" / "fleet_live.yaml").read_text())["uuid"]
    _edit(copy / "charts" / "fleet_vcpus.yaml", lambda d: d.update(uuid=first))
    with pytest.raises(BundleError, match=r"charts/fleet_vcpus.yaml: uuid .* is already used by charts/fleet_live.yaml"):
        load_bundle(copy)


def test_a_virtual_dataset_is_refused_because_it_hides_lineage(copy):
    _edit(copy / "datasets" / "warehouse" / "mart_growth_daily.yaml", lambda d: d.update(sql="SELECT 1"))
    with pytest.raises(BundleError, match=r"mart_growth_daily.yaml: a virtual \(SQL\) dataset hides its lineage"):
        load_bundle(copy)


def test_a_stray_file_is_named(copy):
    (copy / "charts" / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match=r"charts/notes.txt: only YAML files"):
        load_bundle(copy)


# ----- what goes to Superset and what comes back -------------------------------------------------------


def _cfg(port: int) -> StackConfig:
    return StackConfig(home=Path("/tmp/x"), ports={"pg": port, "superset": 8088}, anchor_day=dt.date(2026, 1, 1),
                       seed=1, scale=0.1, server_user="postgres")


def test_the_import_zip_points_at_the_stack_and_carries_no_password(bundle):
    data = superset.bundle_zip(bundle, _cfg(61234), "SqlaTable")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        db = yaml.safe_load(zf.read("export/databases/warehouse.yaml"))
        meta = yaml.safe_load(zf.read("export/metadata.yaml"))
    assert db["sqlalchemy_uri"] == "postgresql+psycopg2://dwh_reader@127.0.0.1:61234/warehouse"
    assert meta["type"] == "SqlaTable"
    assert len(names) == len(bundle.files) and all(n.startswith("export/") for n in names)


def test_dataset_descriptions_come_from_the_catalog_at_import_and_leave_at_export(bundle):
    for rel, text in bundle.files.items():
        if rel.startswith("datasets/"):
            data = yaml.safe_load(text)
            assert data["description"] is None, f"{rel}: descriptions live in the catalog only"
            assert all(c["description"] is None for c in data["columns"]), rel
    with zipfile.ZipFile(io.BytesIO(superset.bundle_zip(bundle, _cfg(61234), "SqlaTable"))) as zf:
        sent = yaml.safe_load(zf.read("export/datasets/warehouse/mart_daily_signups.yaml"))
    mart = catalog.MART_BY_NAME["daily_signups"]
    assert sent["description"] == mart.description
    assert {c["column_name"]: c["description"] for c in sent["columns"]} == {c.name: c.comment for c in mart.columns}
    exported = dict(sent, columns=[dict(c) for c in reversed(sent["columns"])])
    assert superset._normalise(Path("datasets/warehouse/mart_daily_signups.yaml"), exported)
    assert exported["description"] is None and {c["description"] for c in exported["columns"]} == {None}
    # Columns in name order, whatever order Superset exports them in: the repository's file comes back.
    text = (PACKAGED_DASHBOARDS / "datasets" / "warehouse" / "mart_daily_signups.yaml").read_text()
    assert yaml.safe_dump(exported, sort_keys=False, allow_unicode=True) == text


def test_the_export_keeps_the_canonical_uri_and_no_instance_ids():
    assert superset.canonical_uri("postgresql+psycopg2://dwh_reader@127.0.0.1:61234/warehouse") == \
        "postgresql+psycopg2://dwh_reader@127.0.0.1:55432/warehouse"
    assert superset.canonical_uri("postgresql+psycopg2://dwh_reader:XXXXXXXXXX@127.0.0.1:61234/warehouse") == \
        "postgresql+psycopg2://dwh_reader@127.0.0.1:55432/warehouse"
    chart = {"uuid": "u", "params": {"datasource": "7__table", "slice_id": 3, "dashboards": [1], "metric": "m"}}
    assert superset._normalise(Path("charts/x.yaml"), chart)
    assert chart["params"] == {"metric": "m"}
    dash = {"position": {"CHART-a": {"type": "CHART", "meta": {"chartId": 42, "uuid": "u"}},
                         "CHART-b": {"type": "CHART", "meta": {"chartId": 7, "uuid": "v"}}}}
    assert superset._normalise(Path("dashboards/x.yaml"), dash)
    assert [dash["position"][k]["meta"]["chartId"] for k in ("CHART-a", "CHART-b")] == [1, 2]  # the file's, in layout order


def test_the_repository_files_are_already_normalised(bundle):
    for rel, text in bundle.files.items():
        data = yaml.safe_load(text)
        if rel.startswith("charts/"):
            assert not {"datasource", "slice_id", "dashboards"} & set(data["params"]), rel
        if rel.startswith("dashboards/"):
            ids = [i["meta"]["chartId"] for i in data["position"].values() if isinstance(i, dict) and i.get("type") == "CHART"]
            assert ids == list(range(1, len(ids) + 1)), rel
