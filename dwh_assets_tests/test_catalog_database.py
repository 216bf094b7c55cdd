"""The migrated warehouse is what the catalog says: columns and types, comments, partitions,
and what each view reads as PostgreSQL records it (pg_depend through the view's rewrite rule).

Read-only on the session stack, which `dwh up` migrated.
"""

from __future__ import annotations

import psycopg
import pytest

from dwh_assets.warehouse import catalog, catalog_ddl
from dwh_assets.warehouse.catalog import PRODUCT

RELATIONS = [*PRODUCT.all_tables(), *PRODUCT.all_views()]

# What a view's rewrite rule depends on: relations, and functions it calls (by name).
VIEW_DEPENDENCIES = """
SELECT DISTINCT coalesce(c.oid::regclass::text, p.pronamespace::regnamespace || '.' || p.proname) AS relation
FROM pg_rewrite r
JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
LEFT JOIN pg_class c ON d.refclassid = 'pg_class'::regclass AND c.oid = d.refobjid
LEFT JOIN pg_proc p ON d.refclassid = 'pg_proc'::regclass AND p.oid = d.refobjid
WHERE r.ev_class = %s::regclass
  AND (c.oid IS NOT NULL AND c.oid <> r.ev_class
       -- a function of dwh that reads tables; an immutable one (dwh.schedule_interval) reads none
       OR p.pronamespace = 'dwh'::regnamespace AND p.provolatile <> 'i')
"""


@pytest.mark.parametrize("item", RELATIONS, ids=lambda i: i.relation)
def test_columns_and_types_are_the_catalogs(item, superuser: psycopg.Connection):
    found = catalog_ddl.database_columns(superuser, item.relation)
    if isinstance(item, catalog.Table):
        assert found == catalog_ddl.catalog_columns(item)
    else:
        assert [(name, type_) for name, type_, _ in found] == catalog_ddl.catalog_columns(item)


@pytest.mark.parametrize("item", RELATIONS, ids=lambda i: i.relation)
def test_comments_are_the_catalogs(item, superuser: psycopg.Connection):
    wanted = {key: text for key, text in catalog_ddl.comments(PRODUCT).items() if key[1] == item.relation}
    assert {key: catalog_ddl.database_comment(superuser, key[1], key[2]) for key in wanted} == wanted


def test_every_partitioned_table_is_registered_with_pg_partman_on_its_column(superuser: psycopg.Connection):
    registered = dict(superuser.execute("SELECT parent_table, control FROM partman.part_config").fetchall())
    wanted = {t.relation: t.partition_by for t in PRODUCT.all_tables() if t.partition_by}
    assert {t: registered.get(t) for t in wanted} == wanted
    for relation in wanted:
        kind = superuser.execute("SELECT relkind FROM pg_class WHERE oid = %s::regclass", (relation,)).fetchone()[0]
        assert kind == "p", f"{relation} is not a partitioned table"


@pytest.mark.parametrize("view", PRODUCT.all_views(), ids=lambda v: v.relation)
def test_each_view_depends_on_what_the_catalog_says_it_reads(view, superuser: psycopg.Connection):
    depends = {row[0] for row in superuser.execute(VIEW_DEPENDENCIES, (view.relation,)).fetchall()}
    read = {catalog.READ_THROUGH.get(r, r) for r in depends} - set(catalog.CONFIGURATION)
    assert read == set(view.reads)


def test_every_relation_of_dwh_and_mart_is_the_catalogs_or_bookkeeping(superuser: psycopg.Connection):
    found = {row[0] for row in superuser.execute(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname IN ('dwh', 'mart') AND c.relkind IN ('r', 'p', 'v', 'm') AND NOT c.relispartition").fetchall()}
    declared = {item.relation for item in RELATIONS} | set(catalog.CONFIGURATION) | {
        catalog.REFRESH_LOG, catalog.ERASURE_KEY, catalog.ERASURE_LOG}
    assert found == declared
