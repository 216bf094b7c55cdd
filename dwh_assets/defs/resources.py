"""The warehouse connection Dagster's assets, checks and sensor use.

One ``ConfigurableResource`` over psycopg 3. The DSN comes from the ``DWH_WAREHOUSE_DSN``
environment variable (``dwh env`` prints it): it names the loader role and a libpq
passfile, never a password. Every call opens a short autocommit connection, so a refresh
routine runs in exactly the one transaction the routine itself defines.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from dwh_assets import catalog

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

    def query(self, statement: str | sql.Composable, params: tuple | dict | None = None) -> list[dict[str, Any]]:
        with self.connect() as conn:
            return conn.execute(statement, params).fetchall()

    def refresh_fact(self, spec: catalog.TableSpec, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
        """Replace ``[start, end)`` of a fact table; returns its ``dwh.refresh_log`` row."""
        query = sql.SQL("SELECT * FROM {}(%s, %s)").format(qualified(spec.routine))
        return self._call(query, (start, end))

    def refresh_dimension(self, spec: catalog.TableSpec, snapshot_day: dt.date) -> dict[str, Any]:
        """Make a dimension equal to its source and write ``snapshot_day``'s snapshot."""
        query = sql.SQL("SELECT * FROM {}(%s)").format(qualified(spec.routine))
        return self._call(query, (snapshot_day,))

    def refresh_mart(self, mart: str) -> dict[str, Any]:
        return self._call("SELECT * FROM dwh.refresh_mart(%s)", (mart.split(".", 1)[1],))

    def _call(self, query: str | sql.Composable, params: tuple) -> dict[str, Any]:
        with self.connect() as conn:
            conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(self.lock_timeout_seconds)}s")))
            return conn.execute(query, params).fetchone()
