"""Who may do what in the warehouse: reader reads, loader refreshes, only the owner changes.

Every check runs as the role itself over TCP with its own password, as users would.
Secrets (catalog options, logs, command lines) are checked in test_security.py.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors, sql

from dwh_assets.warehouse import catalog, cron_jobs
from dwh_assets.local.config import LOADER_ROLE, READER_ROLE, WAREHOUSE_DB

LOCAL_COPIES = [spec.local_table for spec in catalog.CATALOG] + [
    spec.snapshot_table for spec in catalog.CATALOG if spec.snapshot_table
] + ["dwh.metric_series", "dwh.metric_samples", "dwh.refresh_log"]
FOREIGN_TABLES = ["src_control_plane.instances", "src_control_plane.a_instance_events", "src_clerk.users",
                  "src_clerk.organization_memberships", "src_prometheus.metrics"]


def relation(name: str) -> sql.Composable:
    return sql.Identifier(*name.split("."))


def routine_call(spec: catalog.TableSpec) -> sql.Composable:
    if spec.kind is catalog.Kind.FACT:
        args = sql.SQL("now() - interval '1 hour', now()")
    else:
        args = sql.SQL("")
    return sql.SQL("SELECT {}({})").format(relation(spec.routine), args)


MARTS = [relation for mart in catalog.MARTS for relation in (mart.relation, mart.table)]


@pytest.fixture(scope="module", autouse=True)
def filled(cfg):
    """Every local copy and mart holds rows: each copy's pg_cron job runs once, then each mart's."""
    commands = {job.name: job.command for job in cron_jobs.desired_jobs(cfg.deployment()) if job.runner == "loader"}
    with psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True) as conn:
        for job_name in [spec.cron_job_name for spec in catalog.CATALOG] + [mart.cron_job_name for mart in catalog.MARTS]:
            conn.execute(commands[job_name])


# ----- the reader ---------------------------------------------------------------------------


@pytest.mark.parametrize("table", [*MARTS, *LOCAL_COPIES])
def test_reader_selects_marts_and_local_copies(reader_role, owner, table):
    """The reader reads every row the owner does, counted in one snapshot (pg_cron keeps refreshing)."""
    count = sql.SQL("SELECT count(*) FROM {}").format(relation(table))
    reader_role.isolation_level = owner.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    with owner.transaction(), reader_role.transaction():
        snapshot = owner.execute("SELECT pg_export_snapshot()").fetchone()[0]
        reader_role.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        read = reader_role.execute(count).fetchone()[0]
        owned = owner.execute(count).fetchone()[0]
    assert read == owned > 0, f"{table}: the reader read {read} rows, the owner sees {owned}"


@pytest.mark.parametrize("table", FOREIGN_TABLES)
def test_reader_cannot_read_sources(reader_role, table):
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied for schema"):
        reader_role.execute(sql.SQL("SELECT count(*) FROM {}").format(relation(table)))


def test_reader_can_select_nothing_but_marts_and_local_copies(owner):
    selectable = {row[0] for row in owner.execute(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND has_schema_privilege(%(role)s, n.oid, 'USAGE') AND has_any_column_privilege(%(role)s, c.oid, 'SELECT')",
        {"role": READER_ROLE}).fetchall()}
    assert set(MARTS) | set(LOCAL_COPIES) <= selectable
    outside = {name for name in selectable if name.split(".")[0] not in ("dwh", "mart")} | ({"dwh.settings"} & selectable)
    assert outside == set(), "the reader can select more than marts and local copies"


def test_reader_sees_no_user_mapping_options(reader_role):
    options = reader_role.execute("SELECT srvname, usename, umoptions FROM pg_user_mappings").fetchall()
    assert options, "the control plane's user mappings should be listed"
    assert all(umoptions is None for _, _, umoptions in options), options


@pytest.mark.parametrize("query, denied", [
    ("SELECT * FROM dwh.settings", "permission denied for table settings"),
    ("SELECT * FROM cron.job", "permission denied for schema cron"),
    ("SELECT * FROM cron.job_run_details", "permission denied for schema cron"),
    ("SELECT * FROM partman.part_config", "permission denied for schema partman"),
])
def test_reader_cannot_read_configuration(reader_role, query, denied):
    with pytest.raises(errors.InsufficientPrivilege, match=denied):
        reader_role.execute(query)


@pytest.mark.parametrize("spec", catalog.CATALOG, ids=lambda s: s.name)
def test_reader_cannot_run_refreshes(reader_role, spec):
    with pytest.raises(errors.InsufficientPrivilege, match=f"permission denied for function refresh_{spec.name}"):
        reader_role.execute(routine_call(spec))


def test_reader_cannot_refresh_marts_or_write(reader_role):
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied for function refresh_pending_mart"):
        reader_role.execute("SELECT dwh.refresh_pending_mart('daily_signups')")
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied for function refresh_mart_daily_signups"):
        reader_role.execute("SELECT dwh.refresh_mart_daily_signups(date_trunc('day', now()), date_trunc('day', now()) + interval '1 day')")
    with pytest.raises(errors.InsufficientPrivilege):
        reader_role.execute("DELETE FROM dwh.users")
    with pytest.raises(errors.InsufficientPrivilege):
        reader_role.execute("DELETE FROM mart.daily_signups_days")


def executable_routines(conn: psycopg.Connection, role: str) -> set[str]:
    return {row[0] for row in conn.execute(
        "SELECT proname::text FROM pg_proc WHERE pronamespace = 'dwh'::regnamespace"
        " AND has_function_privilege(%s, oid, 'EXECUTE')", (role,),
    ).fetchall()}


def test_only_refresh_routines_are_executable_and_only_by_the_loader(owner):
    # The exceptions for the reader, all for the health dashboard: pg_cron's runs of the dwh: jobs
    # (a fixed projection, no arguments; the loader's refreshes and the owner's maintenance) through
    # mart.cron_job_runs, and the immutable parsers of a cron schedule that mart.refresh_freshness
    # calls (a view's functions run with its reader's privileges).
    assert executable_routines(owner, "dwh_reader") == {"cron_job_runs", "cron_owner_job_runs",
                                                        "schedule_interval", "cron_field_values"}
    loader_may = executable_routines(owner, LOADER_ROLE)
    assert {f"refresh_{spec.name}" for spec in catalog.CATALOG} | {"refresh_pending_mart"} <= loader_may
    assert {f"refresh_mart_{mart.name}" for mart in catalog.MARTS} <= loader_may
    # Helpers (ensure_partitions, merge_dimension, reader_command, raise_source_failure, ...) run only
    # inside the routines; dwh.setting and dwh.is_forgotten are granted for Dagster's checks (settings
    # hold no secrets; the latter answers for one id it is given); cron_job_runs is the loader's own
    # (below); cron_owner_job_runs, for reading mart.cron_job_runs; reconcile_facts (and reconcile,
    # one fact) is the daily reconciliation the loader's pg_cron job runs.
    assert {name for name in loader_may if not name.startswith("refresh_")} <= {
        "setting", "is_forgotten", "cron_job_runs", "cron_owner_job_runs", "schedule_interval",
        "cron_field_values", "reconcile", "reconcile_facts"}, loader_may


# ----- the loader ---------------------------------------------------------------------------


def test_loader_runs_refreshes_but_cannot_write_tables_directly(loader):
    assert loader.execute("SELECT (dwh.refresh_instances()).table_name").fetchone()[0] == "instances"
    for statement, denied in [
        ("DELETE FROM dwh.instances", "permission denied for table instances"),
        ("INSERT INTO dwh.refresh_log (table_name, rows_inserted, rows_updated, rows_deleted, started_at, finished_at)"
         " VALUES ('x', 0, 0, 0, now(), now())", "permission denied for table refresh_log"),
        ("UPDATE dwh.settings SET value = 'x'", "permission denied for table settings"),
    ]:
        with pytest.raises(errors.InsufficientPrivilege, match=denied):
            loader.execute(statement)


@pytest.mark.parametrize("statement, denied", [
    ("CREATE TABLE dwh.loader_table (a int)", "permission denied for schema dwh"),
    ("CREATE TABLE mart.loader_table (a int)", "permission denied for schema mart"),
    ("CREATE TABLE public.loader_table (a int)", "permission denied for schema public"),
    ("CREATE SCHEMA loader_schema", "permission denied for database warehouse"),
    ("CREATE VIEW mart.loader_view AS SELECT 1", "permission denied for schema mart"),
    ("CREATE FUNCTION dwh.loader_function() RETURNS int LANGUAGE sql AS 'SELECT 1'", "permission denied for schema dwh"),
    ("CREATE INDEX ON dwh.users (email)", "must be owner of table users"),
    ("ALTER TABLE dwh.users ADD COLUMN loader_column int", "must be owner of table users"),
    ("ALTER VIEW mart.daily_signups RENAME TO x", "must be owner of view daily_signups"),
    ("ALTER FUNCTION dwh.refresh_users(date) SECURITY INVOKER", "must be owner of function dwh.refresh_users"),
    ("DROP TABLE dwh.events", "must be owner of table events"),
    ("ALTER SERVER control_plane OPTIONS (SET port '1')", "must be owner of foreign server control_plane"),
    ("CREATE FOREIGN TABLE src_clerk.x (a int) SERVER dwh_reader OPTIONS (program 'id')",
     "permission denied for schema src_clerk"),
    ("SELECT dwh.ensure_partitions('dwh.events', now(), now() + interval '1 day')",
     "permission denied for function ensure_partitions"),
])
def test_loader_cannot_change_the_schema(loader, statement, denied):
    with pytest.raises(errors.InsufficientPrivilege, match=denied):
        loader.execute(statement)


def test_loader_reads_only_its_own_cron_jobs(loader):
    users = {row[0] for row in loader.execute("SELECT DISTINCT username FROM cron.job").fetchall()}
    assert users == {"dwh_loader"}, "cron.job is row-level secured by username"


@pytest.mark.parametrize("role", [LOADER_ROLE, READER_ROLE])
def test_loader_and_reader_can_create_nothing_and_own_nothing(owner, role):
    assert not owner.execute("SELECT has_database_privilege(%s, current_database(), 'CREATE')", (role,)).fetchone()[0]
    creatable = owner.execute(
        "SELECT nspname FROM pg_namespace WHERE has_schema_privilege(%s, oid, 'CREATE')", (role,)).fetchall()
    assert creatable == []
    owned = owner.execute(
        "SELECT 'relation ' || oid::regclass FROM pg_class WHERE relowner = %(r)s::regrole"
        " UNION ALL SELECT 'routine ' || oid::regprocedure FROM pg_proc WHERE proowner = %(r)s::regrole"
        " UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspowner = %(r)s::regrole",
        {"r": role}).fetchall()
    # pg_cron shows each role only its own runs, so the function that reads the refresh jobs'
    # runs for the reader belongs to the loader (dwh migrate hands it over). The loader cannot
    # replace it: CREATE OR REPLACE needs CREATE on the schema, which it has nowhere.
    assert owned == ([("routine dwh.cron_job_runs()",)] if role == LOADER_ROLE else [])
