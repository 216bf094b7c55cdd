"""The warehouse connection Dagster's assets, checks and sensor use.

One ``ConfigurableResource`` over psycopg 3. The DSN comes from the ``DWH_WAREHOUSE_DSN``
environment variable (``dwh env`` prints it): it names the loader role and a libpq
passfile, never a password. Every call opens a short autocommit connection, so a refresh
routine runs in exactly the one transaction the routine itself defines.

pg_cron's tables live in the database named by ``cron.database_name``, which `dwh migrate`
records as ``dwh.settings 'cron.database'``; ``cron_connect`` reaches them with the same
DSN and that database, so the code location needs no second connection setting.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from dwh_assets.warehouse import catalog

APPLICATION_NAME = "dagster"


def qualified(name: str) -> sql.Identifier:
    """``schema.table`` (or ``schema.routine``) as a quoted SQL identifier."""
    return sql.Identifier(*name.split("."))


class WarehouseResource(dg.ConfigurableResource):
    """psycopg 3 connections to the warehouse database as the loader role."""

    dsn: str
    application_name: str = APPLICATION_NAME
    # A refresh that cannot take its advisory lock within this time fails instead of queueing forever.
    lock_timeout_seconds: int = 600

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        with psycopg.connect(
            self.dsn,
            autocommit=True,
            application_name=self.application_name,
            row_factory=dict_row,
            connect_timeout=10,
        ) as conn:
            yield conn

    @contextmanager
    def cron_connect(self, warehouse: psycopg.Connection) -> Iterator[psycopg.Connection]:
        """A connection to pg_cron's database: ``warehouse`` itself when that is the same database."""
        here = warehouse.info.dbname
        cron_db = warehouse.execute("SELECT dwh.setting('cron.database', current_database()) AS db").fetchone()["db"]
        if cron_db == here:
            yield warehouse
            return
        with psycopg.connect(make_conninfo(self.dsn, dbname=cron_db), autocommit=True, application_name=self.application_name,
                             row_factory=dict_row, connect_timeout=10) as conn:
            yield conn

    def query(self, statement: str | sql.Composable, params: tuple | dict | None = None) -> list[dict[str, Any]]:
        with self.connect() as conn:
            return conn.execute(statement, params).fetchall()

    def refresh_fact(self, conn: psycopg.Connection, spec: catalog.TableSpec, start: dt.datetime,
                     end: dt.datetime) -> dict[str, Any]:
        """Replace ``[start, end)`` of a fact table; returns its ``dwh.refresh_log`` row."""
        query = sql.SQL("SELECT * FROM {}(%s, %s)").format(qualified(spec.routine))
        return self._call(conn, query, (start, end))

    def refresh_dimension(self, conn: psycopg.Connection, spec: catalog.TableSpec, snapshot_day: dt.date) -> dict[str, Any]:
        """Make a dimension equal to its source and write ``snapshot_day``'s snapshot."""
        query = sql.SQL("SELECT * FROM {}(%s)").format(qualified(spec.routine))
        return self._call(conn, query, (snapshot_day,))

    def refresh_mart(self, conn: psycopg.Connection, mart: catalog.MartSpec, start: dt.datetime,
                     end: dt.datetime) -> dict[str, Any]:
        """Replace the days of ``[start, end)`` of a mart."""
        query = sql.SQL("SELECT * FROM {}(%s, %s)").format(qualified(mart.routine))
        return self._call(conn, query, (start, end))

    def _call(self, conn: psycopg.Connection, query: str | sql.Composable, params: tuple) -> dict[str, Any]:
        # The session is the step's own: the timeout also bounds its checks' reads, which is fine.
        conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(self.lock_timeout_seconds)}s")))
        return conn.execute(query, params).fetchone()
