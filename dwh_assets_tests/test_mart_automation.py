"""Fresh marts without a human: a copy refreshed by pg_cron leads to its marts refreshed for
those days by their own pg_cron job, and the sensor reports both to Dagster.

A new instance appears at the control plane today; pg_cron runs the instances refresh (which
queues today for mart.org_daily_usage) and then the mart's job (dwh.refresh_pending_mart).
The test only changes the source and the two jobs' schedules (to every minute, restored
afterwards), then waits: no refresh is called by hand.
"""

from __future__ import annotations

import time
import uuid

import dagster as dg
import pytest

from dwh_assets.local.config import LOADER_ROLE, WAREHOUSE_DB
from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.defs import cron_targets
from dwh_assets.warehouse.defs.cron_sensor import CronCursor, build_cron_sensor
from dwh_assets.warehouse.defs.partitions import daily_partitions
from dwh_assets.warehouse.defs.resources import WarehouseResource
from dwh_assets_tests.warehouse_helpers import connect_control_plane

JOBS = (catalog.get("instances").cron_job_name, catalog.MART_BY_NAME["org_daily_usage"].cron_job_name)
WAIT_SECONDS = 240  # two pg_cron minutes for the copy, then the mart's next minute


def wait_for(what: str, predicate, timeout: float = WAIT_SECONDS):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_a_copy_refreshed_by_pg_cron_refreshes_its_marts_days(cfg, superuser, loader):
    organization_id = loader.execute("SELECT organization_id FROM dwh.organizations ORDER BY 1 LIMIT 1").fetchone()[0]
    instance_id = str(uuid.uuid4())
    count_today = ("SELECT instances FROM mart.org_daily_usage WHERE organization_id = %s "
                   "AND day = (now() AT TIME ZONE 'UTC')::date")
    loader.execute("SELECT dwh.refresh_pending_mart('org_daily_usage')")
    before = (loader.execute(count_today, (organization_id,)).fetchone() or (0,))[0]
    start_runid = superuser.execute("SELECT coalesce(max(runid), 0) FROM cron.job_run_details").fetchone()[0]
    schedules = dict(superuser.execute("SELECT jobname, schedule FROM cron.job WHERE jobname = ANY(%s) AND username = %s",
                                       (list(JOBS), LOADER_ROLE)).fetchall())
    with connect_control_plane(cfg) as cp:
        cp.execute("INSERT INTO public.instances (instance_id, organization_id, name, region, cpu, memory_gb, storage_gb,"
                   " created_at, updated_at) VALUES (%s, %s, 'automation-probe', 'eu-central-1', 4, 16, 100, now(), now())",
                   (instance_id, organization_id))
    try:
        for job in JOBS:
            superuser.execute("SELECT cron.alter_job(jobid, schedule := '* * * * *') FROM cron.job "
                              "WHERE jobname = %s AND username = %s", (job, LOADER_ROLE))
        wait_for("pg_cron to refresh the mart with the new instance",
                 lambda: (loader.execute(count_today, (organization_id,)).fetchone() or (0,))[0] == before + 1)
        runs = dict(superuser.execute(
            "SELECT j.jobname, count(*) FROM cron.job_run_details r JOIN cron.job j USING (jobid) "
            "WHERE r.runid > %s AND j.jobname = ANY(%s) AND r.status = 'succeeded' GROUP BY 1",
            (start_runid, list(JOBS))).fetchall())
        assert set(runs) == set(JOBS), "both refreshes were pg_cron's"
        # The mart's latest refresh came from a run of its own pg_cron job (its backend), not from a person.
        mart_pids = {r[0] for r in superuser.execute(
            "SELECT r.job_pid FROM cron.job_run_details r JOIN cron.job j USING (jobid) WHERE r.runid > %s "
            "AND j.jobname = %s", (start_runid, JOBS[1])).fetchall()}
        latest = loader.execute("SELECT backend_pid FROM dwh.refresh_log WHERE table_name = 'mart.org_daily_usage' "
                                "AND window_start IS NOT NULL ORDER BY id DESC LIMIT 1").fetchone()[0]
        assert latest in mart_pids

        # What Dagster shows: the sensor reports the mart's refresh of today as a partition materialization.
        def mart_reported():
            time.sleep(1)
            sensor = build_cron_sensor(cron_targets(), daily_partitions(cfg.history_start))
            with dg.DagsterInstance.ephemeral() as instance:
                context = dg.build_sensor_context(
                    instance=instance, cursor=CronCursor(runid=start_runid).dump(),
                    resources={"warehouse": WarehouseResource(dsn=cfg.dsn(WAREHOUSE_DB, LOADER_ROLE))})
                result = sensor(context)
            return [e for e in result.asset_events if isinstance(e, dg.AssetMaterialization)
                    and e.asset_key == dg.AssetKey(["mart", "org_daily_usage"])]
        reported = wait_for("the sensor to see the mart job's committed run", mart_reported, timeout=90)
        assert {e.partition for e in reported} >= {time.strftime("%Y-%m-%d", time.gmtime())}
    finally:
        for job, schedule in schedules.items():
            superuser.execute("SELECT cron.alter_job(jobid, schedule := %s) FROM cron.job WHERE jobname = %s "
                              "AND username = %s", (schedule, job, LOADER_ROLE))
        with connect_control_plane(cfg) as cp:
            cp.execute("DELETE FROM public.instances WHERE instance_id = %s", (instance_id,))
        loader.execute("SELECT dwh.refresh_instances()")
        loader.execute("SELECT dwh.refresh_pending_mart('org_daily_usage')")
