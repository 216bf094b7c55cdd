"""The project-local PostgreSQL 15 cluster: initdb, configure, start/stop, provision.

One cluster holds four databases: the warehouse, the control plane (a source, reached
from the warehouse over TCP through postgres_fdw), Dagster's storage and Superset's
metadata. Provisioning creates the databases and the demo's own roles (the control
plane's reader, Dagster, Superset);
the warehouse's roles are created by `dwh migrate`'s bootstrap, as in a real deployment. It listens on
127.0.0.1 only; its Unix socket sits in a 0700 directory of the server's OS user. When
``dwh`` runs as root, the server runs as ``DWH_SERVER_USER`` (default ``postgres``),
because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from dwh_assets.local.config import (
    CONTROL_PLANE_DB,
    CONTROL_PLANE_READER_ROLE,
    DAGSTER_DB,
    DAGSTER_ROLE,
    SUPERSET_DB,
    SUPERSET_ROLE,
    WAREHOUSE_DB,
    StackConfig,
)
from dwh_assets.local import secrets
from dwh_assets.local.process import StackError, pid_alive, port_open, tail, wait_until
from dwh_assets.warehouse.deployment import DeploymentError
from dwh_assets.warehouse.sources import reader_install

PG_MAJOR = "15"

SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_permissions": "0700",
    "shared_preload_libraries": "'pg_cron'",
    "cron.database_name": f"'{WAREHOUSE_DB}'",
    # Jobs connect over the private Unix socket (trusted: the directory is 0700), not in
    # background workers: pg_cron 1.4's launcher blocks on a running background worker's
    # queue, so one long job would hold back every other (fixed in pg_cron 1.5).
    "cron.use_background_workers": "off",
    "cron.max_running_jobs": "16",
    "max_worker_processes": "32",
    "max_connections": "200",
    "password_encryption": "'scram-sha-256'",
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
    "shared_buffers": "'256MB'",
    "work_mem": "'32MB'",
    "maintenance_work_mem": "'256MB'",
    "max_wal_size": "'4GB'",
    # Never log statement text with parameters (may carry values from sources).
    "log_min_error_statement": "'panic'",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
}


def pg_bin(name: str) -> str:
    """Path of a PostgreSQL 15 server program (Debian keeps them off PATH)."""
    candidates = [f"/usr/lib/postgresql/{PG_MAJOR}/bin/{name}"] + sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True
    )
    for c in candidates:
        if os.access(c, os.X_OK):
            return c
    found = shutil.which(name)
    if found:
        return found
    raise StackError(
        f"PostgreSQL program {name!r} not found; install it with "
        f"`apt-get install postgresql-{PG_MAJOR} postgresql-{PG_MAJOR}-cron postgresql-{PG_MAJOR}-partman`."
    )


def server_uid_gid(cfg: StackConfig) -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(cfg.server_user)
    except KeyError:
        raise StackError(
            f"OS user {cfg.server_user!r} does not exist; create it (e.g. `useradd --system postgres`) "
            f"or set DWH_SERVER_USER to an unprivileged user."
        ) from None
    return pw.pw_uid, pw.pw_gid


def run_as_server(cfg: StackConfig, argv: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a command as the server's OS user (dropping root when needed)."""
    if os.geteuid() == 0:
        uid, gid = server_uid_gid(cfg)
        kw.update(user=uid, group=gid, extra_groups=[])
        kw.setdefault("env", {**os.environ, "HOME": pwd.getpwuid(uid).pw_dir})
    kw.setdefault("cwd", "/")
    return subprocess.run(argv, **kw)


def chown_to_server(cfg: StackConfig, path: Path, mode: int | None = None) -> None:
    if os.geteuid() == 0:
        uid, gid = server_uid_gid(cfg)
        os.chown(path, uid, gid)
    if mode is not None:
        os.chmod(path, mode)


def check_searchable(cfg: StackConfig, path: Path, purpose: str) -> None:
    """The server user must be able to reach ``path`` through every parent directory."""
    try:
        reader_install.check_searchable(cfg.server_user, path, purpose)
    except DeploymentError as e:
        raise StackError(f"{e} (or set DWH_HOME elsewhere)") from None


class Postgres:
    name = "postgres"

    def __init__(self, cfg: StackConfig):
        self.cfg = cfg

    @property
    def port(self) -> int:
        return self.cfg.pg_port

    @property
    def log_file(self) -> Path:
        return self.cfg.log_file("postgres")

    def pid(self) -> int | None:
        try:
            pid = int((self.cfg.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def is_running(self) -> bool:
        return self.pid() is not None and port_open(self.port)

    # ----- lifecycle ------------------------------------------------------------
    def init(self) -> bool:
        if (self.cfg.pgdata / "PG_VERSION").exists():
            return False
        check_searchable(self.cfg, self.cfg.home, "PostgreSQL")
        for d in (self.cfg.home, self.cfg.log_dir, self.cfg.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.cfg.pgdata.mkdir(mode=0o700, exist_ok=True)
        chown_to_server(self.cfg, self.cfg.pgdata, 0o700)
        chown_to_server(self.cfg, self.cfg.socket_dir, 0o700)
        self.log_file.touch()
        chown_to_server(self.cfg, self.log_file, 0o640)
        result = run_as_server(
            self.cfg,
            [
                pg_bin("initdb"), "-D", str(self.cfg.pgdata), "-U", self.cfg.server_user,
                "--encoding=UTF8", "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256",
            ],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            shutil.rmtree(self.cfg.pgdata, ignore_errors=True)
            raise StackError(f"initdb failed:\n{result.stderr.strip()}")
        self._write_config()
        return True

    def _write_config(self) -> None:
        settings = dict(SERVER_SETTINGS, port=str(self.port), unix_socket_directories=f"'{self.cfg.socket_dir}'",
                        **{"cron.host": f"'{self.cfg.socket_dir}'"})
        conf = "\n".join(f"{k} = {v}" for k, v in settings.items())
        auto = self.cfg.pgdata / "postgresql.auto.conf"
        auto.write_text("# written by dwh (dwh_assets/stack/postgres.py)\n" + conf + "\n")
        hba = self.cfg.pgdata / "pg_hba.conf"
        hba.write_text(
            "# written by dwh: the socket directory is 0700 (server user only);\n"
            "# TCP is loopback-only and always needs a password.\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        for p in (auto, hba):
            chown_to_server(self.cfg, p, 0o600)

    def start(self) -> bool:
        self.init()
        if self.is_running():
            return False
        if port_open(self.port):
            raise StackError(
                f"postgres: port {self.port} is already in use by another program; set DWH_PG_PORT."
            )
        # Port or socket dir may have changed since initdb.
        self._write_config()
        self.cfg.socket_dir.mkdir(parents=True, exist_ok=True)
        chown_to_server(self.cfg, self.cfg.socket_dir, 0o700)
        result = run_as_server(
            self.cfg,
            [pg_bin("pg_ctl"), "-D", str(self.cfg.pgdata), "-l", str(self.log_file), "-w", "-t", "120", "start"],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise StackError(
                f"PostgreSQL did not start: {result.stdout.strip()} {result.stderr.strip()}\n"
                f"last lines of {self.log_file}:\n{tail(self.log_file)}"
            )
        if not wait_until(self.is_running, 30):
            raise StackError(f"PostgreSQL started but does not answer on port {self.port}")
        return True

    def stop(self, mode: str = "fast") -> bool:
        if self.pid() is None:
            return False
        result = run_as_server(
            self.cfg,
            [pg_bin("pg_ctl"), "-D", str(self.cfg.pgdata), "-m", mode, "-w", "-t", "60", "stop"],
            capture_output=True, text=True,
        )
        if result.returncode != 0 and self.pid() is not None:
            raise StackError(f"pg_ctl stop failed: {result.stderr.strip()}")
        return True

    # ----- provisioning -----------------------------------------------------------
    def connect(self, dbname: str = "postgres", **kw) -> psycopg.Connection:
        return psycopg.connect(self.cfg.superuser_dsn(dbname), autocommit=True, **kw)

    def provision(self) -> list[str]:
        """The demo's roles (with passwords) and the databases; idempotent. Returns what it created."""
        created: list[str] = []
        pw = secrets.passwords(self.cfg)
        secrets.write_pgpass(self.cfg)
        with self.connect() as conn:
            for role in (CONTROL_PLANE_READER_ROLE, DAGSTER_ROLE, SUPERSET_ROLE):
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
                verb = "ALTER" if exists else "CREATE"
                verifier = conn.pgconn.encrypt_password(pw[role].encode(), role.encode(), b"scram-sha-256").decode()
                conn.execute(
                    sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(sql.SQL(verb), sql.Identifier(role), sql.Literal(verifier))
                )
                if not exists:
                    created.append(f"role {role}")
            for db, owner in ((WAREHOUSE_DB, self.cfg.server_user), (CONTROL_PLANE_DB, self.cfg.server_user),
                              (DAGSTER_DB, DAGSTER_ROLE), (SUPERSET_DB, SUPERSET_ROLE)):
                if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
                    conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(owner)))
                    created.append(f"database {db}")
            # Nobody but the owners connects unless granted (`dwh migrate` grants the warehouse's roles).
            for db in (WAREHOUSE_DB, CONTROL_PLANE_DB, DAGSTER_DB, SUPERSET_DB):
                conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(CONTROL_PLANE_DB), sql.Identifier(CONTROL_PLANE_READER_ROLE)
                )
            )
        return created
