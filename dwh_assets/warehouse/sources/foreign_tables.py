"""DDL of the source foreign tables, per backend (README, "Source backends").

The column contracts are the public FDWs' (clerk_fdw, prometheus_fdw): whichever backend
serves them, the refresh routines read the same names and columns.

- ``reader`` (default): file_fdw tables whose ``program`` runs the project's source reader
  as the database server's OS user. The static ``src_prometheus.metrics`` holds the last
  ``RECENT_METRICS_SECONDS`` (for people and checks); the metrics refresh makes a
  temporary foreign table per window instead (sql/routines/read_metrics_window.sql).
- ``tembo``: the ``clerk_fdw`` / ``prometheus_fdw`` extensions (``tembo_*_ddl``). They can't be
  installed here, so this DDL is unit-tested (dwh_assets_tests/test_tembo_backend.py), never run.
- ``relay``: postgres_fdw tables imported from the relay, a self-hosted Postgres that serves
  the reader backend's tables (``sources/relay.py`` installs it); Prometheus windows are
  read with dblink, calling the relay's ``dwh.relay_metrics_window`` (read_metrics_window.sql).
- The control plane is always postgres_fdw + ``IMPORT FOREIGN SCHEMA``, directly or, with
  ``control_plane.via_relay``, from the relay's own import of it.
- pg_cron's tables, where pg_cron lives in another database: ``cron_history_ddl``.

Everything that reaches a ``program`` string is shell-quoted (``reader_program``) here or
validated and quoted by ``dwh.reader_command`` in SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg import sql

from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.deployment import DeploymentConfig
from dwh_assets.warehouse.sources.reader_install import reader_program

CLERK_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "users": [
        ("user_id", "text"), ("first_name", "text"), ("last_name", "text"), ("email", "text"),
        ("gender", "text"), ("created_at", "bigint"), ("updated_at", "bigint"),
        ("last_sign_in_at", "bigint"), ("phone_numbers", "bigint"), ("username", "text"), ("attrs", "jsonb"),
    ],
    "organizations": [
        ("organization_id", "text"), ("name", "text"), ("slug", "text"), ("created_at", "bigint"),
        ("updated_at", "bigint"), ("created_by", "text"), ("attrs", "jsonb"),
    ],
    "organization_memberships": [
        ("user_id", "text"), ("organization_id", "text"), ("role", "text"), ("attrs", "jsonb"),
    ],
}
PROMETHEUS_COLUMNS = [
    ("metric_name", "text"), ("metric_labels", "jsonb"), ("metric_time", "bigint"), ("metric_value", "float8"),
]
# The window src_prometheus.metrics shows with the reader backend: [now - this, now).
RECENT_METRICS_SECONDS = 86400
# Sources whose backend is configurable (clerk.backend, prometheus.backend), and the backends.
SOURCES = ("clerk", "prometheus")
BACKENDS = ("reader", "tembo", "relay")


@dataclass
class SourceDDL:
    """Statements to (re)create the source layer; ``fingerprint`` makes re-runs no-ops.

    ``superuser`` holds what only a superuser may run (extensions, foreign data wrappers,
    catalog privileges): ``dwh migrate`` runs it as the admin role with the bootstrap, idempotently.
    """

    statements: list[sql.Composable] = field(default_factory=list)
    superuser: list[sql.Composable] = field(default_factory=list)

    def add(self, template: str, *args, **kwargs) -> None:
        self.statements.append(sql.SQL(template).format(*args, **kwargs))

    def add_superuser(self, template: str, *args, **kwargs) -> None:
        self.superuser.append(sql.SQL(template).format(*args, **kwargs))

    def __iadd__(self, other: SourceDDL) -> SourceDDL:
        self.statements += other.statements
        self.superuser += other.superuser
        return self


def _columns(cols: list[tuple[str, str]]) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in cols)


def server_options(host: str, port: int, database: str, sslmode: str) -> sql.Composable:
    """postgres_fdw server options: fetch_size for fewer round trips on large windows; timeouts so a dead source fails fast."""
    return sql.SQL(
        "OPTIONS (host {}, port {}, dbname {}, sslmode {}, fetch_size '10000', connect_timeout '10', "
        "application_name 'dwh_warehouse', keepalives_idle '30')"
    ).format(sql.Literal(host), sql.Literal(str(port)), sql.Literal(database), sql.Literal(sslmode))


def _postgres_server(ddl: SourceDDL, server: str, options: sql.Composable, user: str, password: str,
                     roles: tuple[str, ...]) -> None:
    ddl.add("DROP SERVER IF EXISTS {} CASCADE", sql.Identifier(server))
    ddl.add("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw {}", sql.Identifier(server), options)
    # User mapping options are visible to the mapped role (with USAGE on the server) and superusers only.
    for role in dict.fromkeys(roles):
        ddl.add("CREATE USER MAPPING FOR {} SERVER {} OPTIONS (user {}, password {})",
                sql.Identifier(role), sql.Identifier(server), sql.Literal(user), sql.Literal(password))


def _source_readers(cfg: DeploymentConfig) -> tuple[str, ...]:
    # The routines run as the owner's privilege role (SECURITY DEFINER); the loader reads the sources directly for checks.
    return (catalog.OWNER_GROUP, cfg.warehouse.loader.user)


def control_plane_ddl(cfg: DeploymentConfig, readers: tuple[str, ...] | None = None) -> SourceDDL:
    """The control plane's server and tables, for the warehouse, or with ``readers`` for the relay."""
    cp = cfg.control_plane
    ddl = SourceDDL()
    if cp.via_relay and readers is None:
        ddl.add("DROP SERVER IF EXISTS control_plane CASCADE")
        return ddl  # relay_ddl imports it from the relay
    _postgres_server(ddl, "control_plane", server_options(cp.host, cp.port, cp.database, cp.sslmode),
                     cp.user, cp.secret(), readers or _source_readers(cfg))
    for remote_schema, only in catalog.CONTROL_PLANE_IMPORTS.items():
        limit = sql.SQL("")
        if only:
            limit = sql.SQL(" LIMIT TO ({})").format(sql.SQL(", ").join(map(sql.Identifier, only)))
        ddl.add(
            "IMPORT FOREIGN SCHEMA {}{} FROM SERVER control_plane INTO src_control_plane",
            sql.Identifier(remote_schema), limit,
        )
    return ddl


def reader_ddl(cfg: DeploymentConfig, backend: str = "reader") -> SourceDDL:
    """The file_fdw server and the tables of the sources whose backend is ``backend``.

    ``reader``: in the warehouse; ``relay``: in the relay's database (``sources/relay.py``).
    """
    ddl = SourceDDL()
    ddl.add("DROP SERVER IF EXISTS dwh_reader CASCADE")
    if backend not in cfg.backends().values():
        return ddl
    ddl.add("CREATE SERVER dwh_reader FOREIGN DATA WRAPPER file_fdw")
    if cfg.clerk.backend == backend:
        _reader_clerk_tables(ddl, cfg)
    if cfg.prometheus.backend == backend:
        _reader_prometheus_table(ddl, cfg)
    return ddl


RELAY_SERVER = "dwh_relay"
# Where the relay keeps what the warehouse imports (the same schema names on both sides).
RELAY_SCHEMAS = {"clerk": "src_clerk", "prometheus": "src_prometheus", "control_plane": "src_control_plane"}


def relay_ddl(cfg: DeploymentConfig) -> SourceDDL:
    """The warehouse's side of the relay: a postgres_fdw server and the relay's tables, imported."""
    ddl = SourceDDL()
    if not cfg.uses_relay():
        ddl.add("DROP SERVER IF EXISTS {} CASCADE", sql.Identifier(RELAY_SERVER))
        return ddl
    relay = cfg.relay
    _postgres_server(ddl, RELAY_SERVER, server_options(relay.host, relay.port, relay.database, relay.sslmode),
                     relay.user, relay.secret(), _source_readers(cfg))
    for source in cfg.relay_sources():
        schema = sql.Identifier(RELAY_SCHEMAS[source])
        only = {"clerk": tuple(CLERK_COLUMNS), "prometheus": ("metrics",)}.get(source)
        limit = sql.SQL(" LIMIT TO ({})").format(sql.SQL(", ").join(map(sql.Identifier, only))) if only else sql.SQL("")
        ddl.add("IMPORT FOREIGN SCHEMA {}{} FROM SERVER {} INTO {}", schema, limit, sql.Identifier(RELAY_SERVER), schema)
    return ddl


CRON_SERVER = "dwh_cron_database"
CRON_TABLES = ("job", "job_run_details")


def cron_history_ddl(cfg: DeploymentConfig, cron_database: str, passwords: dict[str, str]) -> SourceDDL:
    """pg_cron's tables in the warehouse, where pg_cron lives in another database (cron.database_name).

    ``dwh.cron_job_runs()`` and ``dwh.cron_owner_job_runs()`` (the health dashboard's job
    history) run as the loader and the owner login and read ``cron.job`` and
    ``cron.job_run_details``; here they are postgres_fdw tables of the cron database, read with
    each login's own credentials, so pg_cron's row-level security still shows each its own
    jobs. ``passwords``: the owner's (it imports) and the loader's logins.
    """
    ddl = SourceDDL()
    ddl.add("DROP SERVER IF EXISTS {} CASCADE", sql.Identifier(CRON_SERVER))
    if cron_database == cfg.warehouse.database:
        return ddl
    ddl.add("CREATE SCHEMA IF NOT EXISTS cron")
    ddl.add("COMMENT ON SCHEMA cron IS {}", sql.Literal(
        f"pg_cron's tables of database {cron_database} (cron.database_name), through postgres_fdw, for "
        "dwh.cron_job_runs() and dwh.cron_owner_job_runs()."))
    ddl.add("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host {}, port {}, dbname {}, sslmode {})",
            sql.Identifier(CRON_SERVER), sql.Literal(cfg.warehouse.host), sql.Literal(str(cfg.warehouse.port)),
            sql.Literal(cron_database), sql.Literal(cfg.warehouse.sslmode))
    # The owner imports; the definer functions read as the loader and the owner logins (each its own jobs).
    owner, loader = cfg.warehouse.owner.user, cfg.warehouse.loader.user
    for role, login in {catalog.OWNER_GROUP: owner, owner: owner, loader: loader}.items():
        ddl.add("CREATE USER MAPPING FOR {} SERVER {} OPTIONS (user {}, password {})", sql.Identifier(role),
                sql.Identifier(CRON_SERVER), sql.Literal(login), sql.Literal(passwords[login]))
    ddl.add("IMPORT FOREIGN SCHEMA cron LIMIT TO ({}) FROM SERVER {} INTO cron",
            sql.SQL(", ").join(map(sql.Identifier, CRON_TABLES)), sql.Identifier(CRON_SERVER))
    ddl.add("GRANT USAGE ON SCHEMA cron TO {}", sql.Identifier(catalog.LOADER_GROUP))
    ddl.add("GRANT SELECT ON cron.job, cron.job_run_details TO {}", sql.Identifier(catalog.LOADER_GROUP))
    return ddl


def _reader_clerk_tables(ddl: SourceDDL, cfg: DeploymentConfig) -> None:
    for obj, cols in CLERK_COLUMNS.items():
        program = reader_program(cfg, "clerk", obj)
        ddl.add(
            "CREATE FOREIGN TABLE src_clerk.{} ({}) SERVER dwh_reader OPTIONS (program {}, format 'csv', encoding 'UTF8')",
            sql.Identifier(obj), _columns(cols), sql.Literal(program),
        )


def _reader_prometheus_table(ddl: SourceDDL, cfg: DeploymentConfig) -> None:
    step_seconds = cfg.prometheus.step_seconds
    metrics = [arg for name in cfg.prometheus.metrics.as_dict().values() for arg in ("--metric", name)]
    program = reader_program(cfg, "prometheus", "--last", str(RECENT_METRICS_SECONDS), "--step", str(int(step_seconds)), *metrics)
    ddl.add(
        "CREATE FOREIGN TABLE src_prometheus.metrics ({}) SERVER dwh_reader OPTIONS (program {}, format 'csv', encoding 'UTF8')",
        _columns(PROMETHEUS_COLUMNS), sql.Literal(program),
    )
    ddl.add(
        "COMMENT ON FOREIGN TABLE src_prometheus.metrics IS {}",
        sql.Literal(f"Prometheus samples of the last {RECENT_METRICS_SECONDS} s at a {int(step_seconds)} s step; "
                    "refreshes read their own window (dwh.read_metrics_window)."),
    )


# ----- tembo backend: clerk_fdw and prometheus_fdw --------------------------------------------
#
# Documented DDL (README of tembo-io/clerk_fdw 0.2.7 and of tembo-io/prometheus_fdw):
#   create foreign data wrapper clerk_wrapper handler clerk_fdw_handler validator clerk_fdw_validator;
#   create server ... foreign data wrapper clerk_wrapper options (api_key '<clerk secret key>');
#   create foreign table ... server ... options (object 'users' | 'organizations' | 'organization_memberships');
#   create foreign data wrapper prometheus_wrapper handler prometheus_fdw_handler validator prometheus_fdw_validator;
#   create server ... foreign data wrapper prometheus_wrapper options (base_url '<prometheus url>');
#   create foreign table metrics (...) server ... options (object 'metrics', step '10m');
# What their src/lib.rs adds: both are supabase-wrappers FDWs built from the *server's*
# options only (GetForeignServer; user mapping options are never read), so clerk_fdw's
# api_key has to be a server option (or the postmaster's CLERK_API_KEY environment variable);
# clerk_fdw always calls https://api.clerk.com/v1 and takes the first email, not the primary;
# prometheus_fdw passes `step` verbatim as query_range's step and pushes down only
# metric_name = text and metric_time > / < int4 (see dwh.tembo_metric_queries).

TEMBO_SERVERS = {"clerk": "tembo_clerk", "prometheus": "tembo_prometheus"}
# pg_foreign_server minus srvoptions: what PUBLIC may still read once the api_key is a server option.
FOREIGN_SERVER_PUBLIC_COLUMNS = ("oid", "srvname", "srvowner", "srvfdw", "srvtype", "srvversion", "srvacl")


def _tembo_wrapper(ddl: SourceDDL, extension: str, wrapper: str) -> None:
    """Superuser part: the extension, its wrapper as documented, and USAGE for the owner."""
    # Names are constants of this module, written as the extensions' READMEs spell them.
    ddl.add_superuser(f"CREATE EXTENSION IF NOT EXISTS {extension}")
    # CREATE FOREIGN DATA WRAPPER has no IF NOT EXISTS; the bootstrap runs on every migrate.
    ddl.add_superuser(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_foreign_data_wrapper WHERE fdwname = '{wrapper}') THEN "
        f"CREATE FOREIGN DATA WRAPPER {wrapper} HANDLER {extension}_handler VALIDATOR {extension}_validator; "
        "END IF; END $$"
    )
    ddl.add_superuser(f"GRANT USAGE ON FOREIGN DATA WRAPPER {wrapper} TO {{}}", sql.Identifier(catalog.OWNER_GROUP))


def tembo_superuser_ddl(cfg: DeploymentConfig) -> list[sql.Composable]:
    """The admin's part of the configured tembo backends (none for the reader backend)."""
    statements: list[sql.Composable] = []
    if cfg.clerk.backend == "tembo":
        statements += tembo_clerk_ddl("").superuser
    if cfg.prometheus.backend == "tembo":
        statements += tembo_prometheus_ddl("", 1).superuser
    return statements


def source_ddl(cfg: DeploymentConfig) -> SourceDDL:
    """The owner's source layer: control plane, then reader tables, then tembo tables."""
    ddl = control_plane_ddl(cfg)
    ddl += reader_ddl(cfg)
    ddl += relay_ddl(cfg)
    if cfg.clerk.backend == "tembo":
        ddl += tembo_clerk_ddl(cfg.clerk.secret())
    if cfg.prometheus.backend == "tembo":
        ddl += tembo_prometheus_ddl(cfg.prometheus.url, cfg.prometheus.step_seconds)
    return ddl


def tembo_clerk_ddl(api_key: str) -> SourceDDL:
    """src_clerk.* served by clerk_fdw, authenticating with ``api_key``.

    clerk_fdw reads the key from the server's options only, and pg_foreign_server is
    readable by every role that can connect. So the superuser part does what PostgreSQL
    does for pg_subscription.subconninfo: revoke the catalog from PUBLIC and grant back
    every column but srvoptions. Superusers and the server's owner (information_schema)
    still see the key; the loader and the reader don't.
    """
    ddl = SourceDDL()
    _tembo_wrapper(ddl, "clerk_fdw", "clerk_wrapper")
    ddl.add_superuser("REVOKE SELECT ON pg_catalog.pg_foreign_server FROM PUBLIC")
    ddl.add_superuser(
        "GRANT SELECT ({}) ON pg_catalog.pg_foreign_server TO PUBLIC",
        sql.SQL(", ").join(map(sql.Identifier, FOREIGN_SERVER_PUBLIC_COLUMNS)),
    )
    server = sql.Identifier(TEMBO_SERVERS["clerk"])
    ddl.add("DROP SERVER IF EXISTS {} CASCADE", server)
    ddl.add("CREATE SERVER {} FOREIGN DATA WRAPPER clerk_wrapper OPTIONS (api_key {})", server, sql.Literal(api_key))
    for obj, cols in CLERK_COLUMNS.items():
        ddl.add(
            "CREATE FOREIGN TABLE src_clerk.{} ({}) SERVER {} OPTIONS (object {})",
            sql.Identifier(obj), _columns(cols), server, sql.Literal(obj),
        )
    return ddl


def tembo_prometheus_ddl(prometheus_url: str, step_seconds: int = 3600) -> SourceDDL:
    """src_prometheus.metrics served by prometheus_fdw, sampled every ``step_seconds``."""
    ddl = SourceDDL()
    _tembo_wrapper(ddl, "prometheus_fdw", "prometheus_wrapper")
    server = sql.Identifier(TEMBO_SERVERS["prometheus"])
    ddl.add("DROP SERVER IF EXISTS {} CASCADE", server)
    ddl.add(
        "CREATE SERVER {} FOREIGN DATA WRAPPER prometheus_wrapper OPTIONS (base_url {})",
        server, sql.Literal(prometheus_url),
    )
    # The same step as metrics.step_seconds, which dwh.tembo_metric_queries chunks by.
    ddl.add(
        "CREATE FOREIGN TABLE src_prometheus.metrics ({}) SERVER {} OPTIONS (object 'metrics', step {})",
        _columns(PROMETHEUS_COLUMNS), server, sql.Literal(f"{int(step_seconds)}s"),
    )
    ddl.add(
        "COMMENT ON FOREIGN TABLE src_prometheus.metrics IS {}",
        sql.Literal(f"prometheus_fdw at a {int(step_seconds)} s step: query it with metric_name = '<name>' "
                    "AND metric_time > <int4> AND metric_time < <int4> (nothing else is pushed down); "
                    "refreshes read their windows through dwh.tembo_metric_queries."),
    )
    return ddl
