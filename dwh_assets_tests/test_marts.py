"""Marts against an independent computation with pandas over the same local rows, and
readers never blocked by a refresh.

The refresh and the reads share one REPEATABLE READ transaction, so pandas sees exactly
the rows the mart was built from, and ``now()`` (which bounds running instances) is the
same instant. The refresh runs from a client in another time zone: mart days are UTC days.

dwh.refresh_mart refreshes a populated mart CONCURRENTLY: a refresh left open in one
transaction holds an EXCLUSIVE lock, and a reader with a lock_timeout still reads the last
committed build (a plain refresh, the control, makes that reader fail).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import psycopg
import pytest

from dwh_assets.local.config import LOADER_ROLE, OWNER_ROLE, WAREHOUSE_DB, StackConfig
from dwh_assets_tests.warehouse_helpers import utc_midnight

pytestmark = pytest.mark.integration

STORAGE_METRIC = "dwh_instance_storage_bytes"
# Marts round to 3 decimals.
TOLERANCE = 0.0011


@pytest.fixture(scope="module")
def local_copies(cfg: StackConfig) -> None:
    """Fill the local copies the marts read: dimensions, and a few days of metrics."""
    with psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True) as conn:
        for name in ("users", "organizations", "organization_memberships", "instances"):
            conn.execute(f"SELECT dwh.refresh_{name}()")
        conn.execute("SELECT dwh.refresh_metrics(%s, %s)", (utc_midnight(-3), utc_midnight(1)))


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


def expected_org_daily_usage(conn: psycopg.Connection) -> pd.DataFrame:
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
    storage = (samples.groupby(["organization_id", "day"]).value.sum() / 1024**3 * step / 86400).rename("storage_gb_days")

    out = usage.join(storage, how="outer").fillna({"instances": 0, "vcpu_hours": 0.0, "storage_gb_days": 0.0})
    out.index.names = ["organization_id", "day"]
    out = out.reset_index()

    members = frame(conn, "SELECT organization_id, created_at FROM dwh.organization_memberships")
    members["created_at"] = utc(members.created_at)
    day_end = utc(pd.to_datetime(out.day)) + pd.Timedelta(days=1)
    out["members"] = [
        int(((members.organization_id == org) & (members.created_at.isna() | (members.created_at < end))).sum())
        for org, end in zip(out.organization_id, day_end)
    ]
    names = frame(conn, "SELECT organization_id, name AS organization_name FROM dwh.organizations")
    return out.merge(names, on="organization_id", how="left")


def test_org_daily_usage_matches_pandas(snapshot):
    log = snapshot.execute("SELECT rows_inserted FROM dwh.refresh_mart('org_daily_usage')").fetchone()
    mart = frame(snapshot, "SELECT * FROM mart.org_daily_usage")
    expected = expected_org_daily_usage(snapshot)
    assert log[0] == len(mart) > 0
    assert mart.vcpu_hours.astype(float).sum() > 0 and mart.storage_gb_days.astype(float).sum() > 0

    both = mart.merge(expected, on=["organization_id", "day"], how="outer", suffixes=("", "_pd"), indicator=True)
    unmatched = both[both._merge != "both"]
    assert unmatched.empty, f"{len(unmatched)} (organization, day) rows only on one side:\n{unmatched.head()}"
    for col in ("instances", "members", "organization_name"):
        differ = both[both[col].fillna("") != both[f"{col}_pd"].fillna("")]
        sample = differ[["organization_id", "day", col, f"{col}_pd"]].head()
        assert differ.empty, f"{col} differs from pandas in {len(differ)} rows:\n{sample}"
    for col in ("vcpu_hours", "storage_gb_days"):
        diff = (both[col].astype(float) - both[f"{col}_pd"]).abs()
        worst = both.loc[diff.idxmax(), ["organization_id", "day", col, f"{col}_pd"]].tolist()
        assert diff.max() <= TOLERANCE, f"{col} differs from pandas by up to {diff.max()}: {worst}"


def test_daily_signups_matches_pandas(snapshot):
    snapshot.execute("SELECT dwh.refresh_mart('daily_signups')")
    mart = frame(snapshot, "SELECT day, signups, with_email, total_users FROM mart.daily_signups ORDER BY day")
    users = frame(snapshot, "SELECT created_at, email FROM dwh.users")
    users["day"] = utc(users.created_at).dt.date
    expected = users.groupby("day").agg(signups=("day", "size"), with_email=("email", "count")).reset_index()
    expected["total_users"] = expected.signups.cumsum()
    assert len(mart) > 1 and mart.total_users.iloc[-1] == len(users)
    pd.testing.assert_frame_equal(mart, expected, check_dtype=False)


def test_refresh_mart_rejects_unknown_marts(loader):
    with pytest.raises(psycopg.errors.RaiseException, match="no mart named 'users'"):
        loader.execute("SELECT dwh.refresh_mart('users')")


# ----- refreshes never block readers ----------------------------------------------------------

PROBE_USER = "user_mart_concurrency_probe"


def open_transaction(cfg: StackConfig) -> psycopg.Connection:
    """An owner session that is not autocommit: what it does stays uncommitted until it ends."""
    return psycopg.connect(cfg.dsn(WAREHOUSE_DB, OWNER_ROLE))


def total_users(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT max(total_users) FROM mart.daily_signups").fetchone()[0]


def test_readers_read_a_mart_while_it_refreshes(cfg, local_copies, loader, reader_role):
    loader.execute("SELECT dwh.refresh_mart('daily_signups')")  # built: later refreshes are concurrent
    before = total_users(reader_role)
    with open_transaction(cfg) as refresher:
        refresher.execute("INSERT INTO dwh.users (user_id, created_at, updated_at) VALUES (%s, now(), now())", (PROBE_USER,))
        refresher.execute("SELECT dwh.refresh_mart('daily_signups')")
        assert total_users(refresher) == before + 1, "the refresh saw the new user"
        held = reader_role.execute(
            "SELECT mode FROM pg_locks WHERE pid = %s AND relation = 'mart.daily_signups'::regclass AND granted",
            (refresher.info.backend_pid,),
        ).fetchall()
        assert ("ExclusiveLock",) in held and ("AccessExclusiveLock",) not in held
        # A blocked reader would wait for the refresher's transaction: fail instead of hanging.
        reader_role.execute("SET lock_timeout = '200ms'")
        assert total_users(reader_role) == before, "readers see the last committed build"
        refresher.rollback()
    assert total_users(reader_role) == before


def test_a_plain_refresh_would_block_readers(cfg, local_copies, reader_role):
    """The control for the test above: its reader does notice a blocking refresh."""
    with open_transaction(cfg) as refresher:
        refresher.execute("REFRESH MATERIALIZED VIEW mart.daily_signups")
        reader_role.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            total_users(reader_role)
        refresher.rollback()


def test_the_first_refresh_builds_a_never_populated_mart(cfg, local_copies):
    """Plain refresh the first time, CONCURRENTLY afterwards (which needs the key index)."""
    with open_transaction(cfg) as conn:  # rolled back: the marts of the warehouse stay as they are
        conn.execute("CREATE MATERIALIZED VIEW mart.probe_signups AS SELECT (created_at AT TIME ZONE 'UTC')::date AS day,"
                     " count(*) AS signups FROM dwh.users GROUP BY 1 WITH NO DATA")
        conn.execute("CREATE UNIQUE INDEX ON mart.probe_signups (day)")
        conn.execute("CREATE MATERIALIZED VIEW mart.probe_no_key AS SELECT count(*) AS users FROM dwh.users WITH NO DATA")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="has not been populated"):
            with conn.transaction():
                conn.execute("SELECT * FROM mart.probe_signups")
        days = conn.execute("SELECT count(DISTINCT (created_at AT TIME ZONE 'UTC')::date) FROM dwh.users").fetchone()[0]
        for _ in range(2):
            assert conn.execute("SELECT rows_inserted FROM dwh.refresh_mart('probe_signups')").fetchone()[0] == days > 0
        # Without a unique index only the first (plain) refresh works: the second is concurrent.
        assert conn.execute("SELECT rows_inserted FROM dwh.refresh_mart('probe_no_key')").fetchone()[0] == 1
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="cannot refresh materialized view .* concurrently"):
            conn.execute("SELECT dwh.refresh_mart('probe_no_key')")
        conn.rollback()


def test_every_mart_has_the_key_a_concurrent_refresh_needs(loader):
    keys = dict(loader.execute(
        "SELECT c.relname, array_agg(a.attname::text ORDER BY k.ord) FROM pg_class c"
        " JOIN pg_index i ON i.indrelid = c.oid AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL"
        " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum"
        " WHERE c.relnamespace = 'mart'::regnamespace AND c.relkind = 'm' GROUP BY c.relname, i.indexrelid"
    ).fetchall())
    marts = {r[0] for r in loader.execute("SELECT relname FROM pg_class WHERE relnamespace = 'mart'::regnamespace AND relkind = 'm'")}
    assert set(keys) == marts
    assert keys["org_daily_usage"] == ["organization_id", "day"] and keys["daily_signups"] == ["day"]
