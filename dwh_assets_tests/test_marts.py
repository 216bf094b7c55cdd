"""Incremental marts against an independent computation with pandas over the same local rows.

A mart refresh replaces exactly the UTC days of its window; the days the copies' refreshes
changed are queued (dwh.mart_pending) and refreshed by dwh.refresh_pending_mart, which is
what each mart's pg_cron job runs. Comparisons share one REPEATABLE READ transaction with
the refresh, so pandas sees exactly the rows the mart was built from and the same ``now()``;
the session runs in another time zone: mart days are UTC days.

Also: a window refresh after a dimension change (an instance deleted at the control plane,
an organization renamed in Clerk), the days outside a window untouched, bad windows, and
readers never blocked by a refresh.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np
import pandas as pd
import psycopg
import pytest

from dwh_assets.local.config import LOADER_ROLE, OWNER_ROLE, WAREHOUSE_DB, StackConfig
from dwh_assets_tests.warehouse_helpers import connect_control_plane, refresh, utc_midnight

STORAGE_METRIC = "dwh_instance_storage_bytes"
# Marts round to 3 decimals.
TOLERANCE = 0.0011
WINDOW = (utc_midnight(-3), utc_midnight(1))


@pytest.fixture(scope="module")
def local_copies(cfg: StackConfig) -> None:
    """Fill the local copies the marts read: dimensions, and a few days of metrics."""
    with psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True) as conn:
        for name in ("users", "organizations", "organization_memberships", "instances"):
            conn.execute(f"SELECT dwh.refresh_{name}()")
        conn.execute("SELECT dwh.refresh_metrics(%s, %s)", WINDOW)


def frame(conn: psycopg.Connection, query: str, params: tuple = ()) -> pd.DataFrame:
    cur = conn.execute(query, params)
    return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])


def utc(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series, utc=True)


@pytest.fixture()
def snapshot(cfg: StackConfig, local_copies) -> Iterator[psycopg.Connection]:
    """A loader session in New York time, inside one REPEATABLE READ transaction."""
    with psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE)) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.execute("SET TimeZone = 'America/New_York'")
        yield conn
        conn.commit()  # leave the refreshed marts behind


def expected_org_daily_usage(conn: psycopg.Connection, first: dt.date, end: dt.date) -> pd.DataFrame:
    """The mart's rows for the UTC days [first, end), computed from the copies with pandas."""
    now = pd.Timestamp(conn.execute("SELECT now()").fetchone()[0]).tz_convert("UTC")
    step = int(conn.execute("SELECT value FROM dwh.settings WHERE key = 'metrics.step_seconds'").fetchone()[0])
    instances = frame(conn, "SELECT instance_id, organization_id, cpu, created_at, deleted_at FROM dwh.instances")
    instances["start"] = utc(instances.created_at)
    instances["end"] = utc(instances.deleted_at).fillna(now)
    # One row per instance and UTC day it was alive in.
    instances["day"] = [pd.date_range(start.floor("D"), end - pd.Timedelta(1, "us"), freq="D")
                        for start, end in zip(instances.start, instances.end)]
    alive = instances.explode("day").dropna(subset=["day"])
    alive["day"] = pd.to_datetime(alive["day"], utc=True)
    overlap = np.minimum(alive.end, alive.day + pd.Timedelta(days=1)) - np.maximum(alive.start, alive.day)
    alive["vcpu_hours"] = alive.cpu * overlap.dt.total_seconds() / 3600
    usage = alive.groupby(["organization_id", alive.day.dt.date]).agg(
        instances=("instance_id", "size"), vcpu_hours=("vcpu_hours", "sum"))

    samples = frame(conn, "SELECT s.organization_id, m.ts, m.value FROM dwh.metrics m"
                          " JOIN dwh.metric_series s USING (series_id) WHERE s.metric_name = %s", (STORAGE_METRIC,))
    samples["day"] = utc(samples.ts).dt.date
    storage = (samples.groupby(["organization_id", "day"]).value.sum() / 1024**3 * step / 86400).rename("storage_gib_days")

    out = usage.join(storage, how="outer").fillna({"instances": 0, "vcpu_hours": 0.0, "storage_gib_days": 0.0})
    out.index.names = ["organization_id", "day"]
    out = out.reset_index()
    out = out[(out.day >= first) & (out.day < end)]

    members = frame(conn, "SELECT organization_id, created_at FROM dwh.organization_memberships")
    members["created_at"] = utc(members.created_at)
    day_end = utc(pd.to_datetime(out.day)) + pd.Timedelta(days=1)
    out["members"] = [
        int(((members.organization_id == org) & (members.created_at.isna() | (members.created_at < end))).sum())
        for org, end in zip(out.organization_id, day_end)
    ]
    names = frame(conn, "SELECT organization_id, name AS organization_name FROM dwh.organizations")
    return out.merge(names, on="organization_id", how="left")


def assert_org_daily_usage_matches(conn: psycopg.Connection, first: dt.date, end: dt.date) -> int:
    mart = frame(conn, "SELECT * FROM mart.org_daily_usage WHERE day >= %s AND day < %s", (first, end))
    expected = expected_org_daily_usage(conn, first, end)
    assert len(mart) > 0 and mart.vcpu_hours.astype(float).sum() > 0
    both = mart.merge(expected, on=["organization_id", "day"], how="outer", suffixes=("", "_pd"), indicator=True)
    unmatched = both[both._merge != "both"]
    assert unmatched.empty, f"{len(unmatched)} (organization, day) rows only on one side:\n{unmatched.head()}"
    for col in ("instances", "members", "organization_name"):
        differ = both[both[col].fillna("") != both[f"{col}_pd"].fillna("")]
        sample = differ[["organization_id", "day", col, f"{col}_pd"]].head()
        assert differ.empty, f"{col} differs from pandas in {len(differ)} rows:\n{sample}"
    for col in ("vcpu_hours", "storage_gib_days"):
        diff = (both[col].astype(float) - both[f"{col}_pd"]).abs()
        worst = both.loc[diff.idxmax(), ["organization_id", "day", col, f"{col}_pd"]].tolist()
        assert diff.max() <= TOLERANCE, f"{col} differs from pandas by up to {diff.max()}: {worst}"
    return len(mart)


def test_org_daily_usage_window_matches_pandas(snapshot):
    log = refresh(snapshot, "refresh_mart_org_daily_usage", *WINDOW)
    assert (log["table_name"], log["window_start"], log["window_end"]) == ("mart.org_daily_usage", *WINDOW)
    rows = assert_org_daily_usage_matches(snapshot, WINDOW[0].date(), WINDOW[1].date())
    assert log["rows_inserted"] == rows
    assert snapshot.execute("SELECT sum(storage_gib_days) FROM mart.org_daily_usage WHERE day >= %s",
                            (WINDOW[0].date(),)).fetchone()[0] > 0


def test_daily_signups_match_pandas_with_the_running_total(snapshot):
    snapshot.execute("SELECT dwh.refresh_pending_mart('daily_signups')")  # days queued by the users refresh
    refresh(snapshot, "refresh_mart_daily_signups", *WINDOW)
    mart = frame(snapshot, "SELECT day, signups, with_email, total_users FROM mart.daily_signups ORDER BY day")
    users = frame(snapshot, "SELECT created_at, email FROM dwh.users")
    users["day"] = utc(users.created_at).dt.date
    per_day = users.groupby("day").agg(signups=("day", "size"), with_email=("email", "count"))
    # Every UTC day from the first sign-up through today, a day without one as zeros.
    today = pd.Timestamp.now(tz="UTC").date()
    days = pd.Index(pd.date_range(min(per_day.index), today, freq="D").date, name="day")
    expected = per_day.reindex(days, fill_value=0).reset_index()
    expected["total_users"] = expected.signups.cumsum()
    assert len(mart) > 1 and mart.total_users.iloc[-1] == len(users)
    pd.testing.assert_frame_equal(mart, expected, check_dtype=False)


def day_checksum(conn: psycopg.Connection, first: dt.date, end: dt.date) -> tuple:
    return conn.execute("SELECT count(*), md5(coalesce(string_agg(d::text, ',' ORDER BY d::text), '')) "
                        "FROM mart.org_daily_usage_days d WHERE day >= %s AND day < %s", (first, end)).fetchone()


def test_a_window_refresh_replaces_its_days_and_nothing_else(loader, local_copies):
    refresh(loader, "refresh_mart_org_daily_usage", *WINDOW)
    day = WINDOW[0] + dt.timedelta(days=1)
    others = (day_checksum(loader, WINDOW[0].date(), day.date()), day_checksum(loader, (day + dt.timedelta(days=1)).date(), WINDOW[1].date()))
    log = refresh(loader, "refresh_mart_org_daily_usage", day, day + dt.timedelta(days=1))
    assert log["rows_deleted"] == log["rows_inserted"] > 0, "the day's rows were replaced, not added to"
    assert (day_checksum(loader, WINDOW[0].date(), day.date()),
            day_checksum(loader, (day + dt.timedelta(days=1)).date(), WINDOW[1].date())) == others


def test_a_dimension_change_queues_its_days_and_the_pending_refresh_matches_pandas(cfg, loader, local_copies, clerk):
    """An instance deleted at the control plane yesterday, an organization renamed in Clerk."""
    yesterday = utc_midnight(-1) + dt.timedelta(hours=6)
    with connect_control_plane(cfg) as cp:
        victim, organization_id = cp.execute(
            "SELECT instance_id, organization_id FROM public.instances WHERE deleted_at IS NULL "
            "AND created_at < now() - interval '5 days' ORDER BY instance_id LIMIT 1").fetchone()
        cp.execute("UPDATE public.instances SET deleted_at = %s, updated_at = now() WHERE instance_id = %s",
                   (yesterday, victim))
    try:
        loader.execute("SELECT dwh.refresh_pending_mart('org_daily_usage')")  # start from an empty queue
        refresh(loader, "refresh_mart_org_daily_usage", *WINDOW)
        before = loader.execute("SELECT vcpu_hours FROM mart.org_daily_usage WHERE organization_id = %s AND day = %s",
                                (organization_id, yesterday.date())).fetchone()[0]
        refresh(loader, "refresh_instances")
        queued = [r[0] for r in loader.execute(
            "SELECT day FROM dwh.mart_pending WHERE mart = 'org_daily_usage' ORDER BY day").fetchall()]
        assert queued == [yesterday.date(), yesterday.date() + dt.timedelta(days=1)], "from the deletion through today"
        log = loader.execute("SELECT * FROM dwh.refresh_pending_mart('org_daily_usage')").fetchone()
        assert log[2:4] == (utc_midnight(-1), utc_midnight(1))
        assert loader.execute("SELECT count(*) FROM dwh.mart_pending WHERE mart = 'org_daily_usage'").fetchone()[0] == 0
        after = loader.execute("SELECT vcpu_hours FROM mart.org_daily_usage WHERE organization_id = %s AND day = %s",
                               (organization_id, yesterday.date())).fetchone()[0]
        assert after < before, "the deleted instance no longer counts after its deletion"

        # A rename is joined at read time: it queues nothing and shows at once.
        clerk.request("PATCH", f"/_admin/organizations/{organization_id}", {"name": "Renamed Probe Org"})
        refresh(loader, "refresh_organizations")
        assert loader.execute("SELECT count(*) FROM dwh.mart_pending WHERE mart = 'org_daily_usage'").fetchone()[0] == 0
        with psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE)) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            # Days before today: today's vCPU-hours of running instances grow with now().
            assert_org_daily_usage_matches(conn, WINDOW[0].date(), utc_midnight(0).date())
            assert conn.execute("SELECT DISTINCT organization_name FROM mart.org_daily_usage WHERE organization_id = %s",
                                (organization_id,)).fetchall() == [("Renamed Probe Org",)]
    finally:
        with connect_control_plane(cfg) as cp:
            cp.execute("UPDATE public.instances SET deleted_at = NULL WHERE instance_id = %s", (victim,))
        clerk.reset()
        refresh(loader, "refresh_instances")
        refresh(loader, "refresh_organizations")
        loader.execute("SELECT dwh.refresh_pending_mart('org_daily_usage')")


@pytest.mark.parametrize("start, end, problem", [
    (utc_midnight(-1) + dt.timedelta(hours=3), utc_midnight(0), "is not made of whole UTC days"),
    (utc_midnight(0), utc_midnight(-1), "is empty or reversed"),
    (utc_midnight(0), utc_midnight(3), "reaches into the future"),
])
def test_bad_windows_are_refused_and_change_nothing(loader, local_copies, start, end, problem):
    before = day_checksum(loader, utc_midnight(-10).date(), utc_midnight(1).date())
    with pytest.raises(psycopg.errors.RaiseException, match=problem):
        refresh(loader, "refresh_mart_org_daily_usage", start, end)
    assert day_checksum(loader, utc_midnight(-10).date(), utc_midnight(1).date()) == before


def test_unknown_marts_are_refused(loader):
    with pytest.raises(psycopg.errors.RaiseException, match="no mart named 'users'"):
        loader.execute("SELECT dwh.refresh_pending_mart('users')")


def test_a_pending_refresh_with_nothing_queued_logs_no_window(loader, local_copies):
    loader.execute("SELECT dwh.refresh_pending_mart('daily_signups')")
    log = loader.execute("SELECT table_name, window_start, rows_inserted FROM dwh.refresh_pending_mart('daily_signups')").fetchone()
    assert log == ("mart.daily_signups", None, 0)


# ----- refreshes never block readers ----------------------------------------------------------


def test_readers_read_a_mart_while_it_refreshes(cfg, local_copies, reader_role):
    day = utc_midnight(0)
    before = reader_role.execute("SELECT count(*), sum(vcpu_hours) FROM mart.org_daily_usage WHERE day = %s",
                                 (day.date(),)).fetchone()
    with psycopg.connect(cfg.dsn(WAREHOUSE_DB, OWNER_ROLE)) as refresher:
        refresher.execute("DELETE FROM dwh.instances WHERE organization_id = (SELECT min(organization_id) FROM dwh.instances)")
        refresher.execute("SELECT dwh.refresh_mart_org_daily_usage(%s, %s)", (day, day + dt.timedelta(days=1)))
        changed = refresher.execute("SELECT count(*), sum(vcpu_hours) FROM mart.org_daily_usage WHERE day = %s",
                                    (day.date(),)).fetchone()
        assert changed != before, "the open refresh saw its own change"
        # A blocked reader would wait for the refresher's transaction: fail instead of hanging.
        reader_role.execute("SET lock_timeout = '200ms'")
        assert reader_role.execute("SELECT count(*), sum(vcpu_hours) FROM mart.org_daily_usage WHERE day = %s",
                                   (day.date(),)).fetchone() == before, "readers see the last committed rows"
        refresher.rollback()
