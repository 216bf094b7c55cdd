"""B1 refresh throughput: the project's routine against Python round trips.

The control plane is reloaded with 1,000,000 events and a 100,000-row instances dimension
(times ``--scale``). Each relation is then copied into the warehouse four ways:

(a) the project's routine (``dwh.refresh_events`` over the whole window,
    ``dwh.refresh_instances``), called by a Python client as pg_cron and Dagster do; the
    events routine moves the window the stack's way (``control_plane.transfer``: ``copy``);
(b) pandas: ``read_sql`` in chunks from the control plane, ``to_sql`` into a scratch copy
    of the local table (SQLAlchemy + psycopg);
(c) psycopg: ``COPY ... TO STDOUT`` streamed into ``COPY ... FROM STDIN`` (binary);
(d) ``INSERT ... SELECT`` from a local copy of the source: the physical limit;
(e) ``COPY ... FROM`` a local binary file of the same rows (read by the superuser): the
    receive-side floor. Any copy from another server must parse every value again on the way
    in (jsonb above all), which (d) does not: (e) is what such a copy can reach.

Every target is a clone of the local table (same columns, keys, indexes and daily
partitions), emptied before each run; every copy is checked against the source.
Events are also copied at a tenth of the size, to see whether memory grows with rows.

On the whole event window, (a) is also run the other ways tried (``VARIANTS``): through
postgres_fdw (``transfer = fdw``, the routine before, and at other ``fetch_size`` values),
the copy path in text, postgres_fdw over two foreign servers at once, and a postgres_fdw
fetch into a server file followed by ``COPY FROM`` that file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path

from psycopg import sql

from benchmarks.harness import (BenchContext, BenchError, BenchResult, Goal, Measurement, Row, best_of, checksum, clone_table,
                                make_row, utc_midnight)
from dwh_assets.local.config import CONTROL_PLANE_DB, CONTROL_PLANE_READER_ROLE, LOADER_ROLE, OWNER_ROLE, WAREHOUSE_DB
from dwh_assets.local.control_plane import load_control_plane
from dwh_assets.local.generator import INSTANCES_PER_SCALE, World, build_world

NAME = "B1"
TITLE = "refresh throughput: FDW-native routine vs pandas vs COPY pipe vs local INSERT ... SELECT"
NEEDS_DAGSTER = False

FULL_EVENTS = 1_000_000
FULL_DIMENSION = 100_000
SMALL_FRACTION = 0.1
PANDAS_CHUNK_ROWS = 50_000
# postgres_fdw fetch_size values (a) is re-run with on the whole event window.
FETCH_SIZE_SWEEP = (1_000, 10_000, 100_000)
METHODS_MODULE = "benchmarks.copy_methods"


@dataclass(frozen=True)
class Table:
    name: str
    source: str
    local: str
    columns: tuple[str, ...]
    time_column: str | None
    # Checksum row text: the same SQL on the source and on every copy.
    row_text: str
    # The routine, as (a) calls it; its first column is the number of rows inserted.
    routine: str
    # Extra local tables (a) writes and the set-up empties (the dimension's snapshots).
    also_empty: tuple[str, ...] = ()
    jsonb: tuple[str, ...] = ()
    uuid: tuple[str, ...] = ()
    target: str = ""

    def spec(self, target: str) -> dict:
        return asdict(self) | {"target": target}


EVENTS = Table(
    name="events",
    source="pgmq.a_instance_events",
    local="dwh.events",
    columns=("msg_id", "read_ct", "enqueued_at", "archived_at", "vt", "message"),
    time_column="enqueued_at",
    row_text="concat_ws('|', msg_id, read_ct, extract(epoch FROM enqueued_at), extract(epoch FROM archived_at),"
             " extract(epoch FROM vt), message::text)",
    routine="SELECT rows_inserted FROM dwh.refresh_events(%s, %s)",
    jsonb=("message",),
)
INSTANCES = Table(
    name="instances",
    source="public.instances",
    local="dwh.instances",
    columns=("instance_id", "organization_id", "name", "region", "cpu", "memory_gb", "storage_gb",
             "created_at", "updated_at", "deleted_at"),
    time_column=None,
    row_text="concat_ws('|', instance_id, organization_id, name, region, cpu, memory_gb, storage_gb,"
             " extract(epoch FROM created_at), extract(epoch FROM updated_at), extract(epoch FROM deleted_at))",
    routine="SELECT rows_inserted FROM dwh.refresh_instances(%s)",
    also_empty=("dwh.instances_snapshot",),
    uuid=("instance_id",),
)

METHODS = {
    "a": "(a) the project's routine",
    "b": "(b) pandas read_sql/to_sql",
    "c": "(c) psycopg COPY pipe",
    "d": "(d) local INSERT ... SELECT",
    "e": "(e) COPY FROM a local binary file",
}


@dataclass
class Case:
    table: Table
    label: str
    window: list[str] | None
    routine_params: list


def run(ctx: BenchContext) -> BenchResult:
    n_events = max(1, round(FULL_EVENTS * ctx.scale))
    n_dimension = max(1, round(FULL_DIMENSION * ctx.scale))
    start, end = load_sources(ctx, n_events, n_dimension)
    small_end = small_window_end(ctx, start, end)
    prepare_targets(ctx, start, end)

    today = dt.datetime.now(dt.timezone.utc).date()
    cases = [
        Case(EVENTS, "events, 1/10 window", [start.isoformat(), small_end.isoformat()], [start, small_end]),
        Case(EVENTS, "events, whole window", [start.isoformat(), end.isoformat()], [start, end]),
        Case(INSTANCES, "instances dimension", None, [today]),
    ]
    result = BenchResult(details={"events": n_events, "dimension_rows": n_dimension,
                                  "window": [start.isoformat(), end.isoformat()],
                                  "small_window_end": small_end.isoformat(),
                                  "pandas_chunk_rows": PANDAS_CHUNK_ROWS})
    with ctx.superuser() as conn:
        result.details["fetch_size"] = current_fetch_size(conn)
        # How dwh.refresh_events moves the window in this deployment ('copy' or 'fdw').
        result.details["transfer"] = conn.execute("SELECT dwh.setting('control_plane.transfer', 'fdw')").fetchone()[0]
    for case in cases:
        rows = run_case(ctx, case)
        if case.table is EVENTS and case.window[1] == end.isoformat():
            rows += fetch_size_sweep(ctx, case)
            rows += transfer_variants(ctx, case)
        reference = next(r for r in rows if r.method == METHODS["d"])
        for row in rows:
            row.ratio, row.ratio_to = row.rows_per_s / reference.rows_per_s, "(d)"
        result.rows += rows
    result.goals = goals(result.rows)
    return result


# ----- set-up (untimed) ------------------------------------------------------------------------


def load_sources(ctx: BenchContext, n_events: int, n_dimension: int) -> tuple[dt.datetime, dt.datetime]:
    """Reload the control plane with the benchmark's world; its event window."""
    world = World(seed=ctx.cfg.seed, scale=n_dimension / INSTANCES_PER_SCALE, anchor_day=ctx.cfg.anchor_day)
    with ctx.superuser(CONTROL_PLANE_DB) as conn:
        loaded = conn.execute(
            "SELECT seed, scale, anchor_day, n_events FROM dwh_seed.loaded_world"
        ).fetchone()
        if loaded == (world.seed, world.scale, world.anchor_day, n_events):
            ctx.progress("B1: the control plane already holds the benchmark's world")
        else:
            ctx.progress(f"B1: loading the control plane: {n_events:,} events, {n_dimension:,} instances ...")
            world = build_world(world.seed, world.scale, world.anchor_day)
            conn.autocommit = False
            load_control_plane(conn, world, n_events=n_events)
            conn.commit()
    return world.history_start, world.history_end


def small_window_end(ctx: BenchContext, start: dt.datetime, end: dt.datetime) -> dt.datetime:
    """The first UTC midnight after which the window holds ~SMALL_FRACTION of the events."""
    with ctx.superuser(CONTROL_PLANE_DB) as conn:
        day = conn.execute(
            "WITH d AS (SELECT date_trunc('day', enqueued_at) AS day, count(*) AS n FROM pgmq.a_instance_events"
            " WHERE enqueued_at >= %s AND enqueued_at < %s GROUP BY 1),"
            " c AS (SELECT day, sum(n) OVER (ORDER BY day) AS cum, sum(n) OVER () AS total FROM d)"
            " SELECT min(day) FROM c WHERE cum >= total * %s",
            (start, end, SMALL_FRACTION),
        ).fetchone()[0]
    return min(end, utc_midnight(day.date()) + dt.timedelta(days=1))


def prepare_targets(ctx: BenchContext, start: dt.datetime, end: dt.datetime) -> None:
    """Scratch clones of the local tables for (b), (c), (d); local sources for (d)."""
    from benchmarks.copy_methods import NoProbe, copy_pipe

    with ctx.connect(role=OWNER_ROLE) as conn:
        # Partitions for the whole window exist before any method runs: none pays for them.
        conn.execute("SELECT dwh.ensure_partitions('dwh.events', %s, %s)", (start, end))
    with ctx.superuser() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS bench AUTHORIZATION {}").format(sql.Identifier(LOADER_ROLE)))
        for table in (EVENTS, INSTANCES):
            for method in ("b", "c", "d", "e"):
                clone_table(conn, table.local, target(table, method))
            # (d)'s source: a plain local table with the source's columns and rows.
            source = f"bench.{table.name}_source"
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(*source.split("."))))
            conn.execute(sql.SQL("CREATE TABLE {} AS {} WITH NO DATA").format(
                sql.Identifier(*source.split(".")),
                sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(map(sql.Identifier, table.columns)),
                                                    sql.Identifier(*table.local.split(".")))))
        conn.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA bench TO {}").format(sql.Identifier(LOADER_ROLE)))
    for table in (EVENTS, INSTANCES):
        source = f"bench.{table.name}_source"
        window = None if table.time_column is None else [start.isoformat(), end.isoformat()]
        copy_pipe(NoProbe(), src_dsn=ctx.dsn(CONTROL_PLANE_DB, CONTROL_PLANE_READER_ROLE), dst_dsn=ctx.dsn(),
                  spec=table.spec(source), window=window)
        with ctx.superuser() as conn:
            key = sql.Identifier(table.time_column or table.columns[0])
            conn.execute(sql.SQL("CREATE INDEX ON {} ({})").format(sql.Identifier(*source.split(".")), key))
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(*source.split("."))))


def target(table: Table, method: str) -> str:
    if method == "a":
        return table.local
    return f"bench.{table.name}_{ {'b': 'pandas', 'c': 'copy', 'd': 'local', 'e': 'file'}[method] }"


def floor_file(ctx: BenchContext, case: Case) -> Path:
    """(e)'s file: the case's source rows in the binary COPY format, in the source's order,
    written (untimed) into a directory of the server's OS user."""
    from dwh_assets.local.postgres import chown_to_server

    directory = ctx.cfg.home / "bench-b1"
    directory.mkdir(exist_ok=True)
    chown_to_server(ctx.cfg, directory, 0o700)
    path = directory / f"{case.table.name}-{'-'.join(case.window or ['all']).replace(':', '')}.bin"
    if not path.exists():
        from benchmarks.copy_methods import select_query

        query = select_query(case.table.spec(""), f"bench.{case.table.name}_source", None)
        if case.window is not None:
            # COPY takes no parameters: the window's bounds as literals.
            query += sql.SQL(" WHERE {t} >= {} AND {t} < {}").format(
                *map(sql.Literal, case.routine_params), t=sql.Identifier(case.table.time_column))
        with ctx.superuser() as conn:
            conn.execute(sql.SQL("COPY ({}) TO {} (FORMAT binary)").format(query, sql.Literal(str(path))))
    return path


def empty(ctx: BenchContext, tables: tuple[str, ...]) -> None:
    with ctx.superuser() as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(sql.Identifier(*t.split(".")) for t in tables)))


# ----- the measured runs -----------------------------------------------------------------------


def run_case(ctx: BenchContext, case: Case) -> list[Row]:
    """The four methods in rounds (a, b, c, d, a, b, c, d, ...), so a drift of this shared
    machine's speed over the minutes of a run falls on every method alike; the best of each."""
    where, params = case_filter(case)
    with ctx.superuser(CONTROL_PLANE_DB) as conn:
        source_sum = checksum(conn, case.table.source, case.table.row_text, where, params)
    measured: dict[str, list[Measurement]] = {method: [] for method in METHODS}
    for rnd in range(ctx.repeat):
        for method, label in METHODS.items():
            call, to_empty = method_call(ctx, case, method)
            empty(ctx, to_empty)
            ctx.checkpoint()
            ctx.progress(f"B1: {case.label}: {label} (run {rnd + 1} of {ctx.repeat}) ...")
            measured[method].append(ctx.measure(call.pop("target"), **call))
    return [finish_row(ctx, case, method, METHODS[method], *best_of(runs), source_sum)
            for method, runs in measured.items()]


def case_filter(case: Case) -> tuple[str, tuple]:
    if case.window is None:
        return "", ()
    where = sql.SQL("WHERE {t} >= %s AND {t} < %s").format(t=sql.Identifier(case.table.time_column))
    return where.as_string(), tuple(case.routine_params)


def method_call(ctx: BenchContext, case: Case, method: str) -> tuple[dict, tuple[str, ...]]:
    """What runs ``method`` for ``case`` (``target`` plus its arguments), and what to empty first."""
    table = case.table
    cp_dsn = ctx.dsn(CONTROL_PLANE_DB, CONTROL_PLANE_READER_ROLE)
    calls = {
        "a": dict(target=f"{METHODS_MODULE}:call_routine", dsn=ctx.dsn(), statement=table.routine,
                  params=[str(p) for p in case.routine_params]),
        "b": dict(target=f"{METHODS_MODULE}:copy_pandas", preload=("pandas", "sqlalchemy"), src_dsn=cp_dsn,
                  dst_dsn=ctx.dsn(), spec=table.spec(target(table, "b")), window=case.window,
                  chunk_rows=PANDAS_CHUNK_ROWS),
        "c": dict(target=f"{METHODS_MODULE}:copy_pipe", src_dsn=cp_dsn, dst_dsn=ctx.dsn(),
                  spec=table.spec(target(table, "c")), window=case.window),
        "d": dict(target=f"{METHODS_MODULE}:insert_select", dsn=ctx.dsn(), spec=table.spec(target(table, "d")),
                  source=f"bench.{table.name}_source", window=case.window),
        "e": dict(target=f"{METHODS_MODULE}:copy_from_file", dsn=ctx.cfg.superuser_dsn(WAREHOUSE_DB),
                  spec=table.spec(target(table, "e")), path=str(floor_file(ctx, case))),
    }
    destination = target(table, method)
    return dict(calls[method]), (destination, *table.also_empty) if method == "a" else (destination,)


def measure_method(ctx: BenchContext, case: Case, method: str, label: str, source_sum: str) -> Row:
    """Empty the method's target, run the method (``ctx.repeat`` times in a row), check its copy."""
    call, to_empty = method_call(ctx, case, method)
    ctx.progress(f"B1: {case.label}: {label} ...")
    measurement, runs = ctx.measure_best(call.pop("target"), before=lambda: empty(ctx, to_empty), **call)
    return finish_row(ctx, case, method, label, measurement, runs, source_sum)


def finish_row(ctx: BenchContext, case: Case, method: str, label: str, measurement: Measurement,
               runs: list[float], source_sum: str) -> Row:
    """The row of a measured method, its copy's checksum taken from the table it wrote."""
    where, params = case_filter(case)
    with ctx.superuser(WAREHOUSE_DB) as conn:
        copy_sum = checksum(conn, target(case.table, method), case.table.row_text, where, params)
    row = make_row(NAME, case.label, label, measurement, copy_sum, source_sum, runs)
    if method == "a" and case.table is INSTANCES:
        row.note = "also stages the rows and writes today's snapshot partition"
    ctx.progress(f"B1: {case.label}: {label}: {row.rows:,} rows in {row.seconds:.2f}s"
                 f" ({row.rows_per_s:,.0f} rows/s), peak RSS {row.client_peak_mb} MB")
    return row


def fetch_size_sweep(ctx: BenchContext, case: Case) -> list[Row]:
    """(a) through postgres_fdw again at other fetch_size values (the server option, restored after)."""
    with ctx.superuser() as conn:
        configured = current_fetch_size(conn)
        transfer = conn.execute("SELECT dwh.setting('control_plane.transfer', 'fdw')").fetchone()[0]
    where, params = case_filter(case)
    with ctx.superuser(CONTROL_PLANE_DB) as conn:
        source_sum = checksum(conn, case.table.source, case.table.row_text, where, params)
    rows = []
    try:
        set_transfer(ctx, "fdw")  # fetch_size is postgres_fdw's: only the fdw transfer uses it
        for size in FETCH_SIZE_SWEEP:
            if size == configured:
                continue
            set_fetch_size(ctx, size)
            rows.append(measure_method(ctx, case, "a", f"(a) with transfer fdw and fetch_size {size:,}", source_sum))
    finally:
        set_fetch_size(ctx, configured)
        set_transfer(ctx, transfer)
    return rows


# ----- other ways the routine could move the events (B1, continued) ----------------------------

# Each is (method label, statement the loader runs, setting of control_plane.transfer).
# The functions live in schema bench_fn of the throwaway stack (created by make_variants),
# SECURITY DEFINER like the routine, and replace the window of dwh.events as it does.
VARIANTS = (
    ("(a) with transfer fdw: INSERT ... SELECT through postgres_fdw (the routine before)",
     "SELECT rows_inserted FROM dwh.refresh_events(%s, %s)", "fdw"),
    ("(a) variant: copy path with text instead of binary COPY",
     "SELECT bench_fn.refresh_events_copy_text(%s, %s)", None),
    ("(a) variant: postgres_fdw over two servers at once (window halves, async Append)",
     "SELECT bench_fn.refresh_events_two_servers(%s, %s)", None),
    ("(a) variant: postgres_fdw fetch into a server file, then COPY FROM it (batched inserts)",
     "SELECT bench_fn.refresh_events_via_file(%s, %s)", None),
)


def make_variants(ctx: BenchContext) -> None:
    """bench_fn: the variants of the events routine, owned by the superuser (server files, mappings)."""
    from dwh_assets.local import secrets

    password = secrets.passwords(ctx.cfg)[CONTROL_PLANE_READER_ROLE]
    spool = ctx.cfg.home / "bench-spool"
    spool.mkdir(exist_ok=True)
    from dwh_assets.local.postgres import chown_to_server

    chown_to_server(ctx.cfg, spool, 0o700)
    with ctx.superuser() as conn:
        su = conn.execute("SELECT current_user").fetchone()[0]
        conn.execute("DROP SCHEMA IF EXISTS bench_fn CASCADE")
        conn.execute("CREATE SCHEMA bench_fn")
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA bench_fn TO {}").format(sql.Identifier(LOADER_ROLE)))
        options = dict(conn.execute(
            "SELECT option_name, option_value FROM pg_foreign_server s, pg_options_to_table(s.srvoptions)"
            " WHERE s.srvname = 'control_plane'").fetchall())
        for half in ("a", "b"):
            server = sql.Identifier(f"bench_cp_{half}")
            conn.execute(sql.SQL("DROP SERVER IF EXISTS {} CASCADE").format(server))
            conn.execute(sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS ({}, async_capable 'true')").format(
                server, sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in options.items())))
            conn.execute(sql.SQL("CREATE USER MAPPING FOR {} SERVER {} OPTIONS (user {}, password {})").format(
                sql.Identifier(su), server, sql.Literal(CONTROL_PLANE_READER_ROLE), sql.Literal(password)))
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(f"bench_fn_{half}")))
            conn.execute(sql.SQL("IMPORT FOREIGN SCHEMA pgmq LIMIT TO (a_instance_events) FROM SERVER {} INTO {}").format(
                server, sql.Identifier(f"bench_fn_{half}")))
        conn.execute(sql.SQL("CREATE USER MAPPING IF NOT EXISTS FOR {} SERVER control_plane OPTIONS (user {}, password {})").format(
            sql.Identifier(su), sql.Literal(CONTROL_PLANE_READER_ROLE), sql.Literal(password)))
        cols = "msg_id, read_ct, enqueued_at, archived_at, vt, message"
        conn.execute(f"""
            CREATE FUNCTION bench_fn.refresh_events_two_servers(p_start timestamptz, p_end timestamptz) RETURNS bigint
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' AS $$
            DECLARE v_mid timestamptz := p_start + (p_end - p_start) / 2; v_rows bigint;
            BEGIN
                PERFORM dwh.begin_fact_refresh('events', p_start, p_end);
                DELETE FROM dwh.events WHERE enqueued_at >= p_start AND enqueued_at < p_end;
                INSERT INTO dwh.events ({cols})
                SELECT {cols} FROM bench_fn_a.a_instance_events WHERE enqueued_at >= p_start AND enqueued_at < v_mid
                UNION ALL
                SELECT {cols} FROM bench_fn_b.a_instance_events WHERE enqueued_at >= v_mid AND enqueued_at < p_end;
                GET DIAGNOSTICS v_rows = ROW_COUNT;
                RETURN v_rows;
            END $$""")
        spool_file = str(spool / "events.bin")
        conn.execute(f"""
            CREATE FUNCTION bench_fn.refresh_events_via_file(p_start timestamptz, p_end timestamptz) RETURNS bigint
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' AS $$
            DECLARE v_rows bigint;
            BEGIN
                PERFORM dwh.begin_fact_refresh('events', p_start, p_end);
                DELETE FROM dwh.events WHERE enqueued_at >= p_start AND enqueued_at < p_end;
                EXECUTE format('COPY (SELECT {cols} FROM src_control_plane.a_instance_events'
                               ' WHERE enqueued_at >= %L AND enqueued_at < %L) TO %L (FORMAT binary)', p_start, p_end, {sql.Literal(spool_file).as_string(conn)});
                EXECUTE format('COPY dwh.events ({cols}) FROM %L (FORMAT binary)', {sql.Literal(spool_file).as_string(conn)});
                GET DIAGNOSTICS v_rows = ROW_COUNT;
                RETURN v_rows;
            END $$""")
        # The project's copy path with FORMAT text on both ends: the same function, renamed.
        definition = conn.execute("SELECT pg_get_functiondef('dwh.copy_from_foreign'::regproc)").fetchone()[0]
        text = definition.replace("dwh.copy_from_foreign(", "bench_fn.copy_from_foreign_text(").replace(
            "(FORMAT binary)", "(FORMAT text)")
        if text.count("(FORMAT text)") != 2:
            raise BenchError("dwh.copy_from_foreign changed: the text variant of B1 needs updating")
        conn.execute(text)
        conn.execute(f"""
            CREATE FUNCTION bench_fn.refresh_events_copy_text(p_start timestamptz, p_end timestamptz) RETURNS bigint
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' AS $$
            BEGIN
                PERFORM dwh.begin_fact_refresh('events', p_start, p_end);
                DELETE FROM dwh.events WHERE enqueued_at >= p_start AND enqueued_at < p_end;
                RETURN bench_fn.copy_from_foreign_text('dwh.events', 'src_control_plane.a_instance_events',
                    ARRAY['msg_id', 'read_ct', 'enqueued_at', 'archived_at', 'vt', 'message'], 'enqueued_at', p_start, p_end);
            END $$""")
        conn.execute(sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA bench_fn TO {}").format(sql.Identifier(LOADER_ROLE)))


def drop_variants(ctx: BenchContext) -> None:
    with ctx.superuser() as conn:
        su = conn.execute("SELECT current_user").fetchone()[0]
        conn.execute("DROP SCHEMA IF EXISTS bench_fn, bench_fn_a, bench_fn_b CASCADE")
        conn.execute("DROP SERVER IF EXISTS bench_cp_a, bench_cp_b CASCADE")
        conn.execute(sql.SQL("DROP USER MAPPING IF EXISTS FOR {} SERVER control_plane").format(sql.Identifier(su)))


def transfer_variants(ctx: BenchContext, case: Case) -> list[Row]:
    """(a) and the other ways tried to move the events: each empties dwh.events' window first."""
    where, params = case_filter(case)
    with ctx.superuser(CONTROL_PLANE_DB) as conn:
        source_sum = checksum(conn, case.table.source, case.table.row_text, where, params)
    with ctx.superuser() as conn:
        configured = conn.execute("SELECT dwh.setting('control_plane.transfer', 'fdw')").fetchone()[0]
    rows = []
    make_variants(ctx)
    try:
        for label, statement, transfer in VARIANTS:
            set_transfer(ctx, transfer or configured)
            variant = Case(dataclasses.replace(case.table, routine=statement), case.label, case.window, case.routine_params)
            rows.append(measure_method(ctx, variant, "a", label, source_sum))
    finally:
        set_transfer(ctx, configured)
        drop_variants(ctx)
    return rows


def set_transfer(ctx: BenchContext, transfer: str) -> None:
    with ctx.superuser() as conn:
        conn.execute("UPDATE dwh.settings SET value = %s WHERE key = 'control_plane.transfer'", (transfer,))


def current_fetch_size(conn) -> int | None:
    value = conn.execute(
        "SELECT option_value FROM pg_foreign_server s, pg_options_to_table(s.srvoptions)"
        " WHERE s.srvname = 'control_plane' AND option_name = 'fetch_size'"
    ).fetchone()
    return None if value is None else int(value[0])


def set_fetch_size(ctx: BenchContext, size: int | None) -> None:
    with ctx.superuser() as conn:
        if size is None:
            if current_fetch_size(conn) is not None:
                conn.execute("ALTER SERVER control_plane OPTIONS (DROP fetch_size)")
            return
        action = "SET" if current_fetch_size(conn) is not None else "ADD"
        conn.execute(sql.SQL("ALTER SERVER control_plane OPTIONS ({} fetch_size {})").format(
            sql.SQL(action), sql.Literal(str(size))))


# ----- goals ---------------------------------------------------------------------------------


def goals(rows: list[Row]) -> list[Goal]:
    def find(case: str, method: str) -> Row:
        return next(r for r in rows if r.case == case and r.method == METHODS[method])

    out = []
    # The dimension stages, merges and snapshots (three writes a row): its yardstick is 0.8x the pipe.
    for case, pipe_share in (("events, whole window", 1.0), ("instances dimension", 0.8)):
        a, b, c, d, e = (find(case, m) for m in "abcde")
        yardsticks = [(b, 20.0, "(a) >= 20x (b)"), (c, pipe_share, f"(a) >= {pipe_share:.1f}x (c)"),
                      (d, 0.6, "(a) >= 60% of (d)")]
        if case.startswith("events"):
            yardsticks.append((e, 0.9, "(a) >= 90% of (e)"))
        for other, want, text in yardsticks:
            ratio = a.rows_per_s / other.rows_per_s
            measured = f"{ratio:.0%}" if "%" in text else f"{ratio:.2f}x"
            note = ""
            if other is b:
                note = f"(d), the local limit, is {d.rows_per_s / b.rows_per_s:.1f}x (b)"
            elif other is e:
                note = f"(e), the receive-side floor, is {e.rows_per_s / d.rows_per_s:.0%} of (d)"
            out.append(Goal(NAME, f"{case}: {text}", measured, ratio >= want, note))
    small, full = find("events, 1/10 window", "a"), find("events, whole window", "a")
    growth = full.client_peak_mb / small.client_peak_mb
    out.append(Goal(
        NAME, "(a) driving-process memory flat in row count",
        f"{small.client_peak_mb} MB at {small.rows:,} rows, {full.client_peak_mb} MB at {full.rows:,} rows",
        growth <= 1.10, f"server backend: {small.server_peak_mb} MB, {full.server_peak_mb} MB",
    ))
    return out
