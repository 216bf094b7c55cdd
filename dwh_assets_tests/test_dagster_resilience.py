"""Dagster restarts and a compressed soak, on a throwaway stack of their own.

Restarting Dagster and breaking sources would disturb the suite's shared stack, so this
module starts its own. There the catalog jobs ``dwh:refresh_instances`` and
``dwh:refresh_organizations`` run every minute, and the daemon evaluates the real
``pg_cron_runs`` sensor every few seconds (``DWH_SENSOR_INTERVAL_SECONDS``): pg_cron runs,
Dagster runs and direct refreshes of the same tables overlap throughout the module.

- soak: a few hundred refreshes (direct SQL calls as the loader, in-process Dagster runs
  and a few ``dg launch --assets`` runs), in bursts of concurrent calls of the same
  table, while Clerk answers 5xx / 429 / malformed pages or the control plane is
  unreachable at random. Afterwards every copy equals its source, every successful refresh
  has exactly one ``dwh.refresh_log`` row (failed ones none), and every successful Dagster
  run has its materializations (failed ones none). The seed is printed; ``DWH_SOAK_SEED``
  replays the same plan and fault sequence.
- restarts: the daemon and the webserver are stopped while pg_cron runs accumulate, then
  started again. Read from Dagster's Postgres storage, where the sensor's cursor lives:
  every succeeded pg_cron run since the sensor's first cursor is materialised exactly once,
  and no other run is.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import shutil
import subprocess
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import dagster as dg
import psycopg
import pytest
from dagster._core.scheduler.instigation import InstigatorType
from psycopg import sql

from dwh_assets.warehouse import catalog
from dwh_assets.local.config import DAGSTER_DB, LOADER_ROLE, REPO_ROOT, WAREHOUSE_DB, load_config
from dwh_assets.warehouse.defs import CodeLocationSettings, build_definitions, cron_targets
from dwh_assets.warehouse.defs.assets import key_of
from dwh_assets.warehouse.defs.cron_sensor import CronCursor
from dwh_assets.warehouse.defs.settings import SENSOR_INTERVAL_SECONDS
from dwh_assets.warehouse.defs.resources import WarehouseResource
from dwh_assets.local.generator import METRIC_NAMES
from dwh_assets.local.dagster import venv_bin
from dwh_assets.local.local_stack import LocalStack
from dwh_assets_tests.conftest import make_home, stack_env
from dwh_assets_tests.fault_helpers import FAST_READER_ENV, reader_env, refresh, wait_for
from dwh_assets_tests.warehouse_helpers import (
    ClerkApi,
    connect_control_plane,
    fact_checksum,
    instances_checksum,
    local_samples,
    primary_email,
    prometheus_samples,
)
from dwh_assets_tests.tiers import integration_fixture

UTC = dt.timezone.utc
SENSOR = "pg_cron_runs"
EVERY_MINUTE_JOBS = ("dwh:refresh_instances", "dwh:refresh_organizations")
SOAK_APP = "dwh-soak"  # application_name of the soak's direct calls, logged in dwh.refresh_log
DIMENSIONS = [s.name for s in catalog.CATALOG if s.kind is catalog.Kind.DIMENSION]
FACTS = [s.name for s in catalog.CATALOG if s.kind is catalog.Kind.FACT]


@integration_fixture(scope="module")
def own_stack():
    """A full stack on free ports; the env points at it (as the ``stack`` fixture does) until teardown."""
    home = make_home("dwh-resilience-")
    saved = dict(os.environ)
    os.environ.update(stack_env(home))
    os.environ[SENSOR_INTERVAL_SECONDS.env_var_name] = "5"  # the daemon's processes inherit it
    local = None
    try:
        cfg = load_config(create=True)
        os.environ.update(cfg.client_env())
        local = LocalStack(cfg)
        local.up(dagster=True)
        with local.postgres.connect(WAREHOUSE_DB) as su:
            for job in EVERY_MINUTE_JOBS:
                su.execute("SELECT cron.alter_job(jobid, schedule := '* * * * *') FROM cron.job WHERE jobname = %s", (job,))
        yield local
    finally:
        if local is not None:
            local.down()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(home, ignore_errors=True)


def today() -> dt.date:
    return dt.datetime.now(UTC).date()


def midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), UTC)


# ----- the soak ------------------------------------------------------------------------------

BURSTS = 80  # x 3 calls of one table, submitted together to 3 threads
CLI_RUNS = 3
WEIGHTS = {"users": 3, "organizations": 3, "organization_memberships": 2, "instances": 3,
           "events": 3, "instance_state": 2, "metrics": 1}
# Past days only: the stack's own pg_cron jobs refresh yesterday and today.
FACT_DAYS = [today() - dt.timedelta(days=n) for n in (5, 4, 3, 2)]
# A failure is acceptable only when it names the source that was broken.
SOURCE_ERROR = re.compile(r"Clerk|control_plane")
FAULTS = {
    "clerk 500": {"status": 500},
    "clerk 503 on users after one page": {"status": 503, "fail_after_page": 1, "path": "/v1/users"},
    "clerk 429 storm": {"status": 429, "retry_after": 1},
    "clerk rate limit 2/s": {"rate_limit": 2, "retry_after": 1},
    "clerk malformed json": {"malformed_json": True},
    "control plane unreachable": None,
}


@dataclass(frozen=True)
class Call:
    table: str
    via: str  # "sql" (the loader calls the routine), "dagster" (dg.materialize) or "cli"
    first: dt.date
    last: dt.date

    @property
    def partitions(self) -> list[str | None]:
        """The asset partitions a run of this call materialises (dimensions are not partitioned)."""
        if self.table not in FACTS:
            return [None]
        return [(self.first + dt.timedelta(days=i)).isoformat() for i in range((self.last - self.first).days + 1)]

    @property
    def args(self) -> tuple:
        if self.table in FACTS:
            return midnight(self.first), midnight(self.last + dt.timedelta(days=1))
        return (self.first,)


@dataclass
class Outcome:
    call: Call
    ok: bool
    log_id: int | None = None  # direct calls: the refresh_log row the routine returned
    run_ids: list[str] = field(default_factory=list)  # Dagster calls
    error: str = ""


def in_process_instance() -> dg.DagsterInstance:
    """The stack's instance (its Postgres storage) without Dagster's compute-log capture, for the
    soak's in-process runs. The capture mirrors the process' stdout and stderr through `tail -F`
    subprocesses; under load, a run on a worker thread was seen never to return from stopping
    them. The soak checks the runs' events and materializations in storage, not captured output;
    the stack's own runs (daemon, `dg launch`) keep their compute logs."""
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(os.environ["DAGSTER_HOME"], overrides={
        "compute_logs": {"module": "dagster._core.storage.noop_compute_log_manager", "class": "NoOpComputeLogManager"}}))


def soak_plan(rng: random.Random) -> list[Call]:
    calls = []
    # Every table gets a burst; then the weights decide.
    tables = rng.sample(list(WEIGHTS), len(WEIGHTS))
    tables += rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()), k=BURSTS - len(tables))
    for table in tables:
        for _ in range(3):
            via = "dagster" if rng.random() < 0.2 else "sql"
            if table in FACTS:
                first = rng.choice(FACT_DAYS)
                last = min(first + dt.timedelta(days=rng.choice((0, 0, 1))), FACT_DAYS[-1])
            else:
                first = last = today()
            calls.append(Call(table, via, first, last))
    for position in sorted(rng.sample(range(len(calls)), CLI_RUNS), reverse=True):
        # The CLI also runs the asset's checks: only facts', which read local tables, so a source
        # fault fails the run exactly when it fails the refresh.
        first = rng.choice(FACT_DAYS[:-1])
        calls.insert(position, Call(rng.choice(("events", "instance_state")), "cli", first, first + dt.timedelta(days=1)))
    return calls


class Soak:
    """Runs calls from worker threads; Dagster runs one at a time (they redirect the process' stdout)."""

    def __init__(self, cfg, instance: dg.DagsterInstance):
        self.cfg = cfg
        self.instance = instance
        self.defs = build_definitions(CodeLocationSettings(cfg.history_start))
        self.warehouse = WarehouseResource(dsn=cfg.dsn(WAREHOUSE_DB, LOADER_ROLE))
        self.dagster_lock = threading.Lock()
        self.local = threading.local()
        self.connections: list[psycopg.Connection] = []

    def _conn(self) -> psycopg.Connection:
        conn = getattr(self.local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(self.cfg.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True, application_name=SOAK_APP)
            conn.execute("SET statement_timeout = '120s'")  # a guard: a hung refresh fails the soak
            self.local.conn = conn
            self.connections.append(conn)
        return conn

    def run(self, call: Call) -> Outcome:
        if call.via == "sql":
            try:
                return Outcome(call, True, log_id=refresh(self._conn(), f"refresh_{call.table}", *call.args)["id"])
            except psycopg.Error as e:
                return Outcome(call, False, error=f"{e} {e.diag.message_detail or ''}")
        with self.dagster_lock:
            return self._dagster(call) if call.via == "dagster" else self._cli(call)

    def _dagster(self, call: Call) -> Outcome:
        asset = self.defs.get_assets_def(key_of(f"dwh.{call.table}"))
        tags = {}
        if call.partitions == [None]:
            result = dg.materialize([asset], instance=self.instance, resources={"warehouse": self.warehouse},
                                    raise_on_error=False)
            errors = " ".join(e.step_failure_data.error.to_string() for e in result.get_step_failure_events()
                              if e.step_failure_data.error)
            return Outcome(call, result.success, run_ids=[result.run_id], error=errors)
        if len(call.partitions) > 1:
            tags = {"dagster/asset_partition_range_start": call.partitions[0],
                    "dagster/asset_partition_range_end": call.partitions[-1]}
        result = dg.materialize([asset], instance=self.instance, resources={"warehouse": self.warehouse},
                                partition_key=None if tags else call.partitions[0], tags=tags, raise_on_error=False)
        errors = " ".join(e.step_failure_data.error.to_string() for e in result.get_step_failure_events()
                          if e.step_failure_data.error)
        return Outcome(call, result.success, run_ids=[result.run_id], error=errors)

    def _cli(self, call: Call) -> Outcome:
        before = set(self.instance.get_run_ids())
        partition = [] if call.partitions == [None] else ["--partition-range", f"{call.partitions[0]}...{call.partitions[-1]}"]
        done = subprocess.run(
            [venv_bin("dg"), "launch", "-m", "dwh_assets.definitions", "--assets", f"dwh/{call.table}",
             *partition],
            cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300, check=False,
        )
        new = sorted(set(self.instance.get_run_ids()) - before)
        # The whole stderr: the error names its source above Dagster's stack trace, which alone can exceed 2,000 characters.
        return Outcome(call, done.returncode == 0, run_ids=new, error=done.stderr if done.returncode else "")

    def close(self) -> None:
        for conn in self.connections:
            conn.close()


class FaultInjector(threading.Thread):
    """Healthy, then one fault (cycling through every kind in a seeded order), then healthy again."""

    def __init__(self, cfg, su: psycopg.Connection, rng: random.Random):
        super().__init__(name="fault-injector", daemon=True)
        self.clerk = ClerkApi(cfg)
        self.su = su
        self.rng = rng
        self.stop = threading.Event()
        self.injected: Counter = Counter()
        self.port = next(o.split("=", 1)[1] for o in su.execute(
            "SELECT srvoptions FROM pg_foreign_server WHERE srvname = 'control_plane'").fetchone()[0] if o.startswith("port="))

    def _control_plane_port(self, port: str) -> None:
        self.su.execute(sql.SQL("ALTER SERVER control_plane OPTIONS (SET port {})").format(sql.Literal(port)))

    def run(self) -> None:
        kinds: list[str] = []
        while not self.stop.wait(self.rng.uniform(0.3, 1.5)):
            if not kinds:
                kinds = self.rng.sample(list(FAULTS), len(FAULTS))
            kind = kinds.pop()
            try:
                if FAULTS[kind] is None:
                    self._control_plane_port("1")  # nothing listens on port 1: connection refused
                else:
                    self.clerk.request("POST", "/_admin/faults", FAULTS[kind])
                self.injected[kind] += 1
                self.stop.wait(self.rng.uniform(0.5, 2.0))
            finally:
                self.heal()

    def heal(self) -> None:
        self.clerk.request("DELETE", "/_admin/faults")
        self._control_plane_port(self.port)


def assert_copies_equal_sources(cfg, loader: psycopg.Connection) -> None:
    clerk = ClerkApi(cfg)
    users, _ = clerk.list_all("users")
    assert set(loader.execute(
        "SELECT user_id, first_name, last_name, email, (extract(epoch FROM created_at) * 1000)::bigint,"
        " (extract(epoch FROM updated_at) * 1000)::bigint FROM dwh.users").fetchall()) == {
        (u["id"], u.get("first_name"), u.get("last_name"), primary_email(u), u["created_at"], u["updated_at"])
        for u in users}, "dwh.users differs from Clerk"
    orgs, _ = clerk.list_all("organizations")
    with connect_control_plane(cfg) as cp:
        plans = dict(cp.execute("SELECT organization_id, plan FROM public.organizations").fetchall())
        assert instances_checksum(loader, "dwh.instances") == instances_checksum(cp, "public.instances")
        start, end = midnight(FACT_DAYS[0]), midnight(FACT_DAYS[-1] + dt.timedelta(days=1))
        for name in ("events", "instance_state"):
            local = fact_checksum(loader, name, start, end, source=False)
            assert local[0] > 0 and local == fact_checksum(cp, name, start, end, source=True), f"dwh.{name} differs"
    assert set(loader.execute(
        "SELECT organization_id, name, slug, plan, (extract(epoch FROM created_at) * 1000)::bigint FROM dwh.organizations"
    ).fetchall()) == {(o["id"], o["name"], o.get("slug") or None, plans.get(o["id"]), o["created_at"]) for o in orgs}
    memberships, _ = clerk.list_all("organization_memberships")
    assert set(loader.execute("SELECT organization_id, user_id, role FROM dwh.organization_memberships").fetchall()) == {
        (m["organization"]["id"], m["public_user_data"]["user_id"], m["role"]) for m in memberships}
    for name in DIMENSIONS:
        assert snapshot_difference(loader, name) == 0, f"today's dwh.{name}_snapshot differs from dwh.{name}"
    step = int(loader.execute("SELECT value FROM dwh.settings WHERE key = 'metrics.step_seconds'").fetchone()[0])
    for metric in METRIC_NAMES:
        local = local_samples(loader, metric, start, end)
        assert local and len(local) == len(set(local)), f"duplicate {metric} samples"
        assert set(local) == prometheus_samples(cfg, metric, start, end, step), f"dwh.metrics differs for {metric}"


def snapshot_difference(conn: psycopg.Connection, name: str) -> int:
    """Rows in dwh.<name> or in its snapshot of today, but not in both (in the snapshot's columns: no personal ones)."""
    cols = conn.execute("SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute WHERE attrelid = %s::regclass"
                        " AND attnum > 0 AND NOT attisdropped AND attname <> 'snapshot_day'", (f"dwh.{name}_snapshot",)).fetchone()[0]
    columns = sql.SQL(", ").join(map(sql.Identifier, cols))
    current = sql.SQL("SELECT {} FROM {}").format(columns, sql.Identifier("dwh", name))
    snap = sql.SQL("SELECT {} FROM {} WHERE snapshot_day = %(day)s").format(columns, sql.Identifier("dwh", f"{name}_snapshot"))
    query = sql.SQL("SELECT (SELECT count(*) FROM ({a} EXCEPT ALL {b}) x) + (SELECT count(*) FROM ({b} EXCEPT ALL {a}) y)"
                    ).format(a=current, b=snap)
    return conn.execute(query, {"day": today()}).fetchone()[0]


def run_materializations(instance: dg.DagsterInstance, run_id: str) -> list[tuple[str, str | None, int]]:
    """(table, partition, refresh_log_id) of every materialization a run stored."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=1000).records
    out = []
    for record in records:
        event = record.event_log_entry.dagster_event
        out.append((event.asset_key.path[-1], event.partition,
                    record.asset_materialization.metadata["refresh_log_id"].value))
    return out


def test_soak_with_faults_and_concurrency_loses_and_doubles_nothing(own_stack):
    seed = int(os.environ.get("DWH_SOAK_SEED") or random.SystemRandom().randrange(2**32))
    print(f"soak seed: {seed} (DWH_SOAK_SEED={seed} replays the plan and the fault sequence)")
    cfg = own_stack.cfg
    plan = soak_plan(random.Random(seed))
    initial = [Call(name, "sql", today(), today()) for name in DIMENSIONS] + \
              [Call(name, "sql", FACT_DAYS[0], FACT_DAYS[-1]) for name in FACTS]
    with own_stack.postgres.connect(WAREHOUSE_DB) as su, in_process_instance() as instance, \
            psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True) as loader, \
            reader_env(cfg, **FAST_READER_ENV):
        since = loader.execute("SELECT coalesce(max(id), 0) FROM dwh.refresh_log").fetchone()[0]
        soak = Soak(cfg, instance)
        injector = FaultInjector(cfg, su, random.Random(seed + 1))
        try:
            outcomes = [soak.run(call) for call in initial]  # every copy starts equal to its source
            assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
            injector.start()
            with ThreadPoolExecutor(max_workers=3) as pool:
                outcomes += list(pool.map(soak.run, plan))
        finally:
            injector.stop.set()
            injector.join(timeout=30)
            injector.heal()
            soak.close()

        by = Counter((o.call.table, o.call.via, o.ok) for o in outcomes)
        print("faults injected:", dict(injector.injected))
        for table in WEIGHTS:
            print(f"  {table:26} " + "  ".join(f"{via} {by[table, via, True]} ok/{by[table, via, False]} failed"
                                                for via in ("sql", "dagster", "cli")))

        # Every failure names the source that was broken: no deadlock, no duplicate key, no lock timeout.
        failures = [o for o in outcomes if not o.ok]
        unexplained = [(o.call, o.error[:500]) for o in failures if not SOURCE_ERROR.search(o.error)]
        assert not unexplained, unexplained
        assert any("Clerk" in o.error for o in failures) and any("control_plane" in o.error for o in failures), \
            "the soak must have hit both kinds of source fault"
        assert set(injector.injected) == set(FAULTS)
        for table in WEIGHTS:
            assert by[table, "sql", True] + by[table, "dagster", True] + by[table, "cli", True] > 1, table

        # Direct calls: exactly the rows the successful calls returned, one each; none for a failed call.
        logged = loader.execute("SELECT id, table_name, application FROM dwh.refresh_log WHERE id > %s", (since,)).fetchall()
        soak_rows = {row[0]: row[1] for row in logged if row[2] == SOAK_APP}
        direct_ok = [o for o in outcomes if o.call.via == "sql" and o.ok]
        assert sorted(soak_rows) == sorted(o.log_id for o in direct_ok)
        assert Counter(soak_rows.values()) == Counter(o.call.table for o in direct_ok)

        # Dagster runs: a successful run stored one materialization per partition of its one refresh,
        # a failed run none; together they name exactly Dagster's refresh_log rows.
        dagster_rows = {row[0]: row[1] for row in logged if row[2] == "dagster"}
        materialized_logs: list[int] = []
        materializations = expected = 0
        for o in (o for o in outcomes if o.call.via != "sql"):
            assert len(o.run_ids) == 1, (o.call, o.run_ids)
            run = instance.get_run_by_id(o.run_ids[0])
            assert (run.status == dg.DagsterRunStatus.SUCCESS) == o.ok, (o.call, run.status)
            # The call's own table; a run also records what the same refresh wrote (snapshot, series).
            stored = [m for m in run_materializations(instance, o.run_ids[0]) if m[0] == o.call.table]
            materializations += len(stored)
            if not o.ok:
                assert stored == [], (o.call, o.error[:300])
                continue
            expected += len(o.call.partitions)
            assert sorted(p for _t, p, _l in stored) == o.call.partitions, o.call
            log_ids = {log_id for _t, _p, log_id in stored}
            assert len(log_ids) == 1 and {t for t, _p, _l in stored} == {o.call.table}, (o.call, stored)
            materialized_logs += log_ids
        assert materializations == expected
        assert sorted(materialized_logs) == sorted(dagster_rows), "Dagster materializations vs refresh_log rows"
        assert Counter(dagster_rows[i] for i in materialized_logs) == \
            Counter(o.call.table for o in outcomes if o.call.via != "sql" and o.ok)

        waited = loader.execute("SELECT count(*) FROM dwh.refresh_log WHERE id > %s AND lock_wait_ms > 1", (since,)).fetchone()[0]
        print(f"{len(outcomes)} refreshes, {len(failures)} failed; {waited} waited for a concurrent refresh's lock")

        assert_copies_equal_sources(cfg, loader)


# ----- Dagster restarts ----------------------------------------------------------------------


def sensor_state(instance: dg.DagsterInstance):
    states = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR) if s.name == SENSOR]
    return states[0] if states else None


def stored_cursor(instance: dg.DagsterInstance) -> CronCursor | None:
    state = sensor_state(instance)
    raw = state.instigator_data.cursor if state is not None and state.instigator_data is not None else None
    return CronCursor.parse(raw) if raw else None


def first_cursor(instance: dg.DagsterInstance) -> CronCursor | None:
    """The cursor the sensor's first tick stored."""
    state = sensor_state(instance)
    if state is None:
        return None
    ticks = sorted(instance.get_ticks(state.instigator_origin_id, state.selector_id), key=lambda t: t.tick_id)
    return next((CronCursor.parse(t.cursor) for t in ticks if t.cursor), None)


def reported_runs(instance: dg.DagsterInstance) -> Counter:
    """(pg_cron runid, partition) of every materialization the sensor reported, with how often."""
    seen: Counter = Counter()
    for key in {target.asset_key for target in cron_targets().values()}:
        cursor = None
        while True:
            page = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1000, cursor=cursor)
            for record in page.records:
                meta = record.asset_materialization.metadata
                if "pg_cron_runid" in meta:
                    seen[meta["pg_cron_runid"].value, record.partition_key] += 1
            if not page.has_more:
                break
            cursor = page.cursor
    return seen


def cron_runs(su: psycopg.Connection, after: int) -> dict[int, tuple[str, str, bool]]:
    """runid -> (job, status, ended) of the runs after ``after`` of the jobs the sensor reports."""
    rows = su.execute(
        "SELECT r.runid, j.jobname, r.status, r.status IN ('succeeded', 'failed') AND NOT EXISTS"
        " (SELECT 1 FROM pg_stat_activity a WHERE a.pid = r.job_pid) FROM cron.job_run_details r"
        " JOIN cron.job j USING (jobid) WHERE r.runid > %s AND j.jobname = ANY(%s)", (after, list(cron_targets()))).fetchall()
    return {runid: (job, status, ended) for runid, job, status, ended in rows}


def restart_dagster(stack: LocalStack) -> None:
    stack.webserver.start()
    stack.daemon.start()


def test_dagster_restart_neither_repeats_nor_misses_a_pg_cron_run(own_stack):
    with own_stack.postgres.connect(WAREHOUSE_DB) as su, own_stack.postgres.connect(DAGSTER_DB) as dagster_db, \
            dg.DagsterInstance.get() as instance:
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        first = wait_for(lambda: first_cursor(instance), 120, "the daemon's first tick of the pg_cron sensor")
        wait_for(lambda: any(runid > first.runid for runid, _ in reported_runs(instance)), 180,
                 "a pg_cron run reported by the daemon's sensor")

        own_stack.daemon.stop()
        own_stack.webserver.stop()
        try:
            at_stop = stored_cursor(instance)
            reported_at_stop = reported_runs(instance)

            def unread_runs():
                runs = {r: v for r, v in cron_runs(su, at_stop.runid).items() if v[1] == "succeeded" and v[2]}
                return runs if len(runs) >= 3 else None

            unread = wait_for(unread_runs, 200, "three pg_cron runs while Dagster is down", interval=2)
            # Nothing read them: the cursor and the reported runs are as the daemon left them.
            assert stored_cursor(instance) == at_stop
            assert reported_runs(instance) == reported_at_stop
        finally:
            restart_dagster(own_stack)

        def caught_up():
            cursor = stored_cursor(instance)
            reported = {runid for runid, _ in reported_runs(instance)}
            return cursor.runid >= max(unread) and set(unread) <= reported and not set(unread) & set(cursor.open_runs)

        wait_for(caught_up, 180, "the restarted daemon's sensor to read the runs it missed", interval=2)

        # Pause the jobs and let the sensor judge their last runs: then the history is closed.
        jobs = list(cron_targets())
        su.execute("SELECT cron.alter_job(jobid, active := false) FROM cron.job WHERE jobname = ANY(%s)", (jobs,))
        try:
            def settled():
                runs = cron_runs(su, first.runid)
                cursor = stored_cursor(instance)
                done = all(ended for _job, _status, ended in runs.values())
                return (runs, cursor) if done and cursor.runid >= max(runs) and not set(runs) & set(cursor.open_runs) \
                    else None

            runs, cursor = wait_for(settled, 150, "every pg_cron run to end and be judged by the sensor", interval=2)
            reported = reported_runs(instance)
        finally:
            su.execute("SELECT cron.alter_job(jobid, active := true) FROM cron.job WHERE jobname = ANY(%s)", (jobs,))

        assert [key for key, count in reported.items() if count > 1] == [], "runs reported twice"
        succeeded = {runid for runid, (_job, status, _ended) in runs.items() if status == "succeeded"}
        reported_ids = {runid for runid, _partition in reported if runid > first.runid}
        assert reported_ids == succeeded, (
            f"missed {sorted(succeeded - reported_ids)}, reported but not succeeded {sorted(reported_ids - succeeded)}")
        assert set(unread) <= succeeded and len(succeeded) > len(unread)
        print(f"{len(runs)} pg_cron runs since runid {first.runid}: {len(succeeded)} succeeded, each reported once; "
              f"{len(unread)} of them ran while Dagster was down")

        # The cursor lives in Dagster's Postgres storage (the instigators table), as the API reads it.
        selector = sensor_state(instance).selector_id
        body = json.loads(dagster_db.execute("SELECT instigator_body FROM instigators WHERE selector_id = %s",
                                             (selector,)).fetchone()[0])
        assert CronCursor.parse(body["job_specific_data"]["cursor"]) == stored_cursor(instance)
        assert stored_cursor(instance).runid >= max(runs)
