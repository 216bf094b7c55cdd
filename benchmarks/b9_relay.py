"""B9 the relay: Prometheus windows through a relay (dblink to the relay's reader) against the direct reader.

A managed warehouse cannot run the source reader, so its Prometheus windows come from a
relay: ``dwh.read_metrics_window`` calls ``dwh.relay_metrics_window`` on the relay through
dblink, where the same reader runs under file_fdw (sources/relay.py). Here the relay is a
second database of the stack's own cluster (``dwh_relay``, installed by ``install_relay``
as a deployment would), so both methods share one machine and one Prometheus; only the
path differs. Each method is the full ``dwh.refresh_metrics`` of the same window (about
1,000,000 samples at scale 1: 21 days of every series), its copy checked against an
independent read of Prometheus, B4's reference.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from psycopg import sql

from benchmarks.b4_prometheus import ROW_TEXT, empty, prepare
from benchmarks.harness import BenchContext, BenchResult, Goal, checksum, make_row, utc_midnight
from dwh_assets.local.config import OWNER_ROLE, WAREHOUSE_DB
from dwh_assets.warehouse.deployment import DeploymentConfig
from dwh_assets.warehouse.sources import foreign_tables, relay

NAME = "B9"
TITLE = "Prometheus through the relay (dblink + the relay's reader) vs the direct reader"
NEEDS_DAGSTER = False

WINDOW_DAYS = 21
RELAY_DB = "dwh_relay"
METHODS = {"reader": "direct reader (file_fdw in the warehouse)", "relay": "relay (dblink -> file_fdw on the relay)"}


def run(ctx: BenchContext) -> BenchResult:
    end = utc_midnight(ctx.cfg.anchor_day)
    start = end - dt.timedelta(days=WINDOW_DAYS)
    with ctx.superuser() as conn:
        step = int(conn.execute("SELECT dwh.setting('metrics.step_seconds')").fetchone()[0])
    prepare(ctx, start, end, step)
    install(ctx)
    where = "WHERE ts >= %s AND ts < %s"
    with ctx.superuser() as conn:
        source_sum = checksum(conn, "bench.prometheus_source", ROW_TEXT, where, (start, end))
    case = f"{WINDOW_DAYS} days, all series, step {step}s"
    rows = []
    try:
        for method, label in METHODS.items():
            set_backend(ctx, method)
            ctx.progress(f"B9: {label} ...")
            measured, runs = ctx.measure_best(
                "benchmarks.copy_methods:call_routine", before=lambda: empty(ctx, "dwh.metrics", "dwh.metric_series"),
                dsn=ctx.dsn(), statement="SELECT rows_inserted FROM dwh.refresh_metrics(%s, %s)",
                params=[start.isoformat(), end.isoformat()])
            with ctx.superuser() as conn:
                copy_sum = checksum(conn, "dwh.metric_samples", ROW_TEXT, where, (start, end))
            rows.append(make_row(NAME, case, label, measured, copy_sum, source_sum, runs))
    finally:
        set_backend(ctx, "reader")
    for row in rows:
        row.ratio, row.ratio_to = row.rows_per_s / rows[0].rows_per_s, "direct reader"
        ctx.progress(f"B9: {row.method}: {row.rows:,} samples in {row.seconds:.2f}s ({row.rows_per_s:,.0f}/s)")
    ratio = rows[1].rows_per_s / rows[0].rows_per_s
    goal = Goal(NAME, "the relay reads at least 0.8x the direct reader's rate", f"{ratio:.2f}x", ratio >= 0.8)
    return BenchResult(rows=rows, goals=[goal], details={"window": [start.isoformat(), end.isoformat()], "step_seconds": step})


def relay_config(ctx: BenchContext) -> DeploymentConfig:
    """The stack's deployment with Prometheus through a relay in database dwh_relay of the same cluster."""
    password_file = Path(ctx.cfg.home) / "secrets" / "bench_relay.password"
    if not password_file.exists():
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(16).hex() + "\n")
    values = ctx.cfg.deployment_values()
    values["prometheus"]["backend"] = "relay"
    values["relay"] = {"host": ctx.cfg.host, "port": ctx.cfg.pg_port, "database": RELAY_DB, "sslmode": "disable",
                       "user": "dwh_bench_relay", "password_file": str(password_file),
                       "admin": {"user": ctx.cfg.server_user, "host": str(ctx.cfg.socket_dir)}}
    return DeploymentConfig.from_values(values)


def install(ctx: BenchContext) -> None:
    """The relay's database and objects, and the warehouse's dblink server to it (untimed)."""
    cfg = relay_config(ctx)
    with ctx.superuser("postgres") as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (RELAY_DB,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(RELAY_DB)))
    relay.install_relay(cfg)
    with ctx.superuser(WAREHOUSE_DB) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS dblink SCHEMA public")
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(OWNER_ROLE)))
        # The server and its user mappings only: the stack keeps its own src_prometheus.metrics.
        for statement in foreign_tables.relay_ddl(cfg).statements:
            if not statement.as_string(conn).startswith("IMPORT"):
                conn.execute(statement)


def set_backend(ctx: BenchContext, backend: str) -> None:
    with ctx.superuser() as conn:
        conn.execute("UPDATE dwh.settings SET value = %s WHERE key = 'backend.prometheus'", (backend,))
