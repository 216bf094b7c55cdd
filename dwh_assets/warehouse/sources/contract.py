"""The sources' contracts, checked from where the data will flow: the warehouse server.

Before ``dwh migrate`` changes anything, its trial transaction (rolled back, ``bootstrap``)
creates a throwaway postgres_fdw server for each Postgres source the warehouse will read —
the control plane, and the relay when a backend is ``relay`` — and reads the source's
``information_schema.columns`` through it. So one query proves that the warehouse server
reaches the source, that the login and its password are right, and that every table and
column the routines read is there with its type (``catalog.CONTROL_PLANE_CONTRACT``; the
relay's tables follow ``foreign_tables.CLERK_COLUMNS`` and ``PROMETHEUS_COLUMNS``). Each
failure is one sentence naming the login, table or column and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.deployment import DeploymentConfig, DeploymentError
from dwh_assets.warehouse.sources import foreign_tables

CONTRACT_DOC = "docs/source-contract.md"
# information_schema spells some types differently from the DDL.
_DATA_TYPES = {"float8": "double precision"}


@dataclass(frozen=True)
class PostgresSource:
    """A Postgres the warehouse reads through postgres_fdw, and what it must hold."""

    what: str  # "the control plane", "the relay"
    host: str
    port: int
    database: str
    sslmode: str
    user: str
    password_setting: str  # where the password comes from, for the fix
    contract: dict[str, dict[str, str]]  # schema.table -> column -> information_schema data_type
    fix: str  # what to do when a table or column is missing
    # Where the columns are listed: the source's information_schema.columns, or, for the
    # control plane through the relay, the relay's foreign table of it (sources/relay.py).
    columns_table: tuple[str, str] = ("information_schema", "columns")


def relay_contract(cfg: DeploymentConfig) -> dict[str, dict[str, str]]:
    """What the relay serves the warehouse: the reader's tables, and the control plane's when it goes through it."""
    contract: dict[str, dict[str, str]] = {}
    if "clerk" in cfg.relay_sources():
        for table, columns in foreign_tables.CLERK_COLUMNS.items():
            contract[f"src_clerk.{table}"] = {c: _DATA_TYPES.get(t, t) for c, t in columns}
    if "prometheus" in cfg.relay_sources():
        contract["src_prometheus.metrics"] = {c: _DATA_TYPES.get(t, t) for c, t in foreign_tables.PROMETHEUS_COLUMNS}
    return contract


def sources(cfg: DeploymentConfig) -> list[PostgresSource]:
    """The Postgres sources whose reach, login and contract the trial checks."""
    found = []
    if not cfg.control_plane.via_relay:
        cp = cfg.control_plane
        found.append(PostgresSource(
            "the control plane", cp.host, cp.port, cp.database, cp.sslmode, cp.user,
            "control_plane.password_file (or DWH_CONTROL_PLANE__PASSWORD)", catalog.CONTROL_PLANE_CONTRACT,
            f"the control plane must hold it for the warehouse ({CONTRACT_DOC}), readable by {cp.user}"))
    relay = cfg.relay
    password_setting = "relay.password_file (or DWH_RELAY__PASSWORD)"
    if relay_contract(cfg):
        found.append(PostgresSource(
            "the relay", relay.host, relay.port, relay.database, relay.sslmode, relay.user, password_setting,
            relay_contract(cfg), "run `dwh relay install --config FILE` on the relay's host (it serves these tables)"))
    if cfg.control_plane.via_relay:
        cp = cfg.control_plane
        found.append(PostgresSource(
            "the control plane (through the relay)", relay.host, relay.port, relay.database, relay.sslmode, relay.user,
            password_setting, catalog.CONTROL_PLANE_CONTRACT,
            f"the control plane must hold it for the warehouse ({CONTRACT_DOC}), readable by {cp.user}; "
            "then rerun `dwh relay install` (the relay imports its tables)", RELAY_CONTROL_PLANE_COLUMNS))
    return found


# The relay's foreign table of the control plane's information_schema.columns (control_plane.via_relay).
RELAY_CONTROL_PLANE_COLUMNS = ("dwh", "control_plane_columns")


def contract_problems(source: PostgresSource, columns: list[tuple[str, str, str, str]]) -> list[str]:
    """Every table or column of ``source.contract`` that ``columns`` (schema, table, column, type) lacks or mistypes."""
    have = {(f"{schema}.{table}", column): data_type for schema, table, column, data_type in columns}
    tables = {relation for relation, _ in have}
    problems = []
    for relation, wanted in source.contract.items():
        if relation not in tables:
            problems.append(f"{source.what}: table {relation} is missing or not readable by {source.user}: {source.fix}")
            continue
        for column, data_type in wanted.items():
            actual = have.get((relation, column))
            accepted = catalog.CONTRACT_COMPATIBLE_TYPES.get(data_type, (data_type,))
            if actual is None:
                problems.append(f"{source.what}: column {relation}.{column} ({data_type}) is missing: {source.fix}")
            elif actual not in accepted:
                problems.append(f"{source.what}: column {relation}.{column} is {actual}, the warehouse reads it as "
                                f"{data_type}: {source.fix}")
    return problems


def check_all(conn: psycopg.Connection, cfg: DeploymentConfig) -> list[str]:
    """Every source's check; a login that failed once is not tried again for the next source on the same server."""
    problems: list[str] = []
    failed: set[tuple] = set()
    for source in sources(cfg):
        login = (source.host, source.port, source.database, source.user)
        password = source_password(cfg, source)
        if password is None or login in failed:  # preflight, or the line before, has said so
            continue
        found = check_through_server(conn, source, password)
        if found and found[0].startswith("the warehouse server cannot read"):
            failed.add(login)
        problems += found
    return problems


def check_through_server(conn: psycopg.Connection, source: PostgresSource, password: str) -> list[str]:
    """Inside a transaction that will be rolled back: read the source's columns as the warehouse server would."""
    schemas = sorted({relation.split(".")[0] for relation in source.contract})
    try:
        with conn.transaction():
            conn.execute(sql.SQL("CREATE SERVER dwh_contract_check FOREIGN DATA WRAPPER postgres_fdw {}").format(
                foreign_tables.server_options(source.host, source.port, source.database, source.sslmode)))
            conn.execute(sql.SQL("CREATE USER MAPPING FOR CURRENT_USER SERVER dwh_contract_check OPTIONS (user {}, password {})")
                         .format(sql.Literal(source.user), sql.Literal(password)))
            conn.execute(sql.SQL("CREATE FOREIGN TABLE pg_temp.dwh_contract_columns (table_schema text, table_name text, "
                                 "column_name text, data_type text) SERVER dwh_contract_check "
                                 "OPTIONS (schema_name {}, table_name {})").format(*map(sql.Literal, source.columns_table)))
            columns = conn.execute("SELECT table_schema, table_name, column_name, data_type FROM pg_temp.dwh_contract_columns "
                                   "WHERE table_schema = ANY(%s)", (schemas,)).fetchall()
            conn.execute("DROP SERVER dwh_contract_check CASCADE")
    except psycopg.Error as e:
        # postgres_fdw puts the cause (refused, password, timeout) in DETAIL.
        reason = ": ".join(filter(None, (e.diag.message_primary or str(e), e.diag.message_detail)))
        return [unreachable(source, " ".join(reason.split()))]
    return contract_problems(source, columns)


def unreachable(source: PostgresSource, reason: str) -> str:
    where = f"{source.host}:{source.port} database {source.database!r} as {source.user}"
    if "password authentication failed" in reason or "password is required" in reason:
        fix = f"check {source.password_setting}"
    else:
        fix = (f"check that {source.what} accepts connections from the warehouse server (host, port, firewall, "
               "pg_hba.conf)")
    return f"the warehouse server cannot read {source.what} at {where}: {reason}; {fix}"


def source_password(cfg: DeploymentConfig, source: PostgresSource) -> str | None:
    """The source's password, or None when the configuration has none (reported by the caller's preflight)."""
    try:
        return cfg.relay.secret() if source.host == cfg.relay.host and source.port == cfg.relay.port \
            and source.database == cfg.relay.database else cfg.control_plane.secret()
    except DeploymentError:
        return None
