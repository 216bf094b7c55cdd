"""Deploying onto servers that are not the demo stack, the way a data team would.

Two plain PostgreSQL 15 clusters, started here without `dwh up` (``plain_clusters``:
initdb + pg_ctl as the server's OS user, SCRAM passwords everywhere, no trust):

- the **warehouse** cluster preloads pg_cron with ``cron.database_name = 'postgres'``, so
  every job goes through ``cron.schedule_in_database`` into the warehouse database
  ``analytics``; the admin is a ``dba`` login, and the owner, loader and reader logins have
  company names (``acme_*``) that join the project's privilege roles;
- the **control plane** cluster holds the demo's control-plane data in ``cp_prod``, readable
  by its own login ``acme_cp_ro`` with its own password.

Clerk and Prometheus are the session stack's emulator and server, given as URLs. A
configuration file names all of it (secrets in 0600 files). Then, through the real CLIs:
``dwh reader install``, ``dwh migrate``, ``dg launch --assets`` with nothing but
the environment ``dwh env --config`` prints, and every copy is compared with its source.
A second migrate changes nothing; a changed schedule changes exactly that job, which
pg_cron then runs, and the Dagster sensor reads it back from the other database.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from dwh_assets.local import control_plane
from dwh_assets.local.config import REPO_ROOT, StackConfig
from dwh_assets.local.generator import METRIC_NAMES, build_world
from dwh_assets.warehouse.connect import DAGSTER_INSTANCE_ENV
from dwh_assets.warehouse.defs import cron_targets
from dwh_assets.warehouse.defs.cron_sensor import CronRunJudge, evaluate_cron_runs
from dwh_assets.warehouse.defs.resources import WarehouseResource
from dwh_assets_tests.plain_clusters import PlainCluster, private_file
from dwh_assets_tests.tiers import integration_fixture
from dwh_assets_tests.warehouse_helpers import (
    ClerkApi,
    fact_checksum,
    instances_checksum,
    local_samples,
    primary_email,
    prometheus_samples,
)

pytestmark = pytest.mark.integration

UTC = dt.timezone.utc
WAREHOUSE_DB = "analytics"
CP_DB = "cp_prod"
LOGINS = {"admin": "dba", "owner": "acme_dwh_owner", "loader": "acme_dwh_loader", "reader": "acme_dwh_reader"}
CP_LOGIN = "acme_cp_ro"
HISTORY_DAYS = 2
NO_OP = "done: 0 new migration(s); tables unchanged; sources unchanged; pg_cron: jobs unchanged"
VENV_BIN = Path(sys.executable).parent


@dataclass
class Deployment:
    warehouse: PlainCluster
    control_plane: PlainCluster
    config: Path
    secrets: Path
    history_start: dt.date
    passwords: dict[str, str]

    def dwh(self, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "dwh"), *args, "--config", str(self.config)], cwd="/",
                              env=clean_env(), capture_output=True, text=True, timeout=timeout)

    def migrate(self, *args: str) -> subprocess.CompletedProcess:
        done = self.dwh("migrate", *args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def connect(self, role: str = "admin", dbname: str = WAREHOUSE_DB) -> psycopg.Connection:
        return self.warehouse.connect(dbname, LOGINS[role], self.passwords[role])


def clean_env(**extra: str) -> dict[str, str]:
    """No DWH_* of the session stack, no PGPASSFILE: only what a fresh shell has."""
    return {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8", **extra}


def config_text(d_secrets: Path, wh: PlainCluster, cp: PlainCluster, stack: StackConfig, start: dt.date,
                reader_dir: Path, extra: str = "") -> str:
    logins = "\n".join(
        f'[warehouse.{purpose}]\nuser = "{user}"\npassword_file = "{d_secrets / purpose}"\n'
        for purpose, user in LOGINS.items()
    )
    return f"""\
[warehouse]
host = "127.0.0.1"
port = {wh.port}
database = "{WAREHOUSE_DB}"
sslmode = "disable"
passfile = "{d_secrets / 'pgpass'}"

{logins}
[control_plane]
host = "127.0.0.1"
port = {cp.port}
database = "{CP_DB}"
sslmode = "disable"
user = "{CP_LOGIN}"
password_file = "{d_secrets / 'control_plane'}"

[clerk]
api_url = "{stack.clerk_url}"
secret_key_file = "{stack.clerk_secret_file}"

[prometheus]
url = "{stack.prometheus_url}"

[reader]
directory = "{reader_dir}"

[history]
start = {start.isoformat()}
{extra}"""


@integration_fixture(scope="module")
def deployment(cfg: StackConfig) -> Iterator[Deployment]:
    cp = PlainCluster("control-plane").init().start()
    wh = PlainCluster("warehouse", settings={
        "shared_preload_libraries": "'pg_cron'", "cron.database_name": "'postgres'",
        "cron.use_background_workers": "on", "max_worker_processes": "24",
    }).init().start()
    home = Path(tempfile.mkdtemp(prefix="dwh-deploy-", dir="/tmp"))
    home.chmod(0o755)
    d_secrets = home / "secrets"
    d_secrets.mkdir(mode=0o700)
    try:
        passwords = {purpose: f"{purpose}-{os.urandom(12).hex()}" for purpose in LOGINS}
        passwords["control_plane"] = f"cp-{os.urandom(12).hex()}"
        for name, value in passwords.items():
            private_file(d_secrets / name, value + "\n")
        # Dagster's and psql's DSNs name this passfile; it holds the three warehouse logins.
        private_file(d_secrets / "pgpass", "".join(
            f"127.0.0.1:{wh.port}:{WAREHOUSE_DB}:{LOGINS[p]}:{passwords[p]}\n127.0.0.1:{wh.port}:postgres:{LOGINS[p]}:{passwords[p]}\n"
            for p in ("owner", "loader", "reader")))

        with cp.connect() as su:
            su.execute(f"CREATE ROLE {CP_LOGIN} LOGIN PASSWORD '{passwords['control_plane']}'")
            su.execute(f"CREATE DATABASE {CP_DB}")
            su.execute(f"REVOKE ALL ON DATABASE {CP_DB} FROM PUBLIC; GRANT CONNECT ON DATABASE {CP_DB} TO {CP_LOGIN}")
        with cp.connect(CP_DB) as conn:
            control_plane.load_control_plane(conn, build_world(cfg.seed, cfg.scale, cfg.anchor_day), reader_role=CP_LOGIN)
        with wh.connect() as su:
            su.execute(f"CREATE ROLE dba SUPERUSER LOGIN PASSWORD '{passwords['admin']}'")
            su.execute(f"CREATE DATABASE {WAREHOUSE_DB}")

        start = dt.datetime.now(UTC).date() - dt.timedelta(days=HISTORY_DAYS)
        config = home / "dwh.toml"
        reader_dir = home / "reader"
        config.write_text(config_text(d_secrets, wh, cp, cfg, start, reader_dir))
        yield Deployment(wh, cp, config, d_secrets, start, passwords)
    finally:
        wh.remove()
        cp.remove()
        subprocess.run(["rm", "-rf", str(home)], check=False)


@pytest.fixture(scope="module")
def migrated(deployment: Deployment) -> subprocess.CompletedProcess:
    installed = deployment.dwh("reader", "install")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return deployment.migrate()


def dagster_env(deployment: Deployment, tmp: Path) -> dict[str, str]:
    """Exactly what `dwh env --config` prints, plus a DAGSTER_HOME: nothing of the session stack."""
    done = deployment.dwh("env")
    assert done.returncode == 0, done.stderr
    values = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in done.stdout.splitlines())
    assert set(values) == {"DWH_WAREHOUSE_DSN", "DWH_HISTORY_START", "DWH_READER_DSN", "DAGSTER_HOME",
                           "DWH_DAGSTER_PG_URL", "PGPASSFILE", "PATH", *DAGSTER_INSTANCE_ENV}
    assert "password" not in values["DWH_WAREHOUSE_DSN"] and "passfile=" in values["DWH_WAREHOUSE_DSN"]
    assert values["PATH"].split(":")[0] == str(VENV_BIN)
    # Dagster's instance: a throwaway home here (the runbook test sets up the configured one).
    (tmp / "dagster_home").mkdir(exist_ok=True)
    return clean_env(**{**values, "DAGSTER_HOME": str(tmp / "dagster_home")})


def materialize(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([str(VENV_BIN / "dg"), "launch", "-m", "dwh_assets.definitions", *args],
                          cwd="/", env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def materialized(deployment: Deployment, migrated, tmp_path_factory) -> Deployment:
    env = dagster_env(deployment, tmp_path_factory.mktemp("dagster"))
    today = dt.datetime.now(UTC).date().isoformat()
    materialize(env, "--assets", "dwh/users,dwh/organizations,dwh/organization_memberships,dwh/instances")
    materialize(env, "--assets", "dwh/events,dwh/instance_state,dwh/metrics,mart/org_daily_usage,mart/daily_signups,"
                "mart/instance_state_daily",
                "--partition-range", f"{deployment.history_start.isoformat()}...{today}")
    return deployment


# ----- migrate --------------------------------------------------------------------------------


def test_migrate_reports_what_it_did(migrated):
    out = migrated.stdout
    assert "checking what dba may do on 127.0.0.1:" in out and "(cron.database_name = postgres)" in out
    assert "bootstrap:" in out and "settings and source foreign tables: rebuilt" in out
    assert "pg_cron: schedule dwh:refresh_users (acme_dwh_loader)" in out
    assert "pg_cron: schedule dwh:partman_maintenance (acme_dwh_owner)" in out
    assert "sources rebuilt" in out.splitlines()[-1]


def test_roles_are_the_configured_logins_in_the_project_roles(deployment, migrated):
    with deployment.connect() as conn:
        members = dict(conn.execute(
            "SELECT m.rolname, r.rolname FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid "
            "JOIN pg_roles m ON m.oid = a.member WHERE m.rolname LIKE 'acme_%'").fetchall())
        owners = {r[0] for r in conn.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relnamespace = ANY("
            "SELECT oid FROM pg_namespace WHERE nspname IN ('dwh', 'mart', 'src_clerk', 'src_control_plane'))").fetchall()}
    assert members == {"acme_dwh_owner": "dwh_owner", "acme_dwh_loader": "dwh_loader", "acme_dwh_reader": "dwh_reader"}
    assert owners == {"dwh_owner"}, "objects belong to the privilege role, not to a login"
    with deployment.connect("reader") as reader:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("SELECT count(*) FROM src_control_plane.instances")


def test_jobs_live_in_the_cron_database_and_run_in_the_warehouse(deployment, migrated):
    with deployment.connect(dbname="postgres") as conn:
        jobs = conn.execute("SELECT jobname, database, username FROM cron.job ORDER BY 1, 3").fetchall()
    # Refreshes and maintenance run in the warehouse; the history purges where pg_cron's tables are.
    assert {db for name, db, _ in jobs if name != "dwh:purge_cron_history"} == {WAREHOUSE_DB}
    assert {db for name, db, _ in jobs if name == "dwh:purge_cron_history"} == {"postgres"}
    assert ("dwh:refresh_users", WAREHOUSE_DB, "acme_dwh_loader") in jobs
    assert ("dwh:partman_maintenance", WAREHOUSE_DB, "acme_dwh_owner") in jobs
    assert {user for _, _, user in jobs} == {"acme_dwh_loader", "acme_dwh_owner"}, "no job runs as a superuser"


# ----- materialised through Dagster, compared with the sources -------------------------------------


def test_fact_copies_equal_their_sources(materialized):
    d = materialized
    start = dt.datetime.combine(d.history_start, dt.time(), UTC)
    end = dt.datetime.combine(dt.datetime.now(UTC).date() + dt.timedelta(days=1), dt.time(), UTC)
    with d.control_plane.connect(CP_DB) as cp, d.connect("loader") as wh:
        for name in ("events", "instance_state"):
            source = fact_checksum(cp, name, start, end, source=True)
            assert source[0] > 0, name
            assert fact_checksum(wh, name, start, end, source=False) == source, name
        assert instances_checksum(wh, "dwh.instances") == instances_checksum(cp, "public.instances")


def test_clerk_copies_equal_the_api(materialized, cfg, clerk):
    with materialized.connect("loader") as wh:
        users = dict(wh.execute("SELECT user_id, email FROM dwh.users").fetchall())
        orgs = dict(wh.execute("SELECT organization_id, name FROM dwh.organizations").fetchall())
        members = set(wh.execute("SELECT organization_id, user_id, role FROM dwh.organization_memberships").fetchall())
    api_users, _ = clerk.list_all("users")
    assert users == {u["id"]: primary_email(u) for u in api_users}
    api_orgs, _ = clerk.list_all("organizations")
    assert orgs == {o["id"]: o["name"] for o in api_orgs}
    api_members, _ = clerk.list_all("organization_memberships")
    assert members == {(m["organization"]["id"], m["public_user_data"]["user_id"], m["role"]) for m in api_members}


def test_metrics_equal_prometheus(materialized, cfg):
    day = dt.datetime.combine(dt.datetime.now(UTC).date() - dt.timedelta(days=1), dt.time(), UTC)
    with materialized.connect("loader") as wh:
        for metric in METRIC_NAMES:
            expected = prometheus_samples(cfg, metric, day, day + dt.timedelta(days=1), 3600)
            local = local_samples(wh, metric, day, day + dt.timedelta(days=1))
            assert len(local) == len(set(local)) and set(local) == expected and expected, metric


def test_marts_are_built_from_the_copies(materialized):
    start = materialized.history_start
    with materialized.connect("reader") as reader:
        signups = reader.execute("SELECT coalesce(sum(signups), 0) FROM mart.daily_signups WHERE day >= %s",
                                 (start,)).fetchone()[0]
        users = reader.execute("SELECT count(*) FROM dwh.users WHERE created_at >= %s", (start,)).fetchone()[0]
        storage = reader.execute("SELECT sum(storage_gib_days) FROM mart.org_daily_usage").fetchone()[0]
        states = reader.execute("SELECT sum(transitions) FROM mart.instance_state_daily").fetchone()[0]
    with materialized.control_plane.connect(CP_DB) as cp:
        changes = cp.execute("SELECT count(*) FROM public.instance_state_history WHERE changed_at >= %s",
                             (start,)).fetchone()[0]
    assert signups == users
    assert states == changes > 0
    assert storage > 0, "the storage metric's name reaches the mart through dwh.settings"


# ----- again, then one change ------------------------------------------------------------------------


def identities(d: Deployment) -> dict[str, list]:
    with d.connect() as wh, d.connect(dbname="postgres") as cron:
        return {
            "foreign_tables": wh.execute("SELECT ftrelid, ftrelid::regclass::text, ftoptions FROM pg_foreign_table ORDER BY 1").fetchall(),
            "servers": wh.execute("SELECT oid, srvname, srvoptions FROM pg_foreign_server ORDER BY 1").fetchall(),
            "settings": wh.execute("SELECT key, value FROM dwh.settings ORDER BY 1").fetchall(),
            "roles": wh.execute("SELECT oid, rolname, rolpassword FROM pg_authid ORDER BY 1").fetchall(),
            "extensions": wh.execute("SELECT oid, extname, extversion FROM pg_extension ORDER BY 1").fetchall(),
            "cron": cron.execute("SELECT jobid, jobname, schedule, command, database, username, active FROM cron.job ORDER BY 1").fetchall(),
        }


def test_a_second_migrate_changes_nothing(materialized):
    before = identities(materialized)
    done = materialized.migrate()
    assert done.stdout.splitlines()[-1] == NO_OP
    assert identities(materialized) == before


def test_a_changed_schedule_changes_exactly_that_job_and_pg_cron_runs_it(materialized, cfg):
    d = materialized
    before = {(row[1], row[5]): row for row in identities(d)["cron"]}
    d.config.write_text(d.config.read_text() + '\n[schedules]\nusers = "* * * * *"\n')
    planned = d.dwh("migrate", "--dry-run")
    assert planned.returncode == 0 and "pg_cron: update dwh:refresh_users (acme_dwh_loader)" in planned.stdout
    assert {(row[1], row[5]): row for row in identities(d)["cron"]} == before, "--dry-run changed something"

    since = dt.datetime.now(UTC)
    done = d.migrate()
    assert "pg_cron: update dwh:refresh_users (acme_dwh_loader)" in done.stdout
    assert done.stdout.splitlines()[-1].endswith("pg_cron: 0 scheduled, 1 updated, 0 unscheduled")
    after = {(row[1], row[5]): row for row in identities(d)["cron"]}
    changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
    assert changed == {("dwh:refresh_users", "acme_dwh_loader")}
    assert after[("dwh:refresh_users", "acme_dwh_loader")][2] == "* * * * *"

    # pg_cron (in database postgres) runs it in the warehouse as the loader login...
    run = wait_for_run(d, "dwh:refresh_users", since)
    assert run["status"] == "succeeded", run
    # ... and the sensor, connected like the code location (loader DSN only), finds it in the other database.
    env = dagster_env(d, Path(tempfile.mkdtemp(dir="/tmp")))
    warehouse = WarehouseResource(dsn=env["DWH_WAREHOUSE_DSN"])
    report = evaluate_cron_runs(warehouse, CronRunJudge(cron_targets(), {dt.datetime.now(UTC).date().isoformat()},
                                                        stuck_after=dt.timedelta(hours=1),
                                                        commit_grace=dt.timedelta(seconds=60),
                                                        schedule_grace=dt.timedelta(minutes=5)), None)
    reported = [e for e in report.events if isinstance(e, dg.AssetMaterialization)
                and e.asset_key == dg.AssetKey(["dwh", "users"])
                and e.metadata["pg_cron_runid"].value == run["runid"]]
    assert len(reported) == 1, report.events


def wait_for_run(d: Deployment, job: str, since: dt.datetime, timeout: float = 150) -> dict:
    deadline = time.monotonic() + timeout
    with d.connect(dbname="postgres") as cron:
        while time.monotonic() < deadline:
            cur = cron.execute(
                "SELECT r.* FROM cron.job_run_details r JOIN cron.job j USING (jobid) WHERE j.jobname = %s "
                "AND r.start_time >= %s AND r.status IN ('succeeded', 'failed') ORDER BY runid LIMIT 1", (job, since))
            row = cur.fetchone()
            if row is not None:
                run = dict(zip([c.name for c in cur.description], row))
                alive = cron.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (run["job_pid"],)).fetchone()[0]
                if not alive:
                    return run
            time.sleep(2)
    raise AssertionError(f"pg_cron did not run {job} within {timeout:.0f}s:\n{d.warehouse.log()[-3000:]}")


# ----- an admin without the privileges ----------------------------------------------------------------


def test_an_admin_without_privileges_changes_nothing_and_says_what_it_needs(deployment, migrated, tmp_path):
    d = deployment
    weak_password = f"weak-{os.urandom(8).hex()}"
    private_file(tmp_path / "weak", weak_password + "\n")
    with d.connect(dbname="postgres") as su:
        su.execute(f"CREATE ROLE weak_admin LOGIN PASSWORD '{weak_password}'")
        su.execute("CREATE DATABASE weak_target OWNER weak_admin")
    try:
        with d.connect(dbname="weak_target") as su:
            before = su.execute("SELECT (SELECT array_agg(nspname::text ORDER BY 1) FROM pg_namespace), "
                                "(SELECT array_agg(extname::text ORDER BY 1) FROM pg_extension)").fetchone()
        config = tmp_path / "weak.toml"
        text = d.config.read_text().replace(f'database = "{WAREHOUSE_DB}"', 'database = "weak_target"', 1)
        text = text.replace('user = "dba"', 'user = "weak_admin"').replace(f'"{d.secrets / "admin"}"', f'"{tmp_path / "weak"}"')
        # The logins' passfile names the new database too, as a team's would: only the admin's privileges are missing.
        lines = (d.secrets / "pgpass").read_text().splitlines(keepends=True)
        private_file(tmp_path / "pgpass", "".join(lines + [line.replace(f":{WAREHOUSE_DB}:", ":weak_target:", 1)
                                                           for line in lines if f":{WAREHOUSE_DB}:" in line]))
        text = text.replace(f'"{d.secrets / "pgpass"}"', f'"{tmp_path / "pgpass"}"')
        config.write_text(text)
        done = subprocess.run([str(VENV_BIN / "dwh"), "migrate", "--config", str(config)], cwd="/", env=clean_env(),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "nothing was changed; the warehouse needs:" in done.stderr
        assert "the admin role cannot create extension pg_partman" in done.stderr
        assert "the admin role cannot grant itself dwh_owner: it needs CREATEROLE" in done.stderr
        # Roles are cluster-wide: the first migrate gave dwh_owner pg_execute_server_program, which still holds.
        assert "pg_execute_server_program" not in done.stderr
        assert "Traceback" not in done.stderr
        with d.connect(dbname="weak_target") as su:
            after = su.execute("SELECT (SELECT array_agg(nspname::text ORDER BY 1) FROM pg_namespace), "
                               "(SELECT array_agg(extname::text ORDER BY 1) FROM pg_extension)").fetchone()
        assert after == before
    finally:
        with d.connect(dbname="postgres") as su:
            su.execute("DROP DATABASE IF EXISTS weak_target WITH (FORCE)")
            su.execute("DROP ROLE IF EXISTS weak_admin")
