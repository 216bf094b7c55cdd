"""The product as a wheel, served the way Dagster's Docker and Kubernetes deployments serve code.

The wheel is built from this checkout and installed into a fresh virtualenv. Everything
after that runs from a directory outside the checkout, with an environment that names
nothing of it:

- the fresh virtualenv's ``dwh reader install`` and ``dwh migrate --config`` onto a plain
  PostgreSQL 15 cluster (``plain_clusters``: SCRAM passwords, pg_cron in database
  ``postgres``), which also holds the control plane and Dagster's storage. Clerk and
  Prometheus are configured but never read: no partition of theirs is materialised here;
- the code server: ``dagster api grpc -m dwh_assets.definitions`` of the fresh virtualenv,
  the only process given the code location's settings;
- the orchestration side: ``dagster-webserver`` and ``dagster-daemon`` of the checkout's
  virtualenv (Dagster's own image, in a deployment), whose workspace names only the gRPC
  server and whose environment has none of the code location's settings, so a run that
  succeeds ran through the code server;
- one day of ``dwh/events`` backfilled through the webserver's GraphQL API and launched by
  the daemon: the warehouse's rows equal the control plane's, and Dagster's storage holds
  the materialization of that partition.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml

from dwh_assets.local import control_plane
from dwh_assets.local.config import REPO_ROOT, free_port
from dwh_assets.local.generator import build_world
from dwh_assets.local.process import port_open, tail, wait_until
from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.defs import CodeLocationSettings, build_definitions
from dwh_assets.warehouse.defs.settings import SETTINGS
from dwh_assets_tests.plain_clusters import PlainCluster, private_file
from dwh_assets_tests.test_dagster_ui import graphql
from dwh_assets_tests.tiers import integration_fixture
from dwh_assets_tests.warehouse_helpers import fact_checksum


UTC = dt.timezone.utc
LOCATION = "dwh_assets"
# What the wheel is built from: the project's metadata, the package, and sql/ (mapped into it).
SOURCES = ("pyproject.toml", "README.md", "dwh_assets", "sql")
LOGINS = ("owner", "loader", "reader")
CP_LOGIN, DAGSTER_LOGIN = "cp_reader", "dagster"
ORCHESTRATION_BIN = Path(sys.executable).parent  # the checkout's virtualenv: Dagster's side only


def clean_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    """What a fresh shell has: no PYTHONPATH, no DWH_* of the session, the given bin first."""
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8", **extra}


@dataclass
class FreshInstall:
    root: Path  # outside the checkout; every command runs here
    wheel: Path
    venv: Path

    def run(self, *argv: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
        done = subprocess.run([str(self.venv / "bin" / argv[0]), *argv[1:]], cwd=self.root, capture_output=True,
                              text=True, timeout=timeout, env=clean_env(self.venv / "bin", **(env or {})))
        assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        return done


def build_wheel(root: Path) -> Path:
    source = root / "dwh_assets-source"
    source.mkdir()
    for name in SOURCES:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO_ROOT / name, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                           "-w", str(root / "dist"), str(source)], cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = (root / "dist").glob("dwh_assets-*.whl")
    return wheel


@integration_fixture(scope="module")
def fresh() -> Iterator[FreshInstall]:
    root = Path(tempfile.mkdtemp(prefix="dwh-wheel-", dir="/tmp"))
    root.chmod(0o755)  # the reader directory below must be reachable by the server's OS user
    try:
        wheel = build_wheel(root)
        venv = root / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        install = FreshInstall(root, wheel, venv)
        # --no-compile: the few modules the processes below import compile on first use (saves ~20 s).
        install.run("pip", "install", "--disable-pip-version-check", "-q", "--no-compile", str(wheel), timeout=900)
        yield install
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ----- the deployment: one plain cluster, migrated by the wheel's dwh --------------------------------


@dataclass
class Deployment:
    cluster: PlainCluster
    config: Path
    passfile: Path
    history_start: dt.date
    dagster_pg_url: str
    location_env: dict[str, str]  # what `dwh env --config` printed


def write_secrets(root: Path, cluster: PlainCluster) -> tuple[Path, dict[str, str]]:
    secrets = root / "secrets"
    secrets.mkdir(mode=0o700)
    passwords = {name: os.urandom(12).hex() for name in (*LOGINS, "control_plane", DAGSTER_LOGIN)}
    passwords["admin"] = cluster.password
    for name, value in passwords.items():
        private_file(secrets / name, value + "\n")
    private_file(secrets / "clerk", "sk_test_never_read\n")
    # DSNs name this passfile: the warehouse logins (and pg_cron's database) and Dagster's storage login.
    entries = [f"127.0.0.1:{cluster.port}:{db}:dwh_{who}:{passwords[who]}\n" for who in LOGINS for db in ("warehouse", "postgres")]
    entries.append(f"127.0.0.1:{cluster.port}:dagster:{DAGSTER_LOGIN}:{passwords[DAGSTER_LOGIN]}\n")
    private_file(secrets / "pgpass", "".join(entries))
    return secrets, passwords


def config_text(root: Path, secrets: Path, cluster: PlainCluster, start: dt.date) -> str:
    logins = "".join(f'[warehouse.{who}]\nuser = "dwh_{who}"\npassword_file = "{secrets / who}"\n\n' for who in LOGINS)
    return f"""\
[warehouse]
host = "127.0.0.1"
port = {cluster.port}
database = "warehouse"
sslmode = "disable"
passfile = "{secrets / 'pgpass'}"

[warehouse.admin]
user = "{cluster.superuser}"
password_file = "{secrets / 'admin'}"

{logins}[control_plane]
host = "127.0.0.1"
port = {cluster.port}
database = "control_plane"
sslmode = "disable"
user = "{CP_LOGIN}"
password_file = "{secrets / 'control_plane'}"

# Configured, never read here: nothing listens on these ports.
[clerk]
api_url = "http://127.0.0.1:{free_port()}"
secret_key_file = "{secrets / 'clerk'}"

[prometheus]
url = "http://127.0.0.1:{free_port()}"

[reader]
directory = "{root / 'reader'}"

[history]
start = {start.isoformat()}
"""


def prepare_cluster(cluster: PlainCluster, passwords: dict[str, str], start: dt.date) -> None:
    with cluster.connect() as su:
        su.execute(f"CREATE ROLE {CP_LOGIN} LOGIN PASSWORD '{passwords['control_plane']}'")
        su.execute(f"CREATE ROLE {DAGSTER_LOGIN} LOGIN PASSWORD '{passwords[DAGSTER_LOGIN]}'")
        su.execute("CREATE DATABASE control_plane")
        su.execute(f"CREATE DATABASE dagster OWNER {DAGSTER_LOGIN}")
        su.execute("CREATE DATABASE warehouse")
    history_days = (dt.datetime.now(UTC).date() - start).days + 1
    with cluster.connect("control_plane") as conn:
        control_plane.load_control_plane(conn, build_world(seed=18, scale=0.05, history_days=history_days),
                                         n_events=3000, reader_role=CP_LOGIN)


@integration_fixture(scope="module")
def deployment(fresh: FreshInstall) -> Iterator[Deployment]:
    cluster = PlainCluster("package", settings={
        "shared_preload_libraries": "'pg_cron'", "cron.database_name": "'postgres'",
        "cron.use_background_workers": "on", "max_worker_processes": "24",
    }).init().start()
    try:
        secrets, passwords = write_secrets(fresh.root, cluster)
        start = dt.datetime.now(UTC).date() - dt.timedelta(days=2)
        prepare_cluster(cluster, passwords, start)
        config = fresh.root / "dwh.toml"
        config.write_text(config_text(fresh.root, secrets, cluster, start))
        fresh.run("dwh", "reader", "install", "--config", str(config))
        migrated = fresh.run("dwh", "migrate", "--config", str(config))
        n_migrations = len(list((REPO_ROOT / "sql" / "migrations").glob("*.sql")))
        # The installed package's catalog created every table (its SQL files, views too, are package data).
        n_tables = len(catalog.PRODUCT.all_tables())
        assert migrated.stdout.splitlines()[-1].startswith(
            f"done: {n_migrations} new migration(s); {n_tables} table(s) created, ")
        assert "; sources rebuilt; " in migrated.stdout.splitlines()[-1]
        printed = fresh.run("dwh", "env", "--config", str(config)).stdout
        exported = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in printed.splitlines())
        # The code location's own settings; `dwh env` also prints the instance's (DAGSTER_HOME, ...) and PATH.
        location_env = {s.name: exported[s.name] for s in SETTINGS if s.name in exported}
        assert {"DWH_WAREHOUSE_DSN", "DWH_HISTORY_START"} <= set(location_env), exported
        yield Deployment(cluster, config, secrets / "pgpass", start,
                         f"postgresql+psycopg2://{DAGSTER_LOGIN}@127.0.0.1:{cluster.port}/dagster", location_env)
    finally:
        cluster.remove()


# ----- the code server and Dagster's own processes ----------------------------------------------


class Background:
    """A process this test starts in a session of its own, and stops by that session."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path):
        self.name, self.log = name, cwd / "logs" / f"{name}.log"
        self.log.parent.mkdir(exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, ready, timeout: float = 240) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, f"{self.name} exited with {self.proc.returncode}:\n{tail(self.log, 40)}"
            return ready()

        assert wait_until(up, timeout, interval=0.5), f"{self.name} not ready in {timeout:.0f}s:\n{tail(self.log, 40)}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@dataclass
class Served:
    url: str  # the webserver
    grpc_port: int
    processes: list[Background]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@integration_fixture(scope="module")
def served(fresh: FreshInstall, deployment: Deployment) -> Iterator[Served]:
    home = fresh.root / "dagster_home"
    home.mkdir()
    # The instance is the orchestration side's configuration (Postgres storage, run queue), not the wheel's.
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    instance_env = {"DAGSTER_HOME": str(home), "DWH_DAGSTER_PG_URL": deployment.dagster_pg_url,
                    "PGPASSFILE": str(deployment.passfile)}
    grpc_port, web_port = free_port(), free_port()
    (fresh.root / "workspace.yaml").write_text(yaml.safe_dump(
        {"load_from": [{"grpc_server": {"host": "127.0.0.1", "port": grpc_port, "location_name": LOCATION}}]}))
    processes: list[Background] = []
    try:
        code_server = Background("code-server", [
            str(fresh.venv / "bin" / "dagster"), "api", "grpc", "-m", "dwh_assets.definitions", "-h", "127.0.0.1",
            "-p", str(grpc_port), "--location-name", LOCATION,
            # Runs it launches start with this server's own Python: the wheel's virtualenv.
            "--use-python-environment-entry-point",
        ], clean_env(fresh.venv / "bin", **instance_env, **deployment.location_env), fresh.root)
        processes.append(code_server)
        code_server.wait_ready(lambda: port_open(grpc_port))  # it binds once the definitions loaded
        orchestration_env = clean_env(ORCHESTRATION_BIN, **instance_env)
        assert not set(orchestration_env) & set(deployment.location_env)
        webserver = Background("webserver", [str(ORCHESTRATION_BIN / "dagster-webserver"), "-h", "127.0.0.1",
                                             "-p", str(web_port), "-w", "workspace.yaml"], orchestration_env, fresh.root)
        processes.append(webserver)
        url = f"http://127.0.0.1:{web_port}"
        webserver.wait_ready(lambda: http_ok(f"{url}/server_info"))
        processes.append(Background("daemon", [str(ORCHESTRATION_BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                                    orchestration_env, fresh.root))
        yield Served(url, grpc_port, processes)
    finally:
        for process in reversed(processes):
            process.stop()


# ----- the wheel ------------------------------------------------------------------------------------


def test_the_wheel_carries_the_sql_and_the_dashboards_and_no_tests(fresh):
    names = set(zipfile.ZipFile(fresh.wheel).namelist())
    expected = {f"dwh_assets/sql/{p.relative_to(REPO_ROOT / 'sql')}" for p in (REPO_ROOT / "sql").rglob("*.sql")}
    dashboards = REPO_ROOT / "dwh_assets" / "warehouse" / "dashboards"
    expected |= {f"dwh_assets/warehouse/dashboards/{p.relative_to(dashboards)}" for p in dashboards.rglob("*.yaml")}
    assert expected <= names and len(expected) > 50
    assert not [n for n in names if n.startswith("dwh_assets_tests")]


def test_the_fresh_virtualenv_runs_the_installed_package_not_the_checkout(fresh):
    probe = ("import json, sys, dwh_assets; from dwh_assets.warehouse import sql_files, superset_export as s; "
             "print(json.dumps([dwh_assets.__file__, str(sql_files.SQL_DIR), str(s.PACKAGED_DASHBOARDS), sys.path]))")
    package, sql, dashboards, path = json.loads(fresh.run("python", "-c", probe).stdout)
    site = str(fresh.venv / "lib")
    assert package.startswith(site) and sql.startswith(site) and dashboards.startswith(site)
    assert not [entry for entry in path if entry.startswith(str(REPO_ROOT))]
    assert len(list(Path(sql, "migrations").glob("*.sql"))) == len(list((REPO_ROOT / "sql/migrations").glob("*.sql")))


# ----- served through a gRPC code server ----------------------------------------------------------

WORKSPACE_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus displayMetadata { key value }
    locationOrLoadError { __typename ... on PythonError { message } }
} } } }
"""

ASSETS_QUERY = """
{ assetNodes { assetKey { path } metadataEntries { label __typename
    ... on CodeReferencesMetadataEntry { codeReferences { __typename ... on LocalFileCodeReference { filePath } } }
} } }
"""


def test_the_webserver_serves_the_definitions_of_the_code_server(served, fresh, deployment):
    (entry,) = graphql(served.url, WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
    assert entry["name"] == LOCATION and entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
    assert {"key": "port", "value": str(served.grpc_port)} in entry["displayMetadata"]
    nodes = graphql(served.url, ASSETS_QUERY)["assetNodes"]
    expected = build_definitions(CodeLocationSettings(deployment.history_start)).resolve_asset_graph()
    assert {tuple(n["assetKey"]["path"]) for n in nodes} == {tuple(k.path) for k in expected.get_all_asset_keys()}
    # The code references point into the wheel's files: the definitions came from the fresh virtualenv.
    events = next(n for n in nodes if n["assetKey"]["path"] == ["dwh", "events"])
    (references,) = [e for e in events["metadataEntries"] if e["__typename"] == "CodeReferencesMetadataEntry"]
    (reference,) = references["codeReferences"]
    assert reference["filePath"] == str(next((fresh.venv / "lib").glob("python3*/site-packages/dwh_assets/sql/routines"))
                                        / "refresh_events.sql")


BACKFILL_MUTATION = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""

BACKFILL_QUERY = """
query Backfill($id: String!, $tags: [ExecutionTag!]) {
  partitionBackfillOrError(backfillId: $id) { __typename ... on PartitionBackfill { status } }
  runsOrError(filter: {tags: $tags}) { __typename ... on Runs { results { runId status } } }
}
"""
FINISHED = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def backfill(url: str, asset: list[str], day: dt.date, timeout: float = 600) -> tuple[str, dict]:
    """Launch a backfill of one partition through GraphQL; wait for the daemon to finish its run."""
    launched = graphql(url, BACKFILL_MUTATION, {"params": {
        "assetSelection": [{"path": asset}], "partitionNames": [day.isoformat()], "fromFailure": False}})
    launched = launched["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    variables = {"id": launched["backfillId"], "tags": [{"key": "dagster/backfill", "value": launched["backfillId"]}]}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = graphql(url, BACKFILL_QUERY, variables)
        runs = state["runsOrError"]["results"]
        if state["partitionBackfillOrError"]["status"] in FINISHED and runs and all(
                r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs):
            return state["partitionBackfillOrError"]["status"], runs
        time.sleep(2)
    raise AssertionError(f"backfill {launched['backfillId']} did not finish in {timeout:.0f}s: {state}")


def test_a_backfill_through_the_webserver_materializes_a_partition(served, deployment):
    day = dt.datetime.now(UTC).date() - dt.timedelta(days=1)
    status, runs = backfill(served.url, ["dwh", "events"], day)
    logs = "\n".join(f"--- {p.name}\n{tail(p.log, 30)}" for p in served.processes)
    assert status in ("COMPLETED", "COMPLETED_SUCCESS") and [r["status"] for r in runs] == ["SUCCESS"], logs
    (run,) = runs

    start, end = dt.datetime.combine(day, dt.time(), UTC), dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), UTC)
    cluster = deployment.cluster
    with cluster.connect("control_plane") as cp, cluster.connect("warehouse") as wh:
        source = fact_checksum(cp, "events", start, end, source=True)
        assert source[0] > 0, "the control plane has events that day"
        assert fact_checksum(wh, "events", start, end, source=False) == source
        logged = wh.execute("SELECT count(*) FROM dwh.refresh_log WHERE table_name = 'events' AND application = 'dagster' "
                            "AND window_start = %s AND window_end = %s", (start, end)).fetchone()[0]
    assert logged == 1
    # The run's own events (the pg_cron sensor may report the job's refreshes of the same table meanwhile).
    with cluster.connect("dagster") as storage:
        stored = storage.execute(
            "SELECT asset_key, partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
            "AND run_id = %s", (run["runId"],)).fetchall()
    assert stored == [(dg.AssetKey(["dwh", "events"]).to_string(), day.isoformat())]
