"""Adding a mart is one catalog entry plus one SQL file (docs/adding-a-table.md).

The mart below (``SIGNUP_DOMAINS``) and ``fixture_sql/refresh_mart_signup_domains.sql`` are all
it takes: `dwh migrate` with the catalog extended by them, on a throwaway warehouse, must
create the partitioned table with its pg_partman registration and comments, the view, the
grants (the reader reads it), the pg_cron job, its ``dwh.mart_inputs`` and ``dwh.refresh_jobs``
rows; the Dagster definitions must show the asset with its checks, column schema and
lineage, and a Dagster run of it must refresh the days and pass its checks.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from dwh_assets.local.config import LOADER_ROLE, OWNER_ROLE, READER_ROLE, WAREHOUSE_DB, StackConfig
from dwh_assets.warehouse import catalog, catalog_ddl
from dwh_assets.warehouse.catalog import Column, MartSpec, WindowCheck
from dwh_assets.warehouse.defs import CodeLocationSettings, build_definitions, cron_targets
from dwh_assets.warehouse.defs.assets import mart_assets
from dwh_assets.warehouse.defs.metadata import key_of
from dwh_assets.warehouse.defs.partitions import daily_partitions
from dwh_assets.warehouse.defs.resources import WarehouseResource
from dwh_assets.warehouse.catalog_ddl import CatalogError
from dwh_assets.warehouse.migrate import migrate, plan
from dwh_assets_tests.tiers import integration_fixture
from dwh_assets_tests.warehouse_helpers import scratch_warehouse

FIXTURE_SQL = Path(__file__).parent / "fixture_sql"

# ----- the one catalog entry -----
SIGNUP_DOMAINS = MartSpec(
    name="signup_domains",
    reads=("dwh.users",),
    stale_when=("users",),
    key=("day", "email_domain"),
    description="Sign-ups per UTC day and email domain.",
    columns=(
        Column("day", "date", "The UTC day.", lineage=("dwh.users.created_at",)),
        # Computed from a personal column, it would be personal too; a domain names a mail provider or a company.
        Column("email_domain", "text", "The domain of the primary email address ('' without one).",
               lineage=("dwh.users.email",), personal=False),
        Column("signups", "bigint", "Users created that day with that domain.", not_null=True,
               lineage=("dwh.users.user_id",)),
    ),
    checks=(WindowCheck("signups_are_positive", "Every stored day and domain has at least one sign-up.",
                        "SELECT count(*) AS bad FROM mart.signup_domains_days WHERE day >= %(first_day)s "
                        "AND day < %(end_day)s AND signups < 1"),),
)
# -----

EXTENDED = catalog.PRODUCT.extended(marts=(SIGNUP_DOMAINS,), sql_dirs=(FIXTURE_SQL,))
TODAY = dt.datetime.now(dt.timezone.utc).date()
USERS = [("user_a", "a@example.org"), ("user_b", "b@example.org"), ("user_c", "c@example.com"), ("user_d", None)]


@integration_fixture(scope="module")
def warehouse() -> Iterator[tuple[StackConfig, str]]:
    """A throwaway warehouse of its own, migrated with the product's catalog, then with the extended one."""
    with scratch_warehouse("dwh-test-mart-") as scratch:
        migrate(scratch.deployment(), progress=lambda _line: None)
        lines: list[str] = []
        migrate(scratch.deployment(), progress=lines.append, catalog=EXTENDED)
        yield scratch, "\n".join(lines)


def connect(cfg: StackConfig, role: str) -> psycopg.Connection:
    return psycopg.connect(cfg.dsn(WAREHOUSE_DB, role), autocommit=True)


def test_migrate_creates_the_partitioned_table_its_view_comments_and_partitions(warehouse):
    scratch, progress = warehouse
    assert "catalog: 1 table(s) created, 1 partitioned" in progress
    with connect(scratch, OWNER_ROLE) as conn:
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'mart.signup_domains_days'::regclass").fetchone() == ("p",)
        assert conn.execute("SELECT control, retention FROM partman.part_config WHERE parent_table = %s",
                            (SIGNUP_DOMAINS.table,)).fetchone() == ("day", "400 days")
        partitions = conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'mart.signup_domains_days'::regclass")
        assert partitions.fetchone()[0] > 7
        assert catalog_ddl.database_columns(conn, SIGNUP_DOMAINS.table) == catalog_ddl.catalog_columns(
            SIGNUP_DOMAINS.stored_table)
        for (_, relation, column), text in catalog_ddl.comments(EXTENDED).items():
            if relation in (SIGNUP_DOMAINS.table, SIGNUP_DOMAINS.relation):
                assert catalog_ddl.database_comment(conn, relation, column) == text, (relation, column)
        assert catalog_ddl.database_comment(conn, SIGNUP_DOMAINS.relation, "email_domain") == SIGNUP_DOMAINS.columns[1].comment


def test_the_pg_cron_job_and_the_marts_inputs_are_written(warehouse):
    scratch, _ = warehouse
    with connect(scratch, LOADER_ROLE) as loader:
        job = loader.execute("SELECT schedule, command FROM cron.job WHERE jobname = %s AND username = current_user",
                             (SIGNUP_DOMAINS.cron_job_name,)).fetchone()
        timeout = int(SIGNUP_DOMAINS.timeout.total_seconds())
        assert job == (SIGNUP_DOMAINS.schedule,
                       f"SET statement_timeout = '{timeout}s'; SELECT dwh.refresh_pending_mart('signup_domains')")
    with connect(scratch, OWNER_ROLE) as owner:
        assert owner.execute("SELECT copy FROM dwh.mart_inputs WHERE mart = 'signup_domains'").fetchall() == [("users",)]
        assert owner.execute("SELECT table_name FROM dwh.refresh_jobs WHERE jobname = %s",
                             (SIGNUP_DOMAINS.cron_job_name,)).fetchone() == ("mart.signup_domains",)


def test_dagster_shows_the_asset_with_its_checks_schema_and_lineage():
    graph = build_definitions(CodeLocationSettings(TODAY - dt.timedelta(days=3)), EXTENDED).resolve_asset_graph()
    node = graph.get(key_of(SIGNUP_DOMAINS.relation))
    assert node.parent_keys == {key_of("dwh.users")} and node.is_materializable
    assert {c.name for c in node.assets_def.check_specs} == {"signups_are_positive", "no_days_held"}
    schema = node.metadata["dagster/column_schema"]
    assert [(c.name, c.type, c.description) for c in schema.columns] == [
        (c.name, c.type, c.comment) for c in SIGNUP_DOMAINS.columns]
    assert node.code_version and node.metadata["pg_cron_job"] == SIGNUP_DOMAINS.cron_job_name
    assert cron_targets(EXTENDED)[SIGNUP_DOMAINS.cron_job_name].log_table == SIGNUP_DOMAINS.relation


def test_a_dagster_run_refreshes_it_passes_its_checks_and_the_reader_reads_it(warehouse):
    scratch, _ = warehouse
    with connect(scratch, OWNER_ROLE) as owner:
        owner.execute("SET ROLE dwh_owner")
        for user_id, email in USERS:
            owner.execute("INSERT INTO dwh.users (user_id, email, created_at, updated_at) VALUES (%s, %s, now(), now()) "
                          "ON CONFLICT DO NOTHING", (user_id, email))
    (asset,) = [a for a in mart_assets(EXTENDED, daily_partitions(TODAY - dt.timedelta(days=3)))
                if a.key == key_of(SIGNUP_DOMAINS.relation)]
    result = dg.materialize([asset], partition_key=TODAY.isoformat(),
                            resources={"warehouse": WarehouseResource(dsn=scratch.dsn(WAREHOUSE_DB, LOADER_ROLE))})
    assert result.success
    (materialization,) = result.asset_materializations_for_node(asset.node_def.name)
    lineage = materialization.metadata["dagster/column_lineage"].value
    assert {d.asset_key for d in lineage.deps_by_column["email_domain"]} == {key_of("dwh.users")}
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"signups_are_positive": True, "no_days_held": True}, "its own check and the derived gate check"
    with connect(scratch, READER_ROLE) as reader:
        rows = reader.execute("SELECT email_domain, signups FROM mart.signup_domains WHERE day = %s ORDER BY 1",
                              (TODAY,)).fetchall()
    assert rows == [("", 1), ("example.com", 1), ("example.org", 2)]


def test_a_table_that_differs_from_its_entry_stops_migrate_and_names_the_difference(warehouse):
    """Tables change deliberately (a migration): migrate refuses to guess, and the dry run says so."""
    scratch, _ = warehouse
    with connect(scratch, OWNER_ROLE) as owner:
        owner.execute("SET ROLE dwh_owner")
        owner.execute("ALTER TABLE mart.signup_domains_days ADD COLUMN note text")
        try:
            difference = "mart.signup_domains_days differs from the catalog: the catalog has none, the database has note text"
            assert f"REFUSED: {difference} (a migration must change it)" in plan(
                scratch.deployment(), progress=lambda _line: None, catalog=EXTENDED)
            with pytest.raises(CatalogError, match=r"nothing was created; these tables do not match the catalog:\n"
                                                   rf"  - {re.escape(difference)}\nChange a table deliberately"):
                migrate(scratch.deployment(), progress=lambda _line: None, catalog=EXTENDED)
        finally:
            owner.execute("ALTER TABLE mart.signup_domains_days DROP COLUMN note")
