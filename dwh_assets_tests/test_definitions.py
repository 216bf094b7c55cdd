"""The Dagster definitions from a date, without any server: graph, partitions, checks, metadata.

What a user sees in the UI starts here: keys, groups, kinds, partitions, blocking checks,
code versions that follow the SQL files, links to them, owners, and no beta warnings.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import dagster as dg
import pytest

from dwh_assets.local.config import REPO_ROOT
from dwh_assets.warehouse import catalog, catalog_ddl, sql_files
from dwh_assets.warehouse.defs import CodeLocationSettings, build_definitions, cron_targets
from dwh_assets.warehouse.defs.metadata import key_of, relation_of

START = dt.date(2026, 1, 1)


@pytest.fixture(scope="module")
def graph():
    return build_definitions(CodeLocationSettings(START)).resolve_asset_graph()


def test_lineage_runs_from_every_source_through_its_copy_to_the_marts(graph):
    for spec in catalog.CATALOG:
        copy = key_of(spec.local_table)
        assert graph.get(copy).parent_keys == {key_of(s) for s in spec.sources}, spec.name
        assert graph.get(copy).group_name == spec.group.value
        for source in spec.sources:
            node = graph.get(key_of(source))
            assert not node.is_materializable, f"{source} should be an external asset"
            # Source and copy are told apart at a glance: the source is a foreign table.
            assert "foreign table" in node.kinds and "foreign table" not in graph.get(copy).kinds
    for source in {s for spec in catalog.CATALOG for s in spec.sources}:
        fed = {graph.get(child).group_name for child in graph.get(key_of(source)).child_keys}
        assert graph.get(key_of(source)).group_name in fed, f"{source} is drawn away from what it feeds"
    for mart in catalog.MARTS:
        assert graph.get(key_of(mart.relation)).parent_keys == {key_of(r) for r in mart.reads}
        assert all(graph.has(key_of(r)) for r in mart.reads), "every relation a mart reads is an asset"
    assert graph.get(key_of("dwh.metric_series")).parent_keys == {key_of("src_prometheus.metrics")}
    assert graph.has(key_of("dwh.refresh_log"))


def test_facts_and_marts_are_daily_partitions_from_the_history_start_dimensions_are_not(graph):
    ranged = [s.local_table for s in catalog.CATALOG if s.kind is catalog.Kind.FACT] + [m.relation for m in catalog.MARTS]
    for relation in ranged:
        node = graph.get(key_of(relation))
        assert node.partitions_def.get_partition_keys()[0] == START.isoformat()
        assert node.partitions_def == graph.get(key_of(ranged[0])).partitions_def, "one range covers facts and marts"
        assert node.backfill_policy == dg.BackfillPolicy.single_run()
    for spec in catalog.CATALOG:
        if spec.kind is catalog.Kind.DIMENSION:
            assert graph.get(key_of(spec.local_table)).partitions_def is None
            snapshot = graph.get(key_of(spec.snapshot_table))
            assert snapshot.parent_keys == {key_of(spec.local_table)} and not snapshot.is_materializable


def test_copies_have_blocking_checks_and_marts_have_checks(graph):
    for spec in catalog.CATALOG:
        checks = {c.name: c for c in graph.get(key_of(spec.local_table)).check_keys and
                  graph.get(key_of(spec.local_table)).assets_def.check_specs}
        names = set(checks)
        assert "pg_cron_job_health" not in names  # a separate, non-blocking check
        if spec.kind is catalog.Kind.FACT:
            assert "rows_match_source" in names
            assert ("key_is_unique" in names) == spec.key_needs_check, "a key that is the primary key cannot fail"
        else:
            assert "row_count_matches_source" in names and "key_is_unique" not in names
        assert checks["rows_match_source" if spec.kind is catalog.Kind.FACT else "row_count_matches_source"].blocking
    for mart in catalog.MARTS:
        assert list(graph.get(key_of(mart.relation)).assets_def.check_specs), mart.name


def test_each_asset_names_its_table_its_sql_its_owner_and_its_pg_cron_job(graph):
    for spec in (*catalog.CATALOG, *catalog.MARTS):
        relation = spec.local_table if isinstance(spec, catalog.TableSpec) else spec.relation
        node = graph.get(key_of(relation))
        meta = node.metadata
        assert meta["dagster/table_name"] == relation
        reference = meta["dagster/code_references"].code_references[0]
        assert reference.file_path == str(REPO_ROOT / "sql" / "routines" / spec.routine_file)
        assert node.owners == list(catalog.OWNERS)
        assert spec.cron_job_name in node.description and meta["pg_cron_job"] == spec.cron_job_name
        assert node.code_version == sql_files.code_version(REPO_ROOT / "sql" / "routines" / spec.routine_file)
        # The columns are the catalog's, shown before anything ran, described as the database's comments
        # (a personal column's marked), the personal ones tagged.
        comments, personal = catalog_ddl.comments(catalog.PRODUCT), catalog.PRODUCT.personal_columns(relation)
        assert [(c.name, c.type, c.description, dict(c.tags)) for c in meta["dagster/column_schema"].columns] == [
            (c.name, c.type, comments[("COLUMN", relation, c.name)], {"personal_data": "true"} if c.name in personal else {})
            for c in spec.columns]


def code_versions(entries: catalog.Catalog = catalog.PRODUCT) -> dict[dg.AssetKey, str | None]:
    graph = build_definitions(CodeLocationSettings(START), entries).resolve_asset_graph()
    return {key: graph.get(key).code_version for key in graph.get_all_asset_keys()}


def test_changing_a_routines_sql_changes_that_assets_code_version_only(tmp_path):
    before = code_versions()
    (tmp_path / "refresh_events.sql").write_text(
        (sql_files.ROUTINES_DIR / "refresh_events.sql").read_text() + "\n-- changed\n")
    # A directory searched first shadows the product's file, as a deployment's own SQL would.
    after = code_versions(catalog.PRODUCT.extended(sql_dirs=(tmp_path,)))
    changed = {k.to_user_string() for k in before if before[k] != after[k]}
    assert changed == {"dwh/events"}


def test_every_pg_cron_job_of_an_asset_has_a_sensor_target():
    targets = cron_targets()
    jobs = {spec.cron_job_name for spec in catalog.CATALOG} | {mart.cron_job_name for mart in catalog.MARTS}
    reconciliation = catalog.PRODUCT.reconciliation
    assert set(targets) == jobs | {reconciliation.cron_job_name}
    # The reconciliation's runs materialise its own table (and the days it replaces, through their logs).
    assert targets[reconciliation.cron_job_name].log_table == reconciliation.log_table
    for spec in catalog.CATALOG:
        target = targets[spec.cron_job_name]
        assert target.partitioned == ("window" if spec.kind is catalog.Kind.FACT else None)
    for mart in catalog.MARTS:
        assert targets[mart.cron_job_name].log_table == mart.relation


@pytest.mark.integration  # loads the code location in a Python of its own
def test_loading_the_code_location_prints_no_warning():
    """Every CLI call and daemon reload loads it: no BetaWarning (or any other) on the way."""
    probe = ("import warnings; warnings.simplefilter('error'); import dwh_assets.definitions as d; "
             "d.defs().resolve_asset_graph(); print('ok')")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd="/",
                          env={"DWH_WAREHOUSE_DSN": "host=db.example", "DWH_HISTORY_START": "2026-01-01",
                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_every_node_of_the_graph_is_named_apart(graph):
    """The lineage graph labels a node with its key's last part only: no two may read the same."""
    labels = [key.path[-1] for key in graph.get_all_asset_keys()]
    assert len(labels) == len(set(labels)), sorted(label for label in labels if labels.count(label) > 1)
    for spec in catalog.CATALOG:
        for source in spec.sources:
            system, table = source.removeprefix("src_").split(".")
            assert key_of(source) == dg.AssetKey([f"{system}.{table}"]) and relation_of(key_of(source)) == source
        assert relation_of(key_of(spec.local_table)) == spec.local_table


def test_every_job_of_the_definitions_builds():
    """Observable and materializable assets together form no cycle of steps (the implicit asset job)."""
    repository = build_definitions(CodeLocationSettings(START)).get_repository_def()
    assert {job.name for job in repository.get_all_jobs()} >= {"__ASSET_JOB", "nightly_late_data"}


def test_what_dagster_never_builds_is_observable_and_views_carry_columns_code_and_lineage(graph):
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.is_materializable or node.is_observable or "table" in node.kinds, \
            f"{key.to_user_string()} would only ever read 'never materialized'"
    for view in catalog.PRODUCT.views:
        node = graph.get(key_of(view.relation))
        assert node.is_observable
        assert node.code_version == sql_files.code_version(catalog.PRODUCT.sql_path(view.sql_file))
        assert [c.name for c in node.metadata["dagster/column_schema"].columns] == [c.name for c in view.columns]
    for spec in catalog.CATALOG:
        for table in (t for t in spec.tables if t.relation != spec.local_table):
            node = graph.get(key_of(table.relation))
            assert node.code_version == sql_files.code_version(catalog.PRODUCT.sql_path(spec.routine_file))
            assert [c.name for c in node.metadata["dagster/column_schema"].columns] == [c.name for c in table.columns]
            assert node.metadata["dagster/column_lineage"].deps_by_column, table.relation
    assert graph.get(key_of(catalog.REFRESH_LOG)).code_version is not None


def test_column_lineage_is_also_a_table_a_person_reads(graph):
    """The open-source UI draws no dagster/column_lineage: the same lineage, as markdown, next to it."""
    events = graph.get(key_of("dwh.events")).metadata
    table = events["column_lineage"].value.splitlines()
    assert table[0] == "| column | &larr; source columns |"
    assert "| `msg_id` | `src_control_plane.a_instance_events.msg_id` |" in table
    assert "| `event_type` | `src_control_plane.a_instance_events.message` |" in table
    for mart in catalog.MARTS:
        rows = {row.split(" | ")[0].strip("| `"): row for row in graph.get(key_of(mart.relation)).metadata[
            "column_lineage"].value.splitlines()[2:]}
        for column in (c for c in mart.columns if c.lineage):
            assert all(f"`{ref}`" in rows[column.name] for ref in column.lineage), (mart.name, column.name)
    for node in (graph.get(key_of(s.local_table)) for s in catalog.CATALOG):
        deps = node.metadata["dagster/column_lineage"].deps_by_column
        rows = node.metadata["column_lineage"].value.splitlines()[2:]
        assert len(rows) == len(deps) and all(graph.has(d.asset_key) for ds in deps.values() for d in ds)
