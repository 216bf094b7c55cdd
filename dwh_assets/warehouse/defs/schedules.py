"""The nightly late-data schedule: the last N days of every fact table as one range run,
then the marts, in the same run (facts first: the marts depend on them)."""


import datetime as dt

import dagster as dg

from dwh_assets.warehouse.catalog import PRODUCT, Catalog
from dwh_assets.warehouse.defs.assets import fact_keys, mart_keys

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def nightly_job(days: int, entries: Catalog = PRODUCT):
    # The partitions are the selected facts' (one definition shared by every copy).
    return dg.define_asset_job(
        "nightly_late_data",
        selection=dg.AssetSelection.assets(*fact_keys(entries), *mart_keys(entries)),
        description=f"Re-materialise the last {days} days of fact partitions (one range run), then the marts.",
    )


def range_request(first: dt.date, last: dt.date, run_key: str | None = None) -> dg.RunRequest:
    return dg.RunRequest(run_key=run_key, tags={RANGE_START_TAG: first.isoformat(), RANGE_END_TAG: last.isoformat()})


def nightly_schedule(job, history_start: dt.date, days: int, cron: str) -> dg.ScheduleDefinition:
    @dg.schedule(job=job, cron_schedule=cron, execution_timezone="UTC",
                 default_status=dg.DefaultScheduleStatus.RUNNING, name="nightly_late_data_schedule")
    def nightly(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        # The night's run covers the N days up to and including the day that just ended... and today.
        today = context.scheduled_execution_time.astimezone(dt.timezone.utc).date()
        first = max(history_start, today - dt.timedelta(days=days))
        return range_request(first, today, run_key=f"nightly-{today.isoformat()}")

    return nightly
