"""B8 a year's first load: the metrics copy against Prometheus' own rate, and the whole first materialization.

The stack is ``dwh up``'s world at ``DWH_SCALE = 10 x --scale`` with a year of history
(10,000 instances, ~64M samples at ``--scale 1``), built by the run (``dwh up --no-materialize``
would make the same) or reused with ``--b8-home``. In rounds (``--repeat`` times, alternating,
the fastest of each kept), on the whole year ``[history start, end of today)``:

(a) **Prometheus' serving rate**: the copy's own requests (the series listings and the
    ``query_range`` groups of ``reader.CopyPlan``, sized exactly as the reader sizes them,
    through the reader's HTTP client) with the answers discarded: the source's limit;
(b) **the metrics copy**: ``dwh.refresh_metrics`` over the year into an emptied
    ``dwh.metrics`` / ``dwh.metric_series``, called as Dagster calls it;
(c) **the receive-side floor**: ``COPY dwh.metrics FROM`` a local binary file of the same
    rows (the superuser reads the file), into the emptied table: what this server takes in
    with no source at all.

Before the rounds, once, (d) **the whole first materialization** (measured first so that every
round's partial report already carries it): every warehouse table emptied, the two
``dg launch`` runs of ``dwh up`` (``local.materialize``) through the real CLI
against the stack's Dagster instance (webserver and daemon running), under
``benchmarks.memwatch`` with the stack's servers sampled too (the largest sum of private
memory at one moment, each process' peak), and with PostgreSQL logging connections, from
which the peak of concurrent connections to Dagster's storage is counted.

**Checked**: (b) holds exactly Prometheus' samples (count and an order-free checksum over
series, time and the value's bits, computed by SQL in the warehouse and by an independent
stdlib read of ``query_range``, untimed); (c) holds the same rows; (a) was answered with the
same number of samples; (d)'s runs succeeded and logged one refresh per table.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import struct
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from psycopg import sql

from benchmarks.harness import (BenchContext, BenchError, BenchResult, Goal, Measurement, Row, bench_stack, best_of,
                                make_row, utc_midnight)
from dwh_assets.local.config import DAGSTER_DB, WAREHOUSE_DB, StackConfig
from dwh_assets.local.generator import INSTANCES_PER_SCALE
from dwh_assets.local.local_stack import LocalStack
from dwh_assets.warehouse import catalog

NAME = "B8"
TITLE = "a year's first load: the metrics copy vs Prometheus' serving rate, and the whole first materialization"
NEEDS_DAGSTER = False

FLEET = 10           # the world's scale at --scale 1: 10,000 instances
HISTORY_DAYS = 365
GOAL_SHARE = 0.7     # of Prometheus' serving rate
GOAL_SECONDS = 12 * 60
# The year at 10x, materialised by `dwh up` on a quiet machine before this benchmark existed
# (benchmarks/README.md): the yardstick of "memory stays bounded".
EARLIER_PRIVATE_PEAK_MB = 1421
# A managed service's default max_connections, which Dagster's storage shares with the warehouse.
MANAGED_MAX_CONNECTIONS = 100
METHODS = {
    "serve": "(a) Prometheus serving the copy's requests, answers discarded",
    "copy": "(b) dwh.refresh_metrics: the reader's streamed copy",
    "floor": "(c) COPY dwh.metrics FROM a local binary file of the same rows",
}
HERE = "benchmarks.b8_first_load"


# ----- methods, each in a child process (benchmarks.child) ----------------------------------------


def serve(probe, *, settings: dict, start: int, end: int, step: int, metrics: list[str]) -> int:
    """(a) The reader's requests for the window, sized as it sizes them; only the samples are counted."""
    from dwh_assets.warehouse.sources import reader

    first, count = reader.aligned_times(start, end, step)
    source = reader.HttpSource(settings["prometheus_url"], settings)
    # The listings: the reader's plan starts from the most series one metric lists.
    listed = [source.get_body(reader.series_path(m, first, first + (count - 1) * step)).count(b'"__name__":')
              for m in metrics]
    plan = reader.CopyPlan(settings, start, end, step, max(listed, default=1))
    samples = 0
    for lo, hi in plan.groups():
        source = reader.HttpSource(settings["prometheus_url"], settings)
        held = 0
        for metric in metrics:
            body = source.get_body(reader.range_path(metric, lo, hi, step))
            answered = body.count(b'{"metric":')
            held = max(held, answered)
            # Every sample but a series' first follows "],[" in Prometheus' encoding.
            samples += body.count(b"],[") + answered
        plan.held(held)
    return samples


def copy_from_file(probe, *, dsn: str, path: str) -> int:
    """(c) The receive-side floor: the same rows from a server file (the superuser reads it)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        probe.watch_backend(conn)
        return conn.execute(
            sql.SQL("COPY dwh.metrics (series_id, ts, value) FROM {} (FORMAT binary)").format(sql.Literal(path))).rowcount


# ----- the source's checksum, read independently (untimed) -----------------------------------------


def series_hash(name: str, labels: dict[str, str]) -> int:
    """60 bits of md5 over the name and the labels sorted by key, as ``SERIES_HASH_SQL`` computes them."""
    text = name + "|" + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return int(hashlib.md5(text.encode()).hexdigest()[:15], 16)


def sample_term(series: int, t: int, value: float) -> int:
    """One sample's share of the checksum: it mixes series, time and the value's exact bits."""
    bits = struct.unpack(">q", struct.pack(">d", value))[0]
    return (series + t) * (bits + 2**63)


SERIES_HASH_SQL = ("('x' || substr(md5(s.metric_name || '|' || (SELECT coalesce(string_agg(key || '=' || value, ',' "
                   "ORDER BY key COLLATE \"C\"), '') FROM jsonb_each_text(s.labels))), 1, 15))::bit(60)::bigint")
CHECKSUM_SQL = (
    "WITH s AS MATERIALIZED (SELECT series_id, " + SERIES_HASH_SQL + " AS h FROM dwh.metric_series s) "
    "SELECT count(*), coalesce(sum((s.h + extract(epoch FROM m.ts)::bigint)::numeric "
    "* (('x' || encode(float8send(m.value), 'hex'))::bit(64)::bigint::numeric + 9223372036854775808)), 0) "
    "FROM dwh.metrics m JOIN s USING (series_id) WHERE m.ts >= %s AND m.ts < %s")


def source_checksum(prometheus_url: str, start: int, end: int, step: int, metrics: list[str], days: int = 2) -> str:
    """Count and checksum of every sample of the window, read from query_range by the stdlib."""
    import urllib.parse
    import urllib.request

    first = -(-start // step) * step
    count, total = 0, 0
    for metric in metrics:
        lo = first
        while lo < end:
            hi = min(lo + days * 86400 - step, end - 1)
            query = urllib.parse.urlencode({"query": metric, "start": lo, "end": hi, "step": step})
            with urllib.request.urlopen(f"{prometheus_url}/api/v1/query_range?{query}", timeout=300) as resp:
                payload = json.load(resp)
            for series in payload["data"]["result"]:
                labels = dict(series["metric"])
                h = series_hash(labels.pop("__name__"), labels)
                for t, v in series["values"]:
                    total += sample_term(h, int(t), float(v))
                count += len(series["values"])
            lo += days * 86400
    return f"{count}:{total}"


def warehouse_checksum(conn, start: dt.datetime, end: dt.datetime) -> str:  # noqa: ANN001
    count, total = conn.execute(CHECKSUM_SQL, (start, end)).fetchone()
    return f"{count}:{total}"


# ----- the run ---------------------------------------------------------------------------------------


def run(ctx: BenchContext) -> BenchResult:
    reuse = ctx.reuse.get(NAME, [])
    with ExitStack() as stacks:
        if reuse:
            stack = stacks.enter_context(bench_stack(ctx.scale, dagster=True, home=reuse[0], progress=ctx.progress))
        else:
            world = max(0.01, FLEET * ctx.scale)
            ctx.progress(f"B8: a stack of {round(INSTANCES_PER_SCALE * world):,} instances and {HISTORY_DAYS} days "
                         "(world, control plane, Prometheus back-fill) ...")
            stack = stacks.enter_context(bench_stack(ctx.scale, dagster=True, history_days=HISTORY_DAYS,
                                                     world_scale=world, progress=lambda _line: None))
        return measure(dataclasses.replace(ctx, stack=stack), stack)


def measure(ctx: BenchContext, stack: LocalStack) -> BenchResult:
    cfg = stack.cfg
    start = dt.datetime.combine(cfg.history_start, dt.time(), dt.timezone.utc)
    # Up to today: the hours since midnight are still being scraped, and the copies must equal one read.
    end = utc_midnight(dt.datetime.now(dt.timezone.utc).date())
    with ctx.superuser() as conn:
        step = int(conn.execute("SELECT dwh.setting('metrics.step_seconds', '3600')").fetchone()[0])
        metrics = conn.execute("SELECT string_to_array(dwh.setting('metrics.names'), ',')").fetchone()[0]
    settings = json.loads((cfg.reader_dir / "reader.json").read_text())
    window = [int(start.timestamp()), int(end.timestamp())]
    details: dict = {"window": [start.isoformat(), end.isoformat()], "instances": round(INSTANCES_PER_SCALE * cfg.scale),
                     "history_days": cfg.history_days, "step_seconds": step, "metrics": metrics, "reused": bool(ctx.reuse.get(NAME))}
    ctx.progress("B8: reading the source's checksum (untimed) ...")
    t0 = time.monotonic()
    source_sum = source_checksum(cfg.prometheus_url, *window, step, metrics)
    details["source_checksum_seconds"] = round(time.monotonic() - t0, 1)
    # (d) first: a round takes long at full scale, and each finished round is reported with it.
    first_load = first_materialization(ctx, stack)
    details["first_materialization"] = first_load
    floor_file = server_directory(cfg) / "floor.bin"
    measured: dict[str, list[Measurement]] = {m: [] for m in METHODS}
    sums: dict[str, str] = {}
    prometheus_cpu: list[float] = []
    details["prometheus_cpu_seconds_during_copy"] = prometheus_cpu  # filled round by round
    for rnd in range(ctx.repeat):
        ctx.progress(f"B8: round {rnd + 1} of {ctx.repeat}: {METHODS['serve']} ...")
        measured["serve"].append(ctx.measure(f"{HERE}:serve", settings=settings, start=window[0], end=window[1],
                                             step=step, metrics=metrics))
        ctx.progress(f"B8: round {rnd + 1}: {METHODS['copy']} ...")
        empty(ctx, "dwh.metrics", "dwh.metric_series")
        cpu0 = process_cpu(stack.prometheus.pid())
        measured["copy"].append(ctx.measure("benchmarks.copy_methods:call_routine", dsn=ctx.dsn(),
                                            statement="SELECT rows_inserted FROM dwh.refresh_metrics(%s, %s)",
                                            params=[start.isoformat(), end.isoformat()]))
        prometheus_cpu.append(round(process_cpu(stack.prometheus.pid()) - cpu0, 1))
        with ctx.superuser() as conn:
            sums["copy"] = warehouse_checksum(conn, start, end)
            # Each round: the copy numbers the series afresh, and the file's rows must name this round's.
            conn.execute(sql.SQL("COPY (SELECT series_id, ts, value FROM dwh.metrics) TO {} (FORMAT binary)").format(
                sql.Literal(str(floor_file))))
        ctx.progress(f"B8: round {rnd + 1}: {METHODS['floor']} ...")
        empty(ctx, "dwh.metrics")
        measured["floor"].append(ctx.measure(f"{HERE}:copy_from_file", dsn=cfg.superuser_dsn(WAREHOUSE_DB),
                                             path=str(floor_file)))
        with ctx.superuser() as conn:
            sums["floor"] = warehouse_checksum(conn, start, end)
        rows = [*copy_rows(measured, sums, source_sum), first_load_row(first_load)]
        if rnd + 1 < ctx.repeat:
            ctx.report_partial(BenchResult(rows=rows, goals=goals(rows, first_load), details=dict(details)),
                               f"(d) and {rnd + 1} of {ctx.repeat} rounds of (a)-(c)")
    floor_file.unlink(missing_ok=True)
    return BenchResult(rows=rows, goals=goals(rows, first_load), details=details)


def copy_rows(measured: dict[str, list[Measurement]], sums: dict[str, str], source_sum: str) -> list[Row]:
    case = "metrics of the year"
    count = source_sum.split(":")[0]
    rows = []
    for method, runs in measured.items():
        best, times = best_of(runs)
        checksum = {"serve": f"{best.rows}:(samples answered)", "copy": sums.get("copy", ""),
                    "floor": sums.get("floor", "")}[method]
        reference = f"{count}:(samples answered)" if method == "serve" else source_sum
        row = make_row(NAME, case, METHODS[method], best, checksum, reference, times)
        if method == "copy":
            row.note = (f"backend {best.server_cpu_seconds} CPU s, source reader {best.server_programs_cpu_seconds} CPU s")
        rows.append(row)
    serve_rate = rows[0].rows_per_s
    for row in rows:
        row.ratio, row.ratio_to = row.rows_per_s / serve_rate, "(a)"
    return rows


def server_directory(cfg: StackConfig) -> Path:
    """A directory the server's OS user writes (the floor's file)."""
    from dwh_assets.local.postgres import chown_to_server

    directory = cfg.home / "bench-b8"
    directory.mkdir(exist_ok=True)
    chown_to_server(cfg, directory, 0o700)
    return directory


def empty(ctx: BenchContext, *tables: str) -> None:
    with ctx.superuser() as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(sql.Identifier(*t.split(".")) for t in tables)))
        conn.execute("CHECKPOINT")


def process_cpu(pid: int | None) -> float:
    """User + system CPU seconds of a running process (0 when it is gone)."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return 0.0


# ----- (d) the whole first materialization --------------------------------------------------------


def data_tables() -> list[str]:
    """Every table a refresh writes (the catalog's copies, snapshots, side tables and marts), and the bookkeeping."""
    tables = [table.relation for spec in catalog.CATALOG for table in spec.tables]
    return tables + [mart.table for mart in catalog.MARTS] + ["dwh.mart_pending", "dwh.refresh_log"]


MATERIALIZE = ("from dwh_assets.local.config import load_config; "
               "from dwh_assets.local.materialize import materialize_all; materialize_all(load_config())")


def first_materialization(ctx: BenchContext, stack: LocalStack) -> dict:
    """Empty the warehouse, materialise it as `dwh up` does, watch memory and Dagster's connections."""
    cfg = stack.cfg
    with ctx.superuser() as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(sql.Identifier(*t.split(".")) for t in data_tables())))
        conn.execute("CHECKPOINT")
        max_connections = int(conn.execute("SHOW max_connections").fetchone()[0])
    roots = [p for p in (stack.postgres.pid(), stack.prometheus.pid(), stack.webserver.pid(), stack.daemon.pid()) if p]
    log = stack.postgres.log_file
    offset = log.stat().st_size
    log_connections(ctx, True)
    ctx.progress("B8: the whole first materialization (dg launch, twice) ...")
    started = dt.datetime.now(dt.timezone.utc)
    with tempfile.TemporaryDirectory(prefix="b8-memwatch-") as tmp:
        out = Path(tmp) / "memwatch.json"
        argv = [sys.executable, "-m", "benchmarks.memwatch", "--out", str(out), "--interval", "0.25",
                *(a for pid in roots for a in ("--root", str(pid))), "--", sys.executable, "-c", MATERIALIZE]
        done = subprocess.run(argv, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
        log_connections(ctx, False)
        if done.returncode != 0:
            raise BenchError(f"the first materialization failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        watched = json.loads(out.read_text())
    with log.open("rb") as f:
        f.seek(offset)
        connections = connection_peaks(f.read().decode("utf-8", "replace"))
    with ctx.superuser(DAGSTER_DB) as conn:
        # What the runs wrote to Dagster's storage (its tables keep UTC without a zone).
        events = dict(conn.execute(
            "SELECT e.dagster_event_type, count(*) FROM event_logs e JOIN runs r ON r.run_id = e.run_id "
            "WHERE r.create_timestamp >= %s AND e.dagster_event_type IS NOT NULL GROUP BY 1",
            (started.replace(tzinfo=None),)).fetchall())
    with ctx.connect() as conn:
        refreshes = conn.execute(
            "SELECT table_name, rows_inserted, round(extract(epoch FROM finished_at - started_at)::numeric, 1) "
            "FROM dwh.refresh_log WHERE started_at >= %s ORDER BY id", (started,)).fetchall()
    return {
        "wall_seconds": watched["wall_seconds"],
        "refreshes": [[t, int(n), float(s)] for t, n, s in refreshes],
        "refresh_seconds": round(sum(float(s) for _, _, s in refreshes), 1),
        "private_peak_mb": round(watched["total_anon_peak_kb"] / 1024),
        "memory": watched["summary"],
        "load_average": [watched["load_average_start"], watched["load_average_end"]],
        "connections": connections,
        "dagster_events": events,
        "max_connections": max_connections,
        "progress": [line for line in done.stdout.splitlines() if line.strip()],
    }


def log_connections(ctx: BenchContext, on: bool) -> None:
    """Have PostgreSQL log every connection and disconnection (new sessions read the reload)."""
    with ctx.superuser() as conn:
        for setting in ("log_connections", "log_disconnections"):
            if on:
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = on").format(sql.Identifier(setting)))
            else:
                conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(setting)))
        conn.execute("SELECT pg_reload_conf()")


_LOGGED = re.compile(r"^\S+ \S+ \S+ \[(\d+)\] (\S+)@(\S+) LOG:  (connection authorized|disconnection)")


def connection_peaks(log: str) -> dict[str, dict[str, int]]:
    """Per database: connections opened and the most open at once, from logged (dis)connections."""
    open_now: dict[str, set[str]] = {}
    out: dict[str, dict[str, int]] = {}
    for line in log.splitlines():
        m = _LOGGED.match(line)
        if not m:
            continue
        pid, _user, db, what = m.groups()
        stats = out.setdefault(db, {"opened": 0, "peak": 0})
        live = open_now.setdefault(db, set())
        if what == "connection authorized":
            live.add(pid)
            stats["opened"] += 1
            stats["peak"] = max(stats["peak"], len(live))
        else:
            live.discard(pid)
    return out


def first_load_row(first: dict) -> Row:
    # Two runs: the dimensions, then every fact and mart over the history.
    expected = {s.name for s in catalog.CATALOG} | {m.relation for m in catalog.MARTS}
    refreshed = {t for t, _, _ in first["refreshes"]} & expected
    peak = first["connections"].get("dagster", {}).get("peak")
    return Row(benchmark=NAME, case="the whole first materialization", method="two dg launch runs, as dwh up",
               rows=sum(n for _, n, _ in first["refreshes"]), seconds=first["wall_seconds"], client_peak_mb=0.0,
               client_base_mb=0.0, server_peak_mb=None, server_programs_peak_mb=None,
               checksum=f"{len(refreshed)} of {len(expected)} tables refreshed",
               source_checksum=f"{len(expected)} of {len(expected)} tables refreshed",
               note=f"refreshes {first['refresh_seconds']} s, largest private sum {first['private_peak_mb']:,} MB, "
                    f"{sum(first['dagster_events'].values()):,} Dagster events, its storage's connections: {peak} at once")


def goals(rows: list[Row], first: dict) -> list[Goal]:
    serve, copy, floor = rows[0], rows[1], rows[2]
    share = copy.rows_per_s / serve.rows_per_s
    dagster = first["connections"].get("dagster", {"peak": 0, "opened": 0})
    return [
        Goal(NAME, f"the metrics copy at least {GOAL_SHARE:.0%} of Prometheus' serving rate", f"{share:.0%}",
             share >= GOAL_SHARE, f"(a) {serve.rows_per_s:,.0f}, (b) {copy.rows_per_s:,.0f}, the receive-side floor (c) "
                                  f"{floor.rows_per_s:,.0f} samples/s: (b) is {copy.rows_per_s / floor.rows_per_s:.0%} of (c)"),
        Goal(NAME, f"the whole first materialization under {GOAL_SECONDS / 60:.0f} min",
             f"{first['wall_seconds'] / 60:.1f} min ({first['wall_seconds']:.0f} s)", first["wall_seconds"] < GOAL_SECONDS,
             f"refresh routines {first['refresh_seconds']:.0f} s, the rest Dagster"),
        Goal(NAME, f"memory bounded: largest sum of private memory at most the earlier run's {EARLIER_PRIVATE_PEAK_MB:,} MB",
             f"{first['private_peak_mb']:,} MB", first["private_peak_mb"] <= EARLIER_PRIVATE_PEAK_MB),
        Goal(NAME, f"Dagster's storage connections at once: at most a quarter of a managed service's default "
                   f"max_connections ({MANAGED_MAX_CONNECTIONS})",
             f"{dagster['peak']} at once, {dagster['opened']:,} opened", dagster["peak"] <= MANAGED_MAX_CONNECTIONS // 4,
             f"this stack's max_connections is {first['max_connections']}"),
    ]
