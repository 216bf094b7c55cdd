"""Refresh routines against the real sources: every local copy equals its source.

Runs the SQL steps as the loader (as pg_cron and Dagster do) and compares the local rows
with the sources read directly: the control plane database, the Clerk emulator's API and
Prometheus' query_range. Fact windows sit 3-6 days back, outside the lookback of the
stack's own pg_cron jobs, so a cron run during a test cannot touch them.
"""

from __future__ import annotations

import datetime as dt
import json

import psycopg
import pytest
from psycopg import sql

from dwh_assets.local.config import CONTROL_PLANE_DB, StackConfig
from dwh_assets.local.control_plane import add_events
from dwh_assets.local.generator import METRIC_NAMES
from dwh_assets_tests.warehouse_helpers import (
    connect_control_plane,
    fact_checksum,
    instances_checksum,
    local_samples,
    primary_email,
    prometheus_samples,
    refresh,
    table_checksum,
    utc_midnight,
)

DIMENSIONS = ("users", "organizations", "organization_memberships", "instances")
D0, D1, D2, D3 = (utc_midnight(n) for n in (-6, -5, -4, -3))
HOUR = dt.timedelta(hours=1)
INSTANCE_COLUMNS = "instance_id, organization_id, name, region, cpu, memory_gb, storage_gb, created_at, updated_at, deleted_at"


@pytest.fixture()
def control_plane(cfg: StackConfig):
    with connect_control_plane(cfg) as conn:
        yield conn


def today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


def step_seconds(conn: psycopg.Connection) -> int:
    return int(conn.execute("SELECT value FROM dwh.settings WHERE key = 'metrics.step_seconds'").fetchone()[0])


def local_users(conn: psycopg.Connection) -> set[tuple]:
    return set(conn.execute(
        "SELECT user_id, first_name, last_name, email, (extract(epoch FROM created_at) * 1000)::bigint,"
        " (extract(epoch FROM updated_at) * 1000)::bigint FROM dwh.users"
    ).fetchall())


def api_users(users: list[dict]) -> set[tuple]:
    return {(u["id"], u.get("first_name"), u.get("last_name"), primary_email(u), u["created_at"], u["updated_at"])
            for u in users}


def metrics_equal_prometheus(cfg: StackConfig, conn: psycopg.Connection, start: dt.datetime, end: dt.datetime) -> int:
    """Assert the warehouse's samples of [start, end) are Prometheus' samples; returns how many."""
    step, total = step_seconds(conn), 0
    for metric in METRIC_NAMES:
        local = local_samples(conn, metric, start, end)
        assert len(local) == len(set(local)), f"duplicate {metric} samples in [{start}, {end})"
        source = prometheus_samples(cfg, metric, start, end, step)
        assert source, f"Prometheus has no {metric} samples in [{start}, {end})"
        missing, extra = source - set(local), set(local) - source
        assert not missing and not extra, (
            f"{metric}: {len(missing)} samples missing, {len(extra)} extra, e.g. {sorted(missing | extra)[:2]}")
        total += len(local)
    return total


# ----- dimensions ---------------------------------------------------------------------------


def test_dimensions_equal_their_sources(cfg, loader, clerk, control_plane):
    logs = {name: refresh(loader, f"refresh_{name}") for name in DIMENSIONS}

    users, pages = clerk.list_all("users")
    assert len(users) > 500 and pages > 1, "the test needs more than one page of users"
    assert local_users(loader) == api_users(users)
    assert logs["users"]["rows_source"] == len(users)

    orgs, _ = clerk.list_all("organizations")
    plans = dict(control_plane.execute("SELECT organization_id, plan FROM public.organizations").fetchall())
    assert set(loader.execute(
        "SELECT organization_id, name, slug, plan, (extract(epoch FROM created_at) * 1000)::bigint FROM dwh.organizations"
    ).fetchall()) == {(o["id"], o["name"], o.get("slug") or None, plans.get(o["id"]), o["created_at"]) for o in orgs}

    memberships, _ = clerk.list_all("organization_memberships")
    assert set(loader.execute("SELECT organization_id, user_id, role FROM dwh.organization_memberships").fetchall()) == {
        (m["organization"]["id"], m["public_user_data"]["user_id"], m["role"]) for m in memberships
    }
    assert logs["organization_memberships"]["rows_source"] == len(memberships)

    source = instances_checksum(control_plane, "public.instances")
    assert source[0] > 0
    assert instances_checksum(loader, "dwh.instances") == source

    # Today's snapshot partition holds the source state, i.e. the current table.
    for name in DIMENSIONS:
        assert logs[name]["snapshot_day"] == today() and logs[name]["window_start"] is None
        assert snapshot_difference(loader, name) == 0, f"today's dwh.{name}_snapshot differs from dwh.{name}"
    assert instances_checksum(loader, "dwh.instances_snapshot", today()) == source


def snapshot_difference(conn: psycopg.Connection, name: str) -> int:
    """Rows in dwh.<name> or in its snapshot of today, but not in both (0 = equal), in the snapshot's
    columns (it keeps no personal one)."""
    cols = conn.execute(
        "SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped AND attname <> 'snapshot_day'",
        (f"dwh.{name}_snapshot",),
    ).fetchone()[0]
    columns = sql.SQL(", ").join(map(sql.Identifier, cols))
    select = sql.SQL("SELECT {} FROM {}").format(columns, sql.Identifier("dwh", name))
    snap = sql.SQL("SELECT {} FROM {} WHERE snapshot_day = %(day)s").format(columns, sql.Identifier("dwh", f"{name}_snapshot"))
    query = sql.SQL("SELECT (SELECT count(*) FROM ({a} EXCEPT ALL {b}) x) + (SELECT count(*) FROM ({b} EXCEPT ALL {a}) y),"
                    " (SELECT count(*) FROM ({b}) z)").format(a=select, b=snap)
    difference, in_snapshot = conn.execute(query, {"day": today()}).fetchone()
    assert in_snapshot > 0, f"no snapshot of dwh.{name} for {today()}"
    return difference


def test_dimension_follows_changes_and_deletions_at_the_source(cfg, loader, clerk):
    users, _ = clerk.list_all("users")
    changed, deleted = users[10]["id"], users[20]["id"]
    clerk.request("PATCH", f"/_admin/users/{changed}", {"first_name": "Renamed-By-Test"})
    clerk.request("DELETE", f"/_admin/users/{deleted}")
    added = clerk.request("POST", "/_admin/users", {"first_name": "Added", "last_name": "ByTest"})["id"]

    log = refresh(loader, "refresh_users")
    assert (log["rows_inserted"], log["rows_updated"], log["rows_deleted"]) == (1, 1, 1)
    assert local_users(loader) == api_users(clerk.list_all("users")[0])
    assert snapshot_difference(loader, "users") == 0, "today's snapshot must be rewritten, not appended to"
    names = dict(loader.execute("SELECT user_id, first_name FROM dwh.users WHERE user_id = ANY(%s)",
                                ([changed, deleted, added],)).fetchall())
    assert names == {changed: "Renamed-By-Test", added: "Added"}
    in_snapshot = {row[0] for row in loader.execute(
        "SELECT user_id FROM dwh.users_snapshot WHERE user_id = ANY(%s) AND snapshot_day = current_date",
        ([changed, deleted, added],)).fetchall()}
    assert in_snapshot == {changed, added}, "today's snapshot: the users Clerk holds, in its columns (no personal one)"

    clerk.reset()
    log = refresh(loader, "refresh_users")
    assert (log["rows_inserted"], log["rows_updated"], log["rows_deleted"]) == (1, 1, 1)
    assert local_users(loader) == api_users(clerk.list_all("users")[0])


def test_instances_follow_updates_and_deletions_in_the_control_plane(cfg, loader, control_plane):
    refresh(loader, "refresh_instances")
    changed, deleted = (r[0] for r in control_plane.execute(
        "SELECT instance_id FROM public.instances i WHERE EXISTS"
        " (SELECT 1 FROM public.instance_state_history h WHERE h.instance_id = i.instance_id)"
        " ORDER BY instance_id LIMIT 2"
    ).fetchall())
    original_cpu = control_plane.execute("SELECT cpu FROM public.instances WHERE instance_id = %s", (changed,)).fetchone()[0]
    saved_instance = control_plane.execute(
        f"SELECT {INSTANCE_COLUMNS} FROM public.instances WHERE instance_id = %s", (deleted,)).fetchone()
    saved_history = control_plane.execute(
        "SELECT id, instance_id, state, changed_at FROM public.instance_state_history WHERE instance_id = %s", (deleted,)
    ).fetchall()
    try:
        with control_plane.transaction():
            control_plane.execute("UPDATE public.instances SET cpu = cpu + 100 WHERE instance_id = %s", (changed,))
            # instance_state_history references instances: the history goes first.
            control_plane.execute("DELETE FROM public.instance_state_history WHERE instance_id = %s", (deleted,))
            control_plane.execute("DELETE FROM public.instances WHERE instance_id = %s", (deleted,))
        log = refresh(loader, "refresh_instances")
        assert (log["rows_inserted"], log["rows_updated"], log["rows_deleted"]) == (0, 1, 1)
        assert instances_checksum(loader, "dwh.instances") == instances_checksum(control_plane, "public.instances")
        assert snapshot_difference(loader, "instances") == 0
        cpu = loader.execute("SELECT cpu FROM dwh.instances WHERE instance_id = %s", (changed,)).fetchone()[0]
        assert cpu == original_cpu + 100
        assert loader.execute("SELECT count(*) FROM dwh.instances WHERE instance_id = %s", (deleted,)).fetchone()[0] == 0
    finally:
        with control_plane.transaction():
            control_plane.execute("UPDATE public.instances SET cpu = %s WHERE instance_id = %s", (original_cpu, changed))
            control_plane.execute(
                f"INSERT INTO public.instances ({INSTANCE_COLUMNS}) VALUES ({', '.join(['%s'] * len(saved_instance))})",
                saved_instance,
            )
            with control_plane.cursor() as cur:
                cur.executemany(
                    "INSERT INTO public.instance_state_history (id, instance_id, state, changed_at)"
                    " OVERRIDING SYSTEM VALUE VALUES (%s, %s, %s, %s)",
                    saved_history,
                )
    refresh(loader, "refresh_instances")
    assert instances_checksum(loader, "dwh.instances") == instances_checksum(control_plane, "public.instances")


# ----- facts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["events", "instance_state"])
def test_fact_window_equals_the_control_plane(loader, control_plane, name):
    log = refresh(loader, f"refresh_{name}", D0, D3)
    source = fact_checksum(control_plane, name, D0, D3, source=True)
    assert source[0] > 0, f"the control plane has no {name} in [{D0}, {D3})"
    assert fact_checksum(loader, name, D0, D3, source=False) == source
    assert log["rows_inserted"] == log["rows_source"] == source[0]
    assert (log["window_start"], log["window_end"]) == (D0, D3)


def test_metrics_window_equals_prometheus(cfg, loader):
    log = refresh(loader, "refresh_metrics", D0, D3)
    assert metrics_equal_prometheus(cfg, loader, D0, D3) == log["rows_inserted"] == log["rows_source"]


@pytest.mark.parametrize("name", ["events", "instance_state", "metrics"])
def test_overlapping_windows_leave_no_gap_and_no_duplicate(cfg, loader, owner, control_plane, name):
    time_col = {"events": "enqueued_at", "instance_state": "changed_at", "metrics": "ts"}[name]
    # Start from an emptied range plus one row the source never had: only the refreshes can fill it.
    owner.execute(sql.SQL("DELETE FROM {} WHERE {t} >= %s AND {t} < %s").format(
        sql.Identifier("dwh", name), t=sql.Identifier(time_col)), (D0, D3))
    stale = D1 + 7 * HOUR + dt.timedelta(minutes=30)
    if name == "events":
        owner.execute("INSERT INTO dwh.events (msg_id, read_ct, enqueued_at, archived_at, vt, message)"
                      " VALUES (-1, 0, %s, %s, %s, '{}')", (stale, stale, stale))
    elif name == "instance_state":
        owner.execute("INSERT INTO dwh.instance_state VALUES (-1, gen_random_uuid(), 'bogus', %s)", (stale,))
    else:
        owner.execute("INSERT INTO dwh.metrics SELECT min(series_id), %s, -1 FROM dwh.metric_series", (stale,))

    # [d0, d1 12:00) then [d1 06:00, d3): the second window overlaps the first by 6 hours.
    first = refresh(loader, f"refresh_{name}", D0, D1 + 12 * HOUR)
    assert first["rows_deleted"] == 1  # the stale row
    in_range = sql.SQL("SELECT count(*) FROM {} WHERE {t} >= %s AND {t} < %s").format(
        sql.Identifier("dwh", name), t=sql.Identifier(time_col))
    overlap = loader.execute(in_range, (D1 + 6 * HOUR, D1 + 12 * HOUR)).fetchone()[0]
    second = refresh(loader, f"refresh_{name}", D1 + 6 * HOUR, D3)
    assert second["rows_deleted"] == overlap  # exactly the overlap is replaced

    def compare() -> tuple:
        if name == "metrics":
            return (metrics_equal_prometheus(cfg, loader, D0, D3),)
        local = fact_checksum(loader, name, D0, D3, source=False)
        assert local == fact_checksum(control_plane, name, D0, D3, source=True)
        return local

    once = compare()
    again = refresh(loader, f"refresh_{name}", D1 + 6 * HOUR, D3)
    assert again["rows_deleted"] == again["rows_inserted"] == second["rows_inserted"]
    assert compare() == once, "refreshing a window twice changed it"


def test_late_events_are_picked_up_by_a_rerun(cfg, loader, control_plane):
    refresh(loader, "refresh_events", D1, D2)
    late = add_events(control_plane, seed=4242, count=25, window_start=D1 + HOUR, window_end=D2 - HOUR)
    try:
        log = refresh(loader, "refresh_events", D1, D2)
        assert log["rows_inserted"] - log["rows_deleted"] == len(late) == 25
        source = fact_checksum(control_plane, "events", D1, D2, source=True)
        assert fact_checksum(loader, "events", D1, D2, source=False) == source
    finally:
        control_plane.execute("DELETE FROM pgmq.a_instance_events WHERE msg_id = ANY(%s)", (list(late),))
    refresh(loader, "refresh_events", D1, D2)
    assert loader.execute("SELECT count(*) FROM dwh.events WHERE msg_id = ANY(%s)", (list(late),)).fetchone()[0] == 0


# ----- source failures -------------------------------------------------------------------------


def my_log_rows(conn: psycopg.Connection, table: str, since_id: int) -> int:
    return conn.execute(
        "SELECT count(*) FROM dwh.refresh_log WHERE table_name = %s AND id > %s AND backend_pid = pg_backend_pid()",
        (table, since_id),
    ).fetchone()[0]


def last_log_id(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT coalesce(max(id), 0) FROM dwh.refresh_log").fetchone()[0]


def test_clerk_failure_after_the_first_page_keeps_the_previous_users(loader, clerk):
    refresh(loader, "refresh_users")
    before = (table_checksum(loader, "dwh.users"), table_checksum(loader, "dwh.users_snapshot"))
    since = last_log_id(loader)
    clerk.request("POST", "/_admin/faults", {"fail_after_page": 1, "status": 500, "path": "/v1/users"})

    with pytest.raises(psycopg.OperationalError, match="source Clerk users answered every retry with a server error") as failure:
        refresh(loader, "refresh_users")
    assert "HTTP 500 from /v1/users?limit=500&offset=500" in failure.value.diag.message_detail
    assert clerk.request("GET", "/_admin/faults")["pages_served"] == 1, "the fault should hit after page 1"
    assert (table_checksum(loader, "dwh.users"), table_checksum(loader, "dwh.users_snapshot")) == before
    assert my_log_rows(loader, "users", since) == 0


def test_unreachable_control_plane_fails_the_refresh_and_keeps_previous_data(cfg, loader, superuser):
    refresh(loader, "refresh_events", D0, D1)
    refresh(loader, "refresh_instances")
    before = (fact_checksum(loader, "events", D0, D1, source=False), table_checksum(loader, "dwh.instances"))
    since = last_log_id(loader)
    superuser.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(CONTROL_PLANE_DB)))
    try:
        superuser.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (CONTROL_PLANE_DB,))
        for routine, args in (("refresh_events", (D0, D1)), ("refresh_instances", ())):
            with pytest.raises(psycopg.OperationalError, match='could not connect to server "control_plane"') as failure:
                refresh(loader, routine, *args)
            assert "not currently accepting connections" in failure.value.diag.message_detail
    finally:
        superuser.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(CONTROL_PLANE_DB)))
    assert (fact_checksum(loader, "events", D0, D1, source=False), table_checksum(loader, "dwh.instances")) == before
    assert my_log_rows(loader, "events", since) == my_log_rows(loader, "instances", since) == 0
    # And the source is back: the next run succeeds.
    assert refresh(loader, "refresh_events", D0, D1)["rows_inserted"] == before[0][0]


def test_labels_of_metrics_are_stored_once(loader):
    dupes = loader.execute(
        "SELECT count(*) FROM (SELECT metric_name, labels FROM dwh.metric_series GROUP BY 1, 2 HAVING count(*) > 1) d"
    ).fetchone()[0]
    assert dupes == 0
    labels = loader.execute("SELECT labels FROM dwh.metric_series LIMIT 1").fetchone()[0]
    assert {"instance_id", "organization_id"} <= set(labels) and "__name__" not in labels, json.dumps(labels)
