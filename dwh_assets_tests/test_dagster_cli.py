"""The Dagster code location against the real stack: graph, CLI materialisations, bad input.

Runs go through the real ``dagster`` CLI in a subprocess, with the stack's instance
(``DAGSTER_HOME``: runs and events in the cluster's ``dagster`` database); assertions
read the warehouse and Dagster's Postgres storage, never the CLI's output alone.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess

import dagster as dg
import pytest

from dwh_assets.warehouse import catalog
from dwh_assets.local.config import REPO_ROOT
from dwh_assets.warehouse.defs import CodeLocationSettings, build_definitions
from dwh_assets.warehouse.defs.assets import key_of
from dwh_assets.local.dagster import venv_bin
from dwh_assets_tests.warehouse_helpers import connect_control_plane, fact_checksum, table_checksum

UTC = dt.timezone.utc
MODULE = "dwh_assets.definitions"


def dagster_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([venv_bin("dagster"), *args], cwd=REPO_ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=timeout, check=False)


def materialize(*args: str) -> subprocess.CompletedProcess:
    """``dg launch`` (what superseded ``dagster asset materialize``, which runs the same in-process execution)."""
    return subprocess.run([venv_bin("dg"), "launch", "-m", MODULE, *args], cwd=REPO_ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def defs(cfg) -> dg.Definitions:
    return build_definitions(CodeLocationSettings(cfg.history_start))


@pytest.fixture()
def instance(cfg):
    with dg.DagsterInstance.get() as inst:
        yield inst


def test_definitions_validate_from_the_shell(cfg):
    done = dagster_cli("definitions", "validate", "-m", MODULE, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Validation successful" in done.stdout + done.stderr


def _events_window_delete(superuser, first: dt.date, last: dt.date) -> None:
    superuser.execute("DELETE FROM dwh.events WHERE enqueued_at >= %s AND enqueued_at < %s",
                      (dt.datetime.combine(first, dt.time(), UTC), dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), UTC)))


def _window(first: dt.date, last: dt.date) -> tuple[dt.datetime, dt.datetime]:
    return dt.datetime.combine(first, dt.time(), UTC), dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), UTC)


def _materialized_runs(instance, key: dg.AssetKey, partitions: list[str]) -> dict[str, set[str]]:
    runs: dict[str, set[str]] = {p: set() for p in partitions}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=partitions), limit=1000
    ).records
    for rec in records:
        runs[rec.partition_key].add(rec.run_id)
    return runs


def test_one_partition_then_a_seven_day_range_in_one_run(cfg, superuser, loader, instance):
    today = dt.datetime.now(UTC).date()
    day = today - dt.timedelta(days=20)
    key = key_of("dwh.events")
    with connect_control_plane(cfg) as cp:
        # one partition: the local rows of that day are gone, the CLI brings them back
        _events_window_delete(superuser, day, day)
        assert fact_checksum(loader, "events", *_window(day, day), source=False)[0] == 0
        done = materialize("--assets", "dwh/events", "--partition", day.isoformat())
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert fact_checksum(loader, "events", *_window(day, day), source=False) == \
            fact_checksum(cp, "events", *_window(day, day), source=True)
        assert _materialized_runs(instance, key, [day.isoformat()])[day.isoformat()]

        # a 7-day range: one run, one refresh window, a materialization per partition
        first, last = today - dt.timedelta(days=14), today - dt.timedelta(days=8)
        partitions = [(first + dt.timedelta(days=i)).isoformat() for i in range(7)]
        _events_window_delete(superuser, first, last)
        before = _materialized_runs(instance, key, partitions)
        log_before = loader.execute("SELECT max(id) FROM dwh.refresh_log").fetchone()[0]
        done = materialize("--assets", "dwh/events", "--partition-range", f"{first}...{last}")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert fact_checksum(loader, "events", *_window(first, last), source=False) == \
            fact_checksum(cp, "events", *_window(first, last), source=True)
        logged = loader.execute(
            "SELECT window_start, window_end FROM dwh.refresh_log WHERE id > %s AND table_name = 'events' "
            "AND application = 'dagster'", (log_before,)
        ).fetchall()
        assert logged == [_window(first, last)], "a range run must refresh the whole range as one window"
        after = _materialized_runs(instance, key, partitions)
        new_runs = {run for p in partitions for run in after[p] - before[p]}
        assert len(new_runs) == 1, f"expected one run for the range, got {new_runs}"
        assert all(after[p] - before[p] for p in partitions), "every partition of the range needs a materialization"


def test_materialization_metadata_comes_from_the_refresh_log(loader, instance):
    today = dt.datetime.now(UTC).date().isoformat()
    done = materialize("--assets", "dwh/instances")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # `dagster asset materialize` printed a SupersessionWarning on every call; `dg launch` prints none.
    assert "Warning" not in done.stderr, done.stderr[-3000:]
    record = instance.fetch_materializations(key_of("dwh.instances"), limit=1).records[0]
    meta = record.asset_materialization.metadata
    log = loader.execute("SELECT * FROM dwh.refresh_log WHERE id = %s", (meta["refresh_log_id"].value,)).fetchone()
    assert log is not None
    assert log[1] == "instances"
    assert meta["rows_inserted"].value == log[5] and meta["rows_updated"].value == log[6] and meta["rows_deleted"].value == log[7]
    assert meta["snapshot_day"].value == today
    # The same refresh recorded today's snapshot, on the snapshot's own asset.
    snapshot = instance.fetch_materializations(key_of("dwh.instances_snapshot"), limit=1).records[0]
    assert snapshot.asset_materialization.metadata["refresh_log_id"].value == meta["refresh_log_id"].value
    assert snapshot.asset_materialization.metadata["snapshot_day"].value == today
    # One line per table in the run's log: window or snapshot, and rows.
    assert f"instances snapshot {today}: +{log[5]:,} ~{log[6]:,} -{log[7]:,} rows" in done.stdout + done.stderr


def _nothing_changed(loader):
    # Dagster's rows only, and the days pg_cron's events job (today and its lookback) never touches:
    # pg_cron keeps refreshing meanwhile, and an earlier test may have left its window to re-fill.
    lookback = catalog.get("events").lookback_days
    return (loader.execute("SELECT count(*), max(id) FROM dwh.refresh_log WHERE application = 'dagster'").fetchone(),
            loader.execute("SELECT count(*), md5(coalesce(string_agg(e::text, ',' ORDER BY e::text), '')) FROM dwh.events e "
                           "WHERE enqueued_at < date_trunc('day', now()) - make_interval(days => %s)", (lookback,)).fetchone())


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--assets", "dwh/no_such_table", "--partition", "2026-01-01"), "no_such_table"),
        (("--assets", "dwh/events", "--partition", "2026-13-45"), "2026-13-45"),
        (("--assets", "dwh/events", "--partition-range", "{d2}...{d1}x"), "{d1}x"),
        (("--assets", "dwh/events", "--partition", "1999-01-01"), "1999-01-01"),
        (("--assets", "dwh/events", "--partition", "{future}"), "{future}"),
        (("--assets", "dwh/events", "--partition-range", "{d5}...{d1}"), "is reversed"),
    ],
    ids=["unknown-asset", "malformed-day", "malformed-range", "outside-partitions", "future-day", "reversed-range"],
)
def test_bad_selection_or_partition_is_a_clear_error_and_changes_nothing(loader, args, expected):
    today = dt.datetime.now(UTC).date()
    days = {f"d{n}": (today - dt.timedelta(days=10 - n)).isoformat() for n in range(1, 6)}
    days["future"] = (today + dt.timedelta(days=5)).isoformat()
    args = tuple(a.format(**days) for a in args)
    expected = expected.format(**days)
    before = _nothing_changed(loader)
    done = materialize(*args)
    assert done.returncode != 0
    assert expected in done.stdout + done.stderr
    assert _nothing_changed(loader) == before


def test_dwh_up_materialises_every_asset_through_dagster(cfg, loader, instance):
    """What `dwh up` does after starting the stack: two CLI runs, every asset materialised."""
    from dwh_assets.local.materialize import materialize_all

    lines: list[str] = []
    since = loader.execute("SELECT coalesce(max(id), 0) FROM dwh.refresh_log").fetchone()[0]
    materialize_all(cfg, progress=lines.append)
    # pg_cron's own jobs keep refreshing meanwhile: only Dagster's rows are this test's.
    logged = {r[0] for r in loader.execute(
        "SELECT table_name FROM dwh.refresh_log WHERE id > %s AND application = 'dagster'", (since,))}
    assert logged == {s.name for s in catalog.CATALOG} | {m.relation for m in catalog.MARTS}
    today = dt.datetime.now(UTC).date().isoformat()
    for spec in catalog.CATALOG:
        if spec.kind is catalog.Kind.FACT:
            materialized = instance.get_materialized_partitions(key_of(spec.local_table))
            assert {today, cfg.history_start.isoformat()} <= materialized, spec.name
        else:
            assert instance.get_latest_materialization_event(key_of(spec.local_table)) is not None
    for mart in catalog.MARTS:
        assert {today, cfg.history_start.isoformat()} <= instance.get_materialized_partitions(key_of(mart.relation))
    windows = loader.execute(
        "SELECT DISTINCT window_start::date, window_end::date FROM dwh.refresh_log "
        "WHERE id > %s AND window_start IS NOT NULL AND application = 'dagster'",
        (since,)).fetchall()
    assert windows == [(cfg.history_start, dt.datetime.now(UTC).date() + dt.timedelta(days=1))]
    assert any("as one run: done" in line for line in lines)


def test_nightly_schedule_refreshes_the_last_days_of_facts_in_one_run_then_the_marts(cfg, defs, loader, instance):
    today = dt.datetime.now(UTC).date()
    tick = dt.datetime.combine(today, dt.time(2, 30), UTC)
    schedule = defs.resolve_schedule_def("nightly_late_data_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=tick) as context:
        request = schedule.evaluate_tick(context).run_requests[0]
    first = today - dt.timedelta(days=3)
    assert (request.partition_key_range.start, request.partition_key_range.end) == (first.isoformat(), today.isoformat())

    since = loader.execute("SELECT coalesce(max(id), 0) FROM dwh.refresh_log").fetchone()[0]
    result = defs.resolve_job_def("nightly_late_data").execute_in_process(instance=instance, tags=request.tags)
    assert result.success
    logged = loader.execute("SELECT table_name, window_start, window_end FROM dwh.refresh_log "
                            "WHERE id > %s AND application = 'dagster' ORDER BY id",
                            (since,)).fetchall()
    facts = [s.name for s in catalog.CATALOG if s.kind is catalog.Kind.FACT]
    window = _window(first, today)
    marts = [m.relation for m in catalog.MARTS]
    assert sorted(logged) == sorted((t, *window) for t in facts + marts), "facts and marts, one window each"
    last_fact = max(i for i, r in enumerate(logged) if r[0] in facts)
    assert all(i > last_fact for i, r in enumerate(logged) if r[0] in marts), "marts must run after the facts"


def test_a_failed_blocking_check_of_a_copy_blocks_its_mart_in_the_run(cfg, superuser, loader, instance):
    """A duplicated key in dwh.instance_state (a state change the test copies to the day before the
    refreshed one): its blocking check fails and the mart reading it is not built in that run."""
    day = dt.datetime.now(UTC).date() - dt.timedelta(days=5)
    start, _ = _window(day, day)
    loader.execute("SELECT dwh.refresh_instance_state(%s, %s)", _window(day, day))
    row = superuser.execute("SELECT id, instance_id, state, changed_at FROM dwh.instance_state "
                            "WHERE changed_at >= %s AND changed_at < %s ORDER BY id LIMIT 1",
                            (start, start + dt.timedelta(days=1))).fetchone()
    assert row is not None, "the day needs a state change to duplicate"
    superuser.execute("INSERT INTO dwh.instance_state (id, instance_id, state, changed_at) VALUES (%s, %s, %s, %s)",
                      (row[0], row[1], row[2], start - dt.timedelta(hours=1)))
    mart_rows = "SELECT count(*) FROM dwh.refresh_log WHERE table_name = 'mart.instance_state_daily' AND application = 'dagster'"
    before = loader.execute(mart_rows).fetchone()[0]
    try:
        done = materialize("--assets", "dwh/instance_state,mart/instance_state_daily", "--partition", day.isoformat())
        assert done.returncode != 0, "a run with a failed blocking check fails"
        output = done.stdout + done.stderr
        assert "key_is_unique" in output
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(key_of("dwh.instance_state"), "key_is_unique")])
        evaluation = next(iter(record.values())).event.dagster_event.event_specific_data
        assert evaluation.passed is False and evaluation.metadata["duplicated_keys"].value == 1
        assert loader.execute(mart_rows).fetchone()[0] == before, "the mart was not refreshed"
    finally:
        superuser.execute("DELETE FROM dwh.instance_state WHERE id = %s AND changed_at = %s",
                          (row[0], start - dt.timedelta(hours=1)))
