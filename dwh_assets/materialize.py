"""Fill the warehouse once after ``dwh up``: every catalog table, then the marts.

Dimensions take today's snapshot; facts are refreshed over the whole source history
``[history_start, end of today)`` as one window each, through the same routines pg_cron
runs. Progress is printed per table with the row counts from ``dwh.refresh_log``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from dwh_assets import catalog
from dwh_assets.config import LOADER_ROLE, WAREHOUSE_DB, StackConfig

UTC = dt.timezone.utc


def history_window(cfg: StackConfig) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(cfg.history_start, dt.time(), UTC)
    end = dt.datetime.combine(dt.datetime.now(UTC).date() + dt.timedelta(days=1), dt.time(), UTC)
    return start, end


def refresh(conn: psycopg.Connection, spec: catalog.TableSpec, window: tuple[dt.datetime, dt.datetime]) -> dict:
    routine = sql.SQL(".").join(sql.Identifier(p) for p in spec.routine.split("."))
    if spec.kind is catalog.Kind.FACT:
        query = sql.SQL("SELECT * FROM {}(%s, %s)").format(routine)
        params: tuple = window
    else:
        query = sql.SQL("SELECT * FROM {}()").format(routine)
        params = ()
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(query, params).fetchone()


def materialize_all(cfg: StackConfig, progress: Callable[[str], None] = print) -> None:
    window = history_window(cfg)
    specs = sorted(catalog.CATALOG, key=lambda s: s.kind is catalog.Kind.FACT)
    with psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True) as conn:
        for spec in specs:
            t0 = time.monotonic()
            log = refresh(conn, spec, window)
            progress(
                f"  {spec.local_table}: +{log['rows_inserted']:,} ~{log['rows_updated']:,} "
                f"-{log['rows_deleted']:,} rows ({time.monotonic() - t0:.1f}s)"
            )
        for mart in catalog.MARTS:
            log = conn.execute("SELECT rows_inserted FROM dwh.refresh_mart(%s)", (mart.split(".", 1)[1],)).fetchone()
            progress(f"  {mart}: {log[0]:,} rows")
