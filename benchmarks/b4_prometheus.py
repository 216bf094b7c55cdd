"""B4 Prometheus path: the source reader + dwh.refresh_metrics against prometheus-api-client + pandas.

Both load every series of the stack's world (``--scale 1.0`` = the demo's 1,000
instances x 3 metrics) for the 30 days before the anchor day, at the warehouse's step
(``metrics.step_seconds``), into the normalised shape (label sets + samples):

- reader path: a Python client calls ``dwh.refresh_metrics(start, end)``; Postgres runs
  the stdlib reader through file_fdw and normalises in SQL;
- peer: ``custom_query_range`` per metric, ``MetricRangeDataFrame``, label sets numbered
  in pandas, ``to_sql`` into scratch clones of ``dwh.metric_series`` / ``dwh.metrics``.

The reference for "copy = source" is an independent read of ``/api/v1/query_range``
(stdlib) loaded untimed into ``bench.prometheus_source``.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
import urllib.request

from psycopg import sql

from benchmarks.harness import BenchContext, BenchResult, Goal, checksum, clone_table, make_row, utc_midnight
from benchmarks.prometheus_peer import grid
from dwh_assets.local.config import LOADER_ROLE, OWNER_ROLE
from dwh_assets.local.generator import METRIC_NAMES

NAME = "B4"
TITLE = "Prometheus path: reader + dwh.refresh_metrics vs prometheus-api-client + pandas"
NEEDS_DAGSTER = False

WINDOW_DAYS = 30
PANDAS_CHUNK_ROWS = 50_000
ROW_TEXT = "concat_ws('|', metric_name, labels::text, extract(epoch FROM ts), value)"
SERIES_PEER, SAMPLES_PEER = "bench.metric_series_peer", "bench.metrics_peer"
METHODS = {"reader": "reader + dwh.refresh_metrics", "peer": "prometheus-api-client + pandas to_sql"}


def run(ctx: BenchContext) -> BenchResult:
    end = utc_midnight(ctx.cfg.anchor_day)
    start = end - dt.timedelta(days=WINDOW_DAYS)
    with ctx.superuser() as conn:
        step = int(conn.execute("SELECT dwh.setting('metrics.step_seconds')").fetchone()[0])
    prepare(ctx, start, end, step)
    where = "WHERE ts >= %s AND ts < %s"
    with ctx.superuser() as conn:
        source_sum = checksum(conn, "bench.prometheus_source", ROW_TEXT, where, (start, end))
    case = f"{WINDOW_DAYS} days, all series, step {step}s"

    ctx.progress(f"B4: {METHODS['reader']} ...")
    reader, reader_runs = ctx.measure_best(
        "benchmarks.copy_methods:call_routine", before=lambda: empty(ctx, "dwh.metrics", "dwh.metric_series"),
        dsn=ctx.dsn(), statement="SELECT rows_inserted FROM dwh.refresh_metrics(%s, %s)",
        params=[start.isoformat(), end.isoformat()],
    )
    with ctx.superuser() as conn:
        reader_sum = checksum(conn, "dwh.metric_samples", ROW_TEXT, where, (start, end))

    ctx.progress(f"B4: {METHODS['peer']} ...")
    peer, peer_runs = ctx.measure_best(
        "benchmarks.prometheus_peer:load_with_api_client", preload=("pandas", "sqlalchemy", "prometheus_api_client"),
        before=lambda: empty(ctx, SAMPLES_PEER, SERIES_PEER),
        prometheus_url=ctx.cfg.prometheus_url, dst_dsn=ctx.dsn(), metrics=list(METRIC_NAMES),
        start=int(start.timestamp()), end=int(end.timestamp()), step=step,
        series_table=SERIES_PEER, samples_table=SAMPLES_PEER, chunk_rows=PANDAS_CHUNK_ROWS,
    )
    with ctx.superuser() as conn:
        peer_sum = checksum(conn, "bench.metric_samples_peer", ROW_TEXT, where, (start, end))

    rows = [
        make_row(NAME, case, METHODS["reader"], reader, reader_sum, source_sum, reader_runs),
        make_row(NAME, case, METHODS["peer"], peer, peer_sum, source_sum, peer_runs),
    ]
    for row in rows:
        row.ratio, row.ratio_to = row.rows_per_s / rows[1].rows_per_s, "peer"
        ctx.progress(f"B4: {row.method}: {row.rows:,} samples in {row.seconds:.2f}s ({row.rows_per_s:,.0f}/s)")
    speedup = rows[0].rows_per_s / rows[1].rows_per_s
    goal = Goal(NAME, "reader path faster than prometheus-api-client + pandas", f"{speedup:.2f}x", speedup > 1.0)
    details = {"window": [start.isoformat(), end.isoformat()], "step_seconds": step, "metrics": list(METRIC_NAMES)}
    return BenchResult(rows=rows, goals=[goal], details=details)


def empty(ctx: BenchContext, samples: str, series: str) -> None:
    with ctx.superuser() as conn:
        conn.execute(sql.SQL("TRUNCATE {}, {}").format(sql.Identifier(*samples.split(".")),
                                                        sql.Identifier(*series.split("."))))


def prepare(ctx: BenchContext, start: dt.datetime, end: dt.datetime, step: int) -> None:
    """Scratch clones for the peer, and the reference read of Prometheus (untimed)."""
    with ctx.connect(role=OWNER_ROLE) as conn:
        conn.execute("SELECT dwh.ensure_partitions('dwh.metrics', %s, %s)", (start, end))
    with ctx.superuser() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS bench AUTHORIZATION {}").format(sql.Identifier(LOADER_ROLE)))
        clone_table(conn, "dwh.metric_series", SERIES_PEER)
        clone_table(conn, "dwh.metrics", SAMPLES_PEER)
        conn.execute(
            "CREATE OR REPLACE VIEW bench.metric_samples_peer AS SELECT s.metric_name, s.labels, m.ts, m.value"
            " FROM bench.metrics_peer m JOIN bench.metric_series_peer s USING (series_id)"
        )
        conn.execute("DROP TABLE IF EXISTS bench.prometheus_source")
        conn.execute("CREATE TABLE bench.prometheus_source (metric_name text, labels jsonb, ts timestamptz, value float8)")
        conn.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA bench TO {}").format(sql.Identifier(LOADER_ROLE)))
        first, last = grid(int(start.timestamp()), int(end.timestamp()), step)
        with conn.cursor() as cur, cur.copy("COPY bench.prometheus_source FROM STDIN") as copy:
            for metric in METRIC_NAMES:
                query = urllib.parse.urlencode({"query": metric, "start": first, "end": last, "step": step})
                with urllib.request.urlopen(f"{ctx.cfg.prometheus_url}/api/v1/query_range?{query}", timeout=300) as resp:
                    payload = json.load(resp)
                for series in payload["data"]["result"]:
                    labels = dict(series["metric"])
                    name = labels.pop("__name__")
                    text = json.dumps(labels)
                    for t, v in series["values"]:
                        copy.write_row((name, text, dt.datetime.fromtimestamp(t, dt.timezone.utc), float(v)))
