"""DDL of the source foreign tables, per backend (DESIGN.md, "Sources and their backends").

The column contracts are the public FDWs' (clerk_fdw, prometheus_fdw): whichever backend
serves them, the refresh routines read the same names and columns.

- ``reader`` (default): file_fdw tables whose ``program`` runs the project's source reader
  as the database server's OS user. The static ``src_prometheus.metrics`` holds the last
  ``RECENT_METRICS_SECONDS`` (for people and checks); the metrics refresh makes a
  temporary foreign table per window instead (sql/routines/read_metrics_window.sql).
- The control plane is always postgres_fdw + ``IMPORT FOREIGN SCHEMA``.

Everything that reaches a ``program`` string is shell-quoted (``reader_program``) here or
validated and quoted by ``dwh.reader_command`` in SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg import sql

from dwh_assets.config import CONTROL_PLANE_DB, CONTROL_PLANE_READER_ROLE, LOADER_ROLE, OWNER_ROLE, StackConfig
from dwh_assets.sources.generator import METRIC_NAMES
from dwh_assets.stack.reader_install import reader_program

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
# Control plane tables imported into src_control_plane, per remote schema.
CONTROL_PLANE_IMPORTS = {"public": None, "pgmq": ("a_instance_events",)}


@dataclass
class SourceDDL:
    """Statements to (re)create the source layer; ``fingerprint`` makes re-runs no-ops."""

    statements: list[sql.Composable] = field(default_factory=list)

    def add(self, template: str, *args, **kwargs) -> None:
        self.statements.append(sql.SQL(template).format(*args, **kwargs))


def _columns(cols: list[tuple[str, str]]) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in cols)


def control_plane_ddl(cfg: StackConfig, passwords: dict[str, str]) -> SourceDDL:
    ddl = SourceDDL()
    ddl.add("DROP SERVER IF EXISTS control_plane CASCADE")
    # fetch_size: fewer round trips on large windows; timeouts so a dead source fails fast.
    ddl.add(
        "CREATE SERVER control_plane FOREIGN DATA WRAPPER postgres_fdw OPTIONS "
        "(host {}, port {}, dbname {}, fetch_size '10000', connect_timeout '10', "
        "application_name 'dwh_warehouse', keepalives_idle '30')",
        sql.Literal(cfg.host), sql.Literal(str(cfg.pg_port)), sql.Literal(CONTROL_PLANE_DB),
    )
    for role in (OWNER_ROLE, LOADER_ROLE):
        # User mapping options are visible to the mapping's user and superusers only.
        ddl.add(
            "CREATE USER MAPPING FOR {} SERVER control_plane OPTIONS (user {}, password {})",
            sql.Identifier(role), sql.Literal(CONTROL_PLANE_READER_ROLE), sql.Literal(passwords[CONTROL_PLANE_READER_ROLE]),
        )
    for remote_schema, only in CONTROL_PLANE_IMPORTS.items():
        limit = sql.SQL("")
        if only:
            limit = sql.SQL(" LIMIT TO ({})").format(sql.SQL(", ").join(map(sql.Identifier, only)))
        ddl.add(
            "IMPORT FOREIGN SCHEMA {}{} FROM SERVER control_plane INTO src_control_plane",
            sql.Identifier(remote_schema), limit,
        )
    return ddl


def reader_ddl(cfg: StackConfig, step_seconds: int = 3600) -> SourceDDL:
    ddl = SourceDDL()
    ddl.add("DROP SERVER IF EXISTS dwh_reader CASCADE")
    ddl.add("CREATE SERVER dwh_reader FOREIGN DATA WRAPPER file_fdw")
    for obj, cols in CLERK_COLUMNS.items():
        program = reader_program(cfg, "clerk", obj)
        ddl.add(
            "CREATE FOREIGN TABLE src_clerk.{} ({}) SERVER dwh_reader OPTIONS (program {}, format 'csv', encoding 'UTF8')",
            sql.Identifier(obj), _columns(cols), sql.Literal(program),
        )
    metrics = [arg for name in METRIC_NAMES for arg in ("--metric", name)]
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
    return ddl
