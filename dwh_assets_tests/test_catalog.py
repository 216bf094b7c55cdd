"""The catalog is consistent with itself, and what is derived from it follows it (no server).

- every reference, lineage, input and key names something the catalog (or a source) has;
- the DDL it renders, the comments, the grants and docs/catalog.md come from it;
- a deployment's own accepted values reach dwh.settings, and an unknown set is refused.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from dwh_assets.warehouse import catalog, catalog_ddl, catalog_docs
from dwh_assets.warehouse.deployment import DeploymentError
from dwh_assets.warehouse.catalog import PRODUCT
from dwh_assets.warehouse.migrate import settings
from dwh_assets.warehouse.deployment import DeploymentConfig

DOCS = Path(__file__).resolve().parents[1] / "docs" / "catalog.md"
RELATIONS = {item.relation: item for item in (*PRODUCT.all_tables(), *PRODUCT.all_views())}


def column_exists(ref: str) -> bool:
    relation, column = ref.rsplit(".", 1)
    if relation.startswith("src_"):
        return True  # the sources' contracts are the FDWs' (sources/foreign_tables.py), checked by the integration tests
    return relation in RELATIONS and any(c.name == column for c in RELATIONS[relation].columns)


def test_references_and_lineage_name_columns_that_exist():
    for item in RELATIONS.values():
        for column in item.columns:
            for ref in (*column.lineage, *([column.references] if column.references else [])):
                assert column_exists(ref), f"{item.relation}.{column.name} names {ref}, which the catalog lacks"


def test_keys_partitions_and_inputs_name_what_the_catalog_has():
    for table in PRODUCT.all_tables():
        names = [c.name for c in table.columns]
        assert len(names) == len(set(names)), table.relation
        assert set(table.primary_key) <= set(names) and (table.partition_by is None or table.partition_by in names)
        for index in table.indexes:
            assert set(index.columns) <= set(names), (table.relation, index)
    copies = {spec.name for spec in PRODUCT.tables}
    for mart in PRODUCT.marts:
        assert set(mart.stale_when) <= copies and set(mart.reads) <= set(RELATIONS), mart.name
        assert "day" in mart.key and mart.stored_table.partition_by == "day"
    for view in PRODUCT.all_views():
        assert set(view.reads) <= set(RELATIONS) | {r for r, _ in PRODUCT.external} | {catalog.REFRESH_LOG}, view.relation


def test_a_marts_columns_are_described_once_for_its_table_and_its_view():
    comments = catalog_ddl.comments(PRODUCT)
    for mart in PRODUCT.marts:
        for column in mart.columns:
            view_comment = comments[("COLUMN", mart.relation, column.name)]
            assert view_comment.endswith(column.comment)
            if column.stored:
                assert comments[("COLUMN", mart.table, column.name)] == view_comment


def test_the_rendered_ddl_creates_what_the_catalog_declares():
    users = catalog.USERS.table
    statement, index = (s.as_string(None) for s in catalog_ddl.create_table(users))
    assert statement.startswith('CREATE TABLE "dwh"."users" (\n    "user_id" text,')
    assert '"attrs" jsonb NOT NULL DEFAULT \'{}\'::jsonb' in statement and 'PRIMARY KEY ("user_id")' in statement
    assert index == 'CREATE INDEX "users_created_at" ON "dwh"."users" ("created_at")'
    events = catalog_ddl.create_table(catalog.EVENTS.table)[0].as_string(None)
    assert events.endswith('PARTITION BY RANGE ("enqueued_at")') and 'PRIMARY KEY ("msg_id", "enqueued_at")' in events
    assert "GENERATED ALWAYS AS (message ->> 'event') STORED" in events
    snapshot = catalog_ddl.create_table(catalog.USERS.snapshot)[0].as_string(None)
    assert '"snapshot_day" date NOT NULL' in snapshot and '"user_id" text NOT NULL' in snapshot and "DEFAULT" not in snapshot


def test_grants_cover_every_routine_and_relation():
    text = [s.as_string(None) for s in catalog_ddl.grants(PRODUCT, "dwh_loader", "dwh_reader", "dwh_personal_reader")]
    for entry in PRODUCT.refreshed():
        assert f'GRANT EXECUTE ON FUNCTION "dwh"."{entry.routine.split(".")[1]}"({entry.routine_arguments}) TO "dwh_loader"' in text
    for relation in RELATIONS:
        schema, name = relation.split(".")
        assert f'GRANT SELECT ON "{schema}"."{name}" TO "dwh_loader"' in text
        # The readers' grants are exact: revoked first, then the relation or its columns (test_personal_data_catalog.py).
        revoke = f'REVOKE SELECT ON "{schema}"."{name}" FROM "dwh_reader", "dwh_personal_reader"'
        assert revoke in text and any(s.startswith("GRANT SELECT") and f'ON "{schema}"."{name}" TO "dwh_reader"' in s
                                      for s in text[text.index(revoke):])


def test_views_come_after_the_views_they_read():
    order = [v.relation for v in PRODUCT.all_views()]
    for view in PRODUCT.all_views():
        for read in view.reads:
            if read in order:
                assert order.index(read) < order.index(view.relation)


def test_docs_catalog_md_is_generated_from_the_catalog():
    assert DOCS.read_text() == catalog_docs.render(), \
        "docs/catalog.md is stale: python -m dwh_assets.warehouse.catalog_docs > docs/catalog.md"


def deployment(home: Path, **overrides) -> DeploymentConfig:
    """A deployment of made-up addresses: nothing is reached, and no socket is opened to choose them."""
    secret = home / "secret"
    secret.write_text("not-a-real-secret\n")
    values = {
        "warehouse": {"host": "127.0.0.1", "port": 1, "owner": {"password_file": str(secret)}},
        "control_plane": {"host": "127.0.0.1", "port": 1, "password_file": str(secret)},
        "clerk": {"api_url": "http://127.0.0.1:1", "secret_key_file": str(secret)},
        "prometheus": {"url": "http://127.0.0.1:1"},
        "reader": {"directory": str(home / "reader")},
        "history": {"start": dt.date(2026, 1, 1)},
    }
    return DeploymentConfig.from_values(values | overrides)


def test_the_generator_uses_the_catalogs_instance_states():
    from dwh_assets.local import generator  # the demo wing may import the warehouse, never the reverse

    assert generator.INSTANCE_STATES == catalog.INSTANCE_STATES.values


def test_a_deployments_accepted_values_reach_dwh_settings(tmp_path):
    default = settings(deployment(tmp_path), "warehouse")
    assert default["accepted_values.instance_states"] == ",".join(catalog.INSTANCE_STATES.values)
    more = (*catalog.INSTANCE_STATES.values, "hibernating")
    cfg = deployment(tmp_path, accepted_values={"instance_states": list(more)})
    assert settings(cfg, "warehouse")["accepted_values.instance_states"] == ",".join(more)


@pytest.mark.parametrize("values, problem", [
    ({"instance_colours": ["red"]}, "no set of accepted values named instance_colours; known: instance_states"),
    ({"instance_states": []}, "instance_states: list at least one value"),
    ({"instance_states": ["running", "a,b"]}, "none empty or with a comma"),
])
def test_an_unknown_or_malformed_set_of_accepted_values_is_refused(tmp_path, values, problem):
    with pytest.raises(DeploymentError, match=problem):
        deployment(tmp_path, accepted_values=values)


def test_every_fact_says_how_its_late_rows_are_found():
    """An arrival column is one the control plane's contract holds (with the index the source
    contract asks for); Prometheus has none and re-reads its lookback."""
    contract = {relation.split(".")[1]: columns for relation, columns in catalog.CONTROL_PLANE_CONTRACT.items()}
    contract_doc = (DOCS.parent / "source-contract.md").read_text()
    for spec in PRODUCT.tables:
        if spec.kind is not catalog.Kind.FACT:
            assert spec.arrival is None, spec.name
            continue
        assert spec.arrival is not None and spec.arrival.reason, spec.name
        source = spec.sources[0].split(".")[1]
        if spec.system is catalog.SourceSystem.CONTROL_PLANE:
            assert spec.arrival.column in contract[source], (spec.name, spec.arrival.column)
            assert f"({spec.arrival.column})" in spec.arrival.source_index
            assert f"`{source} ({spec.arrival.column})`" in contract_doc, spec.name
        else:
            assert spec.arrival.column is None and spec.lookback_days >= 1, spec.name
    assert {spec.name for spec in PRODUCT.reconciled()} == {s.name for s in PRODUCT.tables if s.kind is catalog.Kind.FACT}


def test_the_arrival_watermarks_and_the_reconciliation_come_from_the_catalog():
    rows = {spec.name: catalog_ddl.arrival_row(spec) for spec in PRODUCT.reconciled()}
    # (source, time column, arrival column, overlap, checksum column, how a day is counted)
    assert rows["events"][:3] == ("src_control_plane.a_instance_events", "enqueued_at", "archived_at")
    assert rows["events"][4:] == ("msg_id", "fdw")
    assert rows["instance_state"][2] == "id" and rows["instance_state"][4:] == ("id", "fdw")
    assert rows["metrics"][2] is None and rows["metrics"][4:] == (None, "prometheus")
    reconciliation = PRODUCT.reconciliation
    assert catalog.schedulable_jobs()[reconciliation.name] == reconciliation.schedule
    assert reconciliation.table in PRODUCT.all_tables()
    granted = {str(g.as_string(None)) for g in catalog_ddl.grants(PRODUCT, "l", "r", "p")}
    assert 'GRANT EXECUTE ON FUNCTION "dwh"."reconcile_facts"() TO "l"' in granted
    assert 'GRANT EXECUTE ON FUNCTION "dwh"."refresh_with_arrivals"(text, timestamptz, timestamptz) TO "l"' in granted
