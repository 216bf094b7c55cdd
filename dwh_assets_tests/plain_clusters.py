"""Plain PostgreSQL 15 clusters for the production-like tests, made the way a DBA would.

``initdb`` and ``pg_ctl`` run as the server's OS user (``postgres`` when the tests run as
root); every connection, socket or TCP, needs a SCRAM password (no trust anywhere); the
server listens on 127.0.0.1 only, on a free port. Nothing of ``dwh_assets.local`` runs
these servers: only the path of the PostgreSQL binaries is shared.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from dwh_assets.local.config import free_port
from dwh_assets.local.postgres import pg_bin


def server_user() -> pwd.struct_passwd:
    return pwd.getpwnam("postgres") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())


def as_server(argv: list[str], **kw) -> subprocess.CompletedProcess:
    user = server_user()
    if os.geteuid() == 0:
        kw.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    return subprocess.run(argv, cwd="/", capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": user.pw_dir, "LC_ALL": "C.UTF-8"}, **kw)


def private_file(path: Path, text: str, owner: pwd.struct_passwd | None = None) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    if owner is not None and os.geteuid() == 0:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return path


@dataclass
class PlainCluster:
    name: str
    settings: dict[str, str] = field(default_factory=dict)
    superuser: str = "postgres"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    port: int = field(default_factory=free_port)

    def __post_init__(self):
        self.home = Path(tempfile.mkdtemp(prefix=f"dwh-plain-{self.name}-", dir="/tmp"))
        self.home.chmod(0o755)
        self.data = self.home / "data"
        self.socket_dir = self.home / "run"

    def init(self) -> PlainCluster:
        owner = server_user()
        for directory in (self.data, self.socket_dir):
            directory.mkdir(mode=0o700)
            if os.geteuid() == 0:
                os.chown(directory, owner.pw_uid, owner.pw_gid)
        pwfile = private_file(self.home / "superuser.pw", self.password + "\n", owner)
        as_server([pg_bin("initdb"), "-D", str(self.data), "-U", self.superuser, f"--pwfile={pwfile}",
                   "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8"])
        pwfile.unlink()
        conf = {
            "listen_addresses": "'127.0.0.1'", "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'", "timezone": "'UTC'",
            "password_encryption": "'scram-sha-256'", **self.settings,
        }
        with open(self.data / "postgresql.auto.conf", "a") as f:
            f.writelines(f"{key} = {value}\n" for key, value in conf.items())
        return self

    def start(self) -> PlainCluster:
        as_server([pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.data / "server.log"), "-w", "-t", "60", "start"])
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            as_server([pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def connect(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, dbname=dbname, user=user or self.superuser,
                               password=password or self.password, autocommit=True, sslmode="disable")

    def log(self) -> str:
        try:
            return (self.data / "server.log").read_text(errors="replace")
        except OSError:
            return ""
