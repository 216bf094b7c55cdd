"""A managed Postgres, simulated: the README's runbook, run as written, and migrate's fault matrix.

Three plain clusters (``plain_clusters``: initdb, SCRAM passwords everywhere):

- the **warehouse**, shaped like RDS / Cloud SQL / Azure: pg_cron preloaded with
  ``cron.database_name = 'postgres'`` and background workers; the admin ``acme_admin`` has
  CREATEROLE and owns the database ``analytics``, nothing more (no superuser, no file_fdw,
  no pg_execute_server_program);
- the **relay**, self-hosted: the source reader for Clerk and Prometheus (the session
  stack's emulator and server) and, with ``control_plane.via_relay``, the control plane
  (the session stack's ``control_plane`` database), so all three sources go through it;
- nothing else: the superuser of the warehouse runs only the script migrate prints, once.

The module fixture runs every ``<!-- runbook -->`` block of the README's runbook in one
bash, with the example's ``/etc/dwh/`` rewritten to this test's directory: relay install,
the prerequisite script, migrate, Dagster's storage, ``dwh env``, the first backfill.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from dwh_assets.local.config import CONTROL_PLANE_DB, CONTROL_PLANE_READER_ROLE, REPO_ROOT, StackConfig
from dwh_assets.local.generator import METRIC_NAMES
from dwh_assets.local.postgres import pg_bin
from dwh_assets.warehouse import catalog
from dwh_assets_tests.plain_clusters import PlainCluster, private_file
from dwh_assets_tests.tiers import integration_fixture
from dwh_assets_tests.warehouse_helpers import (
    connect_control_plane,
    fact_checksum,
    instances_checksum,
    local_samples,
    primary_email,
    prometheus_samples,
)


UTC = dt.timezone.utc
DB = "analytics"
LOGINS = {"admin": "acme_admin", "owner": "acme_owner", "loader": "acme_loader", "reader": "acme_reader"}
RELAY_LOGIN = "acme_relay"
HISTORY_DAYS = 2
NO_OP = "done: 0 new migration(s); tables unchanged; sources unchanged; pg_cron: jobs unchanged"
VENV_BIN = Path(sys.executable).parent
EXAMPLE_DIR = "/etc/dwh/"


@dataclass
class Managed:
    warehouse: PlainCluster
    relay: PlainCluster
    home: Path
    config: Path
    passwords: dict[str, str]
    history_start: dt.date
    refused_before_script: subprocess.CompletedProcess
    runbook: subprocess.CompletedProcess
    script: str

    def dwh(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "dwh"), *args, "--config", str(config or self.config)], cwd="/",
                              env=clean_env(), capture_output=True, text=True, timeout=600)

    def connect(self, role: str = "admin", dbname: str = DB) -> psycopg.Connection:
        return self.warehouse.connect(dbname, LOGINS[role], self.passwords[role])

    def superuser_psql(self, script: str) -> subprocess.CompletedProcess:
        return subprocess.run([pg_bin("psql"), "-v", "ON_ERROR_STOP=1", "-f", "-"], input=script, cwd="/",
                              env=clean_env(**superuser_env(self.warehouse, self.home)),
                              capture_output=True, text=True, timeout=120)


def clean_env(**extra: str) -> dict[str, str]:
    """What a fresh shell has: no DWH_* or PG* of the session stack."""
    return {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8", **extra}


def superuser_env(cluster: PlainCluster, home: Path) -> dict[str, str]:
    """libpq's variables for the warehouse's superuser: its password in a passfile, never on a command line."""
    passfile = home / "superuser.pgpass"
    if not passfile.exists():
        private_file(passfile, f"127.0.0.1:{cluster.port}:*:{cluster.superuser}:{cluster.password}\n")
    return {"PGHOST": "127.0.0.1", "PGPORT": str(cluster.port), "PGUSER": cluster.superuser,
            "PGDATABASE": "postgres", "PGPASSFILE": str(passfile), "PGSSLMODE": "disable"}


def runbook_blocks(readme: str) -> list[str]:
    """The bash blocks the README marks ``<!-- runbook -->``, in order."""
    return re.findall(r"<!-- runbook -->\n```bash\n(.*?)```", readme, flags=re.S)


def config_text(home: Path, wh: PlainCluster, relay: PlainCluster, stack: StackConfig, start: dt.date) -> str:
    s = home / "secrets"
    logins = "".join(f'[warehouse.{p}]\nuser = "{u}"\npassword_file = "{s / p}"\n\n' for p, u in LOGINS.items())
    return f"""\
[warehouse]
host = "127.0.0.1"
port = {wh.port}
database = "{DB}"
sslmode = "disable"
passfile = "{s / 'pgpass'}"

{logins}[control_plane]
host = "127.0.0.1"
port = {stack.pg_port}
database = "{CONTROL_PLANE_DB}"
sslmode = "disable"
user = "{CONTROL_PLANE_READER_ROLE}"
password_file = "{stack.password_file(CONTROL_PLANE_READER_ROLE)}"
via_relay = true

[clerk]
api_url = "{stack.clerk_url}"
secret_key_file = "{stack.clerk_secret_file}"
backend = "relay"

[prometheus]
url = "{stack.prometheus_url}"
backend = "relay"

[relay]
host = "127.0.0.1"
port = {relay.port}
database = "postgres"
sslmode = "disable"
user = "{RELAY_LOGIN}"
password_file = "{s / 'relay'}"

[relay.admin]
user = "{relay.superuser}"
password_file = "{s / 'relay_admin'}"

[reader]
directory = "{home / 'reader'}"

[dagster]
home = "{home / 'dagster_home'}"

[history]
start = {start.isoformat()}
"""


def _secrets(home: Path, wh: PlainCluster, relay: PlainCluster) -> dict[str, str]:
    s = home / "secrets"
    s.mkdir(mode=0o700)
    passwords = {name: f"{name}-{os.urandom(12).hex()}" for name in (*LOGINS, "relay", "dagster")}
    passwords["relay_admin"] = relay.password
    for name, value in passwords.items():
        private_file(s / name, value + "\n")
    private_file(home / "dagster.password", passwords["dagster"] + "\n")
    lines = [f"127.0.0.1:{wh.port}:*:{LOGINS[p]}:{passwords[p]}\n" for p in ("owner", "loader", "reader")]
    lines.append(f"127.0.0.1:{wh.port}:dagster:dagster:{passwords['dagster']}\n")
    private_file(s / "pgpass", "".join(lines))
    return passwords


@integration_fixture(scope="module")
def managed(cfg: StackConfig) -> Iterator[Managed]:
    wh = PlainCluster("managed", settings={
        "shared_preload_libraries": "'pg_cron'", "cron.database_name": "'postgres'",
        "cron.use_background_workers": "on", "max_worker_processes": "24"}).init().start()
    relay = PlainCluster("relay").init().start()
    home = Path(tempfile.mkdtemp(prefix="dwh-managed-", dir="/tmp"))
    home.chmod(0o755)  # the relay server's OS user runs the reader under it
    try:
        passwords = _secrets(home, wh, relay)
        with wh.connect() as su:
            su.execute(f"CREATE ROLE {LOGINS['admin']} LOGIN CREATEROLE PASSWORD '{passwords['admin']}'")
            su.execute(f"CREATE DATABASE {DB} OWNER {LOGINS['admin']}")
        start = dt.datetime.now(UTC).date() - dt.timedelta(days=HISTORY_DAYS)
        config = home / "dwh.toml"
        config.write_text(config_text(home, wh, relay, cfg, start))
        m = Managed(wh, relay, home, config, passwords, start, None, None, "")
        m.refused_before_script = m.dwh("migrate")
        script = "set -euo pipefail\n" + "\n".join(
            f"echo '### runbook block {i}' >&2\n{block}" for i, block in enumerate(runbook_blocks((REPO_ROOT / "README.md").read_text())))
        script = script.replace(EXAMPLE_DIR, f"{home}/").replace(f"{home}/dwh.toml", str(config))
        m.runbook = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800,
                                   env=clean_env(DWH_CONFIG=str(config), **superuser_env(wh, home)))
        m.script = (home / "prerequisites.sql").read_text() if (home / "prerequisites.sql").exists() else ""
        artifacts = REPO_ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        (artifacts / "managed-prerequisites.sql").write_text(m.script)
        yield m
    finally:
        wh.remove()
        relay.remove()
        subprocess.run(["rm", "-rf", str(home)], check=False)


@pytest.fixture(scope="module")
def deployed(managed: Managed) -> Managed:
    assert managed.runbook.returncode == 0, managed.runbook.stdout[-4000:] + managed.runbook.stderr[-6000:]
    return managed


# ----- the runbook, and what the superuser ran ----------------------------------------------------------


def test_the_runbook_has_the_steps_a_stranger_needs():
    blocks = runbook_blocks((REPO_ROOT / "README.md").read_text())
    text = "\n".join(blocks)
    for step in ("dwh relay install", "--prerequisites", "psql -v ON_ERROR_STOP=1 -f", "dwh migrate --config",
                 "CREATE DATABASE dagster", "dwh env --config", "dg launch", "--partition-range"):
        assert step in text, step
    # A dimension takes no partition: its command ends with its selection.
    assert "--assets 'dwh/users,dwh/organizations,dwh/organization_memberships,dwh/instances'\n" in text


def test_before_the_script_migrate_changes_nothing_and_says_it_needs_a_superuser(managed):
    done = managed.refused_before_script
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "nothing was changed; the warehouse needs:" in done.stderr
    assert "`dwh migrate --prerequisites` prints all of this as one SQL script" in done.stderr
    assert "CREATE EXTENSION pg_partman SCHEMA partman" in done.stderr


def test_the_runbook_runs_as_written(deployed):
    out = deployed.runbook.stdout + deployed.runbook.stderr
    assert "installed the relay" in out and "it serves src_clerk, src_prometheus, src_control_plane" in out
    assert "pg_cron: ran a job as acme_loader in analytics" in out and "pg_cron: ran a job as acme_owner in postgres" in out
    assert "Traceback" not in out


def test_the_script_holds_only_what_a_superuser_must_do(deployed):
    script = deployed.script
    for wanted in ('CREATE SCHEMA IF NOT EXISTS "partman" AUTHORIZATION "dwh_owner"; '
                   'CREATE EXTENSION IF NOT EXISTS "pg_partman" SCHEMA "partman";',
                   'CREATE EXTENSION IF NOT EXISTS "postgres_fdw";', 'CREATE EXTENSION IF NOT EXISTS "dblink" SCHEMA "public";',
                   'GRANT USAGE ON FOREIGN DATA WRAPPER "postgres_fdw" TO "dwh_owner";',
                   "\\connect 'postgres'", 'CREATE EXTENSION IF NOT EXISTS "pg_cron";',
                   'GRANT USAGE ON SCHEMA cron TO "dwh_owner", "dwh_loader";',
                   "cron.schedule_in_database(text, text, text, text, text, boolean)",
                   "CREATE ROLE dwh_owner NOLOGIN"):
        assert wanted in script, wanted
    statements = "\n".join(line for line in script.splitlines() if not line.startswith("--"))
    for unwanted in ("file_fdw", "pg_execute_server_program", "PASSWORD", "ALTER FUNCTION", "acme_"):
        assert unwanted not in statements, unwanted
    # The statements of the warehouse database come before \connect 'postgres' (the roles are made there).
    assert script.index("\\connect 'analytics'") < script.index("\\connect 'postgres'")


def test_a_second_migrate_changes_nothing_and_probes_nothing(deployed):
    done = deployed.dwh("migrate")
    assert done.returncode == 0, done.stderr
    assert "pg_cron: jobs run as probed before (no probe needed)" in done.stdout
    assert done.stdout.splitlines()[-1] == NO_OP
    assert deployed.dwh("migrate", "--prerequisites").stdout.rstrip().endswith(
        "-- nothing: the admin role may do everything the warehouse needs.")


# ----- every job, and pg_cron itself --------------------------------------------------------------------


def test_every_scheduled_command_succeeds_in_its_database_as_its_role(deployed):
    with deployed.warehouse.connect() as su:
        jobs = su.execute("SELECT jobname, database, username, command FROM cron.job ORDER BY jobname, username").fetchall()
    assert {db for _, db, _, _ in jobs} == {DB, "postgres"}, "purges run where pg_cron's tables are"
    assert ("dwh:purge_cron_history", "postgres", LOGINS["loader"]) in [j[:3] for j in jobs]
    by_login = {u: p for p, u in LOGINS.items()}
    for name, database, user, command in jobs:
        with deployed.connect(by_login[user], database) as conn:
            try:
                conn.execute(command)
            except psycopg.Error as e:
                pytest.fail(f"{name} as {user} in {database}: {e}")


def test_pg_cron_runs_a_refresh_and_the_health_dashboard_shows_it(deployed):
    with deployed.connect("loader", "postgres") as cron, deployed.warehouse.connect() as su:
        jobid = cron.execute("SELECT jobid FROM cron.job WHERE jobname = 'dwh:refresh_users'").fetchone()[0]
        since = cron.execute("SELECT now()").fetchone()[0]
        # Every minute for this test (cron.alter_job is not granted to the loader; pg_cron reloads on UPDATE).
        su.execute("UPDATE cron.job SET schedule = '* * * * *' WHERE jobid = %s", (jobid,))
        try:
            run = wait_for_run(cron, jobid, since)
        finally:
            su.execute("UPDATE cron.job SET schedule = %s WHERE jobid = %s", (catalog.get("users").schedule, jobid))
    assert run[1] == "succeeded", run
    with deployed.connect("reader") as reader:
        shown = reader.execute("SELECT status FROM mart.cron_job_runs WHERE runid = %s", (run[0],)).fetchall()
    assert shown == [("succeeded",)], "the health dashboard reads pg_cron's history from database postgres"


def wait_for_run(cron: psycopg.Connection, jobid: int, since: dt.datetime, timeout: float = 180) -> tuple:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = cron.execute("SELECT runid, status, return_message FROM cron.job_run_details WHERE jobid = %s "
                           "AND start_time >= %s AND status IN ('succeeded', 'failed') ORDER BY runid LIMIT 1",
                           (jobid, since)).fetchone()
        if row is not None:
            return row
        time.sleep(2)
    raise AssertionError(f"pg_cron ran no job {jobid} within {timeout:.0f}s")


# ----- every copy, through the relay, equals its source -----------------------------------------------


def test_control_plane_copies_through_the_relay_equal_the_source(deployed, cfg):
    start = dt.datetime.combine(deployed.history_start, dt.time(), UTC)
    end = dt.datetime.combine(dt.datetime.now(UTC).date() + dt.timedelta(days=1), dt.time(), UTC)
    with connect_control_plane(cfg) as cp, deployed.connect("loader") as wh:
        for name in ("events", "instance_state"):
            source = fact_checksum(cp, name, start, end, source=True)
            assert source[0] > 0, name
            assert fact_checksum(wh, name, start, end, source=False) == source, name
        assert instances_checksum(wh, "dwh.instances") == instances_checksum(cp, "public.instances")
        server = wh.execute("SELECT srvname FROM pg_foreign_table JOIN pg_foreign_server s ON s.oid = ftserver "
                            "WHERE ftrelid = 'src_control_plane.instances'::regclass").fetchone()[0]
    assert server == "dwh_relay"


def test_clerk_copies_through_the_relay_equal_the_api(deployed, clerk):
    with deployed.connect("loader") as wh:
        users = dict(wh.execute("SELECT user_id, email FROM dwh.users").fetchall())
        orgs = dict(wh.execute("SELECT organization_id, name FROM dwh.organizations").fetchall())
        members = set(wh.execute("SELECT organization_id, user_id, role FROM dwh.organization_memberships").fetchall())
    api_users, _ = clerk.list_all("users")
    assert users == {u["id"]: primary_email(u) for u in api_users}
    assert orgs == {o["id"]: o["name"] for o in clerk.list_all("organizations")[0]}
    assert members == {(m["organization"]["id"], m["public_user_data"]["user_id"], m["role"])
                       for m in clerk.list_all("organization_memberships")[0]}


def test_metrics_through_the_relay_equal_prometheus(deployed, cfg):
    day = dt.datetime.combine(dt.datetime.now(UTC).date() - dt.timedelta(days=1), dt.time(), UTC)
    with deployed.connect("loader") as wh:
        for metric in METRIC_NAMES:
            expected = prometheus_samples(cfg, metric, day, day + dt.timedelta(days=1), 3600)
            local = local_samples(wh, metric, day, day + dt.timedelta(days=1))
            assert expected and len(local) == len(set(local)) and set(local) == expected, metric


def test_the_reconciliation_counts_every_fact_through_the_relay(deployed):
    """The daily job's command, as the loader: the control plane's per-day counts and Prometheus' (the
    relay's dwh.relay_metric_day_counts, through dblink) each answer, for every kept day up to yesterday."""
    with deployed.connect("loader") as wh:
        found = wh.execute(f"SELECT table_name, error, days_compared, source_rows FROM "
                           f"{catalog.PRODUCT.reconciliation.routine}() ORDER BY 1").fetchall()
    assert [row[0] for row in found] == sorted(spec.name for spec in catalog.PRODUCT.reconciled())
    for table, error, days, source_rows in found:
        assert error is None, (table, error)
        assert days > 0 and source_rows > 0, (table, days, source_rows)


# ----- the fault matrix: a sentence each time, nothing half-done -----------------------------------------


def identities(m: Managed) -> dict[str, list]:
    with m.connect() as wh, m.connect(dbname="postgres") as pg:
        return {
            "foreign_tables": wh.execute("SELECT ftrelid::regclass::text, ftoptions FROM pg_foreign_table ORDER BY 1").fetchall(),
            "servers": wh.execute("SELECT oid, srvname, srvoptions FROM pg_foreign_server ORDER BY 1").fetchall(),
            "settings": wh.execute("SELECT key, value FROM dwh.settings ORDER BY 1").fetchall(),
            "roles": wh.execute("SELECT oid, rolname FROM pg_roles ORDER BY 1").fetchall(),
            "migrations": wh.execute("SELECT count(*) FROM public._yoyo_migration").fetchall(),
            "acl": wh.execute("SELECT nspname, nspacl::text FROM pg_namespace ORDER BY 1").fetchall(),
            "cron": pg.execute("SELECT count(*) FROM cron.job").fetchall(),
        }


def refused(m: Managed, *expected: str, config: Path | None = None) -> str:
    before = identities(m)
    done = m.dwh("migrate", config=config)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert done.stderr.startswith("dwh migrate: nothing was changed; the warehouse needs:"), done.stderr
    for sentence in expected:
        assert sentence in done.stderr, done.stderr
    assert identities(m) == before, "a refused migrate changed something"
    return done.stderr


@pytest.mark.parametrize(("revoke", "sentence"), [
    ("REVOKE USAGE ON SCHEMA cron FROM dwh_loader", "the admin role cannot grant usage on schema cron to the owner and loader"),
    ("REVOKE EXECUTE ON FUNCTION cron.schedule_in_database(text, text, text, text, text, boolean) FROM dwh_owner",
     "the admin role cannot grant execute on cron.schedule_in_database"),
    ("REVOKE ALL ON ALL TABLES IN SCHEMA partman FROM dwh_owner", "the admin role cannot let dwh_owner maintain pg_partman"),
    ("REVOKE USAGE ON FOREIGN DATA WRAPPER postgres_fdw FROM dwh_owner", "the admin role cannot grant usage on postgres_fdw"),
])
def test_a_missing_prerequisite_is_named_and_its_script_fixes_it(deployed, revoke, sentence):
    database = "postgres" if "cron" in revoke else DB
    with deployed.warehouse.connect(database) as su:
        su.execute(revoke)
    refused(deployed, sentence)
    script = deployed.dwh("migrate", "--prerequisites")
    assert script.returncode == 0 and sentence in script.stdout, script.stdout + script.stderr
    ran = deployed.superuser_psql(script.stdout)
    assert ran.returncode == 0, ran.stderr
    resumed = deployed.dwh("migrate")
    assert resumed.returncode == 0 and resumed.stdout.splitlines()[-1] == NO_OP, resumed.stdout + resumed.stderr


def test_a_wrong_relay_password_is_one_sentence(deployed):
    secret = deployed.home / "secrets" / "relay"
    right = secret.read_text()
    private_file(secret, "not-the-password\n")
    try:
        error = refused(deployed, f"the warehouse server cannot read the relay at 127.0.0.1:{deployed.relay.port} "
                                  f"database 'postgres' as {RELAY_LOGIN}: ",
                        f"password authentication failed for user \"{RELAY_LOGIN}\"",
                        "; check relay.password_file (or DWH_RELAY__PASSWORD)")
        assert len([line for line in error.splitlines() if "relay" in line]) == 1, error
    finally:
        private_file(secret, right)


def test_a_secret_file_others_may_read_is_refused(deployed):
    secret = deployed.home / "secrets" / "relay"
    secret.chmod(0o640)
    try:
        refused(deployed, f"{secret} (the password of the relay login {RELAY_LOGIN}) is readable by its group or others "
                          f"(mode 0640): run `chmod 600 {secret}`")
    finally:
        secret.chmod(0o600)


def test_a_missing_passfile_is_named(deployed, tmp_path):
    config = tmp_path / "dwh.toml"
    config.write_text(deployed.config.read_text().replace(str(deployed.home / "secrets" / "pgpass"), str(tmp_path / "nope")))
    refused(deployed, f"the passfile {tmp_path / 'nope'} does not exist: the DSNs of `dwh env` name it", config=config)


def test_a_source_missing_a_column_is_named(deployed, cfg):
    with connect_control_plane(cfg) as cp:
        cp.execute("ALTER TABLE public.instances RENAME COLUMN region TO zone")
        try:
            refused(deployed, "the control plane (through the relay): column public.instances.region (text) is missing")
        finally:
            cp.execute("ALTER TABLE public.instances RENAME COLUMN zone TO region")
