"""Same table, two orchestrators: a pg_cron run and a direct loader call (what Dagster's
resource does) at the same moment serialise on the refresh's advisory lock, and the
result equals one clean refresh.

The overlap is forced, not hoped for: the loader's refreshes stay uncommitted (holding
their locks) until pg_cron's runs are seen waiting for those locks in pg_locks; then
the loader commits and the cron runs go on. Causality gives a lower bound to their lock
wait: they waited at least as long as the test held the locks after seeing them wait.
"""

from __future__ import annotations

import time

import pytest
from psycopg import sql

from dwh_assets.local.config import OWNER_ROLE
from dwh_assets_tests.fault_helpers import (
    connect,
    cron_run,
    refresh,
    schedule_every_minute,
    stop_scheduling,
    unschedule,
    wait_for,
    waiting_on,
)
from dwh_assets_tests.warehouse_helpers import (
    ClerkApi,
    connect_control_plane,
    fact_checksum,
    utc_midnight,
)

D0, D1, D2, D3 = (utc_midnight(n) for n in (-6, -5, -4, -3))
HOLD_SECONDS = 1.0
JOBS = {
    # pg_cron's window [D0, D2) overlaps the loader's [D1, D3) on day D1.
    "test:concurrent_events": ("events", sql.SQL("SELECT dwh.refresh_events({}, {})").format(sql.Literal(D0), sql.Literal(D2))),
    "test:concurrent_users": ("users", sql.SQL("SELECT dwh.refresh_users()")),
}


def test_cron_and_direct_refreshes_serialise_and_equal_one_clean_refresh(cfg, superuser, loader):
    # Start from a window the refreshes must fill: emptied in the warehouse.
    with connect(cfg, OWNER_ROLE) as owner:
        owner.execute("DELETE FROM dwh.events WHERE enqueued_at >= %s AND enqueued_at < %s", (D0, D3))
    jobids: dict[str, int] = {}
    with connect(cfg, autocommit=False) as direct:
        refresh(direct, "refresh_events", D1, D3)
        refresh(direct, "refresh_users")  # both locks now held until the commit below
        # pg_cron stamps a run's start_time once its worker is up, which can be after the
        # worker's refresh began: the log rows are found from a server time taken before.
        since = superuser.execute("SELECT clock_timestamp()").fetchone()[0]
        try:
            for name, (_, command) in JOBS.items():
                jobids[name] = schedule_every_minute(superuser, name, command.as_string(superuser))
            runs = wait_for(lambda: _all_waiting(superuser, jobids.values()), 150,
                            "pg_cron's runs to start and wait for the advisory locks")
            for jobid in jobids.values():
                stop_scheduling(superuser, jobid)  # no second run
            time.sleep(HOLD_SECONDS)
            direct.commit()
            finished = wait_for(lambda: _all_finished(superuser, jobids.values()), 120, "pg_cron's runs to finish")
        finally:
            for name in JOBS:
                unschedule(superuser, name)
    assert {run["status"] for run in finished} == {"succeeded"}, finished

    for (name, (table, _)), run in zip(JOBS.items(), runs):
        waits = [row[0] for row in superuser.execute(
            "SELECT lock_wait_ms FROM dwh.refresh_log WHERE table_name = %s AND backend_pid = %s AND started_at >= %s",
            (table, run["job_pid"], since)).fetchall()]
        assert len(waits) == 1, f"{name}: one log row per run, got {waits}"
        assert waits[0] >= HOLD_SECONDS * 1000, f"{name} logged a lock wait of {waits[0]} ms"

    # Equal to one clean refresh: the whole window and the users equal their sources, no doubles.
    with connect_control_plane(cfg) as control_plane:
        assert fact_checksum(loader, "events", D0, D3, source=False) == fact_checksum(control_plane, "events", D0, D3, source=True)
    users, _ = ClerkApi(cfg).list_all("users")
    assert sorted(r[0] for r in loader.execute("SELECT user_id FROM dwh.users").fetchall()) == sorted(u["id"] for u in users)


def _all_waiting(superuser, jobids) -> list[dict] | None:
    runs = [cron_run(superuser, jobid) for jobid in jobids]
    if all(run and run["status"] == "running" and waiting_on(superuser, run["job_pid"], "advisory") for run in runs):
        return runs
    return None


def _all_finished(superuser, jobids) -> list[dict] | None:
    runs = [cron_run(superuser, jobid) for jobid in jobids]
    return runs if all(run["status"] in ("succeeded", "failed") for run in runs) else None
