"""How fresh a copy or mart must be: derived from its pg_cron schedule.

A relation is overdue when its latest committed refresh is older than **two intervals of its
schedule plus its refresh's typical duration** (``TableSpec.typical_duration``): one missed
run is tolerated (a run that failed once, a restart), two are not. The interval of a
schedule is the longest wait between two of its ticks:

- ``N seconds`` (pg_cron's interval jobs): N seconds;
- five fields with every day allowed (``*/10 * * * *``, ``5 * * * *``, ``2-59/5 * * * *``):
  the longest gap between consecutive ticks of a day, the wrap past midnight included;
- five fields restricted to some days: a week (day of week) or 31 days (day of month,
  month), an upper bound rather than an exact gap;
- anything else (``@reboot``, a malformed schedule): no expectation (``None``).

The same rules are written in SQL (``dwh.schedule_interval`` in ``03_quality_gate.sql``), so
the warehouse's health view and the sensor judge a live pg_cron schedule exactly as Dagster's
``FreshnessPolicy`` judges the catalog's; ``test_freshness`` compares the two.
"""

from __future__ import annotations

import datetime as dt
import re

INTERVAL_JOB = re.compile(r"\s*(\d+)\s+seconds?\s*", re.I)
MINUTES_PER_DAY = 1440


def _field_values(field: str, low: int, high: int) -> set[int]:
    """The values one cron field allows: ``*``, ``a``, ``a-b``, each with an optional ``/step``, comma-separated."""
    values: set[int] = set()
    for item in field.split(","):
        span, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            first, last = low, high
        elif "-" in span:
            first, last = (int(part) for part in span.split("-", 1))
        else:
            first = int(span)
            last = high if step_text else first
        if step < 1 or first < low or last > high or first > last:
            raise ValueError(f"cron field {field!r} is out of range {low}-{high}")
        values.update(range(first, last + 1, step))
    return values


def schedule_interval(schedule: str) -> dt.timedelta | None:
    """The longest wait between two ticks of a pg_cron schedule; ``None`` when it has no regular tick."""
    seconds = INTERVAL_JOB.fullmatch(schedule)
    if seconds:
        return dt.timedelta(seconds=int(seconds[1]))
    fields = schedule.split()
    if len(fields) != 5:
        return None
    minute, hour, day_of_month, month, day_of_week = fields
    try:
        ticks = sorted(h * 60 + m for h in _field_values(hour, 0, 23) for m in _field_values(minute, 0, 59))
    except ValueError:
        return None
    if (day_of_month, month) != ("*", "*"):
        return dt.timedelta(days=31)
    if day_of_week != "*":
        return dt.timedelta(days=7)
    gaps = [later - earlier for earlier, later in zip(ticks, ticks[1:])] + [ticks[0] + MINUTES_PER_DAY - ticks[-1]]
    return dt.timedelta(minutes=max(gaps))


def expected_within(schedule: str, typical_duration: dt.timedelta) -> dt.timedelta | None:
    """How old the latest refresh may be: two schedule intervals plus the refresh's typical duration."""
    interval = schedule_interval(schedule)
    return None if interval is None else 2 * interval + typical_duration


def judge(job: str, schedule: str | None, active: bool | None, last_refresh: dt.datetime | None,
          typical_duration: dt.timedelta, now: dt.datetime) -> tuple[bool, str, dt.timedelta | None]:
    """Whether a table is fresh, a sentence saying so or why not, and the age allowed.

    ``schedule`` and ``active`` are its pg_cron job's now (``None``: no such job). The same
    verdicts as the view ``mart.refresh_freshness``.
    """
    if schedule is None:
        return False, f"late: no pg_cron job {job} (run dwh migrate)", None
    allowed = expected_within(schedule, typical_duration)
    if allowed is None:
        return False, f"late: pg_cron job {job}'s schedule {schedule!r} has no regular tick to expect a refresh from", None
    if last_refresh is None:
        return False, f"late: never refreshed (expected within {allowed} on {schedule!r})", allowed
    age = now - last_refresh
    if age <= allowed:
        return True, f"fresh: last refresh {_rounded(age)} ago, expected within {allowed} on {schedule!r}", allowed
    why = "its pg_cron job is inactive" if active is False else "pg_cron has not refreshed it"
    return False, (f"late: last refresh {_rounded(age)} ago at {last_refresh.isoformat(timespec='seconds')}, "
                   f"expected within {allowed} on {schedule!r}: {why}"), allowed


def _rounded(age: dt.timedelta) -> dt.timedelta:
    return dt.timedelta(seconds=int(age.total_seconds()))
