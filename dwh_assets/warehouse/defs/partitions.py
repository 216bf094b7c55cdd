"""Daily partitions: from the first day the sources hold through today (UTC).

Facts are partitioned by event day; dimensions by snapshot day. Both share one
definition so a run can carry facts and dimensions together.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg


def daily_partitions(start: dt.date) -> dg.DailyPartitionsDefinition:
    # end_offset=1: today's (still growing) day is a partition too; pg_cron refreshes it hourly.
    return dg.DailyPartitionsDefinition(start_date=start.isoformat(), timezone="UTC", end_offset=1)


def today_utc() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


def window_of_days(first: dt.date, last: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The closed-open window ``[first 00:00, last + 1 day 00:00)`` in UTC."""
    start = dt.datetime.combine(first, dt.time(), dt.timezone.utc)
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
    return start, end


def days_of_window(start: dt.datetime, end: dt.datetime) -> list[dt.date]:
    """UTC days a closed-open window touches."""
    first = start.astimezone(dt.timezone.utc).date()
    last = (end.astimezone(dt.timezone.utc) - dt.timedelta(microseconds=1)).date()
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
