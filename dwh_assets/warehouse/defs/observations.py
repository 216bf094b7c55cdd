"""Observations of what Dagster never builds: sources, plain views, the refresh log, pg_cron's
history and the dashboards, so none of them reads "never materialized" in the graph.

The sensor ``warehouse_observations`` records an ``AssetObservation`` of each such asset when
something it depends on changed since its last tick, judged by ``dwh.refresh_log`` (every
refresh, pg_cron's or Dagster's, writes a row) and pg_cron's newest run:

- a **source** foreign table: when a copy last read it, which copy, and (its copy's primary
  source) how many rows that refresh read: reading a source again only to count it would be a
  second trip to Clerk or Prometheus;
- a **plain view**, the refresh log, pg_cron's history: its row count and columns as the
  database has them now;
- a **dashboard**: the relations its charts read that changed, and their latest refresh.

Each observation carries a data version (the newest ``dwh.refresh_log`` id behind it), which
the asset page shows. The cursor is the last refresh-log id and pg_cron run seen; the first
tick observes everything. It runs as often as the pg_cron sensor (``DWH_SENSOR_INTERVAL_SECONDS``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import dagster as dg
import psycopg

from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.defs import metadata as md
from dwh_assets.warehouse.defs.metadata import key_of
from dwh_assets.warehouse.defs.resources import WarehouseResource

NAME = "warehouse_observations"
DATA_VERSION_TAG = "dagster/data_version"
REFRESH_LOG = catalog.REFRESH_LOG
CRON_HISTORY = catalog.CRON_HISTORY

# The newest refresh of each table since a log id (the first tick: since 0, every table's latest).
LATEST_REFRESHES = """
SELECT DISTINCT ON (table_name) id, table_name, finished_at, rows_source, window_start, window_end, snapshot_day
FROM dwh.refresh_log WHERE id > %s ORDER BY table_name, id DESC
"""
# pg_cron's run history as the loader sees it (its own jobs' runs: pg_cron's row-level security).
CRON_RUNS = """
SELECT coalesce(max(runid), 0) AS runid, count(*) AS runs, max(start_time) AS latest_start,
       count(*) FILTER (WHERE status = 'failed') AS failed
FROM cron.job_run_details
"""


@dataclass
class ObservationCursor:
    refresh_log_id: int = 0
    cron_runid: int = 0

    @classmethod
    def parse(cls, raw: str | None) -> ObservationCursor:
        return cls(**json.loads(raw)) if raw else cls()

    def dump(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


@dataclass
class Dependents:
    """What depends on what, from the catalog and the dashboards: who to observe after a change."""

    entries: catalog.Catalog
    dashboards: dict[dg.AssetKey, tuple[str, ...]] = field(default_factory=dict)

    def changed_relations(self, log_tables: Iterable[str]) -> set[str]:
        """The relations that refreshes of these ``dwh.refresh_log`` table names wrote."""
        by_log = {entry.log_table: entry for entry in self.entries.refreshed()}
        changed = {REFRESH_LOG}
        for name in log_tables:
            entry = by_log.get(name)
            if entry is not None:
                changed |= {entry.relation, *(t.relation for t in entry.tables)}
        return changed

    def views_reading(self, changed: set[str]) -> list[catalog.ViewSpec]:
        """Plain views over ``changed``, directly or through other views (``changed`` grows with them)."""
        found: list[catalog.ViewSpec] = []
        for view in self.entries.all_views():  # ordered: a view after the views it reads
            if view.relation in changed or set(view.reads) & changed:
                changed.add(view.relation)
                if view in self.entries.views:
                    found.append(view)
        return found

    def dashboards_reading(self, changed: set[str]) -> dict[dg.AssetKey, list[str]]:
        return {key: sorted(set(reads) & changed) for key, reads in self.dashboards.items() if set(reads) & changed}


def source_observations(entries: catalog.Catalog, refreshes: dict[str, dict[str, Any]]) -> list[dg.AssetObservation]:
    """Each source, as its copy's newest refresh read it."""
    events = []
    for spec in entries.tables:
        log = refreshes.get(spec.log_table)
        if log is None:
            continue
        for index, source in enumerate(spec.sources):
            meta: dict[str, Any] = {"last_read_at": dg.MetadataValue.timestamp(log["finished_at"]),
                                    "read_by": spec.local_table, "refresh_log_id": int(log["id"])}
            if index == 0 and log["rows_source"] is not None:
                what = "rows of the window read" if log["window_start"] is not None else "rows read (the whole source)"
                meta[f"{what} by the last refresh"] = dg.MetadataValue.int(int(log["rows_source"]))
            if log["window_start"] is not None:
                meta["window"] = f"[{log['window_start'].isoformat()}, {log['window_end'].isoformat()})"
            events.append(dg.AssetObservation(
                asset_key=key_of(source), description=f"read by the refresh of {spec.local_table}",
                metadata=meta, tags={DATA_VERSION_TAG: str(log["id"])}))
    return events


def relation_observation(conn: psycopg.Connection, relation: str, version: int, extra: dict[str, Any] | None = None,
                         description: str | None = None) -> dg.AssetObservation:
    """A relation's row count and columns as the database has them now."""
    return dg.AssetObservation(
        asset_key=key_of(relation), description=description,
        metadata={md.ROW_COUNT: dg.MetadataValue.int(md.count_rows(conn, relation)),
                  md.COLUMN_SCHEMA: md.column_schema(conn, relation), **(extra or {})},
        tags={DATA_VERSION_TAG: str(version)})


def evaluate_observations(warehouse: WarehouseResource, dependents: Dependents,
                          raw_cursor: str | None) -> tuple[list[dg.AssetObservation], ObservationCursor]:
    """One tick: what changed since the cursor, and an observation of everything that depends on it."""
    cursor = ObservationCursor.parse(raw_cursor)
    events: list[dg.AssetObservation] = []
    with warehouse.connect() as conn, warehouse.cron_connect(conn) as cron:
        refreshes = {r["table_name"]: r for r in conn.execute(LATEST_REFRESHES, (cursor.refresh_log_id,)).fetchall()}
        runs = cron.execute(CRON_RUNS).fetchone()
        version = max([cursor.refresh_log_id, *(int(r["id"]) for r in refreshes.values())])
        changed: set[str] = set()
        if refreshes:
            changed = dependents.changed_relations(refreshes)
            events += source_observations(dependents.entries, refreshes)
            events.append(relation_observation(conn, REFRESH_LOG, version, {
                "latest_refresh": dg.MetadataValue.timestamp(max(r["finished_at"] for r in refreshes.values()))}))
        if int(runs["runid"]) > cursor.cron_runid:
            changed.add(CRON_HISTORY)
            events.append(dg.AssetObservation(
                asset_key=key_of(CRON_HISTORY), description="the warehouse's pg_cron runs pg_cron keeps",
                metadata={md.ROW_COUNT: dg.MetadataValue.int(int(runs["runs"])),
                          "latest_runid": dg.MetadataValue.int(int(runs["runid"])),
                          "latest_start": dg.MetadataValue.timestamp(runs["latest_start"]),
                          "failed_runs": dg.MetadataValue.int(int(runs["failed"])),
                          md.COLUMN_SCHEMA: md.column_schema(cron, CRON_HISTORY)},
                tags={DATA_VERSION_TAG: str(runs["runid"])}))
        for view in dependents.views_reading(changed):
            events.append(relation_observation(conn, view.relation, version,
                                               {"inputs_changed": ", ".join(sorted(set(view.reads) & changed))}))
        for key, reads in dependents.dashboards_reading(changed).items():
            events.append(dg.AssetObservation(asset_key=key, description="what its charts read changed",
                                              metadata={"inputs_changed": ", ".join(reads)},
                                              tags={DATA_VERSION_TAG: str(version)}))
    return events, ObservationCursor(version, max(cursor.cron_runid, int(runs["runid"])))


def summary(events: list[dg.AssetObservation]) -> str:
    if not events:
        return "nothing changed since the last tick: no observation"
    names = sorted({e.asset_key.to_user_string() for e in events})
    return f"observed {len(names)} asset(s): {', '.join(names)}"


def build_observation_sensor(dependents: Dependents, *, minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name=NAME,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Observes what Dagster never builds (sources, plain views, the refresh log, pg_cron's history, "
                    "dashboards) whenever a refresh or a pg_cron run changed what they show: row counts, columns, "
                    "when a source was last read.",
    )
    def warehouse_observations(context: dg.SensorEvaluationContext, warehouse: WarehouseResource) -> dg.SensorResult:
        events, cursor = evaluate_observations(warehouse, dependents, context.cursor)
        context.log.info(summary(events))
        return dg.SensorResult(asset_events=events, cursor=cursor.dump(), skip_reason=summary(events))

    return warehouse_observations
