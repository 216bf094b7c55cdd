"""The managed deployment's plan without a server: the script, the contract, secrets, relay and pg_cron DDL.

test_managed.py runs all of it against real clusters; here each decision is checked from
written-down facts and rows, so a change that breaks one says which.
"""

from __future__ import annotations

import dataclasses

import pytest

from dwh_assets.warehouse import bootstrap, catalog, cron_jobs, cron_probe
from dwh_assets.warehouse.connect import check_passfile, passfile_password, shell_env
from dwh_assets.warehouse.deployment import DeploymentError, read_secret_file
from dwh_assets.warehouse.sources import contract, foreign_tables
from dwh_assets_tests.deployments import offline_deployment
from dwh_assets_tests.test_migrate_plan import FACTS, fake_verifier

MANAGED_FACTS = dataclasses.replace(
    FACTS, admin="acme_admin", superuser=False, cron_database="postgres",
    available=FACTS.available | {"dblink"}, roles=frozenset({"acme_admin"}))


@pytest.fixture()
def relay_cfg(tmp_path, monkeypatch):
    for purpose in ("loader", "reader"):
        monkeypatch.setenv(f"DWH_WAREHOUSE__{purpose.upper()}__PASSWORD", f"{purpose}-password-value")
    monkeypatch.setenv("DWH_RELAY__PASSWORD", "relay-password-value")
    return offline_deployment(tmp_path, clerk={"backend": "relay"}, prometheus={"backend": "relay"},
                              control_plane={"via_relay": True})


# ----- the prerequisite script -------------------------------------------------------------------------


def test_the_script_groups_statements_by_database_warehouse_first_and_creates_the_groups():
    script = bootstrap.Prerequisites(
        warehouse_db="analytics", server="db:5432", admin="acme_admin", missing_groups=("dwh_owner",),
        steps=[("postgres", "pg_cron needs it", 'CREATE EXTENSION IF NOT EXISTS "pg_cron"'),
               ("analytics", "partman needs it", 'CREATE EXTENSION IF NOT EXISTS "pg_partman" SCHEMA "partman";')]).script()
    lines = script.splitlines()
    assert lines.index("\\connect 'analytics'") < lines.index("\\connect 'postgres'")
    assert "CREATE ROLE dwh_owner NOLOGIN" in lines[lines.index("\\connect 'analytics'") + 2]
    assert "-- partman needs it" in lines and 'CREATE EXTENSION IF NOT EXISTS "pg_partman" SCHEMA "partman";' in lines
    assert 'CREATE EXTENSION IF NOT EXISTS "pg_cron";' in lines, "every statement ends with one semicolon"


def test_an_empty_script_says_there_is_nothing_to_do():
    assert "-- nothing: the admin role may do everything" in bootstrap.Prerequisites(warehouse_db="w").script()


def test_a_database_name_is_quoted_for_psql():
    assert bootstrap.quote_psql("it's") == "'it''s'"


def test_the_relay_needs_dblink_and_no_reader_privileges(relay_cfg):
    plan = bootstrap.plan_bootstrap(relay_cfg, MANAGED_FACTS, fake_verifier)
    what = [s.what for s in plan.warehouse + plan.cron]
    assert "create extension dblink (if missing)" in what and "create extension postgres_fdw (if missing)" in what
    assert not [w for w in what if "file_fdw" in w or "pg_execute_server_program" in w]
    partman = next(s for s in plan.warehouse if s.provides == "pg_partman")
    assert 'SCHEMA "partman"' in partman.sql.as_string(None) and "AUTHORIZATION" in partman.sql.as_string(None)
    # Grants on what an extension owns are the superuser's with it, when creating it was refused.
    assert {s.after for s in plan.warehouse + plan.cron if s.after} == {"pg_partman", "postgres_fdw", "pg_cron"}
    assert all(s.verify is not None for s in plan.cron)


def test_a_non_superuser_admin_joins_the_owner_and_the_loader_login(relay_cfg):
    plan = bootstrap.plan_bootstrap(relay_cfg, MANAGED_FACTS, fake_verifier)
    assert {"grant dwh_owner to acme_admin", "grant dwh_loader to acme_admin"} <= {s.what for s in plan.warehouse}


def test_a_group_role_the_script_created_without_login_gets_its_login(relay_cfg):
    facts = dataclasses.replace(MANAGED_FACTS, roles=frozenset({"acme_admin", "dwh_loader"}),
                                nologin_roles=frozenset({"dwh_loader"}))
    plan = bootstrap.plan_bootstrap(relay_cfg, facts, fake_verifier)
    login = next(s for s in plan.warehouse if s.what == "let dwh_loader log in")
    assert login.sql.as_string(None).startswith('ALTER ROLE "dwh_loader" LOGIN PASSWORD')
    assert "PASSWORD" not in login.script.as_string(None).split("--")[0], "a script never carries a verifier"


def test_the_reader_refusal_points_at_the_relay(tmp_path):
    assert 'set clerk.backend, prometheus.backend = "relay"' in bootstrap.reader_backend_refused(offline_deployment(tmp_path))


def test_a_refusal_ends_with_the_script_command():
    prerequisites = bootstrap.Prerequisites(warehouse_db="w", steps=[("w", "needs x", "SELECT 1")])
    text = str(bootstrap.refuse(["a problem"], prerequisites))
    assert text.splitlines()[:3] == ["nothing was changed; the warehouse needs:", "  - a problem", "  - needs x"]
    assert "`dwh migrate --prerequisites` prints all of this as one SQL script" in text


# ----- the contract ------------------------------------------------------------------------------------


def _columns(contract_: dict[str, dict[str, str]]) -> list[tuple[str, str, str, str]]:
    return [(*relation.split("."), column, data_type)
            for relation, columns in contract_.items() for column, data_type in columns.items()]


def control_plane(tmp_path) -> contract.PostgresSource:
    return next(s for s in contract.sources(offline_deployment(tmp_path)) if s.what == "the control plane")


def test_the_full_contract_has_no_problem_and_extra_columns_are_fine(tmp_path):
    source = control_plane(tmp_path)
    rows = _columns(catalog.CONTROL_PLANE_CONTRACT) + [("public", "instances", "notes", "text"), ("public", "x", "y", "text")]
    assert contract.contract_problems(source, rows) == []


def test_each_missing_or_mistyped_column_and_table_is_named(tmp_path):
    source = control_plane(tmp_path)
    rows = [r for r in _columns(catalog.CONTROL_PLANE_CONTRACT)
            if (r[1], r[2]) != ("instances", "region") and r[1] != "a_instance_events"]
    rows = [(s, t, c, "text" if (t, c) == ("instance_state_history", "changed_at") else d) for s, t, c, d in rows]
    problems = contract.contract_problems(source, rows)
    assert problems == [
        "the control plane: column public.instances.region (text) is missing: the control plane must hold it for "
        "the warehouse (docs/source-contract.md), readable by cp_reader",
        "the control plane: column public.instance_state_history.changed_at is text, the warehouse reads it as "
        "timestamp with time zone: the control plane must hold it for the warehouse (docs/source-contract.md), "
        "readable by cp_reader",
        "the control plane: table pgmq.a_instance_events is missing or not readable by cp_reader: the control plane "
        "must hold it for the warehouse (docs/source-contract.md), readable by cp_reader",
    ]


def test_compatible_types_are_accepted(tmp_path):
    source = control_plane(tmp_path)
    rows = [(s, t, c, {"text": "character varying", "integer": "smallint"}.get(d, d))
            for s, t, c, d in _columns(catalog.CONTROL_PLANE_CONTRACT)]
    assert contract.contract_problems(source, rows) == []


def test_through_the_relay_the_control_plane_is_read_from_the_relay(relay_cfg):
    sources = {s.what: s for s in contract.sources(relay_cfg)}
    assert set(sources) == {"the relay", "the control plane (through the relay)"}
    assert sources["the control plane (through the relay)"].columns_table == contract.RELAY_CONTROL_PLANE_COLUMNS
    assert sources["the relay"].contract["src_prometheus.metrics"]["metric_value"] == "double precision"
    assert contract.source_password(relay_cfg, sources["the relay"]) == "relay-password-value"


def test_an_unreachable_source_names_the_password_setting(tmp_path):
    line = contract.unreachable(control_plane(tmp_path), 'password authentication failed for user "cp_reader"')
    assert line.endswith("check control_plane.password_file (or DWH_CONTROL_PLANE__PASSWORD)")
    assert "\n" not in line


# ----- secrets and the passfile --------------------------------------------------------------------------


def test_a_group_readable_secret_file_is_refused(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o640)
    with pytest.raises(DeploymentError, match=r"is readable by its group or others \(mode 0640\): run `chmod 600 "):
        read_secret_file(secret, "a password")
    secret.chmod(0o600)
    assert read_secret_file(secret, "a password") == "s3cret"


def test_the_passfile_is_read_like_libpq(tmp_path):
    passfile = tmp_path / "pgpass"
    passfile.write_text("# comment\ndb:5432:other:u:no\ndb:*:w:u:pa\\:ss\\\\word\n*:*:*:u:fallback\n")
    assert passfile_password(passfile, "db", 5432, "w", "u") == "pa:ss\\word"
    assert passfile_password(passfile, "db", 5432, "x", "u") == "fallback"
    assert passfile_password(passfile, "db", 5432, "w", "v") is None


def test_a_missing_or_incomplete_passfile_is_named(tmp_path):
    cfg = offline_deployment(tmp_path, warehouse={"passfile": str(tmp_path / "pgpass")})
    assert "does not exist: the DSNs of `dwh env` name it" in check_passfile(cfg)[0]
    (tmp_path / "pgpass").write_text(f"127.0.0.1:{cfg.warehouse.port}:warehouse:dwh_loader:pw\n")
    (tmp_path / "pgpass").chmod(0o600)
    assert check_passfile(cfg) == [f"the passfile {tmp_path / 'pgpass'} has no line for dwh_reader (the reader login): "
                                   f"add 127.0.0.1:{cfg.warehouse.port}:warehouse:dwh_reader:<password>"]


def test_dwh_env_puts_the_virtualenv_first_and_names_dagster(tmp_path):
    cfg = offline_deployment(tmp_path, dagster={"home": str(tmp_path / "dh"), "database": "dg"})
    values = shell_env(cfg, "/opt/dwh/bin", "/usr/bin:/opt/dwh/bin:/bin")
    assert values["PATH"] == "/opt/dwh/bin:/usr/bin:/bin"
    assert values["DAGSTER_HOME"] == str(tmp_path / "dh")
    assert values["DWH_DAGSTER_PG_URL"] == f"postgresql+psycopg2://dagster@127.0.0.1:{cfg.warehouse.port}/dg?sslmode=prefer"


# ----- the relay's and pg_cron's DDL, the jobs, the probe ---------------------------------------------------


def test_the_warehouse_imports_every_source_from_the_relay(relay_cfg):
    text = [s.as_string(None) for s in foreign_tables.source_ddl(relay_cfg).statements]
    imports = [t for t in text if t.startswith("IMPORT")]
    assert imports == [
        'IMPORT FOREIGN SCHEMA "src_clerk" LIMIT TO ("users", "organizations", "organization_memberships") '
        'FROM SERVER "dwh_relay" INTO "src_clerk"',
        'IMPORT FOREIGN SCHEMA "src_prometheus" LIMIT TO ("metrics") FROM SERVER "dwh_relay" INTO "src_prometheus"',
        'IMPORT FOREIGN SCHEMA "src_control_plane" FROM SERVER "dwh_relay" INTO "src_control_plane"',
    ]
    assert not [t for t in text if "file_fdw" in t or "CREATE SERVER control_plane" in t]


def test_pg_cron_elsewhere_gets_its_tables_as_the_loader(tmp_path):
    cfg = offline_deployment(tmp_path)
    local = foreign_tables.cron_history_ddl(cfg, cfg.warehouse.database, {})
    assert [s.as_string(None) for s in local.statements] == ['DROP SERVER IF EXISTS "dwh_cron_database" CASCADE']
    text = [s.as_string(None) for s in foreign_tables.cron_history_ddl(
        cfg, "postgres", {"dwh_owner": "o", "dwh_loader": "l"}).statements]
    assert 'IMPORT FOREIGN SCHEMA cron LIMIT TO ("job", "job_run_details") FROM SERVER "dwh_cron_database" INTO cron' in text
    assert any("FOR \"dwh_loader\" SERVER \"dwh_cron_database\" OPTIONS (user 'dwh_loader'" in t for t in text)


def test_purges_run_in_the_cron_database_and_everything_else_in_the_warehouse(tmp_path):
    cfg = offline_deployment(tmp_path)
    for job in cron_jobs.desired_jobs(cfg):
        expected = "postgres" if job.name == catalog.PURGE_CRON_HISTORY_JOB else cfg.warehouse.database
        assert job.database(cfg.warehouse.database, "postgres") == expected, job.name


def test_one_probe_per_role_and_database_with_a_fingerprint_of_its_jobs(tmp_path):
    cfg = offline_deployment(tmp_path)
    probes = cron_probe.probes(cfg, "postgres")
    assert {(p.role, p.database) for p in probes} == {("dwh_owner", "warehouse"), ("dwh_owner", "postgres"),
                                                      ("dwh_loader", "warehouse"), ("dwh_loader", "postgres")}
    changed = offline_deployment(tmp_path, schedules={"users": "* * * * *"})
    after = {(p.role, p.database): p.fingerprint for p in cron_probe.probes(changed, "postgres")}
    before = {(p.role, p.database): p.fingerprint for p in probes}
    assert {k for k in before if before[k] != after[k]} == {("dwh_loader", "warehouse")}


def test_a_failed_probe_names_the_fix():
    probe = cron_probe.Probe("loader", "acme_loader", "analytics", "f")
    text = cron_probe.explain(cron_probe.Outcome(probe, False, "connection failed"))
    assert text.startswith("pg_cron cannot run jobs as acme_loader in database analytics (connection failed)")
    assert "~/.pgpass" in text and "cron.use_background_workers = on" in text
    silent = cron_probe.explain(cron_probe.Outcome(probe, False, "no run finished within 180 s"))
    assert "max_worker_processes" in silent
