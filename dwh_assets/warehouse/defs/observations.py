"""Observations of what Dagster never builds: sources, plain views, the refresh log, pg_cron's
history and the dashboards, so none of them reads "never materialized" in the graph.

They are observable assets (``multi_observable_source_asset``: ``observe_sources`` and
``observe_relations``): the UI shows each one's latest observation ("Observed 3 minutes ago"),
and "Observe" on any of them runs the same code as the sensor. An observation says:

- of a **source** foreign table: when a copy last read it, which copy, and (its copy's primary
  source) how many rows that refresh read: reading a source again only to count it would be a
  second trip to Clerk or Prometheus;
- of a **plain view**, the refresh log, pg_cron's history: its row count and columns as the
  database has them now;
- of a **dashboard**: the latest refresh of the relations its charts read.

The sensor ``warehouse_observations`` records them as they change: each tick it reads the
``dwh.refresh_log`` rows (every refresh, pg_cron's or Dagster's, writes one) and pg_cron runs
newer than its cursor, and observes what depends on them. Each observation carries a data
version (the newest refresh-log id, or pg_cron run, behind it). The cursor is those two ids;
the first tick observes everything. It runs as often as the pg_cron sensor
(``DWH_SENSOR_INTERVAL_SECONDS``).
"""

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import dagster as dg
import psycopg

from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.defs import metadata as md
from dwh_assets.warehouse.defs.metadata import key_of, relation_of
from dwh_assets.warehouse.defs.resources import WarehouseResource

SENSOR_NAME = "warehouse_observations"
REFRESH_LOG = catalog.REFRESH_LOG
CRON_HISTORY = catalog.CRON_HISTORY

CHANGED_TABLES = "SELECT DISTINCT table_name FROM dwh.refresh_log WHERE id > %s"
# The newest refresh of each named table, through the (table_name, finished_at) index.
LATEST_REFRESHES = """
SELECT l.id, l.table_name, l.finished_at, l.rows_source, l.window_start, l.window_end
FROM unnest(%s::text[]) AS t(name)
CROSS JOIN LATERAL (SELECT * FROM dwh.refresh_log r WHERE r.table_name = t.name ORDER BY finished_at DESC LIMIT 1) l
"""
# pg_cron's run history as the loader sees it (its own jobs' runs: pg_cron's row-level security).
CRON_RUNS = """
SELECT coalesce(max(runid), 0) AS runid, count(*) AS runs, max(start_time) AS latest_start,
       count(*) FILTER (WHERE status = 'failed') AS failed
FROM cron.job_run_details
"""


@dataclass(frozen=True)
class Observed:
    """One asset as seen now: what both the sensor's events and the observe run's results carry."""

    key: dg.AssetKey
    description: str
    metadata: dict[str, Any]
    version: str

    def event(self) -> dg.AssetObservation:
        return dg.AssetObservation(asset_key=self.key, description=self.description, metadata=self.metadata,
                                   tags={"dagster/data_version": self.version})

    def result(self) -> dg.ObserveResult:
        return dg.ObserveResult(asset_key=self.key, metadata=self.metadata, data_version=dg.DataVersion(self.version))


@dataclass
class Dependents:
    """What the observed assets read, from the catalog and the dashboards."""

    entries: catalog.Catalog
    dashboards: dict[dg.AssetKey, tuple[str, ...]] = field(default_factory=dict)

    def copies_of(self) -> dict[str, catalog.TableSpec]:
        """Source relation -> the copy that reads it."""
        return {source: spec for spec in self.entries.tables for source in spec.sources}

    def reads(self, relation: str) -> set[str]:
        """Every relation ``relation`` depends on, through views, down to tables and pg_cron's history."""
        views = {v.relation: v for v in self.entries.all_views()}
        found: set[str] = set()
        todo = [relation]
        while todo:
            current = todo.pop()
            for read in views[current].reads if current in views else ():
                if read not in found:
                    found.add(read)
                    todo.append(read)
        return found

    def keys_reading(self, changed: set[str]) -> set[dg.AssetKey]:
        """The observed assets whose data depends on ``changed`` relations."""
        keys = {key_of(v.relation) for v in self.entries.views if self.reads(v.relation) & changed}
        keys |= {key for key, reads in self.dashboards.items()
                 if changed & set().union(*(self.reads(r) | {r} for r in reads))}
        keys |= {key_of(source) for source, spec in self.copies_of().items()
                 if spec.log_table in changed or spec.relation in changed}
        keys |= {key_of(r) for r in (REFRESH_LOG, CRON_HISTORY) if r in changed}
        return keys

    def changed_relations(self, log_tables: set[str]) -> set[str]:
        """The relations that refreshes logged under these ``dwh.refresh_log`` names wrote."""
        changed = {REFRESH_LOG, *log_tables}
        for entry in self.entries.refreshed():
            if entry.log_table in log_tables:
                changed |= {entry.relation, *(t.relation for t in entry.tables)}
        return changed


class Observer:
    """Observes the given assets on one warehouse connection (and pg_cron's)."""

    def __init__(self, conn: psycopg.Connection, cron: psycopg.Connection, dependents: Dependents):
        self.conn, self.cron, self.dependents = conn, cron, dependents
        self._refreshes: dict[str, dict[str, Any]] | None = None

    def refreshes(self) -> dict[str, dict[str, Any]]:
        """The newest refresh of every refreshed table, by its refresh-log name."""
        if self._refreshes is None:
            names = [e.log_table for e in self.dependents.entries.refreshed()]
            self._refreshes = {r["table_name"]: r for r in self.conn.execute(LATEST_REFRESHES, (names,)).fetchall()}
        return self._refreshes

    def version(self) -> str:
        return str(max((int(r["id"]) for r in self.refreshes().values()), default=0))

    def observe(self, keys: set[dg.AssetKey]) -> list[Observed]:
        copies = self.dependents.copies_of()
        found = []
        for key in sorted(keys, key=lambda k: k.to_user_string()):
            relation = relation_of(key)
            if relation in copies:
                found += self._source(relation, copies[relation])
            elif relation == CRON_HISTORY:
                found.append(self._cron_history())
            elif key in self.dependents.dashboards:
                found.append(self._dashboard(key))
            else:  # a plain view or the refresh log
                found.append(self._relation(relation))
        return found

    def _source(self, relation: str, spec: catalog.TableSpec) -> list[Observed]:
        log = self.refreshes().get(spec.log_table)
        if log is None:
            return []  # never read yet: nothing to say
        meta: dict[str, Any] = {"last_read_at": dg.MetadataValue.timestamp(log["finished_at"]),
                                "read_by": spec.local_table, "refresh_log_id": int(log["id"])}
        if relation == spec.sources[0] and log["rows_source"] is not None:
            label = "rows_read_in_window" if log["window_start"] is not None else "rows_read"
            meta[label] = dg.MetadataValue.int(int(log["rows_source"]))
        if log["window_start"] is not None:
            meta["window"] = f"[{log['window_start'].isoformat()}, {log['window_end'].isoformat()})"
        return [Observed(key_of(relation), f"as the refresh of {spec.local_table} read it", meta, str(log["id"]))]

    def _relation(self, relation: str) -> Observed:
        meta = {md.ROW_COUNT: dg.MetadataValue.int(md.count_rows(self.conn, relation)),
                md.COLUMN_SCHEMA: md.column_schema(self.conn, relation)}
        return Observed(key_of(relation), "its rows and columns now", meta, self.version())

    def _cron_history(self) -> Observed:
        runs = self.cron.execute(CRON_RUNS).fetchone()
        meta = {md.ROW_COUNT: dg.MetadataValue.int(int(runs["runs"])),
                "latest_runid": dg.MetadataValue.int(int(runs["runid"])),
                "failed_runs": dg.MetadataValue.int(int(runs["failed"])),
                md.COLUMN_SCHEMA: md.column_schema(self.cron, CRON_HISTORY)}
        if runs["latest_start"] is not None:
            meta["latest_start"] = dg.MetadataValue.timestamp(runs["latest_start"])
        return Observed(key_of(CRON_HISTORY), "the warehouse's runs pg_cron keeps", meta, str(runs["runid"]))

    def _dashboard(self, key: dg.AssetKey) -> Observed:
        reads = {r for read in self.dependents.dashboards[key] for r in self.dependents.reads(read) | {read}}
        logs = [self.refreshes()[e.log_table] for e in self.dependents.entries.refreshed()
                if e.log_table in self.refreshes() and reads & {e.relation, *(t.relation for t in e.tables)}]
        meta: dict[str, Any] = {"reads": ", ".join(self.dependents.dashboards[key])}
        if logs:
            latest = max(logs, key=lambda log: log["finished_at"])
            meta["data_last_refreshed_at"] = dg.MetadataValue.timestamp(latest["finished_at"])
            meta["last_refreshed"] = latest["table_name"]
        return Observed(key, "when what its charts read was last refreshed", meta, self.version())


@dataclass
class ObservationCursor:
    refresh_log_id: int = 0
    cron_runid: int = 0

    @classmethod
    def parse(cls, raw: str | None) -> "ObservationCursor":
        return cls(**json.loads(raw)) if raw else cls()

    def dump(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def evaluate_observations(warehouse: WarehouseResource, dependents: Dependents, observed: set[dg.AssetKey],
                          raw_cursor: str | None) -> tuple[list[Observed], ObservationCursor]:
    """One tick: what changed since the cursor, and an observation of each asset that depends on it."""
    cursor = ObservationCursor.parse(raw_cursor)
    with warehouse.connect() as conn, warehouse.cron_connect(conn) as cron:
        top = conn.execute("SELECT coalesce(max(id), 0) AS id FROM dwh.refresh_log").fetchone()["id"]
        runid = cron.execute("SELECT coalesce(max(runid), 0) AS runid FROM cron.job_run_details").fetchone()["runid"]
        if raw_cursor is None:
            keys = set(observed)
        else:
            tables = {r["table_name"] for r in conn.execute(CHANGED_TABLES, (cursor.refresh_log_id,)).fetchall()}
            changed = dependents.changed_relations(tables) if tables else set()
            if runid > cursor.cron_runid:
                changed.add(CRON_HISTORY)
            keys = dependents.keys_reading(changed) & observed
        found = Observer(conn, cron, dependents).observe(keys)
    return found, ObservationCursor(max(cursor.refresh_log_id, int(top)), max(cursor.cron_runid, int(runid)))


def summary(found: list[Observed]) -> str:
    if not found:
        return "nothing it observes changed since the last tick"
    return f"observed {len(found)} asset(s): {', '.join(o.key.to_user_string() for o in found)}"


def observable_assets(name: str, specs: list[dg.AssetSpec], dependents: Dependents) -> dg.AssetsDefinition:
    """Assets Dagster never builds, observable together or one by one ("Observe" in the UI).

    One step observes them; the sources and what reads the copies are two such steps, or the
    step would be both upstream and downstream of the copies."""

    @dg.multi_observable_source_asset(specs=specs, can_subset=True, name=name)
    def observe(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
        with warehouse.connect() as conn, warehouse.cron_connect(conn) as cron:
            for found in Observer(conn, cron, dependents).observe(set(context.selected_asset_keys)):
                yield found.result()

    return observe


def build_observation_sensor(dependents: Dependents, observed: set[dg.AssetKey], *,
                             minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Observes what Dagster never builds (sources, plain views, the refresh log, pg_cron's history, "
                    "dashboards) whenever a refresh or a pg_cron run changed what they show: row counts, columns, "
                    "when a source was last read. It launches no run: each tick's message says what it observed.",
    )
    def warehouse_observations(context: dg.SensorEvaluationContext, warehouse: WarehouseResource) -> dg.SensorResult:
        found, cursor = evaluate_observations(warehouse, dependents, observed, context.cursor)
        context.log.info(summary(found))
        return dg.SensorResult(asset_events=[o.event() for o in found], cursor=cursor.dump(), skip_reason=summary(found))

    return warehouse_observations


