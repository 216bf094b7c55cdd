"""Connections to the warehouse of a deployment, as each of its roles.

Conninfo strings are built with libpq's own quoting (``psycopg.conninfo.make_conninfo``)
and never hold a password: a configured password is passed to ``psycopg.connect`` as a
parameter, and a DSN meant for other programs (Dagster, psql) names a ``passfile`` instead.
"""

from __future__ import annotations

from typing import Literal

import psycopg
from psycopg.conninfo import make_conninfo

from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.deployment import DeploymentConfig, DeploymentError, Login

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


def dagster_env(cfg: DeploymentConfig) -> dict[str, str]:
    """What Dagster needs: the code location's loader DSN and first day of history, and the instance's switches."""
    return {
        "DWH_WAREHOUSE_DSN": conninfo(cfg, "loader"),
        "DWH_HISTORY_START": cfg.history.start.isoformat(),
        **DAGSTER_INSTANCE_ENV,
    }


def analyst_env(cfg: DeploymentConfig) -> dict[str, str]:
    """The read-only DSN for people and dashboards (dwh and mart only)."""
    return {"DWH_READER_DSN": conninfo(cfg, "reader")}
