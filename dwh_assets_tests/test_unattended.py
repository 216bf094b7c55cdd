"""Running unattended, against the real stack: the quality gate on pg_cron's path, freshness
when pg_cron stops refreshing a table, and the alerts a local webhook receives.

Nobody calls a refresh here: pg_cron runs the instances copy and the org_daily_usage mart every
minute (their schedules, restored afterwards), and dwh.instance_state's job is deactivated.
The test changes the source and the copy behind pg_cron's back, then waits for what pg_cron
does. Dagster is played as its daemon plays it: the pg_cron sensor's tick, its events stored
in a Dagster instance (``report_runless_asset_event``, what the daemon does with a sensor's
asset events), then the alert sensor's tick, which posts to a real HTTP server on loopback.

1. A trigger drops the new instance's row from dwh.instances: the copy no longer equals its
   source, its blocking check fails, the mart's queued day is held (with the reason) and its
   pg_cron job leaves it alone; Dagster shows both failed checks; one alert each.
2. The trigger then makes the refresh fail: a failed pg_cron refresh, one alert.
3. Without the trigger the next refresh passes: the day is released, the mart's job refreshes
   it with the new instance, and each incident recovers with one message.
4. dwh.instance_state, whose job is inactive, goes stale: red in the health view and in
   Dagster, one alert; reactivated, pg_cron refreshes it and it recovers.
5. A Dagster run that fails (the reader may not refresh) and then one that succeeds.

Each incident is one message, each recovery one, the webhook's secret URL is in no log, and a
message the webhook refused once is delivered on the next tick.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from dwh_assets.local.config import LOADER_ROLE, READER_ROLE, WAREHOUSE_DB
from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.defs.assets import mart_assets
from dwh_assets.warehouse.defs.checks import FRESHNESS, PG_CRON_HEALTH
from dwh_assets.warehouse.defs.metadata import key_of
from dwh_assets.warehouse.defs.partitions import daily_partitions
from dwh_assets.warehouse.defs.resources import WarehouseResource
from dwh_assets.warehouse.quality_gate import HELD_CHECK
from dwh_assets_tests.alert_helpers import Daemon, Receiver
from dwh_assets_tests.tiers import integration_fixture
from dwh_assets_tests.warehouse_helpers import connect_control_plane, run_refresh_jobs_once

UTC = dt.timezone.utc
COPY = catalog.get("instances")
MART = catalog.MART_BY_NAME["org_daily_usage"]
STALE = catalog.get("instance_state")
EVERY_MINUTE = "* * * * *"
PROBE_NAME = "gate-probe"
WAIT = 200  # pg_cron's next minute or two, on a busy machine



def wait_for(what: str, predicate, timeout: float = WAIT, interval: float = 3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@integration_fixture(scope="module")
def receiver():
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _jobs(superuser, names) -> dict[str, tuple[str, bool]]:
    return {r[0]: (r[1], r[2]) for r in superuser.execute(
        "SELECT jobname, schedule, active FROM cron.job WHERE jobname = ANY(%s) AND username = %s",
        (list(names), LOADER_ROLE)).fetchall()}


def _alter(superuser, job: str, **changes) -> None:
    sets = ", ".join(f"{k} := %({k})s" for k in changes)
    superuser.execute(f"SELECT cron.alter_job(jobid, {sets}) FROM cron.job WHERE jobname = %(job)s AND username = %(user)s",
                      {**changes, "job": job, "user": LOADER_ROLE})


class Recorded(logging.Handler):
    """Every log record of the module's tests, at every level: where the webhook's secret must not appear."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(self.format(record))


@pytest.fixture(scope="module")
def logs():
    handler = Recorded()
    loggers = [logging.getLogger(), logging.getLogger("dagster")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler.messages
    for logger, level in zip(loggers, levels):
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="module")
def world(stack, cfg, receiver, logs, tmp_path_factory):
    """Schedules for the test, the probe instance at the control plane, the Daemon; all undone afterwards."""
    url_file = tmp_path_factory.mktemp("alerts") / "webhook-url"
    token = secrets.token_hex(16)
    url_file.write_text(f"http://127.0.0.1:{receiver.server_port}/services/T0/B0/{token}\n")
    url_file.chmod(0o600)
    jobs = (COPY.cron_job_name, MART.cron_job_name, STALE.cron_job_name)
    run_refresh_jobs_once(cfg)
    with stack.postgres.connect(WAREHOUSE_DB) as superuser, dg.instance_for_test() as instance:
        superuser.autocommit = True
        saved = _jobs(superuser, jobs)
        assert set(saved) == set(jobs)
        start_runid = superuser.execute("SELECT coalesce(max(runid), 0) FROM cron.job_run_details").fetchone()[0]
        organization_id = superuser.execute("SELECT organization_id FROM dwh.organizations ORDER BY 1 LIMIT 1").fetchone()[0]
        instance_id = str(uuid.uuid4())
        try:
            _alter(superuser, STALE.cron_job_name, schedule=EVERY_MINUTE, active=False)
            for job in (COPY.cron_job_name, MART.cron_job_name):
                _alter(superuser, job, schedule=EVERY_MINUTE)
            yield {"superuser": superuser, "daemon": Daemon(cfg, instance, url_file, start_runid), "token": token, "output": [],
                   "organization_id": organization_id, "instance_id": instance_id, "start_runid": start_runid}
        finally:
            for job, (schedule, active) in saved.items():
                _alter(superuser, job, schedule=schedule, active=active)
            superuser.execute("DROP TRIGGER IF EXISTS gate_test ON dwh.instances")
            superuser.execute("DROP FUNCTION IF EXISTS public.gate_test_probe()")
            with connect_control_plane(cfg) as cp:
                cp.execute("DELETE FROM public.instances WHERE instance_id = %s", (instance_id,))
            with psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True) as loader:
                loader.execute("SELECT dwh.refresh_instances()")
                loader.execute("SELECT dwh.refresh_pending_mart('org_daily_usage')")


def _probe_trigger(superuser, action: str) -> None:
    """dwh.instances, behind the refresh's back: ``skip`` drops the probe's row, ``fail`` refuses it."""
    body = ("RETURN NULL;" if action == "skip" else
            "RAISE EXCEPTION 'gate test: dwh.instances refuses the probe instance';")
    superuser.execute(f"""CREATE OR REPLACE FUNCTION public.gate_test_probe() RETURNS trigger LANGUAGE plpgsql
                          SET search_path = pg_catalog AS $$ BEGIN IF NEW.name = '{PROBE_NAME}' THEN {body} END IF;
                          RETURN NEW; END $$""")
    superuser.execute("CREATE OR REPLACE TRIGGER gate_test BEFORE INSERT ON dwh.instances FOR EACH ROW "
                      "EXECUTE FUNCTION public.gate_test_probe()")


def _latest_run(superuser, job: str, after: int):
    return superuser.execute(
        "SELECT r.runid, r.status, r.return_message FROM cron.job_run_details r JOIN cron.job j USING (jobid) "
        "WHERE j.jobname = %s AND r.runid > %s AND r.status IN ('succeeded', 'failed') ORDER BY r.runid DESC LIMIT 1",
        (job, after)).fetchone()


def _next_run(superuser, job: str, status: str) -> int:
    """Wait for a run of ``job`` that starts from now on and ends with ``status``; its runid."""
    after = superuser.execute("SELECT coalesce(max(runid), 0) FROM cron.job_run_details").fetchone()[0]
    run = wait_for(f"a {status} run of {job}", lambda: _latest_run(superuser, job, after))
    assert run[1] == status, f"{job}'s run {run[0]} {run[1]}: {run[2]}"
    return run[0]


def _mart_instances_today(conn, organization_id) -> int:
    row = conn.execute("SELECT instances FROM mart.org_daily_usage WHERE organization_id = %s "
                       "AND day = (now() AT TIME ZONE 'UTC')::date", (organization_id,)).fetchone()
    return row[0] if row else 0


def _alerts_about(receiver, subject: str) -> list[str]:
    return [t for t in receiver.texts() if f" {subject}" in t]


def _output(world, capfd) -> str:
    """What the test printed (the sensors' console log included), kept for the module's last check."""
    out, err = capfd.readouterr()
    world["output"].append(out + err)
    return out + err


def test_a_failed_copy_check_holds_its_marts_days_and_alerts_once(world, receiver, cfg, reader_role, capfd):
    su, daemon = world["superuser"], world["daemon"]
    before = _mart_instances_today(su, world["organization_id"])
    _probe_trigger(su, "skip")
    with connect_control_plane(cfg) as cp:
        cp.execute("INSERT INTO public.instances (instance_id, organization_id, name, region, cpu, memory_gb, "
                   "storage_gb, created_at, updated_at) VALUES (%s, %s, %s, 'eu-central-1', 2, 8, 50, now(), now())",
                   (world["instance_id"], world["organization_id"], PROBE_NAME))
    today = su.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]
    held = wait_for("pg_cron's refresh of dwh.instances to fail its gate and hold the mart's day", lambda: su.execute(
        "SELECT held_reason FROM dwh.mart_pending WHERE mart = 'org_daily_usage' AND day = %s AND held_reason IS NOT NULL",
        (today,)).fetchone())
    assert held[0].startswith("dwh.instances: row_count_matches_source failed (local_rows=")
    gate = su.execute("SELECT passed, reason FROM dwh.copy_gate WHERE copy = 'instances'").fetchone()
    assert gate[0] is False and "source_rows=" in gate[1]
    # The mart's pg_cron job runs and leaves the held day alone; the health view shows it to the reader.
    _next_run(su, MART.cron_job_name, "succeeded")
    assert _mart_instances_today(su, world["organization_id"]) == before
    assert su.execute("SELECT held_reason IS NOT NULL FROM dwh.mart_pending WHERE mart = 'org_daily_usage' "
                      "AND day = %s", (today,)).fetchone() == (True,)
    shown = reader_role.execute("SELECT held_days, held, held_reason FROM mart.quality_gate "
                                "WHERE mart = 'org_daily_usage'").fetchone()
    # The reason names the latest failing refresh (pg_cron keeps refreshing every minute).
    assert shown[0] >= 1 and str(today) in shown[1] and shown[2].startswith(held[0].split(" on refresh ")[0])

    receiver.refuse = 1  # the first message is refused once: delivered on the next tick, once
    daemon.tick()
    copy_check = daemon.checks("dwh.instances", "row_count_matches_source")
    assert copy_check and not copy_check[-1].passed
    assert copy_check[-1].metadata["source_rows"].value == copy_check[-1].metadata["local_rows"].value + 1
    mart_check = daemon.checks("mart.org_daily_usage", HELD_CHECK)
    assert mart_check and not mart_check[-1].passed and str(today) in mart_check[-1].metadata["held_days"].value
    assert "row_count_matches_source failed" in mart_check[-1].metadata["reason"].value
    daemon.tick()
    _next_run(su, COPY.cron_job_name, "succeeded")  # fails its gate again: the same incident
    daemon.tick()
    assert receiver.refused == 1
    assert len(_alerts_about(receiver, "dwh/instances row_count_matches_source")) == 1, receiver.texts()
    assert len(_alerts_about(receiver, f"mart/org_daily_usage {HELD_CHECK}")) == 1, receiver.texts()
    assert "alert not delivered, tried again next tick: dwh/instances row_count_matches_source: the alert webhook " \
           "answered HTTP 500" in _output(world, capfd), "the refusal is logged, without the URL"


def test_a_failed_pg_cron_refresh_alerts_once(world, receiver, capfd):
    su, daemon = world["superuser"], world["daemon"]
    _probe_trigger(su, "fail")
    _next_run(su, COPY.cron_job_name, "failed")
    daemon.tick()
    health = daemon.checks("dwh.instances", PG_CRON_HEALTH)
    assert not health[-1].passed and "refuses the probe instance" in health[-1].metadata["reason"].value
    _next_run(su, COPY.cron_job_name, "failed")
    daemon.tick()
    failed = _alerts_about(receiver, f"dwh/instances {PG_CRON_HEALTH}")
    assert len(failed) == 1 and failed[0].startswith(":red_circle: [dwh test] pg_cron refresh failed:"), receiver.texts()
    assert "refuses the probe instance" in failed[0] and "\n" not in failed[0], "the error's first line, not its SQL"
    _output(world, capfd)


def test_a_passing_refresh_releases_the_days_the_marts_job_refreshes_them_and_alerts_recover(world, receiver, cfg, capfd):
    su, daemon = world["superuser"], world["daemon"]
    before = _mart_instances_today(su, world["organization_id"])
    su.execute("DROP TRIGGER gate_test ON dwh.instances")
    _next_run(su, COPY.cron_job_name, "succeeded")
    assert su.execute("SELECT passed FROM dwh.copy_gate WHERE copy = 'instances'").fetchone() == (True,)
    assert su.execute("SELECT count(*) FROM dwh.mart_pending WHERE held_reason IS NOT NULL").fetchone() == (0,)
    assert su.execute("SELECT held_days, held_reason FROM mart.quality_gate WHERE mart = 'org_daily_usage'").fetchone() \
        == (0, "")
    wait_for("the mart's pg_cron job to refresh the released day with the probe instance",
             lambda: _mart_instances_today(su, world["organization_id"]) == before + 1)
    daemon.tick()
    assert daemon.checks("dwh.instances", "row_count_matches_source")[-1].passed
    assert daemon.checks("mart.org_daily_usage", HELD_CHECK)[-1].passed
    assert daemon.checks("dwh.instances", PG_CRON_HEALTH)[-1].passed
    daemon.tick()
    recovered = [t for t in receiver.texts() if t.startswith(":large_green_circle:")]
    for subject in ("dwh/instances row_count_matches_source", f"mart/org_daily_usage {HELD_CHECK}",
                    f"dwh/instances {PG_CRON_HEALTH}"):
        assert len([t for t in recovered if f" {subject} " in t]) == 1, recovered
        assert len(_alerts_about(receiver, subject)) == 2, "one failure, one recovery"
    _output(world, capfd)


def test_a_deactivated_job_makes_its_table_stale_then_recovers(world, receiver, reader_role, capfd):
    su, daemon = world["superuser"], world["daemon"]
    allowed = 2 * dt.timedelta(minutes=1) + STALE.typical_duration  # its job runs every minute while the test runs
    wait_for("dwh.instance_state to be overdue", lambda: reader_role.execute(
        "SELECT late FROM mart.refresh_freshness WHERE table_name = 'instance_state'").fetchone() == (True,),
        timeout=allowed.total_seconds() + 120)
    status = reader_role.execute("SELECT status, active, expected_within FROM mart.refresh_freshness "
                                 "WHERE table_name = 'instance_state'").fetchone()
    assert status == ("late: its pg_cron job is inactive", False, allowed)
    daemon.tick()
    fresh = daemon.checks("dwh.instance_state", FRESHNESS)
    assert not fresh[-1].passed and fresh[-1].metadata["status"].value.endswith("its pg_cron job is inactive")
    daemon.tick()
    stale = _alerts_about(receiver, f"dwh/instance_state {FRESHNESS}")
    assert len(stale) == 1 and stale[0].startswith(":red_circle: [dwh test] stale table:"), receiver.texts()

    _alter(su, STALE.cron_job_name, active=True)
    _next_run(su, STALE.cron_job_name, "succeeded")
    assert reader_role.execute("SELECT status FROM mart.refresh_freshness "
                               "WHERE table_name = 'instance_state'").fetchone() == ("fresh",)
    daemon.tick()
    assert daemon.checks("dwh.instance_state", FRESHNESS)[-1].passed
    recovered = _alerts_about(receiver, f"dwh/instance_state {FRESHNESS}")
    assert len(recovered) == 2 and recovered[1].startswith(":large_green_circle:"), receiver.texts()
    _output(world, capfd)


def test_a_failed_dagster_run_alerts_once_and_recovers(world, receiver, cfg, capfd):
    daemon = world["daemon"]
    (mart,) = [a for a in mart_assets(catalog.PRODUCT, daily_partitions(cfg.history_start))
               if a.key == key_of(catalog.MART_BY_NAME["daily_signups"].relation)]
    today = dt.datetime.now(UTC).date().isoformat()
    for role, succeeds in ((READER_ROLE, False), (READER_ROLE, False), (LOADER_ROLE, True)):
        result = dg.materialize([mart], partition_key=today, instance=daemon.instance, raise_on_error=False,
                                resources={"warehouse": WarehouseResource(dsn=cfg.dsn(WAREHOUSE_DB, role))})
        assert result.success is succeeds
        daemon.tick()
    # dg.materialize's runs name no asset selection: the incident is the job's.
    runs = _alerts_about(receiver, "of __ephemeral_asset_job__")
    assert len(runs) == 2, receiver.texts()
    assert runs[0].startswith(":red_circle: [dwh test] Dagster run failed:") and "permission denied" in runs[0]
    assert runs[1].startswith(":large_green_circle:")
    _output(world, capfd)


MESSAGE = re.compile(r"^:(red_circle|large_green_circle): \[dwh test\] (?:recovered: (.+?) \(|[^:]+: (.+?)\. )")


def test_each_incident_is_one_message_and_one_recovery_and_the_url_is_never_logged(world, receiver, logs, capfd):
    sent = Counter()
    for text in receiver.texts():
        match = MESSAGE.match(text)
        assert match, text
        subject = match[2] or match[3]
        sent[(match[1], re.sub(r"^run \w+ of ", "run of ", subject))] += 1
    assert receiver.paths == {f"/services/T0/B0/{world['token']}"}, "every message went to the configured URL"
    assert sent and all(count == 1 for count in sent.values()), sent
    failures = {subject for kind, subject in sent if kind == "red_circle"}
    assert failures >= {"dwh/instances row_count_matches_source", f"mart/org_daily_usage {HELD_CHECK}",
                        f"dwh/instances {PG_CRON_HEALTH}", f"dwh/instance_state {FRESHNESS}",
                        "run of __ephemeral_asset_job__"}, sent
    assert failures == {subject for kind, subject in sent if kind == "large_green_circle"}, "each one recovered"
    # Nowhere: not in what was printed or logged, not in the cursors, not in the instance's stored tick logs.
    stored = [p.read_text(errors="replace") for p in Path(world["daemon"].instance.root_directory).rglob("*")
              if p.is_file() and p.stat().st_size < 50_000_000]
    printed = [*world["output"], _output(world, capfd)]
    assert "alert sent: " in "".join(printed), "the sensors' log was captured"
    for where in (*printed, *logs, world["daemon"].alert_cursor, world["daemon"].cron_cursor, *stored):
        assert world["token"] not in where
    print("\n".join(receiver.texts()))
