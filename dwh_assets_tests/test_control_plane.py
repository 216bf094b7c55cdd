"""The control plane source against a real, throwaway PostgreSQL cluster."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors, sql

from dwh_assets.local.config import (
    CONTROL_PLANE_DB,
    CONTROL_PLANE_READER_ROLE,
    StackConfig,
    free_port,
    load_config,
)
from dwh_assets.local import control_plane
from dwh_assets.local.control_plane import add_events, ensure_control_plane, load_control_plane
from dwh_assets.local.generator import World, build_world
from dwh_assets.local import secrets
from dwh_assets.local.postgres import Postgres
from dwh_assets.local.process import StackError
from dwh_assets_tests.tiers import integration_fixture

SEED = 7
SCALE = 0.05
N_EVENTS = 20_000
# A fixed anchor keeps the generated world identical from day to day.
ANCHOR = dt.date(2024, 5, 1)
SCRATCH_DB = "control_plane_scratch"

EXPECTED_COLUMNS = {
    ("public", "organizations"): [
        ("organization_id", "text", "NO"), ("name", "text", "NO"), ("plan", "text", "NO"),
        ("created_at", "timestamp with time zone", "NO"), ("updated_at", "timestamp with time zone", "NO"),
    ],
    ("public", "instances"): [
        ("instance_id", "uuid", "NO"), ("organization_id", "text", "NO"), ("name", "text", "NO"),
        ("region", "text", "NO"), ("cpu", "integer", "NO"), ("memory_gb", "integer", "NO"),
        ("storage_gb", "integer", "NO"), ("created_at", "timestamp with time zone", "NO"),
        ("updated_at", "timestamp with time zone", "NO"), ("deleted_at", "timestamp with time zone", "YES"),
    ],
    ("public", "instance_state_history"): [
        ("id", "bigint", "NO"), ("instance_id", "uuid", "NO"), ("state", "text", "NO"),
        ("changed_at", "timestamp with time zone", "NO"),
    ],
    ("pgmq", "a_instance_events"): [
        ("msg_id", "bigint", "NO"), ("read_ct", "integer", "NO"),
        ("enqueued_at", "timestamp with time zone", "NO"), ("archived_at", "timestamp with time zone", "NO"),
        ("vt", "timestamp with time zone", "NO"), ("message", "jsonb", "NO"),
    ],
}
EVENT_KINDS = {
    "instance.started", "instance.stopped", "instance.restarted", "instance.resized",
    "backup.started", "backup.completed", "backup.failed",
}


# ----- fixtures ------------------------------------------------------------------------


@integration_fixture(scope="session")
def cluster() -> Iterator[tuple[StackConfig, Postgres]]:
    """A provisioned cluster in a temporary DWH_HOME (reachable by the server's OS user)."""
    home = Path(tempfile.mkdtemp(prefix="dwh-test-cp-"))
    os.chmod(home, 0o755)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DWH_HOME", str(home))
        mp.setenv("DWH_PG_PORT", str(free_port()))
        mp.setenv("DWH_SEED", str(SEED))
        mp.setenv("DWH_SCALE", str(SCALE))
        cfg = dataclasses.replace(load_config(create=True), anchor_day=ANCHOR)
    pg = Postgres(cfg)
    try:
        pg.start()
        pg.provision()
        yield cfg, pg
    finally:
        pg.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def cfg(cluster) -> StackConfig:
    return cluster[0]


@pytest.fixture(scope="module")
def world(cfg) -> World:
    return build_world(cfg.seed, cfg.scale, cfg.anchor_day)


@pytest.fixture(scope="module")
def first_load(cfg) -> control_plane.ControlPlaneLoad:
    return ensure_control_plane(cfg, n_events=N_EVENTS)


@pytest.fixture()
def cp(cfg, first_load) -> Iterator[psycopg.Connection]:
    """A superuser connection to the loaded control plane."""
    with psycopg.connect(cfg.superuser_dsn(CONTROL_PLANE_DB), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def scratch_dsn(cluster) -> str:
    """A second, initially empty database for loads that must not disturb the main one."""
    cfg, pg = cluster
    with pg.connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(SCRATCH_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SCRATCH_DB)))
    return cfg.superuser_dsn(SCRATCH_DB)


def checksums(conn: psycopg.Connection) -> dict[str, str]:
    """md5 of every control plane table's rows in key order."""
    out = {}
    for table, key in (
        ("public.organizations", "organization_id"),
        ("public.instances", "instance_id"),
        ("public.instance_state_history", "id"),
        ("pgmq.a_instance_events", "msg_id"),
    ):
        out[table] = conn.execute(
            sql.SQL("SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t.{}), '')) FROM {} t").format(
                sql.Identifier(key), sql.Identifier(*table.split("."))
            )
        ).fetchone()[0]
    return out


def scalar(conn: psycopg.Connection, query: str, params=()) -> object:
    return conn.execute(query, params).fetchone()[0]


# ----- schema ------------------------------------------------------------------------------


def test_tables_match_the_contract(cp):
    for (schema, table), expected in EXPECTED_COLUMNS.items():
        columns = cp.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (schema, table),
        ).fetchall()
        assert columns == expected, f"{schema}.{table}"
    indexed = set(cp.execute("SELECT schemaname, tablename, indexdef FROM pg_indexes").fetchall())
    assert any(t == "instance_state_history" and "(changed_at)" in d for _, t, d in indexed)
    assert any(t == "a_instance_events" and "(enqueued_at)" in d for _, t, d in indexed)
    # The warehouse's arrival lookup (docs/source-contract.md).
    assert any(t == "a_instance_events" and "(archived_at)" in d for _, t, d in indexed)
    assert any(t == "a_instance_events" and d.startswith("CREATE UNIQUE") and "(msg_id)" in d for _, t, d in indexed)


def test_schema_can_be_applied_again_without_changes(cp):
    before = cp.execute("SELECT count(*), max(oid::bigint) FROM pg_class").fetchone()
    with cp.transaction():
        control_plane.apply_schema(cp)
    assert cp.execute("SELECT count(*), max(oid::bigint) FROM pg_class").fetchone() == before


# ----- loaded data ---------------------------------------------------------------------------


def test_rows_are_the_worlds(cp, world, first_load):
    assert first_load.loaded
    assert first_load.row_counts == {
        "public.organizations": len(world.organizations),
        "public.instances": len(world.instances),
        "public.instance_state_history": len(world.state_changes),
        "pgmq.a_instance_events": N_EVENTS,
    }
    orgs = cp.execute("SELECT organization_id, name, plan, created_at, updated_at FROM public.organizations").fetchall()
    assert sorted(orgs) == sorted((o.id, o.name, o.plan, o.created_at, o.updated_at) for o in world.organizations)
    instances = cp.execute(
        "SELECT instance_id::text, organization_id, name, region, cpu, memory_gb, storage_gb, created_at, deleted_at"
        " FROM public.instances"
    ).fetchall()
    assert sorted(instances) == sorted(
        (i.id, i.organization_id, i.name, i.region, i.cpu, i.memory_gb, i.storage_gb, i.created_at, i.deleted_at)
        for i in world.instances
    )
    history = cp.execute("SELECT instance_id::text, state, changed_at FROM public.instance_state_history ORDER BY id").fetchall()
    assert history == [(c.instance_id, c.state, c.changed_at) for c in world.state_changes]
    assert scalar(cp, "SELECT count(*) FROM pgmq.a_instance_events") == N_EVENTS


def test_instance_updated_at_is_its_last_state_change(cp):
    mismatched = scalar(cp, """
        SELECT count(*) FROM public.instances i
        WHERE i.updated_at <> (SELECT max(changed_at) FROM public.instance_state_history h
                               WHERE h.instance_id = i.instance_id)""")
    assert mismatched == 0


def test_references_hold(cp):
    assert scalar(cp, "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace") == 2
    # Events carry their instance and its organization only inside the message.
    orphans = scalar(cp, """
        SELECT count(*) FROM pgmq.a_instance_events e
        LEFT JOIN public.instances i ON i.instance_id = (e.message->>'instance_id')::uuid
        WHERE i.instance_id IS NULL OR i.organization_id <> e.message->>'organization_id'""")
    assert orphans == 0


def test_events_fall_inside_instance_lifetimes_and_history(cp, world):
    outside = scalar(cp, """
        SELECT count(*) FROM pgmq.a_instance_events e
        JOIN public.instances i ON i.instance_id = (e.message->>'instance_id')::uuid
        WHERE e.enqueued_at < greatest(i.created_at, %(start)s)
           OR e.enqueued_at >= least(coalesce(i.deleted_at, 'infinity'), %(end)s)""",
        {"start": world.history_start, "end": world.history_end})
    assert outside == 0
    row = cp.execute("""
        SELECT min(msg_id), max(msg_id), count(DISTINCT msg_id),
               bool_and(archived_at > enqueued_at AND vt > archived_at),
               bool_and(read_ct BETWEEN 1 AND 3),
               bool_and((message->>'seq')::bigint = msg_id),
               array_agg(DISTINCT message->>'event'),
               count(DISTINCT message->>'instance_id'),
               array_agg(DISTINCT enqueued_at::date)
        FROM pgmq.a_instance_events""").fetchone()
    assert row[:6] == (1, N_EVENTS, N_EVENTS, True, True, True)
    assert set(row[6]) == EVENT_KINDS
    # Events happen only on days some instance lives, to most of the fleet.
    assert set(row[8]) <= alive_days(world)
    assert row[7] > 0.9 * len(world.instances)


def test_events_follow_the_fleet_alive_over_time(cp, world):
    """A stretch of history gets the share of the events that it holds of the fleet's
    instance-time, so the last days (the biggest fleet) are as dense at any history length."""
    start, end = world.history_start, world.history_end
    cuts = [start + (end - start) * q / 4 for q in (1, 2, 3)]
    expected = [world.instance_time(cut) / world.instance_time() for cut in cuts]
    seen = [scalar(cp, "SELECT count(*) FROM pgmq.a_instance_events WHERE enqueued_at < %s", (cut,)) / N_EVENTS
            for cut in cuts]
    assert seen == pytest.approx(expected, abs=0.02)


def alive_days(world: World) -> set[dt.date]:
    days = set()
    for i in world.instances:
        end = min(i.deleted_at or world.history_end, world.history_end)
        day = i.created_at.date()
        while dt.datetime.combine(day, dt.time(), dt.timezone.utc) < end:
            days.add(day)
            day += dt.timedelta(days=1)
    return days


# ----- determinism, idempotence, atomicity ----------------------------------------------------


def test_same_world_gives_identical_rows(cp, world, scratch_dsn):
    load_control_plane(scratch_dsn, world, n_events=N_EVENTS)
    with psycopg.connect(scratch_dsn) as scratch:
        assert checksums(scratch) == checksums(cp)
    other = build_world(world.seed + 1, world.scale, world.anchor_day)
    load_control_plane(scratch_dsn, other, n_events=N_EVENTS)
    with psycopg.connect(scratch_dsn) as scratch:
        differing = {t for t, c in checksums(scratch).items() if c != checksums(cp)[t]}
    assert differing == set(control_plane.TABLES)


def test_second_ensure_is_a_no_op(cfg, cp, first_load):
    def fingerprint():
        return cp.execute(
            "SELECT pg_relation_filenode('pgmq.a_instance_events'), pg_relation_filenode('public.instances'),"
            " (SELECT xmin::text FROM dwh_seed.loaded_world)"
        ).fetchone()

    before = fingerprint()
    again = ensure_control_plane(cfg, n_events=N_EVENTS)
    assert not again.loaded
    assert again.row_counts == first_load.row_counts
    assert fingerprint() == before


def test_ensure_reloads_when_the_event_count_changes(cfg, cp):
    try:
        result = ensure_control_plane(cfg, n_events=N_EVENTS // 2)
        assert result.loaded
        assert scalar(cp, "SELECT count(*) FROM pgmq.a_instance_events") == N_EVENTS // 2
    finally:
        assert ensure_control_plane(cfg, n_events=N_EVENTS).loaded
    assert scalar(cp, "SELECT count(*) FROM pgmq.a_instance_events") == N_EVENTS


def test_failed_load_leaves_previous_data(world, scratch_dsn, monkeypatch):
    load_control_plane(scratch_dsn, world, n_events=3_000)
    with psycopg.connect(scratch_dsn) as scratch:
        before = checksums(scratch)
    monkeypatch.setattr(control_plane, "EVENT_CHUNK", 1_000)
    seen = []

    def fail_after_first_chunk(done: int, total: int) -> None:
        seen.append((done, total))
        raise RuntimeError("interrupted")

    other = build_world(world.seed + 1, world.scale, world.anchor_day)
    with pytest.raises(RuntimeError, match="interrupted"):
        load_control_plane(scratch_dsn, other, n_events=5_000, progress=fail_after_first_chunk)
    assert seen == [(1_000, 5_000)]
    with psycopg.connect(scratch_dsn) as scratch:
        assert checksums(scratch) == before
        # the dropped-for-loading indexes came back with the rollback
        assert scalar(scratch, "SELECT count(*) FROM pg_indexes WHERE tablename = 'a_instance_events'") == 3


def test_progress_is_reported_per_chunk(world, scratch_dsn, monkeypatch):
    monkeypatch.setattr(control_plane, "EVENT_CHUNK", 5_000)
    seen = []
    counts = load_control_plane(scratch_dsn, world, n_events=12_000, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(5_000, 12_000), (10_000, 12_000), (12_000, 12_000)]
    assert counts["pgmq.a_instance_events"] == 12_000


# ----- late data --------------------------------------------------------------------------------


def test_add_events_appends_inside_the_window(cp, world):
    day_end = world.history_end
    day_start = day_end - dt.timedelta(days=1)
    with cp.transaction(force_rollback=True):
        ids = add_events(cp, seed=world.seed, count=500, window_start=day_start, window_end=day_end)
        assert ids == range(N_EVENTS + 1, N_EVENTS + 501)
        outside = scalar(cp, """
            SELECT count(*) FROM pgmq.a_instance_events e
            JOIN public.instances i ON i.instance_id = (e.message->>'instance_id')::uuid
            WHERE e.msg_id > %(last)s
              AND (e.enqueued_at < greatest(i.created_at, %(start)s)
                   OR e.enqueued_at >= least(coalesce(i.deleted_at, 'infinity'), %(end)s))""",
            {"last": N_EVENTS, "start": day_start, "end": day_end})
        assert outside == 0
        assert scalar(cp, "SELECT count(*) FROM pgmq.a_instance_events WHERE msg_id > %s", (N_EVENTS,)) == 500


def test_generating_events_without_live_instances_says_why(cp, world):
    before_history = world.history_start - dt.timedelta(days=400)
    with cp.transaction(force_rollback=True):
        with pytest.raises(errors.RaiseException, match="no instance is alive"):
            add_events(cp, seed=1, count=10, window_start=before_history,
                       window_end=before_history + dt.timedelta(days=1))


# ----- access --------------------------------------------------------------------------------------


def test_cp_reader_can_read_but_not_write(cfg, first_load):
    password = secrets.passwords(cfg)[CONTROL_PLANE_READER_ROLE]
    with psycopg.connect(
        host=cfg.host, port=cfg.pg_port, dbname=CONTROL_PLANE_DB, user=CONTROL_PLANE_READER_ROLE,
        password=password, autocommit=True,
    ) as reader:
        assert scalar(reader, "SELECT inet_server_addr()::text") is not None  # TCP, not the socket
        for table, rows in first_load.row_counts.items():
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*table.split(".")))
            assert scalar(reader, query) == rows
        for statement in (
            "INSERT INTO public.organizations VALUES ('org_x', 'x', 'free', now(), now())",
            "UPDATE pgmq.a_instance_events SET read_ct = 9",
            "DELETE FROM public.instance_state_history",
            "TRUNCATE public.instances",
            "CREATE TABLE public.sneaky (a int)",
            "SELECT * FROM dwh_seed.loaded_world",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                reader.execute(statement)


def test_cp_reader_needs_its_password(cfg, first_load):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host=cfg.host, port=cfg.pg_port, dbname=CONTROL_PLANE_DB, user=CONTROL_PLANE_READER_ROLE,
            password="wrong", connect_timeout=5,
        )


def test_ensure_without_a_cluster_says_what_to_do(cfg):
    nowhere = dataclasses.replace(cfg, ports={**cfg.ports, "pg": free_port()})
    with pytest.raises(StackError, match=r"control plane database .*`dwh up`"):
        ensure_control_plane(nowhere)
