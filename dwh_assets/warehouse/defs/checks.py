"""Data checks that run on every refresh, whoever ran it, scoped to what the refresh touched.

Every check is derived from the catalog: a copy's blocking ``rows_match_source`` /
``row_count_matches_source`` and a fact's ``key_is_unique`` from its kind and key, as the SQL
the quality gate runs inside the refresh (``warehouse.quality_gate``); a mart's
``no_days_held`` (none of its queued days held back by the gate);
``references_resolve`` from its columns' ``references``; ``accepted_values`` from their
``accepted`` sets (the deployment's, read from ``dwh.settings``); and the entry's own
``WindowCheck`` queries. Each judges one ``dwh.refresh_log`` row (the refresh's own counts)
plus a cheap query over the window's days (facts, marts) or the table (dimensions, which
are small); none scans history. The same function serves both paths:

- a Dagster run: the asset declares the checks (``check_specs``) and returns their results
  with its materialization; the copies' checks are *blocking*, so a failed copy stops its
  marts in the same run;
- a pg_cron run: the sensor reports ``AssetCheckEvaluation``s with the materialization.

Checks that cannot fail are not declared: a dimension's key and a mart's key are primary
keys, and a metric sample's ``(series_id, ts)`` is too. ``pg_cron_job_health`` (the latest run
of the asset's pg_cron job; no run yet is no pass) and ``fresh_within_schedule`` (its latest
refresh is younger than two intervals of its job's schedule plus its typical duration:
``warehouse.freshness``) are evaluated by the sensor, and can be run on demand.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg
import psycopg
from psycopg import sql

from dwh_assets.warehouse import catalog, freshness, quality_gate
from dwh_assets.warehouse.catalog_model import Table
from dwh_assets.warehouse.defs.metadata import key_of
from dwh_assets.warehouse.defs.resources import WarehouseResource, qualified

PG_CRON_HEALTH = "pg_cron_job_health"
FRESHNESS = "fresh_within_schedule"
Outcome = tuple[bool, dict[str, Any]]
Evaluate = Callable[[psycopg.Connection, dict[str, Any]], Outcome]


@dataclass(frozen=True)
class RefreshCheck:
    asset: dg.AssetKey
    name: str
    description: str
    evaluate: Evaluate
    blocking: bool = False

    @property
    def severity(self) -> dg.AssetCheckSeverity:
        return dg.AssetCheckSeverity.ERROR if self.blocking else dg.AssetCheckSeverity.WARN

    def spec(self) -> dg.AssetCheckSpec:
        return dg.AssetCheckSpec(self.name, asset=self.asset, description=self.description, blocking=self.blocking)

    def run(self, conn: psycopg.Connection, log: dict[str, Any]) -> Outcome:
        return self.evaluate(conn, log)

    def result(self, conn: psycopg.Connection, log: dict[str, Any]) -> dg.AssetCheckResult:
        passed, metadata = self.run(conn, log)
        return dg.AssetCheckResult(check_name=self.name, asset_key=self.asset, passed=passed,
                                   severity=self.severity, metadata=metadata)

    def evaluation(self, conn: psycopg.Connection, log: dict[str, Any], extra: dict[str, Any]) -> dg.AssetCheckEvaluation:
        passed, metadata = self.run(conn, log)
        return dg.AssetCheckEvaluation(asset_key=self.asset, check_name=self.name, passed=passed,
                                       severity=self.severity, metadata=metadata | extra)


# ----- the kinds of check, each derived from what the catalog declares ---------------------------


def _scope(table: Table) -> tuple[sql.Composable, dict[str, Any]]:
    """What a check of ``table`` reads: the refreshed window of a partitioned table, else all of it."""
    if table.partition_by is None:
        return sql.SQL("true"), {}
    column = sql.Identifier(table.partition_by)
    # Bounds of the column's own type: a date compared with a timestamptz would take the session's time zone.
    lo, hi = ("first_day", "end_day") if table.column(table.partition_by).type == "date" else ("start", "end")
    return (sql.SQL("t.{} >= {} AND t.{} < {}").format(column, sql.Placeholder(lo), column, sql.Placeholder(hi)),
            {"scope": "the refreshed window"})


def _params(log: dict[str, Any]) -> dict[str, Any]:
    start, end = log.get("window_start"), log.get("window_end")
    window = ({"start": None, "end": None, "first_day": None, "end_day": None} if start is None else
              {"start": start, "end": end, "first_day": start.date(), "end_day": end.date()})
    return window | {"log_id": log.get("id")}


def _references_resolve(table: Table) -> Evaluate:
    refs = [(c.name, *c.references.rsplit(".", 1)) for c in table.columns if c.references]
    where, scope = _scope(table)

    def evaluate(conn: psycopg.Connection, log: dict[str, Any]) -> Outcome:
        metadata: dict[str, Any] = dict(scope)
        for column, parent, parent_column in refs:
            # The id of a subject `dwh forget` erased may stay where it is no personal data (the
            # instances of a forgotten organization): not dangling. Hashed only for what dangles.
            row = conn.execute(sql.SQL(
                "WITH dangling AS MATERIALIZED (SELECT t.{} AS id FROM {} t WHERE {} AND t.{} IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM {} p WHERE p.{} = t.{})) "
                "SELECT count(*) AS dangling FROM dangling WHERE NOT dwh.is_forgotten(%(parent)s, id::text)").format(
                    sql.Identifier(column), qualified(table.relation), where, sql.Identifier(column), qualified(parent),
                    sql.Identifier(parent_column), sql.Identifier(column)),
                _params(log) | {"parent": f"{parent}.{parent_column}"}).fetchone()
            metadata[f"dangling_{column}"] = int(row["dangling"])
        return not any(v for k, v in metadata.items() if k.startswith("dangling_")), metadata

    return evaluate


def _accepted_values(table: Table) -> Evaluate:
    columns = [c for c in table.columns if c.accepted]
    where, scope = _scope(table)

    def evaluate(conn: psycopg.Connection, log: dict[str, Any]) -> Outcome:
        metadata: dict[str, Any] = dict(scope)
        for column in columns:
            row = conn.execute(sql.SQL(
                "SELECT count(*) AS bad, string_agg(DISTINCT t.{}, ', ') AS found FROM {} t WHERE {} "
                "AND t.{} <> ALL (string_to_array(dwh.setting(%(setting)s), ','))").format(
                    sql.Identifier(column.name), qualified(table.relation), where, sql.Identifier(column.name)),
                _params(log) | {"setting": column.accepted.setting}).fetchone()
            metadata[f"unaccepted_{column.name}"] = int(row["bad"])
            if row["bad"]:
                metadata[f"unaccepted_{column.name}_values"] = (row["found"] or "")[:500]
        return not any(v for k, v in metadata.items() if k.startswith("unaccepted_") and isinstance(v, int)), metadata

    return evaluate


def _window_query(check: catalog.WindowCheck) -> Evaluate:
    """A declared query counting the refreshed window's offending rows (zero passes)."""
    def evaluate(conn: psycopg.Connection, log: dict[str, Any]) -> Outcome:
        params = _params(log)
        row = conn.execute(check.query, params).fetchone()
        metadata = {k: (v if isinstance(v, (int, str)) else str(v)) for k, v in row.items() if k != "bad"}
        window = {"days": f"[{params['first_day']}, {params['end_day']})"} if params["first_day"] else {}
        return row["bad"] == 0, {"offending_rows": int(row["bad"])} | window | metadata

    return evaluate


def _declared(key: dg.AssetKey, table: Table, extra: tuple[catalog.WindowCheck, ...]) -> list[RefreshCheck]:
    """What a catalog entry declares: references, accepted values, its own window checks."""
    checks = []
    refs = [c for c in table.columns if c.references]
    if refs:
        checks.append(RefreshCheck(key, "references_resolve", "; ".join(
            f"every {table.relation}.{c.name} exists in {c.references}" for c in refs), _references_resolve(table)))
    accepted = [c for c in table.columns if c.accepted]
    if accepted:
        checks.append(RefreshCheck(key, "accepted_values", "; ".join(
            f"every {table.relation}.{c.name} is one of dwh.settings '{c.accepted.setting}' (default: "
            f"{', '.join(c.accepted.values)})" for c in accepted), _accepted_values(table)))
    checks += [RefreshCheck(key, c.name, c.description, _window_query(c), c.blocking) for c in extra]
    return checks


# ----- what each asset declares ------------------------------------------------------------------


def refresh_checks(spec: catalog.TableSpec) -> list[RefreshCheck]:
    """A copy's checks: its quality gate (blocking, the SQL its refreshes run too), then what the catalog declares."""
    key = key_of(spec.local_table)
    gate = quality_gate.gate_checks(spec)
    declared = tuple(c for c in spec.checks if c not in gate)
    return ([RefreshCheck(key, c.name, c.description, _window_query(c), blocking=True) for c in gate]
            + _declared(key, spec.table, declared))


def mart_checks(mart: catalog.MartSpec) -> list[RefreshCheck]:
    held = quality_gate.held_days_check(mart)
    return _declared(key_of(mart.relation), mart.stored_table, mart.checks) + [
        RefreshCheck(key_of(mart.relation), held.name, held.description, _window_query(held))]


# ----- the daily reconciliation ---------------------------------------------------------------

MATCHES_SOURCE = "matches_source_by_day"
LATEST_RECONCILIATION = ("SELECT * FROM dwh.reconciliation WHERE table_name = %(table)s AND finished_at <= %(until)s "
                         "ORDER BY finished_at DESC, id DESC LIMIT 1")


def _reconciled(spec: catalog.TableSpec) -> Evaluate:
    """The reconciliation of ``spec`` by the run that logged ``log`` (or, on demand, the latest): no day
    of the kept history differed from the source, nor was one replaced to match it."""
    def evaluate(conn: psycopg.Connection, log: dict[str, Any]) -> Outcome:
        row = conn.execute(LATEST_RECONCILIATION, {"table": spec.name, "until": log["finished_at"]}).fetchone()
        if row is None:
            return False, {"reason": f"{spec.local_table} has not been reconciled yet"}
        days = {"reconciled_at": row["finished_at"].isoformat(), "days_compared": int(row["days_compared"]),
                "first_day": str(row["first_day"]), "end_day": str(row["end_day"]),
                "source_rows": int(row["source_rows"] or 0), "copy_rows": int(row["copy_rows"] or 0),
                "differing_days": len(row["differing_days"]), "repaired_days": len(row["repaired_days"]),
                "repaired": ", ".join(map(str, row["repaired_days"]))[:1000] or "none",
                "kept_not_at_source": ", ".join(map(str, row["kept_days"]))[:1000] or "none"}
        if row["error"]:
            return False, days | {"error": row["error"][:1000]}
        return not row["repaired_days"], days

    return evaluate


def reconciliation_checks(entries: catalog.Catalog = catalog.PRODUCT) -> list[RefreshCheck]:
    """Per reconciled fact: what the daily reconciliation found (reported with its pg_cron run)."""
    return [RefreshCheck(key_of(spec.local_table), MATCHES_SOURCE,
                         f"The daily reconciliation found every kept day of {spec.local_table} equal to "
                         f"{spec.sources[0]} (row count per day) and had to replace none; a replaced day means "
                         "rows reached the source that the scheduled refresh's watermark did not see.",
                         _reconciled(spec)) for spec in entries.reconciled()]


def _on_demand(check: RefreshCheck) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=check.asset, name=check.name, description=check.description)
    def latest_reconciliation(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        with warehouse.connect() as conn:
            now = conn.execute("SELECT now() AS now").fetchone()["now"]
            passed, metadata = check.run(conn, {"finished_at": now})
        return dg.AssetCheckResult(passed=passed, severity=check.severity, metadata=metadata)

    return latest_reconciliation


def reconciliation_asset_checks(entries: catalog.Catalog = catalog.PRODUCT) -> list[dg.AssetChecksDefinition]:
    """The same checks, on demand: the latest reconciliation of each fact."""
    return [_on_demand(check) for check in reconciliation_checks(entries)]


def checks_of(entry: catalog.TableSpec | catalog.MartSpec | catalog.Reconciliation,
              entries: catalog.Catalog = catalog.PRODUCT) -> list[RefreshCheck]:
    if isinstance(entry, catalog.Reconciliation):
        return reconciliation_checks(entries)
    return refresh_checks(entry) if isinstance(entry, catalog.TableSpec) else mart_checks(entry)


def checks_by_log_table(entries: catalog.Catalog = catalog.PRODUCT) -> dict[str, list[RefreshCheck]]:
    """dwh.refresh_log.table_name -> the checks of the refresh that writes such rows."""
    return {entry.log_table: checks_of(entry) for entry in entries.refreshed()}


# ----- pg_cron job health and freshness, on demand ----------------------------------------------

# The latest refresh of each table, whoever ran it: one index probe per table.
LAST_REFRESHES = ("SELECT t.name AS table_name, (SELECT max(r.finished_at) FROM dwh.refresh_log r "
                  "WHERE r.table_name = t.name) AS last_refresh FROM unnest(%s::text[]) AS t(name)")


def last_refreshes(conn: psycopg.Connection, tables: list[str]) -> dict[str, dt.datetime | None]:
    return {row["table_name"]: row["last_refresh"] for row in conn.execute(LAST_REFRESHES, (tables,)).fetchall()}


def freshness_evaluation(entry: catalog.TableSpec | catalog.MartSpec, job: dict[str, Any] | None,
                         last_refresh: dt.datetime | None, now: dt.datetime) -> tuple[bool, dict[str, Any]]:
    """The verdict on one table from its pg_cron job's row now (``None``: no such job) and its latest refresh."""
    passed, status, allowed = freshness.judge(entry.cron_job_name, job and job["schedule"], job and job["active"],
                                              last_refresh, entry.typical_duration, now)
    metadata: dict[str, Any] = {"job": entry.cron_job_name, "status": status,
                                "last_refresh": last_refresh.isoformat() if last_refresh else "never"}
    if allowed is not None:
        metadata["expected_within_minutes"] = round(allowed.total_seconds() / 60, 1)
    return passed, metadata


def freshness_check(entry: catalog.TableSpec | catalog.MartSpec) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=key_of(entry.relation), name=FRESHNESS,
                    description=f"Its latest refresh is younger than two intervals of pg_cron job "
                                f"{entry.cron_job_name!r}'s schedule plus its typical duration "
                                f"({entry.typical_duration}); the sensor evaluates it continuously.")
    def fresh_within_schedule(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        with warehouse.connect() as conn, warehouse.cron_connect(conn) as cron:
            now = conn.execute("SELECT now() AS now").fetchone()["now"]
            job = cron.execute("SELECT schedule, active FROM cron.job WHERE jobname = %s",
                               (entry.cron_job_name,)).fetchone()
            last = last_refreshes(conn, [entry.log_table])[entry.log_table]
        passed, metadata = freshness_evaluation(entry, job, last, now)
        return dg.AssetCheckResult(passed=passed, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)

    return fresh_within_schedule


def cron_health_check(asset_key: dg.AssetKey, job_name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset_key, name=PG_CRON_HEALTH,
                    description=f"The latest run of pg_cron job {job_name!r} succeeded (the sensor reports each run); "
                                "no run yet is no pass.")
    def pg_cron_job_health(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        # Walks the runid index backwards and stops at the job's latest run.
        with warehouse.connect() as conn, warehouse.cron_connect(conn) as cron:
            job = cron.execute("SELECT schedule, active FROM cron.job WHERE jobname = %s", (job_name,)).fetchone()
            rows = cron.execute(
                "SELECT r.runid, r.status, r.return_message, r.start_time, r.end_time FROM cron.job_run_details r "
                "JOIN cron.job j USING (jobid) WHERE j.jobname = %s ORDER BY r.runid DESC LIMIT 1",
                (job_name,),
            ).fetchall()
        if job is None:
            return dg.AssetCheckResult(passed=False, metadata={"job": job_name, "reason": f"no pg_cron job {job_name}: "
                                                               "run dwh migrate, which schedules it"})
        if not rows:
            # Nothing proves the job works yet (pg_cron may not even be running): not a pass.
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata={
                "job": job_name, "reason": f"no run yet on {job['schedule']!r}"
                                           f"{'' if job['active'] else ' (the job is inactive)'}"})
        run = rows[0]
        return dg.AssetCheckResult(
            passed=run["status"] in ("succeeded", "running", "starting", "connecting", "sending"),
            metadata={"job": job_name, "runid": int(run["runid"]), "status": run["status"],
                      "message": (run["return_message"] or "")[:500]},
        )

    return pg_cron_job_health


def health_checks(job_assets: dict[str, dg.AssetKey]) -> list[dg.AssetChecksDefinition]:
    """One health check per pg_cron job, on the asset its runs materialise (the sensor's targets)."""
    return [cron_health_check(key, job) for job, key in job_assets.items()]


def freshness_checks(entries: catalog.Catalog = catalog.PRODUCT) -> list[dg.AssetChecksDefinition]:
    """One freshness check per copy and mart."""
    return [freshness_check(entry) for entry in entries.refreshed()]
