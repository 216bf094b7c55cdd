"""The control plane source: the company's own Postgres database, filled from the World.

The database ``control_plane`` (on the project's cluster, owned by the cluster
superuser) holds organizations, instances, their state history and the archive of the
pgmq queue ``instance_events``. The warehouse reads it over TCP through postgres_fdw as
``cp_reader``, which may only SELECT (see ``sql/control_plane/schema.sql``).

- Organizations, instances and state history come from ``build_world`` via COPY.
- Events are generated inside Postgres by ``dwh_seed.generate_instance_events`` (a
  seeded hash per msg_id), so millions of rows load without leaving the server. Each
  lands at a uniformly drawn moment of the fleet's instance-time: a day's events follow
  the instances alive on it.
- ``ensure_control_plane`` (used by ``dwh up``) loads once per (seed, scale,
  anchor_day, history days, event count); the marker row is ``dwh_seed.loaded_world``. Rows added
  later (e.g. late events from ``add_events``) are left alone until one of those changes.

A (re)load is one transaction: readers see the old data or the new, never half.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from dwh_assets.local.config import CONTROL_PLANE_DB, CONTROL_PLANE_READER_ROLE, StackConfig
from dwh_assets.local.generator import World, build_world
from dwh_assets.local.process import StackError

log = logging.getLogger(__name__)

# The control plane's schema and event generator, applied by this module.
SCHEMA_DIR = Path(__file__).resolve().parent / "sql" / "control_plane"
# Bump when the rows generated for a given world change, so existing stacks reload.
GENERATOR_VERSION = 2
# Events per statement: bounds the time between progress reports.
EVENT_CHUNK = 500_000
# Serialises concurrent loaders (two `dwh up` at once) on the control plane database.
_LOAD_LOCK_KEY = 0x64776863705F6C64  # "dwhcp_ld"

TABLES = (
    "public.organizations",
    "public.instances",
    "public.instance_state_history",
    "pgmq.a_instance_events",
)

Progress = Callable[[int, int], None]
"""Called with (events inserted so far, events to insert) after every chunk."""


@dataclass(frozen=True)
class ControlPlaneLoad:
    """What ``ensure_control_plane`` did: ``loaded`` is False when the data was current."""

    loaded: bool
    row_counts: dict[str, int]
    seconds: float

    def __str__(self) -> str:
        counts = ", ".join(f"{rows:,} {table.split('.')[-1]}" for table, rows in self.row_counts.items())
        return f"{'loaded' if self.loaded else 'already loaded'}: {counts}"


def apply_schema(conn: psycopg.Connection, reader_role: str = CONTROL_PLANE_READER_ROLE) -> None:
    """Create the tables, grants (to ``reader_role``) and the event generator (idempotent)."""
    schema = (SCHEMA_DIR / "schema.sql").read_text()
    conn.execute(sql.SQL(schema).format(reader=sql.Identifier(reader_role)))
    conn.execute((SCHEMA_DIR / "generate_instance_events.sql").read_text())


def load_control_plane(
    conn_or_dsn: psycopg.Connection | str,
    world: World,
    *,
    n_events: int | None = None,
    progress: Progress | None = None,
    reader_role: str = CONTROL_PLANE_READER_ROLE,
) -> dict[str, int]:
    """Replace the control plane's data with ``world`` (and ``n_events`` events); row counts.

    Runs in one transaction (a savepoint if ``conn`` is already in one); needs the
    database owner or a superuser. ``reader_role`` is granted read access (it must exist).
    """
    n_events = world.n_events if n_events is None else n_events
    if n_events < 0:
        raise ValueError(f"n_events must be >= 0, got {n_events}")
    with _connection(conn_or_dsn) as conn, conn.transaction():
        apply_schema(conn, reader_role)
        conn.execute(
            "TRUNCATE public.instance_state_history, public.instances, public.organizations,"
            " pgmq.a_instance_events RESTART IDENTITY"
        )
        counts = _copy_world(conn, world)
        counts["pgmq.a_instance_events"] = _insert_events(conn, world, n_events, progress)
        _write_marker(conn, world, n_events, counts)
        for table in TABLES:
            # Fresh statistics: postgres_fdw's remote estimates and the window reads use them.
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(*table.split("."))))
    return counts


def ensure_control_plane(
    cfg: StackConfig,
    *,
    n_events: int | None = None,
    progress: Progress | None = None,
) -> ControlPlaneLoad:
    """Load the control plane for ``cfg``'s world unless it is already loaded."""
    started = time.monotonic()
    try:
        conn = psycopg.connect(cfg.superuser_dsn(CONTROL_PLANE_DB))
    except psycopg.OperationalError as e:
        reason = " ".join(str(e).split())
        raise StackError(
            f"cannot reach the control plane database {CONTROL_PLANE_DB!r} on port {cfg.pg_port} "
            f"({reason}); start and provision the cluster first (`dwh up`)."
        ) from e
    with conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOAD_LOCK_KEY,))
        apply_schema(conn)
        wanted = _marker_key(cfg.seed, cfg.scale, cfg.anchor_day, n_events, cfg.history_days)
        current = conn.execute(
            "SELECT seed, scale, anchor_day, n_events, generator_version, history_days, row_counts"
            " FROM dwh_seed.loaded_world"
        ).fetchone()
        if current is not None and current[:6] == wanted:
            log.info("control plane already holds seed %s scale %s (%s, %s days)",
                     cfg.seed, cfg.scale, cfg.anchor_day, cfg.history_days)
            return ControlPlaneLoad(False, dict(current[6]), time.monotonic() - started)
        world = build_world(cfg.seed, cfg.scale, cfg.anchor_day, cfg.history_days)
        counts = load_control_plane(conn, world, n_events=wanted[3], progress=progress)
    return ControlPlaneLoad(True, counts, time.monotonic() - started)


def add_events(
    conn: psycopg.Connection,
    *,
    seed: int,
    count: int,
    window_start: dt.datetime,
    window_end: dt.datetime,
    start_msg_id: int | None = None,
) -> range:
    """Append ``count`` events enqueued in ``[window_start, window_end)``; their msg_ids.

    For tests of late-arriving data. ``start_msg_id`` defaults to max(msg_id) + 1. The
    rows do not change the marker, so a later ``ensure_control_plane`` keeps them.
    """
    if start_msg_id is None:
        start_msg_id = conn.execute("SELECT coalesce(max(msg_id), 0) + 1 FROM pgmq.a_instance_events").fetchone()[0]
    inserted = conn.execute(
        "SELECT dwh_seed.generate_instance_events(%s, %s, %s, %s, %s)",
        (seed, start_msg_id, count, window_start, window_end),
    ).fetchone()[0]
    return range(start_msg_id, start_msg_id + inserted)


# ----- internals -------------------------------------------------------------------


@contextmanager
def _connection(conn_or_dsn: psycopg.Connection | str) -> Iterator[psycopg.Connection]:
    if isinstance(conn_or_dsn, psycopg.Connection):
        yield conn_or_dsn
        return
    with psycopg.connect(conn_or_dsn) as conn:
        yield conn


def _marker_key(seed: int, scale: float, anchor_day: dt.date, n_events: int | None, history_days: int) -> tuple:
    if n_events is None:
        # World.n_events without building the world (building it at 100x takes a while).
        n_events = World(seed=seed, scale=scale, anchor_day=anchor_day).n_events
    return (seed, scale, anchor_day, n_events, GENERATOR_VERSION, history_days)


def _copy_world(conn: psycopg.Connection, world: World) -> dict[str, int]:
    last_change: dict[str, dt.datetime] = {}
    for change in world.state_changes:
        last_change[change.instance_id] = max(change.changed_at, last_change.get(change.instance_id, change.changed_at))
    with conn.cursor() as cur:
        with cur.copy(
            "COPY public.organizations (organization_id, name, plan, created_at, updated_at) FROM STDIN"
        ) as copy:
            for o in world.organizations:
                copy.write_row((o.id, o.name, o.plan, o.created_at, o.updated_at))
        with cur.copy(
            "COPY public.instances (instance_id, organization_id, name, region, cpu, memory_gb,"
            " storage_gb, created_at, updated_at, deleted_at) FROM STDIN"
        ) as copy:
            for i in world.instances:
                # The control plane touches an instance row at each state change.
                updated = last_change.get(i.id, i.created_at)
                copy.write_row(
                    (i.id, i.organization_id, i.name, i.region, i.cpu, i.memory_gb, i.storage_gb,
                     i.created_at, updated, i.deleted_at)
                )
        # Identity ids follow COPY order (RESTART IDENTITY above): deterministic.
        with cur.copy("COPY public.instance_state_history (instance_id, state, changed_at) FROM STDIN") as copy:
            for c in world.state_changes:
                copy.write_row((c.instance_id, c.state, c.changed_at))
    return {
        "public.organizations": len(world.organizations),
        "public.instances": len(world.instances),
        "public.instance_state_history": len(world.state_changes),
    }


def _insert_events(conn: psycopg.Connection, world: World, n_events: int, progress: Progress | None) -> int:
    started = time.monotonic()
    done = 0
    # Building indexes once after the insert is ~40% faster than maintaining them per row.
    rebuild = _drop_indexes(conn, "pgmq.a_instance_events")
    while done < n_events:
        chunk = min(EVENT_CHUNK, n_events - done)
        done += conn.execute(
            "SELECT dwh_seed.generate_instance_events(%s, %s, %s, %s, %s)",
            (world.seed, done + 1, chunk, world.history_start, world.history_end),
        ).fetchone()[0]
        log.info("control plane: %d/%d events (%.1fs)", done, n_events, time.monotonic() - started)
        if progress is not None:
            progress(done, n_events)
    for statement in rebuild:
        conn.execute(statement)
    log.info("control plane: events indexed (%.1fs)", time.monotonic() - started)
    return done


def _drop_indexes(conn: psycopg.Connection, table: str) -> list[sql.Composable]:
    """Drop ``table``'s indexes and key constraints; the statements that recreate them.

    The definitions come from the catalog (i.e. from schema.sql), so nothing is repeated
    here. Inside the load transaction: a failure rolls the drop back too.
    """
    rel = sql.Identifier(*table.split("."))
    constraints = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = %s::regclass AND contype IN ('p', 'u')",
        (table,),
    ).fetchall()
    indexes = conn.execute(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index"
        " WHERE indrelid = %s::regclass"
        " AND indexrelid NOT IN (SELECT conindid FROM pg_constraint WHERE conrelid = %s::regclass)",
        (table, table),
    ).fetchall()
    rebuild: list[sql.Composable] = []
    for name, definition in constraints:
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(rel, sql.Identifier(name)))
        rebuild.append(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(rel, sql.Identifier(name), sql.SQL(definition))
        )
    for qualified_name, definition in indexes:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(qualified_name)))
        rebuild.append(sql.SQL(definition))
    return rebuild


def _write_marker(conn: psycopg.Connection, world: World, n_events: int, counts: dict[str, int]) -> None:
    seed, scale, anchor_day, n_events, version, history_days = _marker_key(
        world.seed, world.scale, world.anchor_day, n_events, world.history_days)
    conn.execute("DELETE FROM dwh_seed.loaded_world")
    conn.execute(
        "INSERT INTO dwh_seed.loaded_world (seed, scale, anchor_day, n_events, generator_version, history_days,"
        " row_counts) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (seed, scale, anchor_day, n_events, version, history_days, Jsonb(counts)),
    )
