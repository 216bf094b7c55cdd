"""B4's peer: prometheus-api-client + pandas loading the same window the reader path loads.

Called by ``benchmarks.child`` as ``load_with_api_client(probe, **kwargs)``. One
``custom_query_range`` per metric, ``MetricRangeDataFrame`` per answer, the label sets
numbered into a series frame, then ``to_sql`` of the series and of the samples into
scratch clones of ``dwh.metric_series`` and ``dwh.metrics``: the same normalised load
``dwh.refresh_metrics`` does.
"""

from __future__ import annotations

import datetime as dt

import psycopg

UTC = dt.timezone.utc


def grid(start: int, end: int, step: int) -> tuple[int, int]:
    """First and last evaluation time k*step inside ``[start, end)`` (as the reader reads it)."""
    first = -(-start // step) * step
    last = first + (end - 1 - first) // step * step
    return first, last


def load_with_api_client(probe, *, prometheus_url: str, dst_dsn: str, metrics: list[str], start: int, end: int,
                         step: int, series_table: str, samples_table: str, chunk_rows: int) -> int:
    import pandas as pd
    import sqlalchemy as sa
    from prometheus_api_client import MetricRangeDataFrame, PrometheusConnect
    from sqlalchemy.dialects import postgresql

    prom = PrometheusConnect(url=prometheus_url, disable_ssl=True)
    first, last = grid(start, end, step)
    frames = []
    for metric in metrics:
        result = prom.custom_query_range(
            metric, start_time=dt.datetime.fromtimestamp(first, UTC), end_time=dt.datetime.fromtimestamp(last, UTC),
            step=str(step),
        )
        if result:
            frames.append(MetricRangeDataFrame(result).reset_index())
    if not frames:
        return 0
    samples = pd.concat(frames, ignore_index=True)
    label_columns = [c for c in samples.columns if c not in ("timestamp", "value", "__name__")]
    key = ["__name__", *label_columns]
    series = samples[key].drop_duplicates().reset_index(drop=True)
    series["series_id"] = series.index + 1
    series["labels"] = [
        {k: v for k, v in zip(label_columns, values) if isinstance(v, str)}
        for values in series[label_columns].itertuples(index=False)
    ]
    samples = samples.merge(series[[*key, "series_id"]], on=key)
    values = pd.DataFrame({
        "series_id": samples["series_id"],
        "ts": samples["timestamp"].dt.tz_localize("UTC"),
        "value": samples["value"].astype("float64"),
    })

    engine = sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dst_dsn))
    with engine.begin() as conn:
        probe.watch_backend(conn.connection.driver_connection)
        schema, table = series_table.split(".")
        series.rename(columns={"__name__": "metric_name"})[["series_id", "metric_name", "labels"]].to_sql(
            table, conn, schema=schema, if_exists="append", index=False, dtype={"labels": postgresql.JSONB},
        )
        schema, table = samples_table.split(".")
        values.to_sql(table, conn, schema=schema, if_exists="append", index=False, chunksize=chunk_rows)
    return len(values)
