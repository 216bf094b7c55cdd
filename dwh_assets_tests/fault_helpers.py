"""Helpers of the fault, bad-input and security tests: refresh calls, "nothing changed"
snapshots, reader settings from the environment, pg_cron runs and process trees.

Every helper restores what it changes (the session stack is shared by the whole suite).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg import sql

from dwh_assets.warehouse import catalog
from dwh_assets.local.config import LOADER_ROLE, WAREHOUSE_DB, StackConfig
from dwh_assets.warehouse.sources.reader_install import install_reader
from dwh_assets_tests.warehouse_helpers import refresh, table_checksum  # noqa: F401 (refresh: re-exported)

# Reader settings that make a failing source fail fast (set as DWH_READER_* variables,
# the way a user tunes them, then installed into reader.json).
FAST_READER_ENV = {
    "DWH_READER__TIMEOUT_SECONDS": "2",
    "DWH_READER__MAX_RETRIES": "1",
    "DWH_READER__BACKOFF_SECONDS": "0.05",
    "DWH_READER__MAX_RETRY_AFTER_SECONDS": "1",
    "DWH_READER__TOTAL_TIMEOUT_SECONDS": "60",
}
# A guard, not a measurement: a refresh that does not fail by itself within this is hung,
# and then fails with SQLSTATE 57014 (query_canceled) instead of the expected error.
STATEMENT_GUARD = "180s"


@contextlib.contextmanager
def stack_environment(cfg: StackConfig) -> Iterator[None]:
    """The environment of another stack than the session's (Dagster's instance, the DSNs), for a block."""
    saved = dict(os.environ)
    os.environ.update(cfg.client_env())
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def reader_env(cfg: StackConfig, **variables: str) -> Iterator[None]:
    """Install reader.json from DWH_READER_* variables; reinstall the defaults afterwards."""
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        install_reader(cfg.deployment())
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        install_reader(cfg.deployment())


def connect(cfg: StackConfig, role: str = LOADER_ROLE, **kw) -> psycopg.Connection:
    return psycopg.connect(cfg.dsn(WAREHOUSE_DB, role), **{"autocommit": True, **kw})


def failing_refresh(conn: psycopg.Connection, routine: str, *args) -> psycopg.Error:
    """Run a refresh that must fail (under the statement guard); returns its error."""
    conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(STATEMENT_GUARD)))
    try:
        refresh(conn, routine, *args)
    except psycopg.Error as e:
        return e
    finally:
        if not conn.info.transaction_status:  # idle: the SET can be undone here
            conn.execute("RESET statement_timeout")
    raise AssertionError(f"dwh.{routine}{args} succeeded, but it should have failed")


@dataclass(frozen=True)
class TableState:
    """What a failed refresh must leave as it was: the rows (of a fact, those of a window
    the stack's own pg_cron jobs never touch), the snapshot, and no log row of its session."""

    table: str
    window: tuple | None
    data: tuple
    snapshot: tuple | None
    last_log_id: int

    @classmethod
    def of(cls, conn: psycopg.Connection, table: str, window: tuple | None = None) -> TableState:
        spec = catalog.get(table)
        if window is None:
            data = table_checksum(conn, spec.local_table)
        else:
            data = conn.execute(sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {} t"
                " WHERE {time} >= %s AND {time} < %s").format(
                    sql.Identifier(*spec.local_table.split(".")), time=sql.Identifier(spec.time_column)), window).fetchone()
        snapshot = table_checksum(conn, spec.snapshot_table) if spec.snapshot_table else None
        last_log_id = conn.execute("SELECT coalesce(max(id), 0) FROM dwh.refresh_log").fetchone()[0]
        return cls(table, window, data, snapshot, last_log_id)

    def assert_unchanged(self, conn: psycopg.Connection, failed_pid: int) -> None:
        """The data as before, and no refresh_log row from the session (``failed_pid``) that failed."""
        now = TableState.of(conn, self.table, self.window)
        assert (now.data, now.snapshot) == (self.data, self.snapshot), f"dwh.{self.table} changed"
        logged = conn.execute(
            "SELECT count(*) FROM dwh.refresh_log WHERE table_name = %s AND id > %s AND backend_pid = %s",
            (self.table, self.last_log_id, failed_pid)).fetchone()[0]
        assert logged == 0, f"the failed refresh of dwh.{self.table} left {logged} log row(s)"


# ----- pg_cron -------------------------------------------------------------------------------


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll until ``predicate()`` is truthy (returns it); fail the test naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting ({timeout:.0f}s) for {what}")
        time.sleep(interval)


def schedule_every_minute(superuser: psycopg.Connection, name: str, command: str, username: str = LOADER_ROLE) -> int:
    """A pg_cron job of the warehouse that runs ``command`` as ``username``; returns its jobid."""
    return superuser.execute(
        "SELECT cron.schedule_in_database(%s, '* * * * *', %s, %s, %s)", (name, command, WAREHOUSE_DB, username)
    ).fetchone()[0]


# February 31st: a valid schedule that never fires.
NEVER = "0 0 31 2 *"


def stop_scheduling(superuser: psycopg.Connection, jobid: int) -> None:
    """No further runs of a job, while its running run goes on (unscheduling would cancel it)."""
    superuser.execute("SELECT cron.alter_job(%s, schedule := %s)", (jobid, NEVER))


def unschedule(superuser: psycopg.Connection, name: str) -> None:
    """Remove a job; pg_cron cancels a run of it that is still going ("job canceled")."""
    superuser.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = %s", (name,))


def cron_run(superuser: psycopg.Connection, jobid: int) -> dict | None:
    """The latest run of a job (cron.job_run_details), or None before its first start."""
    cur = superuser.execute(
        "SELECT runid, job_pid, status, return_message, start_time, end_time FROM cron.job_run_details"
        " WHERE jobid = %s ORDER BY runid DESC LIMIT 1", (jobid,))
    row = cur.fetchone()
    return None if row is None else dict(zip([c.name for c in cur.description], row))


def waiting_on(superuser: psycopg.Connection, pid: int, locktype: str) -> bool:
    """Whether backend ``pid`` waits for a lock of ``locktype`` (advisory, transactionid, ...)."""
    return superuser.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = %s AND locktype = %s AND NOT granted)", (pid, locktype)
    ).fetchone()[0]


# ----- processes -------------------------------------------------------------------------------


def children(pids: set[int]) -> set[int]:
    """``pids`` and all their descendants (from /proc)."""
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent_of[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree = set(pids)
    while True:
        more = {pid for pid, parent in parent_of.items() if parent in tree} - tree
        if not more:
            return tree
        tree |= more
