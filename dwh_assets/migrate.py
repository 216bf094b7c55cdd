"""``dwh migrate``: bring the warehouse database to the state the code declares.

1. bootstrap (cluster superuser): extensions and the grants that let the owner migrate;
2. versioned migrations (``sql/migrations``, yoyo-migrations, as ``dwh_owner``), tracked
   in the database; repeatable routines (``sql/routines``) re-applied every time;
3. settings, source servers and foreign tables for the configured backends
   (``DWH_CLERK_BACKEND`` / ``DWH_PROMETHEUS_BACKEND``: ``reader``, the default, or ``tembo``);
4. grants, pg_partman retention and pg_cron jobs derived from the catalog.

A second run changes nothing: yoyo skips applied migrations, routines are
``CREATE OR REPLACE``, the source layer is rebuilt only when its definition changed,
and the pg_cron sync compares before it schedules.
"""

from __future__ import annotations

import hashlib
import os
import psycopg
from psycopg import sql
from yoyo import get_backend, read_migrations

from dwh_assets import catalog, cron_jobs
from dwh_assets.config import LOADER_ROLE, OWNER_ROLE, SQL_DIR, WAREHOUSE_DB, StackConfig
from dwh_assets.sources import foreign_tables
from dwh_assets.sources.generator import METRIC_NAMES
from dwh_assets.stack import secrets
from dwh_assets.stack.postgres import Postgres
from dwh_assets.stack.process import StackError
from dwh_assets.stack.reader_install import reader_program

METRICS_STEP_SECONDS = int(os.environ.get("DWH_METRICS_STEP", "3600"))
BACKEND_VARIABLES = {"clerk": "DWH_CLERK_BACKEND", "prometheus": "DWH_PROMETHEUS_BACKEND"}


def _owner_connect(cfg: StackConfig) -> psycopg.Connection:
    return psycopg.connect(cfg.dsn(WAREHOUSE_DB, OWNER_ROLE))


def source_backends() -> dict[str, str]:
    """The backend of each configurable source, from its environment variable (default reader)."""
    backends = {}
    for source, variable in BACKEND_VARIABLES.items():
        value = os.environ.get(variable) or "reader"
        if value not in foreign_tables.BACKENDS:
            raise StackError(
                f"{variable}={value!r} is not a source backend: set it to one of "
                f"{', '.join(foreign_tables.BACKENDS)} (or unset it for reader)."
            )
        backends[source] = value
    return backends


def source_ddl(cfg: StackConfig, backends: dict[str, str]) -> foreign_tables.SourceDDL:
    """The source layer: control plane, then reader tables, then tembo tables, per ``backends``."""
    ddl = foreign_tables.control_plane_ddl(cfg, secrets.passwords(cfg))
    readers = tuple(source for source in foreign_tables.SOURCES if backends[source] == "reader")
    ddl += foreign_tables.reader_ddl(cfg, METRICS_STEP_SECONDS, readers)
    if backends["clerk"] == "tembo":
        ddl += foreign_tables.tembo_clerk_ddl(secrets.clerk_secret_key(cfg))
    if backends["prometheus"] == "tembo":
        ddl += foreign_tables.tembo_prometheus_ddl(cfg, METRICS_STEP_SECONDS)
    return ddl


def bootstrap(cfg: StackConfig, backends: dict[str, str]) -> None:
    superuser = source_ddl(cfg, backends).superuser
    with Postgres(cfg).connect(WAREHOUSE_DB) as conn:
        conn.execute((SQL_DIR / "bootstrap.sql").read_text())
        # Extensions and wrappers of tembo sources (nothing for the reader backend).
        for statement in superuser:
            conn.execute(statement)


def apply_migrations(cfg: StackConfig) -> int:
    """Versioned migrations (once each) and routines (every time); returns how many were new."""
    os.environ.setdefault("PGPASSFILE", str(cfg.pgpass_file))
    backend = get_backend(
        f"postgresql+psycopg://{OWNER_ROLE}@{cfg.host}:{cfg.pg_port}/{WAREHOUSE_DB}?passfile={cfg.pgpass_file}"
    )
    migrations = read_migrations(str(SQL_DIR / "migrations"))
    routines = read_migrations(str(SQL_DIR / "routines"))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
        # Repeatable objects: CREATE OR REPLACE, applied without being marked.
        for routine in routines:
            backend.apply_one(routine, mark=False, force=True)
    return len(pending)


def max_drop_fraction() -> str:
    """How much of a dimension one refresh may delete (``DWH_MAX_DROP_FRACTION``, default 0.5)."""
    raw = os.environ.get("DWH_MAX_DROP_FRACTION") or "0.5"
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise StackError(f"DWH_MAX_DROP_FRACTION={raw!r} must be a fraction between 0 and 1 (default 0.5).")
    return raw


def _settings(cfg: StackConfig, backends: dict[str, str]) -> dict[str, str]:
    return {
        "refresh.max_drop_fraction": max_drop_fraction(),
        "backend.prometheus": backends["prometheus"],
        "backend.clerk": backends["clerk"],
        "reader.command": reader_program(cfg),
        "metrics.step_seconds": str(METRICS_STEP_SECONDS),
        "metrics.names": ",".join(METRIC_NAMES),
        "history.start": cfg.history_start.isoformat(),
    }


def sync_sources(conn: psycopg.Connection, cfg: StackConfig, backends: dict[str, str] | None = None) -> bool:
    """Write settings and (re)build the source layer when its definition changed."""
    backends = backends or source_backends()
    ddl = source_ddl(cfg, backends).statements
    rendered = [s.as_string(conn) for s in ddl]
    fingerprint = hashlib.sha256("\n".join(rendered).encode()).hexdigest()
    settings = _settings(cfg, backends) | {"sources.fingerprint": fingerprint}
    current = dict(conn.execute("SELECT key, value FROM dwh.settings").fetchall())
    if current == settings:
        return False
    with conn.transaction():
        conn.execute("DELETE FROM dwh.settings")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO dwh.settings (key, value) VALUES (%s, %s)", list(settings.items()))
        if current.get("sources.fingerprint") != fingerprint:
            # A source switched back to the reader would keep its tembo tables otherwise
            # (kept out of the fingerprint, so the default reader layer hashes as before).
            for source, server in foreign_tables.TEMBO_SERVERS.items():
                if backends[source] != "tembo":
                    conn.execute(sql.SQL("DROP SERVER IF EXISTS {} CASCADE").format(sql.Identifier(server)))
            for statement in ddl:
                conn.execute(statement)
    return True


def grant_routines(conn: psycopg.Connection) -> None:
    with conn.transaction():
        for spec in catalog.CATALOG:
            args = "timestamptz, timestamptz" if spec.kind is catalog.Kind.FACT else "date"
            conn.execute(
                sql.SQL("GRANT EXECUTE ON FUNCTION {}({}) TO {}").format(
                    sql.SQL(spec.routine), sql.SQL(args), sql.Identifier(LOADER_ROLE)
                )
            )
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION dwh.refresh_mart(text) TO {}").format(sql.Identifier(LOADER_ROLE)))
        # Dagster's checks read the metrics step; settings hold no secrets.
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION dwh.setting(text, text) TO {}").format(sql.Identifier(LOADER_ROLE)))


def sync_retention(conn: psycopg.Connection) -> None:
    with conn.transaction():
        for spec in catalog.CATALOG:
            table = spec.local_table if spec.kind is catalog.Kind.FACT else spec.snapshot_table
            conn.execute(
                "UPDATE partman.part_config SET retention = %s, retention_keep_table = false "
                "WHERE parent_table = %s AND retention IS DISTINCT FROM %s",
                (f"{spec.retention_days} days", table, f"{spec.retention_days} days"),
            )


def migrate(cfg: StackConfig) -> str:
    backends = source_backends()  # a misspelt backend fails before anything is touched
    bootstrap(cfg, backends)
    applied = apply_migrations(cfg)
    with _owner_connect(cfg) as conn:
        conn.autocommit = True
        rebuilt = sync_sources(conn, cfg, backends)
        grant_routines(conn)
        sync_retention(conn)
    jobs = cron_jobs.sync(cfg)
    return (
        f"{applied} new migration(s); sources {'rebuilt' if rebuilt else 'unchanged'}; "
        f"pg_cron: {jobs.summary()}"
    )
