"""The relay: the reader backend on a small self-hosted Postgres, for a warehouse that runs no program.

A managed warehouse (RDS, Cloud SQL, Azure) grants no ``pg_execute_server_program`` and
installs no custom extension, so it cannot run the source reader that reads Clerk and
Prometheus. The relay can: a Postgres the data team runs next to Dagster, whose database
(``relay.database``) holds the reader backend's foreign tables (file_fdw + the reader, the
same DDL as the warehouse's reader backend), ``dwh.relay_metrics_window`` for Prometheus
windows and ``dwh.relay_metric_day_counts`` for the daily reconciliation's counts, and, with
``control_plane.via_relay``, its own import of the control plane. It holds no data: every
read runs through to the source when the warehouse asks.

The warehouse reads it as ``relay.user``: postgres_fdw imports the tables
(``foreign_tables.relay_ddl``), and the metrics refresh passes its window with dblink
(``read_metrics_window.sql``). Still SQL scheduled by pg_cron in the warehouse; the one
network need is the warehouse server -> the relay's port.

``dwh relay install --config FILE``, run on the relay's host (as root or the relay
server's OS user, like ``dwh reader install``), installs the reader there, then — as
``relay.admin``, a superuser of the relay — everything in one transaction, and proves the
reader runs through the relay's server. Installing again rewrites it all.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from dwh_assets.warehouse.bootstrap import password_verifier
from dwh_assets.warehouse.deployment import DeploymentConfig, DeploymentError
from dwh_assets.warehouse.sources import foreign_tables, reader_install
from dwh_assets.warehouse.sql_files import ROUTINES_DIR

# Owns the relay's objects; may run the reader (pg_execute_server_program). Never logs in.
RELAY_OWNER = "dwh_relay_owner"
SCHEMAS = ("dwh", "src_clerk", "src_prometheus", "src_control_plane")
# The warehouse's routine files the relay needs: settings and quoting, the reader's
# failure sentences, the metrics window.
ROUTINE_FILES = ("00_settings.sql", "00_source_failure.sql", "read_metrics_window.sql")
# What the warehouse calls through dblink: a Prometheus window, and the per-day sample counts
# the daily reconciliation compares.
RELAY_FUNCTIONS = ("dwh.relay_metrics_window(timestamptz, timestamptz, int, text[])",
                   "dwh.relay_metric_day_counts(date, date, int, text[])")


def connect_admin(cfg: DeploymentConfig) -> psycopg.Connection:
    relay, admin = cfg.relay, cfg.relay.admin
    kwargs = {"password": admin.secret()} if admin.secret() is not None else {}
    try:
        return psycopg.connect(host=admin.host or relay.host, port=relay.port, dbname=relay.database, user=admin.user,
                               sslmode=relay.sslmode, connect_timeout=10, application_name="dwh_relay_install",
                               autocommit=True, **kwargs)
    except psycopg.OperationalError as e:
        raise DeploymentError(
            f"cannot connect to the relay at {relay.host}:{relay.port} database {relay.database!r} as {admin.user} "
            f"(relay.admin, a superuser of the relay): {' '.join(str(e).split())}") from None


def settings(cfg: DeploymentConfig) -> dict[str, str]:
    """The relay's dwh.settings: what its routines read (the reader's command). No secrets."""
    return {"reader.command": reader_install.reader_program(cfg), "backend.prometheus": "reader"}


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _roles(conn: psycopg.Connection, cfg: DeploymentConfig) -> None:
    owner, login = _ident(RELAY_OWNER), _ident(cfg.relay.user)
    existing = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
                                           ([RELAY_OWNER, cfg.relay.user],)).fetchall()}
    if RELAY_OWNER not in existing:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(owner))
    verifier = sql.Literal(password_verifier(conn)(cfg.relay.user, cfg.relay.secret()))
    verb = "ALTER" if cfg.relay.user in existing else "CREATE"
    # The warehouse's user mappings hold this password: keep the role's equal to the configuration's.
    conn.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(login, verifier))
    conn.execute(sql.SQL("GRANT pg_execute_server_program TO {}").format(owner))
    conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(_ident(cfg.relay.database), owner))
    conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(_ident(cfg.relay.database), login))
    for fdw in ("file_fdw", "postgres_fdw"):
        conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(_ident(fdw)))
        conn.execute(sql.SQL("GRANT USAGE ON FOREIGN DATA WRAPPER {} TO {}").format(_ident(fdw), owner))


def _objects(conn: psycopg.Connection, cfg: DeploymentConfig) -> None:
    """As the relay's owner: schemas, settings, routines, the reader's tables, the control plane's."""
    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(_ident(RELAY_OWNER)))
    for schema in SCHEMAS:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_ident(schema)))
    conn.execute("CREATE TABLE IF NOT EXISTS dwh.settings (key text PRIMARY KEY, value text NOT NULL)")
    conn.execute("DELETE FROM dwh.settings")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO dwh.settings (key, value) VALUES (%s, %s)", list(settings(cfg).items()))
    for name in ROUTINE_FILES:
        conn.execute((ROUTINES_DIR / name).read_text())
    ddl = foreign_tables.reader_ddl(cfg, backend="relay")
    if cfg.control_plane.via_relay:
        ddl += foreign_tables.control_plane_ddl(cfg, readers=(RELAY_OWNER, cfg.relay.user))
        # What `dwh migrate` checks the control plane's contract against (sources/contract.py).
        ddl.add("CREATE FOREIGN TABLE dwh.control_plane_columns (table_schema text, table_name text, column_name text, "
                "data_type text) SERVER control_plane OPTIONS (schema_name 'information_schema', table_name 'columns')")
    else:
        ddl.add("DROP SERVER IF EXISTS control_plane CASCADE")
    for statement in ddl.statements:
        conn.execute(statement)
    conn.execute("RESET ROLE")


def _grants(conn: psycopg.Connection, cfg: DeploymentConfig) -> None:
    """The relay login reads the sources and calls the Prometheus functions, nothing else."""
    login = _ident(cfg.relay.user)
    conn.execute(sql.SQL("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA dwh FROM PUBLIC"))
    conn.execute(sql.SQL("REVOKE ALL ON dwh.settings FROM PUBLIC"))
    for schema in SCHEMAS:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(_ident(schema), login))
    for schema in SCHEMAS[1:]:
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(_ident(schema), login))
    if cfg.control_plane.via_relay:
        conn.execute(sql.SQL("GRANT SELECT ON dwh.control_plane_columns TO {}").format(login))
    for function in RELAY_FUNCTIONS:
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(function), login))


def _check_reader(conn: psycopg.Connection, cfg: DeploymentConfig) -> None:
    """The reader's self-check, run by the relay's server as its owner would run it."""
    check = reader_install.check_command(cfg)
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(_ident(RELAY_OWNER)))
            conn.execute("CREATE TEMP TABLE dwh_reader_check (line text) ON COMMIT DROP")
            conn.execute(check)
            lines = [r[0] for r in conn.execute("SELECT line FROM dwh_reader_check").fetchall()]
    except psycopg.Error as e:
        raise DeploymentError(reader_install.not_installed(cfg, e.diag.message_primary or str(e))) from None
    if lines != ["ok"]:
        raise DeploymentError(reader_install.not_installed(cfg, "; ".join(lines) or "it printed nothing"))


def install_relay(cfg: DeploymentConfig) -> list[str]:
    """Install the reader on this host and the relay's database objects; returns what the relay serves."""
    if not cfg.uses_relay():
        raise DeploymentError("no source uses the relay: set clerk.backend or prometheus.backend = \"relay\" "
                              "(or control_plane.via_relay = true) first")
    reader_install.install_reader(cfg)
    with connect_admin(cfg) as conn:
        with conn.transaction():
            _roles(conn, cfg)
            _objects(conn, cfg)
            _grants(conn, cfg)
        _check_reader(conn, cfg)
    return [foreign_tables.RELAY_SCHEMAS[source] for source in cfg.relay_sources()]
