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


def dagster_env(cfg: DeploymentConfig) -> dict[str, str]:
    """What the Dagster code location needs: the loader's DSN and the first day of history."""
    # The names live with the code location's settings; imported here, so that the other
    # dwh commands do not load Dagster.
    from dwh_assets.warehouse.defs.settings import HISTORY_START, WAREHOUSE_DSN

    return {
        WAREHOUSE_DSN.env_var_name: conninfo(cfg, "loader"),
        HISTORY_START.env_var_name: cfg.history.start.isoformat(),
    }


def analyst_env(cfg: DeploymentConfig) -> dict[str, str]:
    """The read-only DSN for people and dashboards (dwh and mart only)."""
    return {"DWH_READER_DSN": conninfo(cfg, "reader")}
