"""`dwh migrate`: builds the warehouse on an empty database, and a second run changes nothing.

The session stack was migrated by `dwh up`; a fresh cluster (Postgres only, control plane
schema without data) checks that a migrate on an *empty* database creates the same
objects, and a re-run on either is a no-op down to the oids.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from dwh_assets.local.config import LOADER_ROLE, WAREHOUSE_DB, StackConfig
from dwh_assets.local.generator import METRIC_NAMES
from dwh_assets.local.postgres import Postgres
from dwh_assets.warehouse import catalog, catalog_ddl, cron_jobs
from dwh_assets.warehouse.migrate import MIGRATIONS_DIR
from dwh_assets.warehouse.sources import foreign_tables, reader
from dwh_assets_tests.conftest import migrate_stack
from dwh_assets_tests.tiers import integration_fixture
from dwh_assets_tests.warehouse_helpers import LEGACY_MIGRATIONS, apply_legacy_migrations, scratch_warehouse

METRICS_STEP_SECONDS = 3600  # the deployment's default prometheus.step_seconds

NO_OP = "0 new migration(s); tables unchanged; sources unchanged; pg_cron: jobs unchanged"
OUR_SCHEMAS = ["src_control_plane", "src_clerk", "src_prometheus", "dwh", "mart"]
EXPECTED_FOREIGN_TABLES = {
    ("src_control_plane", "organizations"), ("src_control_plane", "instances"),
    ("src_control_plane", "instance_state_history"), ("src_control_plane", "a_instance_events"),
    ("src_clerk", "users"), ("src_clerk", "organizations"), ("src_clerk", "organization_memberships"),
    ("src_prometheus", "metrics"),
}


def inventory(conn: psycopg.Connection) -> dict[str, list]:
    """What migrate creates, without oids: relations, columns (and their grants), the grants on
    partitions, routines, partman config, cron jobs."""
    return {
        "relations": conn.execute(
            "SELECT n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner), c.relacl::text FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = ANY(%s) AND NOT c.relispartition AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'i', 'I', 'S')"
            " ORDER BY 1, 2", (OUR_SCHEMAS,),
        ).fetchall(),
        "columns": conn.execute(
            "SELECT c.oid::regclass::text, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attacl::text"
            " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = ANY(%s) AND NOT c.relispartition AND a.attnum > 0 AND NOT a.attisdropped"
            " ORDER BY 1, a.attnum", (OUR_SCHEMAS,),
        ).fetchall(),
        "partition_grants": conn.execute(
            "SELECT DISTINCT i.inhparent::regclass::text, c.relacl::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY(%s) ORDER BY 1, 2", (OUR_SCHEMAS,),
        ).fetchall(),
        "routines": conn.execute(
            "SELECT p.oid::regprocedure::text, p.prosecdef, p.proconfig, p.proacl::text FROM pg_proc p"
            " WHERE p.pronamespace = 'dwh'::regnamespace ORDER BY 1",
        ).fetchall(),
        "partman": conn.execute(
            "SELECT parent_table, control, partition_interval, premake, retention, retention_keep_table,"
            " infinite_time_partitions FROM partman.part_config ORDER BY 1",
        ).fetchall(),
        "cron": conn.execute(
            "SELECT jobname, schedule, command, database, username, active FROM cron.job"
            " WHERE starts_with(jobname, %s) AND jobname NOT LIKE 'dwh:test%%' ORDER BY 1, 5", (catalog.CRON_JOB_PREFIX,),
        ).fetchall(),
    }


def identities(conn: psycopg.Connection) -> dict[str, list]:
    """Oids and ids that a rebuild would change: a no-op migrate must keep every one."""
    return {
        "foreign_tables": conn.execute(
            "SELECT ftrelid, ftrelid::regclass::text, ftoptions FROM pg_foreign_table ORDER BY 1"
        ).fetchall(),
        "servers": conn.execute("SELECT oid, srvname, srvoptions FROM pg_foreign_server ORDER BY 1").fetchall(),
        "routines": conn.execute(
            "SELECT oid, oid::regprocedure::text, md5(prosrc) FROM pg_proc WHERE pronamespace = 'dwh'::regnamespace ORDER BY 1"
        ).fetchall(),
        "relations": conn.execute(
            "SELECT c.oid, c.relfilenode FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = ANY(%s) ORDER BY 1", (OUR_SCHEMAS,),
        ).fetchall(),
        "cron": conn.execute("SELECT jobid, jobname, schedule, command, username, active FROM cron.job ORDER BY 1").fetchall(),
        "settings": conn.execute("SELECT key, value FROM dwh.settings ORDER BY 1").fetchall(),
    }


# ----- the session stack ----------------------------------------------------------------------


def test_second_migrate_changes_nothing(cfg, superuser):
    before = identities(superuser)
    assert migrate_stack(cfg) == NO_OP
    assert identities(superuser) == before


def test_foreign_tables_of_every_source_are_listed(loader):
    listed = set(loader.execute(
        "SELECT foreign_table_schema, foreign_table_name FROM information_schema.foreign_tables"
    ).fetchall())
    assert EXPECTED_FOREIGN_TABLES <= listed
    contracts = {f"src_clerk.{t}": c for t, c in foreign_tables.CLERK_COLUMNS.items()}
    contracts["src_prometheus.metrics"] = foreign_tables.PROMETHEUS_COLUMNS
    for table, columns in contracts.items():
        schema, name = table.split(".")
        actual = loader.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position", (schema, name),
        ).fetchall()
        assert actual == [(n, {"float8": "double precision"}.get(t, t)) for n, t in columns], table


def test_loader_reads_the_recent_prometheus_window(loader):
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    names, rows, oldest, newest, off_grid = loader.execute(
        "SELECT array_agg(DISTINCT metric_name ORDER BY metric_name), count(*), min(metric_time), max(metric_time),"
        " count(*) FILTER (WHERE metric_time %% %s <> 0) FROM src_prometheus.metrics",
        (METRICS_STEP_SECONDS,),
    ).fetchone()
    assert names == sorted(METRIC_NAMES) and rows > 0
    assert off_grid == 0, "samples must sit on the step grid"
    assert now - foreign_tables.RECENT_METRICS_SECONDS <= oldest <= newest < now
    assert newest > now - 2 * METRICS_STEP_SECONDS, "the window should reach the latest step"
    labels = loader.execute("SELECT metric_labels FROM src_prometheus.metrics LIMIT 1").fetchone()[0]
    assert {"instance_id", "organization_id"} <= set(labels) and "__name__" not in labels


def test_loader_reads_every_source(loader):
    for schema, table in sorted(EXPECTED_FOREIGN_TABLES - {("src_prometheus", "metrics")}):
        rows = loader.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()[0]
        assert rows > 0, f"{schema}.{table} is empty"


@pytest.mark.parametrize("args, problem", [
    (["--last", "60", "--start", "0"], "either --last or --start and --end"),
    (["--last", "0"], "--last must be at least 1 second"),
    ([], r"needs --start and --end \(or --last\)"),
])
def test_reader_rejects_ambiguous_prometheus_windows(args, problem):
    with pytest.raises(reader.ReaderError, match=problem) as failure:
        reader.parse_args(["--config", "unused.json", "prometheus", "--step", "60", "--metric", "up", *args])
    assert failure.value.exit_code == reader.EXIT_USAGE


# ----- an empty database ------------------------------------------------------------------------


@integration_fixture(scope="module")
def fresh(cfg: StackConfig) -> Iterator[tuple[StackConfig, str]]:
    """A new cluster with empty databases (the control plane has its schema, no rows), migrated once."""
    with scratch_warehouse("dwh-test-migrate-") as fresh_cfg:
        yield fresh_cfg, migrate_stack(fresh_cfg)


def test_migrate_on_an_empty_database_creates_everything(fresh, superuser):
    fresh_cfg, summary = fresh
    n_migrations = len(list(MIGRATIONS_DIR.glob("*.sql")))
    n_jobs = len(cron_jobs.desired_jobs(fresh_cfg.deployment()))
    tables = catalog.PRODUCT.all_tables()
    created = (f"{len(tables)} table(s) created, {sum(bool(t.partition_by) for t in tables)} partitioned, "
               f"{len(catalog_ddl.comments(catalog.PRODUCT))} comment(s) written")
    assert summary == (f"{n_migrations} new migration(s); {created}; sources rebuilt; "
                       f"pg_cron: {n_jobs} scheduled, 0 updated, 0 unscheduled")
    with Postgres(fresh_cfg).connect(WAREHOUSE_DB) as conn:
        created = inventory(conn)
        listed = set(conn.execute(
            "SELECT foreign_table_schema, foreign_table_name FROM information_schema.foreign_tables"
        ).fetchall())
        assert EXPECTED_FOREIGN_TABLES <= listed
        for spec in catalog.CATALOG:
            routine = f"{spec.routine}({spec.routine_arguments})"
            assert conn.execute("SELECT has_function_privilege(%s, %s, 'EXECUTE')", (LOADER_ROLE, routine)).fetchone()[0]
    # The same objects as the long-lived session stack, which was migrated the same way.
    assert created == inventory(superuser)


def test_migrate_on_the_fresh_database_is_then_a_no_op(fresh):
    fresh_cfg, _ = fresh
    with Postgres(fresh_cfg).connect(WAREHOUSE_DB) as conn:
        before = identities(conn)
        assert migrate_stack(fresh_cfg) == NO_OP
        assert identities(conn) == before


# ----- a warehouse migrated before the catalog created its tables ------------------------------------


# Stored tables a migration drops so that `dwh migrate` creates them again from the catalog (a new key).
REBUILT_BY_MIGRATIONS = {"mart.instance_state_daily_days": "0007.dashboard_filters"}
# Unpartitioned tables the catalog gained after the legacy migrations: migrate creates them there too.
NEW_SINCE_LEGACY = ("dwh.reconciliation",)


@integration_fixture(scope="module")
def legacy(cfg: StackConfig) -> Iterator[tuple[StackConfig, list[str], str]]:
    """A new cluster migrated the old way (0001-0009, 0020), then by this version's migrate."""
    with scratch_warehouse("dwh-test-legacy-") as legacy_cfg:
        applied = apply_legacy_migrations(legacy_cfg)
        yield legacy_cfg, applied, migrate_stack(legacy_cfg)


def test_a_warehouse_migrated_before_the_catalog_migrates_forward_to_the_same_objects(legacy, superuser):
    legacy_cfg, applied, summary = legacy
    assert applied == [p.stem for p in sorted(LEGACY_MIGRATIONS.glob("*.sql"))]
    new = [p.stem for p in sorted(MIGRATIONS_DIR.glob("*.sql")) if p.stem not in applied]
    # Its tables stay (none partitioned again) but those a migration drops for the catalog to
    # create anew; the catalog's newer tables are created; only comments the catalog words anew change.
    rebuilt = len(REBUILT_BY_MIGRATIONS)
    created = rebuilt + len(NEW_SINCE_LEGACY)
    assert summary.startswith(f"{len(new)} new migration(s); {created} table(s) created, {rebuilt} partitioned, ")
    with Postgres(legacy_cfg).connect(WAREHOUSE_DB) as conn:
        assert inventory(conn) == inventory(superuser), "the same objects as a warehouse built by this version"
        comments = {key: catalog_ddl.database_comment(conn, relation, column)
                    for key in catalog_ddl.comments(catalog.PRODUCT) for _, relation, column in [key]}
        assert comments == catalog_ddl.comments(catalog.PRODUCT)
        before = identities(conn)
        assert migrate_stack(legacy_cfg) == NO_OP
        assert identities(conn) == before
