"""The ways B1 copies a source relation into a local table, as child-process methods.

Each is called by ``benchmarks.child`` as ``method(probe, **kwargs)`` and returns the rows
it copied. This module imports only psycopg, so that the driving process of the
FDW-native routine, of the COPY pipe and of INSERT ... SELECT starts as small as Python
allows; the pandas peer imports pandas and SQLAlchemy (preloaded by the child, before the
clock starts). A ``spec`` is a ``benchmarks.b1_refresh.Table`` as a dict, a ``window`` a
``[start, end)`` pair of ISO timestamps or null for a whole relation.
"""

from __future__ import annotations

import psycopg
from psycopg import sql


class NoProbe:
    """Stands in for the child's probe when a method runs unmeasured (set-up)."""

    def watch_backend(self, conn: psycopg.Connection) -> None:
        pass


def select_query(spec: dict, relation: str, window: list[str] | None, *, named: bool = False) -> sql.Composed:
    """SELECT the spec's columns from ``relation``, restricted to ``window``."""
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(map(sql.Identifier, spec["columns"])), sql.Identifier(*relation.split("."))
    )
    if window is None or spec["time_column"] is None:
        return query
    bounds = (sql.SQL(":start"), sql.SQL(":end")) if named else (sql.Placeholder(), sql.Placeholder())
    return query + sql.SQL(" WHERE {t} >= {} AND {t} < {}").format(*bounds, t=sql.Identifier(spec["time_column"]))


def window_params(spec: dict, window: list[str] | None) -> tuple:
    return () if window is None or spec["time_column"] is None else tuple(window)


def call_routine(probe, *, dsn: str, statement: str, params: list) -> int:
    """(a) The project's refresh routine: one statement, the data never leaves Postgres."""
    with psycopg.connect(dsn) as conn:
        probe.watch_backend(conn)
        rows = conn.execute(statement, params).fetchone()[0]
    return rows


def insert_select(probe, *, dsn: str, spec: dict, source: str, window: list[str] | None) -> int:
    """(d) INSERT ... SELECT between two local tables: the physical limit of this server."""
    statement = sql.SQL("INSERT INTO {} ({}) ").format(
        sql.Identifier(*spec["target"].split(".")), sql.SQL(", ").join(map(sql.Identifier, spec["columns"]))
    ) + select_query(spec, source, window)
    with psycopg.connect(dsn) as conn:
        probe.watch_backend(conn)
        return conn.execute(statement, window_params(spec, window)).rowcount


def copy_from_file(probe, *, dsn: str, spec: dict, path: str) -> int:
    """(e) COPY ... FROM a server file of the case's source rows (binary): the receive-side floor."""
    statement = sql.SQL("COPY {} ({}) FROM {} (FORMAT binary)").format(
        sql.Identifier(*spec["target"].split(".")), sql.SQL(", ").join(map(sql.Identifier, spec["columns"])),
        sql.Literal(path))
    with psycopg.connect(dsn) as conn:
        probe.watch_backend(conn)
        return conn.execute(statement).rowcount


def copy_pipe(probe, *, src_dsn: str, dst_dsn: str, spec: dict, window: list[str] | None) -> int:
    """(c) COPY ... TO STDOUT on the source streamed into COPY ... FROM STDIN (binary)."""
    copy_out = sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(select_query(spec, spec["source"], window))
    copy_in = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(*spec["target"].split(".")), sql.SQL(", ").join(map(sql.Identifier, spec["columns"]))
    )
    with psycopg.connect(src_dsn) as src, psycopg.connect(dst_dsn) as dst:
        probe.watch_backend(dst)
        with src.cursor() as out_cur, dst.cursor() as in_cur:
            with out_cur.copy(copy_out, window_params(spec, window)) as out, in_cur.copy(copy_in) as into:
                for block in out:
                    into.write(block)
            return in_cur.rowcount


def copy_pandas(probe, *, src_dsn: str, dst_dsn: str, spec: dict, window: list[str] | None, chunk_rows: int) -> int:
    """(b) The pandas peer: ``read_sql`` in chunks (server-side cursor), ``to_sql`` each chunk."""
    import pandas as pd
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql

    source = sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(src_dsn))
    target = sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dst_dsn))
    query = sa.text(select_query(spec, spec["source"], window, named=True).as_string())
    params = None if window is None or spec["time_column"] is None else {"start": window[0], "end": window[1]}
    dtype = {c: postgresql.JSONB for c in spec["jsonb"]} | {c: postgresql.UUID(as_uuid=True) for c in spec["uuid"]}
    schema, table = spec["target"].split(".")
    rows = 0
    # stream_results: a server-side cursor, so only one chunk is in memory at a time.
    with source.connect().execution_options(stream_results=True) as src, target.begin() as dst:
        probe.watch_backend(dst.connection.driver_connection)
        for chunk in pd.read_sql(query, src, params=params, chunksize=chunk_rows):
            chunk.to_sql(table, dst, schema=schema, if_exists="append", index=False, dtype=dtype)
            rows += len(chunk)
    return rows
