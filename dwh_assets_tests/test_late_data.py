"""Late-arriving data: rows that reach a source after the warehouse copied their day.

On the session stack, late rows are written where real sources get them: pgmq archive rows
enqueued 5 and 60 days before they are archived (now), one enqueued before the retention,
a state transition inserted now with a changed_at 10 days back, and Prometheus samples
(promtool back-fill blocks moved into its data directory) for an hour already copied.
Everything is then run exactly as pg_cron runs it: each fact's job command, then each
mart's job command (``TableSpec.cron_command``), never a routine called by hand.

- **The watermark**: the next scheduled refresh copies each late row and queues its day for
  the marts, whose next job run updates them; the row older than retention is counted, not
  copied. The lookups are single GROUP BYs the source runs (postgres_fdw pushes them down).
- **The reconciliation**: the same kinds of rows again, but the watermarks are first moved
  past them (as if the lookup had missed them) and the samples lie outside the re-read
  horizon: the scheduled commands leave them out, the daily reconciliation's command
  finds and replaces their days, and its Dagster check says so.

Rows added at the control plane are deleted afterwards and their days refreshed; the
Prometheus samples stay (a series of an instance id of their own, copied like any other).
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
import pytest
from psycopg.rows import dict_row

from dwh_assets.local.config import LOADER_ROLE, WAREHOUSE_DB, StackConfig
from dwh_assets.local.prometheus_backfill import SCRAPE_INSTANCE, SCRAPE_JOB, add_samples
from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.defs.checks import MATCHES_SOURCE, reconciliation_checks
from dwh_assets_tests.warehouse_helpers import connect_control_plane, fact_checksum

UTC = dt.timezone.utc
DAY = dt.timedelta(days=1)
STORAGE = "dwh_instance_storage_bytes"
GIB = 1024 ** 3
PROMETHEUS_LOAD_SECONDS = 240  # Prometheus loads new blocks at its next reload (about a minute; slower under load)


def run_as_pg_cron(conn: psycopg.Connection, *entries: catalog.TableSpec | catalog.MartSpec) -> None:
    """Each entry's pg_cron job command, as the job's role, in its own transaction."""
    for entry in entries:
        conn.execute(entry.cron_command())


def run_marts(conn: psycopg.Connection) -> None:
    run_as_pg_cron(conn, *catalog.MARTS)


def day_of(t: dt.datetime) -> dt.date:
    return t.astimezone(UTC).date()


def midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), UTC)


def copy_equals_source(loader: psycopg.Connection, cp: psycopg.Connection, table: str, day: dt.date) -> bool:
    """The copy's rows of ``day`` equal the source's (count and every column)."""
    start, end = midnight(day), midnight(day) + DAY
    return (fact_checksum(loader, table, start, end, source=False)
            == fact_checksum(cp, table, start, end, source=True))


def add_event(cp: psycopg.Connection, enqueued_at: dt.datetime) -> int:
    """An archive row enqueued at ``enqueued_at`` and archived now, as pgmq's archive() writes it."""
    instance_id, organization_id = cp.execute(
        "SELECT instance_id, organization_id FROM public.instances ORDER BY instance_id LIMIT 1").fetchone()
    return cp.execute(
        "INSERT INTO pgmq.a_instance_events (msg_id, read_ct, enqueued_at, archived_at, vt, message) "
        "SELECT coalesce(max(msg_id), 0) + 1, 1, %s, now(), now() + interval '30 seconds', "
        "jsonb_build_object('event', 'backup.completed', 'instance_id', %s::text, 'organization_id', %s::text) "
        "FROM pgmq.a_instance_events RETURNING msg_id", (enqueued_at, instance_id, organization_id)).fetchone()[0]


def add_transition(cp: psycopg.Connection, changed_at: dt.datetime) -> int:
    """A state transition a reconciler inserts after the fact; its new id."""
    return cp.execute(
        "INSERT INTO public.instance_state_history (instance_id, state, changed_at) "
        "SELECT instance_id, 'stopped', %s FROM public.instances ORDER BY instance_id LIMIT 1 RETURNING id",
        (changed_at,)).fetchone()[0]


def prometheus_has(cfg: StackConfig, instance_id: str, at: int) -> bool:
    query = urllib.parse.urlencode({"query": f'count({STORAGE}{{instance_id="{instance_id}"}})', "time": at})
    with urllib.request.urlopen(f"{cfg.prometheus_url}/api/v1/query?{query}", timeout=30) as resp:
        return bool(json.load(resp)["data"]["result"])


def wait_for(what: str, predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def storage_gib_days(conn: psycopg.Connection, organization_id: str, day: dt.date) -> float:
    row = conn.execute("SELECT storage_gib_days FROM mart.org_daily_usage WHERE organization_id = %s AND day = %s",
                       (organization_id, day)).fetchone()
    return float(row[0]) if row else 0.0


def transitions(conn: psycopg.Connection, day: dt.date) -> int:
    # The mart has a row per organization, region and plan of the day's state: the day's total.
    return int(conn.execute("SELECT coalesce(sum(transitions), 0) FROM mart.instance_state_daily "
                            "WHERE day = %s AND state = 'stopped'", (day,)).fetchone()[0])


def in_copy(loader: psycopg.Connection, sql_text: str, *params) -> bool:
    return loader.execute(sql_text, params).fetchone()[0] > 0


@dataclass
class LateSamples:
    """Storage samples of a series Prometheus first learns about late: one hour inside the
    scheduled window (already copied), one 3 days back (outside the re-read horizon)."""

    instance_id: str
    organization_id: str
    in_horizon: int          # epoch seconds, on the step grid
    outside_horizon: int
    value: float = float(GIB)
    # The organization's storage GB-days in the mart on each sample's day, before they were written.
    storage_before: dict[int, float] = field(default_factory=dict)
    # Whether the copy held each sample once Prometheus served it (before any later refresh).
    copied_when_written: dict[int, bool] = field(default_factory=dict)

    def series_in_copy(self, loader: psycopg.Connection, at: int) -> bool:
        return in_copy(loader, "SELECT count(*) FROM dwh.metrics m JOIN dwh.metric_series s USING (series_id) "
                               "WHERE s.instance_id = %s AND m.ts = to_timestamp(%s)", self.instance_id, at)


@dataclass
class Scenario:
    events: dict[str, int] = field(default_factory=dict)            # case -> msg_id
    event_days: dict[str, dt.date] = field(default_factory=dict)
    transition: int = 0
    transition_day: dt.date | None = None
    marts_before: dict[str, float] = field(default_factory=dict)
    copied_before: dict[str, bool] = field(default_factory=dict)    # what the copy held after the scheduled refresh


def _connect(cfg: StackConfig) -> psycopg.Connection:
    return psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True)


@pytest.fixture(scope="module")
def history(cfg: StackConfig) -> None:
    """The copies and marts of the whole history, as the first materialization leaves them (the
    session stack starts empty; the reconciliation compares every kept day)."""
    with _connect(cfg) as loader:
        start = midnight(cfg.history_start)
        end = midnight(dt.datetime.now(UTC).date()) + DAY
        for spec in catalog.CATALOG:
            if spec.kind is catalog.Kind.DIMENSION:
                loader.execute(f"SELECT {spec.routine}(current_date)")
            else:
                loader.execute(f"SELECT {spec.routine}(%s, %s)", (start, end))
        for mart in catalog.MARTS:
            loader.execute(f"SELECT {mart.routine}(%s, %s)", (start, end))


@pytest.fixture(scope="module")
def samples(cfg: StackConfig, stack, history) -> LateSamples:
    """The late samples, written once (both scenarios read them); Prometheus loads the block."""
    step = 3600
    now = int(time.time())
    with _connect(cfg) as loader:
        organization_id = loader.execute("SELECT organization_id FROM dwh.organizations ORDER BY 1 LIMIT 1").fetchone()[0]
        late = LateSamples(f"late-{uuid.uuid4()}", organization_id, in_horizon=now - now % step - step,
                           outside_horizon=(now // 86400 - 3) * 86400 + 10 * step)
        # An hour already copied: the metrics job's window (yesterday and today) refreshed up to now.
        run_as_pg_cron(loader, catalog.get("metrics"))
        run_marts(loader)
        times = (late.in_horizon, late.outside_horizon)
        late.storage_before = {t: storage_gib_days(loader, organization_id, day_of(dt.datetime.fromtimestamp(t, UTC)))
                               for t in times}
        labels = {"instance": SCRAPE_INSTANCE, "job": SCRAPE_JOB, "instance_id": late.instance_id,
                  "organization_id": organization_id}
        add_samples(stack.prometheus.data_dir, [(STORAGE, labels, late.value, t) for t in times])
        wait_for("Prometheus to load the late block",
                 lambda: all(prometheus_has(cfg, late.instance_id, t) for t in times), PROMETHEUS_LOAD_SECONDS)
        late.copied_when_written = {t: late.series_in_copy(loader, t) for t in times}
    return late


def _cleanup(cfg: StackConfig, scenario: Scenario) -> None:
    """The added control-plane rows deleted, their days refreshed (and their marts)."""
    with connect_control_plane(cfg) as cp, _connect(cfg) as loader:
        cp.execute("DELETE FROM pgmq.a_instance_events WHERE msg_id = ANY(%s)", (list(scenario.events.values()),))
        cp.execute("DELETE FROM public.instance_state_history WHERE id = %s", (scenario.transition,))
        first_kept = max(cfg.history_start, dt.datetime.now(UTC).date() - dt.timedelta(days=catalog.get("events").retention_days))
        for day in {d for d in scenario.event_days.values() if d >= first_kept}:
            loader.execute("SELECT dwh.refresh_events(%s, %s)", (midnight(day), midnight(day) + DAY))
        if scenario.transition_day is not None:
            day = scenario.transition_day
            loader.execute("SELECT dwh.refresh_instance_state(%s, %s)", (midnight(day), midnight(day) + DAY))
        run_marts(loader)


# ----- the watermark: the next scheduled refresh --------------------------------------------------


@pytest.fixture(scope="module")
def scheduled(cfg: StackConfig, samples: LateSamples) -> Iterator[Scenario]:
    """Late rows at the sources, then the facts' and the marts' pg_cron commands, once."""
    scenario = Scenario()
    with connect_control_plane(cfg) as cp, _connect(cfg) as loader:
        facts = [catalog.get(name) for name in ("events", "instance_state", "metrics")]
        run_as_pg_cron(loader, *facts)  # a watermark for each (the first scheduled refresh starts it)
        run_marts(loader)
        now = cp.execute("SELECT now()").fetchone()[0]
        changed_at = now - 10 * DAY
        scenario.transition_day = day_of(changed_at)
        scenario.marts_before = {"stopped": transitions(loader, scenario.transition_day)}
        for case, late_by in (("5 days", 5 * DAY), ("60 days", 60 * DAY), ("past retention", 420 * DAY)):
            scenario.events[case] = add_event(cp, now - late_by)
            scenario.event_days[case] = day_of(now - late_by)
        scenario.transition = add_transition(cp, changed_at)
        run_as_pg_cron(loader, *facts)
        run_marts(loader)
    yield scenario
    _cleanup(cfg, scenario)


@pytest.mark.parametrize("case", ["5 days", "60 days"])
def test_an_archive_row_arriving_late_is_copied_by_the_next_scheduled_refresh(scheduled, loader, cfg, case):
    msg_id, day = scheduled.events[case], scheduled.event_days[case]
    assert in_copy(loader, "SELECT count(*) FROM dwh.events WHERE msg_id = %s", msg_id)
    with connect_control_plane(cfg) as cp:
        assert copy_equals_source(loader, cp, "events", day)
    # Its day was replaced on its own (no mart reads dwh.events: nothing else to queue).
    assert in_copy(loader, "SELECT count(*) FROM dwh.refresh_log WHERE table_name = 'events' AND window_start = %s "
                           "AND window_end = %s", midnight(day), midnight(day) + DAY)
    row = loader.execute("SELECT late_days_replaced, last_late_day FROM mart.late_data "
                         "WHERE table_name = 'events'").fetchone()
    assert row[0] >= 2 and row[1] >= day


def test_a_state_row_written_ten_days_after_the_fact_reaches_the_copy_and_its_mart(scheduled, loader, cfg):
    day = scheduled.transition_day
    assert in_copy(loader, "SELECT count(*) FROM dwh.instance_state WHERE id = %s", scheduled.transition)
    with connect_control_plane(cfg) as cp:
        assert copy_equals_source(loader, cp, "instance_state", day)
    # The mart's job refreshed the day the copy's refresh queued.
    assert transitions(loader, day) == scheduled.marts_before["stopped"] + 1
    assert not in_copy(loader, "SELECT count(*) FROM dwh.mart_pending WHERE mart = 'instance_state_daily' AND day = %s",
                       day)


def test_prometheus_samples_for_an_hour_already_copied_reach_the_copy_and_its_mart(scheduled, samples, loader):
    at = samples.in_horizon
    assert not samples.copied_when_written[at], "the hour was copied before the samples were written"
    assert samples.series_in_copy(loader, at)
    day = day_of(dt.datetime.fromtimestamp(at, UTC))
    # One sample of 1 GiB at the hourly step: 1/24 GB-day more for its organization and day.
    added = storage_gib_days(loader, samples.organization_id, day) - samples.storage_before[at]
    assert added == pytest.approx(1 / 24, abs=0.0011)


def test_a_row_older_than_retention_is_counted_not_copied(scheduled, loader):
    msg_id, day = scheduled.events["past retention"], scheduled.event_days["past retention"]
    assert day < dt.datetime.now(UTC).date() - dt.timedelta(days=catalog.get("events").retention_days)
    assert not in_copy(loader, "SELECT count(*) FROM dwh.events WHERE msg_id = %s", msg_id)
    too_old, last = loader.execute("SELECT late_days_too_old, last_too_old_day FROM mart.late_data "
                                   "WHERE table_name = 'events'").fetchone()
    assert too_old >= 1 and last == day


def test_lookups_and_day_counts_run_at_the_source(scheduled, loader, owner):
    """The watermark lookup and the reconciliation's per-day count are one GROUP BY each, sent whole
    to the control plane: only a row per day travels."""
    queries = owner.execute(
        "SELECT table_name, dwh.arrival_lookup_query(w), dwh.source_day_counts_query(w, dwh.first_kept_day(table_name), "
        "current_date) FROM dwh.arrival_watermarks w WHERE arrival_column IS NOT NULL").fetchall()
    assert {row[0] for row in queries} == {"events", "instance_state"}
    for table, *texts in queries:
        for text in texts:
            plan = loader.execute(f"EXPLAIN (VERBOSE, FORMAT JSON) {text}").fetchone()[0][0]["Plan"]
            scans = [node for node in _nodes(plan) if node["Node Type"] == "Foreign Scan"]
            assert len(scans) == 1 and scans[0]["Operation"] == "Select", (table, plan)
            assert scans[0]["Relations"].startswith("Aggregate on"), (table, scans[0])
            assert "GROUP BY" in scans[0]["Remote SQL"], (table, scans[0]["Remote SQL"])


def _nodes(plan: dict) -> Iterator[dict]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


# ----- the reconciliation: what the watermark did not see ----------------------------------------


@contextmanager
def watermarks_held(cfg: StackConfig) -> Iterator[psycopg.Connection]:
    """The control plane's watermark rows, locked until the block ends (then committed): a scheduled
    refresh pg_cron starts meanwhile waits, and then reads the watermarks as the block left them."""
    with psycopg.connect(cfg.superuser_dsn(WAREHOUSE_DB)) as su:
        su.execute("SELECT 1 FROM dwh.arrival_watermarks WHERE arrival_column IS NOT NULL FOR UPDATE")
        yield su


def bypass_watermarks(su: psycopg.Connection, cp: psycopg.Connection) -> None:
    """Move the control plane's watermarks past every row it holds, as a lookup that missed them would."""
    newest = {"events": cp.execute("SELECT max(archived_at) FROM pgmq.a_instance_events").fetchone()[0],
              "instance_state": cp.execute("SELECT max(id) FROM public.instance_state_history").fetchone()[0]}
    for table, value in newest.items():
        su.execute("UPDATE dwh.arrival_watermarks SET read_after = %(v)s, seen_up_to = %(v)s, "
                   "next_read_after = %(v)s, next_since = now() WHERE table_name = %(t)s", {"v": str(value), "t": table})


@pytest.fixture(scope="module")
def reconciled(cfg: StackConfig, samples: LateSamples, scheduled: Scenario) -> Iterator[Scenario]:
    """Late rows the watermark misses: the scheduled commands, then the reconciliation's, then the marts'."""
    scenario = Scenario()
    facts = [catalog.get(name) for name in ("events", "instance_state", "metrics")]
    with connect_control_plane(cfg) as cp, _connect(cfg) as loader:
        now = cp.execute("SELECT now()").fetchone()[0]
        changed_at = now - 10 * DAY - dt.timedelta(hours=1)
        scenario.transition_day = day_of(changed_at)
        scenario.marts_before = {"stopped": transitions(loader, scenario.transition_day)}
        with watermarks_held(cfg) as su:
            for case, late_by in (("5 days", 5 * DAY + dt.timedelta(hours=1)), ("60 days", 60 * DAY - dt.timedelta(hours=1))):
                scenario.events[case] = add_event(cp, now - late_by)
                scenario.event_days[case] = day_of(now - late_by)
            scenario.transition = add_transition(cp, changed_at)
            bypass_watermarks(su, cp)
        run_as_pg_cron(loader, *facts)
        scenario.copied_before = {
            **{case: in_copy(loader, "SELECT count(*) FROM dwh.events WHERE msg_id = %s", m)
               for case, m in scenario.events.items()},
            "transition": in_copy(loader, "SELECT count(*) FROM dwh.instance_state WHERE id = %s", scenario.transition),
            "samples": samples.series_in_copy(loader, samples.outside_horizon)}
        loader.execute(catalog.PRODUCT.reconciliation.cron_command())
        run_marts(loader)
    yield scenario
    _cleanup(cfg, scenario)


def _latest(loader: psycopg.Connection, table: str) -> dict:
    with loader.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM dwh.reconciliation WHERE table_name = %s ORDER BY id DESC LIMIT 1",
                           (table,)).fetchone()


def test_the_scheduled_refresh_misses_what_the_bypassed_watermark_hides(reconciled):
    assert reconciled.copied_before == {"5 days": False, "60 days": False, "transition": False, "samples": False}


@pytest.mark.parametrize("case", ["5 days", "60 days"])
def test_the_reconciliation_replaces_the_day_of_a_missed_archive_row(reconciled, loader, cfg, case):
    day = reconciled.event_days[case]
    assert in_copy(loader, "SELECT count(*) FROM dwh.events WHERE msg_id = %s", reconciled.events[case])
    with connect_control_plane(cfg) as cp:
        assert copy_equals_source(loader, cp, "events", day)
    assert day in _latest(loader, "events")["repaired_days"]


def test_the_reconciliation_replaces_the_day_of_a_missed_state_row_and_its_mart(reconciled, loader, cfg):
    day = reconciled.transition_day
    assert in_copy(loader, "SELECT count(*) FROM dwh.instance_state WHERE id = %s", reconciled.transition)
    with connect_control_plane(cfg) as cp:
        assert copy_equals_source(loader, cp, "instance_state", day)
    assert _latest(loader, "instance_state")["repaired_days"] == [day]
    assert transitions(loader, day) == reconciled.marts_before["stopped"] + 1


def test_the_reconciliation_finds_samples_older_than_the_re_read_horizon(reconciled, samples, loader):
    at = samples.outside_horizon
    day = day_of(dt.datetime.fromtimestamp(at, UTC))
    assert samples.series_in_copy(loader, at)
    latest = _latest(loader, "metrics")
    assert latest["repaired_days"] == [day] and latest["error"] is None
    assert not samples.copied_when_written[at]
    added = storage_gib_days(loader, samples.organization_id, day) - samples.storage_before[at]
    assert added == pytest.approx(1 / 24, abs=0.0011)


def test_the_reconciliation_check_warns_of_repaired_days_then_passes(reconciled, cfg):
    """Dagster's check: the run that repaired says so (it fails, WARN); the next finds every day equal."""
    checks = {check.asset.path[-1]: check for check in reconciliation_checks()}
    assert all(check.name == MATCHES_SOURCE for check in checks.values())
    with psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True, row_factory=dict_row) as conn, \
            conn.cursor() as cur:
        log = cur.execute("SELECT * FROM dwh.refresh_log WHERE table_name = %s ORDER BY id DESC LIMIT 1",
                          (catalog.PRODUCT.reconciliation.log_table,)).fetchone()
        for table in ("events", "instance_state", "metrics"):
            passed, metadata = checks[table].run(cur.connection, log)
            assert not passed and metadata["repaired_days"] >= 1, (table, metadata)
        cur.execute(catalog.PRODUCT.reconciliation.cron_command())
        again = cur.execute("SELECT * FROM dwh.refresh_log WHERE table_name = %s ORDER BY id DESC LIMIT 1",
                            (catalog.PRODUCT.reconciliation.log_table,)).fetchone()
        for table in ("events", "instance_state", "metrics"):
            passed, metadata = checks[table].run(cur.connection, again)
            assert passed, (table, metadata)
            assert metadata["days_compared"] >= 60 and metadata["source_rows"] == metadata["copy_rows"]
