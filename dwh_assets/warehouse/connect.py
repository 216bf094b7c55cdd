"""Connections to the warehouse of a deployment, as each of its roles.

Conninfo strings are built with libpq's own quoting (``psycopg.conninfo.make_conninfo``)
and never hold a password: a configured password is passed to ``psycopg.connect`` as a
parameter, and a DSN meant for other programs (Dagster, psql) names a ``passfile`` instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import psycopg
from psycopg.conninfo import make_conninfo

from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.deployment import DeploymentConfig, DeploymentError, Login, check_private

Purpose = Literal["admin", "owner", "loader", "reader"]
GROUPS = {"owner": catalog.OWNER_GROUP, "loader": catalog.LOADER_GROUP, "reader": catalog.READER_GROUP}
APPLICATION_NAME = "dwh"


def login(cfg: DeploymentConfig, purpose: Purpose) -> Login:
    return cfg.warehouse.admin if purpose == "admin" else cfg.logins()[purpose]


def conninfo(cfg: DeploymentConfig, purpose: Purpose, database: str | None = None, **extra: str) -> str:
    """A libpq conninfo for ``purpose``'s login: no password, the passfile if one is configured."""
    who = login(cfg, purpose)
    params: dict[str, str] = {
        "host": who.host or cfg.warehouse.host,
        "port": str(cfg.warehouse.port),
        "dbname": database or cfg.warehouse.database,
        "user": who.user,
        "sslmode": cfg.warehouse.sslmode,
    }
    if cfg.warehouse.passfile is not None:
        params["passfile"] = str(cfg.warehouse.passfile)
    params.update(extra)
    return make_conninfo(**params)


def connect(cfg: DeploymentConfig, purpose: Purpose, database: str | None = None, *,
            autocommit: bool = True, **kwargs) -> psycopg.Connection:
    """Connect as ``purpose``; a failure says which login, server and database could not be reached."""
    who = login(cfg, purpose)
    password = who.secret()
    if password is not None:
        kwargs["password"] = password
    info = conninfo(cfg, purpose, database)
    try:
        return psycopg.connect(info, autocommit=autocommit, connect_timeout=10,
                               application_name=f"{APPLICATION_NAME}_{purpose}", **kwargs)
    except psycopg.OperationalError as e:
        reason = " ".join(str(e).split())
        raise DeploymentError(
            f"cannot connect to {who.host or cfg.warehouse.host}:{cfg.warehouse.port} database "
            f"{database or cfg.warehouse.database!r} as {who.user} (the {purpose} role): {reason}"
        ) from None


# Dagster's own switches, which every Dagster process reads from its environment. A range run
# records a materialization per partition and asset, dagster-postgres opens a connection for each
# write, and by default it also plans the run with an event per partition: the first load of a
# year (six daily-partitioned assets) wrote ~4,400 events over ~13,000 connections, minutes of
# the run (benchmarks/README.md, B8). With these, each step's materializations are written as
# one batch and a range run is planned with one event per asset. The cost, as Dagster documents
# it: the partitions of a range run that fails show as missing rather than failed (the run is
# failed, and the checks and the pg_cron sensor report as before).
DAGSTER_INSTANCE_ENV = {
    "DAGSTER_EVENT_BATCH_SIZE": "1000",
    "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
}


def passfile(cfg: DeploymentConfig) -> Path:
    """The passfile libpq reads for this deployment's DSNs: warehouse.passfile, else PGPASSFILE, else ~/.pgpass."""
    if cfg.warehouse.passfile is not None:
        return Path(cfg.warehouse.passfile).expanduser()
    return Path(os.environ.get("PGPASSFILE") or Path.home() / ".pgpass")


def _pgpass_fields(line: str) -> list[str]:
    """One passfile line split at unescaped colons (backslash escapes ``:`` and ``\\``)."""
    fields, current, escaped = [], [], False
    for char in line:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def passfile_password(path: Path, host: str, port: int, database: str, user: str) -> str | None:
    """The password libpq would take from ``path`` for this connection (its first matching line)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    wanted = (host, str(port), database, user)
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = _pgpass_fields(line)
        if len(fields) >= 5 and all(f in ("*", w) for f, w in zip(fields[:4], wanted)):
            return ":".join(fields[4:])
    return None


def login_password(cfg: DeploymentConfig, purpose: Purpose, database: str | None = None) -> str:
    """The password of ``purpose``'s login, from its configuration or the passfile; a sentence if none."""
    who = login(cfg, purpose)
    password = who.secret()
    if password is None:
        password = passfile_password(passfile(cfg), who.host or cfg.warehouse.host, cfg.warehouse.port,
                                     database or cfg.warehouse.database, who.user)
    if password is None:
        raise DeploymentError(
            f"no password for {who.user} (the {purpose} login): set warehouse.{purpose}.password_file, or add its line "
            f"to the passfile {passfile(cfg)} (host:port:database:{who.user}:password)")
    return password


def check_passfile(cfg: DeploymentConfig, purposes: tuple[Purpose, ...] = ("loader", "reader")) -> list[str]:
    """Dagster's and the analysts' DSNs name the passfile and no password: it must exist, be private, know them."""
    path = passfile(cfg)
    if not path.is_file():
        return [f"the passfile {path} does not exist: the DSNs of `dwh env` name it (Dagster would fail with "
                f"'no password supplied'); create it with one line per login, "
                f"host:port:database:user:password, mode 0600, or set warehouse.passfile"]
    try:
        check_private(path, "the passfile of the warehouse logins")
    except DeploymentError as e:
        return [str(e)]
    problems = []
    for purpose in purposes:
        who = login(cfg, purpose)
        host = who.host or cfg.warehouse.host
        if passfile_password(path, host, cfg.warehouse.port, cfg.warehouse.database, who.user) is None:
            problems.append(f"the passfile {path} has no line for {who.user} (the {purpose} login): add "
                            f"{host}:{cfg.warehouse.port}:{cfg.warehouse.database}:{who.user}:<password>")
    return problems


def dagster_env(cfg: DeploymentConfig) -> dict[str, str]:
    """What Dagster needs: the code location's loader DSN and first day of history, and the instance's switches."""
    # The names live with the code location's settings; imported here, so that the other
    # dwh commands do not load Dagster.
    from dwh_assets.warehouse.defs.settings import (
        ALERTS_LABEL,
        ALERTS_TIMEOUT_SECONDS,
        ALERTS_WEBHOOK_URL_FILE,
        HISTORY_START,
        WAREHOUSE_DSN,
    )

    values = {
        WAREHOUSE_DSN.env_var_name: conninfo(cfg, "loader"),
        HISTORY_START.env_var_name: cfg.history.start.isoformat(),
        **DAGSTER_INSTANCE_ENV,
    }
    if cfg.alerts.enabled:
        # The file's path only: a URL given in the environment stays there, never printed.
        if cfg.alerts.webhook_url_file is not None:
            values[ALERTS_WEBHOOK_URL_FILE.env_var_name] = str(cfg.alerts.webhook_url_file)
        values[ALERTS_LABEL.env_var_name] = cfg.alerts.label or cfg.warehouse.database
        values[ALERTS_TIMEOUT_SECONDS.env_var_name] = str(cfg.alerts.timeout_seconds)
    return values


def analyst_env(cfg: DeploymentConfig) -> dict[str, str]:
    """The read-only DSN for people and dashboards (dwh and mart only)."""
    return {"DWH_READER_DSN": conninfo(cfg, "reader")}


def shell_env(cfg: DeploymentConfig, bin_dir: str, path: str) -> dict[str, str]:
    """`dwh env --config`: the code location's, the analysts' and Dagster's instance variables, ``bin_dir`` first on PATH."""
    values = dagster_env(cfg) | analyst_env(cfg) | {
        "DAGSTER_HOME": str(cfg.dagster.home),
        "DWH_DAGSTER_PG_URL": cfg.dagster.url(cfg.warehouse),
        # dagster-postgres' URL names no password: libpq reads it from here.
        "PGPASSFILE": str(passfile(cfg)),
    }
    parts = [p for p in path.split(os.pathsep) if p]
    values["PATH"] = os.pathsep.join([bin_dir] + [p for p in parts if p != bin_dir])
    return values
