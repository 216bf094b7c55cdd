"""What `dwh migrate` plans, from the catalog, the configuration and the server's facts (no server).

The bootstrap plan is built from ``ServerFacts`` (what ``bootstrap.inspect`` reads from a
server); here the facts are written down, so every branch is checked without a server.
The integration tests (test_deploy.py) run the same plans against real clusters.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from psycopg import sql

from dwh_assets.warehouse import bootstrap, catalog, cron_jobs
from dwh_assets.warehouse.bootstrap import ServerFacts
from dwh_assets.warehouse.deployment import DeploymentError
from dwh_assets_tests.deployments import offline_deployment

FACTS = ServerFacts(
    version=150018, admin="postgres", superuser=True, createrole=True, cron_loaded=True, cron_database="warehouse",
    available=frozenset({"pg_partman", "pg_cron", "postgres_fdw", "file_fdw", "pgcrypto", "plpgsql"}),
    roles=frozenset({"postgres"}),
)


def fake_verifier(user: str, password: str) -> str:
    return f"SCRAM-SHA-256$4096:verifier-of-{user}"


def statements(plan: bootstrap.BootstrapPlan) -> list[str]:
    return [s.sql.as_string(None) for s in plan.warehouse + plan.cron]


@pytest.fixture()
def cfg(tmp_path, monkeypatch):
    for purpose in ("loader", "reader"):
        monkeypatch.setenv(f"DWH_WAREHOUSE__{purpose.upper()}__PASSWORD", f"{purpose}-password-value")
    return offline_deployment(tmp_path)


# ----- pg_cron jobs ---------------------------------------------------------------------------


def test_every_table_and_mart_has_a_loader_job_calling_its_routine(cfg):
    jobs = {(job.name, job.runner): job for job in cron_jobs.desired_jobs(cfg)}
    for spec in catalog.CATALOG:
        job = jobs[(spec.cron_job_name, "loader")]
        timeout = f"SET statement_timeout = '{int(spec.timeout.total_seconds())}s'; "
        assert job.schedule == spec.schedule
        if spec.arrival is not None:  # the fact's routine for its window and the days that received late rows
            assert job.command.startswith(f"{timeout}SELECT {catalog.ARRIVALS_ROUTINE}('{spec.name}', ")
        else:
            assert job.command.startswith(f"{timeout}SELECT {spec.routine}(")
        if spec.kind is catalog.Kind.FACT:
            assert f"interval '{spec.lookback_days} days'" in job.command
    for mart in catalog.MARTS:
        job = jobs[(mart.cron_job_name, "loader")]
        assert job.command == (f"SET statement_timeout = '{int(mart.timeout.total_seconds())}s'; "
                               f"SELECT dwh.refresh_pending_mart('{mart.name}')") and job.schedule == mart.schedule
    reconciliation = catalog.PRODUCT.reconciliation
    assert jobs[(reconciliation.cron_job_name, "loader")].command == f"SELECT count(*) FROM {reconciliation.routine}()"
    assert jobs[(catalog.PARTMAN_MAINTENANCE_JOB, "owner")].command == "CALL partman.run_maintenance_proc()"
    # Each role purges its own run history (row-level security scopes the DELETE).
    assert {runner for name, runner in jobs if name == catalog.PURGE_CRON_HISTORY_JOB} == {"owner", "loader"}
    assert all(name.startswith(catalog.CRON_JOB_PREFIX) for name, _ in jobs)
    assert len(jobs) == len(cron_jobs.desired_jobs(cfg)), "names are unique per role"


def test_schedules_and_history_come_from_the_configuration(tmp_path):
    cfg = offline_deployment(tmp_path, schedules={"users": "*/5 * * * *", "purge_cron_history": "0 1 * * *",
                                                  "org_daily_usage": "*/30 * * * *"},
                             refresh={"cron_history_days": 3})
    jobs = {(job.name, job.runner): job for job in cron_jobs.desired_jobs(cfg)}
    assert jobs[("dwh:refresh_users", "loader")].schedule == "*/5 * * * *"
    assert jobs[("dwh:refresh_organizations", "loader")].schedule == catalog.get("organizations").schedule
    assert jobs[("dwh:refresh_mart_org_daily_usage", "loader")].schedule == "*/30 * * * *"
    purge = jobs[(catalog.PURGE_CRON_HISTORY_JOB, "owner")]
    assert purge.schedule == "0 1 * * *" and "interval '3 days'" in purge.command


def test_a_jobs_timeout_comes_from_the_configuration(tmp_path, monkeypatch):
    """[timeouts] (or DWH_TIMEOUTS__<JOB>) bound that job's runs; the others keep the catalog's."""
    monkeypatch.setenv("DWH_TIMEOUTS__INSTANCE_STATE", "45")
    cfg = offline_deployment(tmp_path, timeouts={"org_daily_usage": 90})
    commands = {job.name: job.command for job in cron_jobs.desired_jobs(cfg) if job.runner == "loader"}
    assert commands["dwh:refresh_instance_state"].startswith("SET statement_timeout = '45s'; SELECT dwh.refresh_with_arrivals('instance_state', ")
    assert commands["dwh:refresh_mart_org_daily_usage"] == (
        "SET statement_timeout = '90s'; SELECT dwh.refresh_pending_mart('org_daily_usage')")
    default = int(catalog.get("events").timeout.total_seconds())
    assert commands["dwh:refresh_events"].startswith(f"SET statement_timeout = '{default}s'; ")


@pytest.mark.parametrize("timeouts, problem", [
    ({"partman_maintenance": 60}, "no refresh job named partman_maintenance; known: daily_signups, events"),
    ({"events": 0}, "a timeout is at least one second"),
])
def test_an_unknown_or_empty_timeout_is_refused(tmp_path, timeouts, problem):
    with pytest.raises(DeploymentError, match=re.escape(problem)):
        offline_deployment(tmp_path, timeouts=timeouts)


# ----- the bootstrap plan --------------------------------------------------------------------


def test_a_fresh_server_gets_roles_extensions_and_grants(cfg):
    plan = bootstrap.plan_bootstrap(cfg, FACTS, fake_verifier)
    assert plan.problems == []
    text = statements(plan)
    assert 'CREATE ROLE "dwh_loader" LOGIN PASSWORD \'SCRAM-SHA-256$4096:verifier-of-dwh_loader\'' in text
    assert not any("password-value" in s for s in text), "the password itself never reaches a statement"
    for extension in ("pg_partman", "postgres_fdw", "file_fdw", "pg_cron", "pgcrypto"):
        assert any(f'CREATE EXTENSION IF NOT EXISTS "{extension}"' in s for s in text), extension
    # pg_partman in its own schema, in the same statement: the check cannot pass without it.
    assert any('CREATE SCHEMA IF NOT EXISTS "partman"' in s and 'CREATE EXTENSION IF NOT EXISTS "pg_partman" SCHEMA "partman"' in s
               for s in text)
    assert 'GRANT pg_execute_server_program TO "dwh_owner"' in text
    assert plan.cron_db == "warehouse" and not any("schedule_in_database" in s for s in text)


def test_existing_roles_are_left_alone(cfg):
    facts = dataclasses.replace(FACTS, roles=FACTS.roles | {"dwh_owner", "dwh_loader", "dwh_reader", "dwh_personal_reader"})
    plan = bootstrap.plan_bootstrap(cfg, facts, fake_verifier)
    # Only the personal reader's membership, verified (skipped when held): the prerequisites script creates it bare.
    assert [(s.what, s.verify is not None) for s in plan.warehouse if s.role] == [
        ("grant dwh_reader to dwh_personal_reader", True)]


def test_a_missing_role_without_a_password_is_a_problem_naming_where_to_put_it(tmp_path):
    plan = bootstrap.plan_bootstrap(offline_deployment(tmp_path), FACTS, fake_verifier)
    assert any("role dwh_loader does not exist and no password is configured" in p
               and "DWH_WAREHOUSE__LOADER__PASSWORD" in p for p in plan.problems)


def test_custom_login_names_join_the_privilege_roles(tmp_path, monkeypatch):
    monkeypatch.setenv("DWH_WAREHOUSE__LOADER__PASSWORD", "x" * 20)
    monkeypatch.setenv("DWH_WAREHOUSE__READER__PASSWORD", "y" * 20)
    cfg = offline_deployment(tmp_path, warehouse={"owner": {"user": "acme_etl_owner"}, "loader": {"user": "acme_etl"},
                                                  "reader": {"user": "acme_bi"}})
    text = statements(bootstrap.plan_bootstrap(cfg, FACTS, fake_verifier))
    for group, login in (("dwh_owner", "acme_etl_owner"), ("dwh_loader", "acme_etl"), ("dwh_reader", "acme_bi")):
        assert f'CREATE ROLE "{group}" NOLOGIN' in text
        assert any(s.startswith(f'CREATE ROLE "{login}" LOGIN PASSWORD') for s in text)
        assert f'GRANT "{group}" TO "{login}"' in text
    assert 'ALTER ROLE "acme_etl" IN DATABASE "warehouse" SET search_path = "dwh", "mart", "src_control_plane", ' \
           '"src_clerk", "src_prometheus", "public"' in text
    assert 'ALTER ROLE "acme_etl" IN DATABASE "warehouse" SET jit = off' in text
    assert 'ALTER ROLE "acme_bi" IN DATABASE "warehouse" SET jit = off' in text


def test_pg_cron_not_loaded_is_reported_with_what_to_do(cfg):
    plan = bootstrap.plan_bootstrap(cfg, dataclasses.replace(FACTS, cron_loaded=False, cron_database=None), fake_verifier)
    assert any(p.startswith("pg_cron is not loaded by the server: add pg_cron to shared_preload_libraries")
               for p in plan.problems)


def test_an_extension_the_server_lacks_names_its_package(cfg):
    plan = bootstrap.plan_bootstrap(cfg, dataclasses.replace(FACTS, available=FACTS.available - {"pg_partman"}),
                                    fake_verifier)
    assert any("extension pg_partman is not available on the server: install the package postgresql-15-partman" in p
               for p in plan.problems)


def test_what_the_admin_would_need_is_said_per_statement(cfg):
    plan = bootstrap.plan_bootstrap(cfg, FACTS, fake_verifier)
    needs = {s.what: s.needs for s in plan.warehouse + plan.cron}
    assert needs["create extension pg_cron (if missing)"] == (
        "the admin role cannot create extension pg_cron: ask for it in shared_preload_libraries and run "
        "CREATE EXTENSION pg_cron as a superuser in database warehouse")
    reader_grant = needs["grant pg_execute_server_program to dwh_owner (the reader backend)"]
    assert reader_grant.startswith("the reader backend needs a server that lets the owner run programs "
                                   "(pg_execute_server_program, self-hosted)")
    assert 'clerk.backend, prometheus.backend = "relay"' in reader_grant and '"tembo"' in reader_grant


def test_without_a_reader_backend_no_program_is_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DWH_CLERK__BACKEND", "tembo")
    monkeypatch.setenv("DWH_PROMETHEUS__BACKEND", "tembo")
    monkeypatch.setenv("DWH_CLERK__SECRET_KEY", "sk_live_" + "k" * 20)
    cfg = offline_deployment(tmp_path)
    text = statements(bootstrap.plan_bootstrap(cfg, dataclasses.replace(FACTS, roles=FACTS.roles | {
        "dwh_owner", "dwh_loader", "dwh_reader"}), fake_verifier))
    assert not any("pg_execute_server_program" in s or "file_fdw" in s for s in text)
    assert any("clerk_fdw" in s for s in text) and any("prometheus_fdw" in s for s in text)


def test_pg_cron_in_another_database_gets_its_grants_there(cfg):
    plan = bootstrap.plan_bootstrap(cfg, dataclasses.replace(FACTS, cron_database="postgres"), fake_verifier)
    cron = [s.sql.as_string(None) for s in plan.cron]
    assert plan.cron_db == "postgres"
    assert 'GRANT CONNECT ON DATABASE "postgres" TO "dwh_owner", "dwh_loader"' in cron
    assert any("cron.schedule_in_database" in s for s in cron)
    assert [line for line in plan.describe() if "(cron.database_name)" in line]


def test_refusals_are_listed_as_one_error_that_says_nothing_changed():
    error = bootstrap.refuse(["the admin role cannot create roles", "extension pg_cron is not available"])
    assert str(error).startswith("nothing was changed; the warehouse needs:\n  - the admin role cannot create roles")


def test_statements_are_composed_sql_not_strings(cfg):
    plan = bootstrap.plan_bootstrap(cfg, FACTS, fake_verifier)
    assert all(isinstance(s.sql, sql.Composable) for s in plan.warehouse + plan.cron)
