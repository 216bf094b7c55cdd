"""Asset checks on the local copies, derived from the catalog.

- dimensions: row count equals the source's (read through the same foreign table);
- every copy: its catalog key is unique;
- referential integrity: memberships -> users and organizations, instances -> organizations;
- metrics: every past day of history holds every sample time of the configured step;
- every copy and mart: health of its pg_cron job (the latest run). The pg_cron sensor
  reports evaluations of this same check for each run it reads.
"""


import datetime as dt

import dagster as dg
from psycopg import sql

from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.defs.assets import key_of
from dwh_assets.warehouse.defs.partitions import today_utc
from dwh_assets.warehouse.defs.resources import WarehouseResource, qualified

PG_CRON_HEALTH = "pg_cron_job_health"


def _row_count_check(spec: catalog.TableSpec) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=key_of(spec.local_table), name="row_count_matches_source",
                    description=f"{spec.local_table} has as many rows as {spec.sources[0]}.")
    def row_count_matches_source(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        row = warehouse.query(
            sql.SQL("SELECT (SELECT count(*) FROM {}) AS local, (SELECT count(*) FROM {}) AS source").format(
                qualified(spec.local_table), qualified(spec.sources[0])
            )
        )[0]
        return dg.AssetCheckResult(
            passed=row["local"] == row["source"],
            metadata={"local_rows": int(row["local"]), "source_rows": int(row["source"])},
        )

    return row_count_matches_source


def _unique_key_check(spec: catalog.TableSpec) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=key_of(spec.local_table), name="key_is_unique",
                    description=f"No two rows of {spec.local_table} share ({', '.join(spec.key)}).")
    def key_is_unique(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        cols = sql.SQL(", ").join(map(sql.Identifier, spec.key))
        row = warehouse.query(
            sql.SQL("SELECT count(*) AS duplicated FROM (SELECT {} FROM {} GROUP BY {} HAVING count(*) > 1) d").format(
                cols, qualified(spec.local_table), cols
            )
        )[0]
        return dg.AssetCheckResult(passed=row["duplicated"] == 0, metadata={"duplicated_keys": int(row["duplicated"])})

    return key_is_unique


# child table, its column, parent table, parent column
REFERENCES: tuple[tuple[str, str, str, str], ...] = (
    ("dwh.organization_memberships", "user_id", "dwh.users", "user_id"),
    ("dwh.organization_memberships", "organization_id", "dwh.organizations", "organization_id"),
    ("dwh.instances", "organization_id", "dwh.organizations", "organization_id"),
)


def _reference_check(child: str) -> dg.AssetChecksDefinition:
    refs = [r for r in REFERENCES if r[0] == child]

    @dg.asset_check(
        asset=key_of(child), name="references_resolve",
        additional_deps=[key_of(r[2]) for r in refs],
        description="; ".join(f"every {c}.{col} exists in {p}.{pcol}" for c, col, p, pcol in refs),
    )
    def references_resolve(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        metadata: dict[str, int] = {}
        for c, col, parent, pcol in refs:
            row = warehouse.query(
                sql.SQL("SELECT count(*) AS dangling FROM {} c WHERE NOT EXISTS (SELECT 1 FROM {} p WHERE p.{} = c.{})").format(
                    qualified(c), qualified(parent), sql.Identifier(pcol), sql.Identifier(col)
                )
            )[0]
            metadata[f"dangling_{col}"] = int(row["dangling"])
        return dg.AssetCheckResult(passed=not any(metadata.values()), metadata=metadata)

    return references_resolve


def metrics_completeness(history_start: dt.date) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=key_of("dwh.metrics"), name="partitions_complete",
                    description="Every full past day of history holds every sample time of the metrics step.")
    def partitions_complete(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        step = int(warehouse.query("SELECT dwh.setting('metrics.step_seconds', '3600') AS step")[0]["step"])
        expected = 86400 // step
        # The first day may start mid-day (history begins where the back-fill began).
        rows = warehouse.query(
            "SELECT d::date AS day, count(DISTINCT m.ts) AS stamps "
            "FROM generate_series(%s::date, %s::date, interval '1 day') d "
            "LEFT JOIN dwh.metrics m ON m.ts >= d AND m.ts < d + interval '1 day' GROUP BY 1 ORDER BY 1",
            (history_start + dt.timedelta(days=1), today_utc() - dt.timedelta(days=1)),
        )
        incomplete = [f"{r['day']}: {r['stamps']}/{expected}" for r in rows if r["stamps"] < expected]
        return dg.AssetCheckResult(
            passed=not incomplete,
            metadata={"days_checked": len(rows), "incomplete_days": len(incomplete),
                      "first_incomplete": ", ".join(incomplete[:10]) or "none"},
        )

    return partitions_complete


def cron_health_check(asset_key: dg.AssetKey, job_name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset_key, name=PG_CRON_HEALTH,
                    description=f"The latest run of pg_cron job {job_name!r} succeeded (the sensor reports each run).")
    def pg_cron_job_health(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        # Walks the runid index backwards and stops at the job's latest run.
        with warehouse.connect() as conn, warehouse.cron_connect(conn) as cron:
            rows = cron.execute(
                "SELECT r.runid, r.status, r.return_message, r.start_time, r.end_time FROM cron.job_run_details r "
                "JOIN cron.job j USING (jobid) WHERE j.jobname = %s ORDER BY r.runid DESC LIMIT 1",
                (job_name,),
            ).fetchall()
        if not rows:
            return dg.AssetCheckResult(passed=True, metadata={"job": job_name, "latest_run": "none yet"})
        run = rows[0]
        return dg.AssetCheckResult(
            passed=run["status"] in ("succeeded", "running", "starting", "connecting", "sending"),
            metadata={"job": job_name, "runid": int(run["runid"]), "status": run["status"],
                      "message": (run["return_message"] or "")[:500]},
        )

    return pg_cron_job_health


def job_assets() -> dict[str, dg.AssetKey]:
    """pg_cron job name -> the asset its runs materialise (the sensor's mapping too)."""
    jobs = {spec.cron_job_name: key_of(spec.local_table) for spec in catalog.CATALOG}
    jobs.update({catalog.mart_job_name(mart): key_of(mart) for mart in catalog.MARTS})
    return jobs


def all_checks(history_start: dt.date) -> list[dg.AssetChecksDefinition]:
    checks = [_unique_key_check(spec) for spec in catalog.CATALOG]
    checks += [_row_count_check(spec) for spec in catalog.CATALOG if spec.kind is catalog.Kind.DIMENSION]
    checks += [_reference_check(child) for child in dict.fromkeys(r[0] for r in REFERENCES)]
    checks.append(metrics_completeness(history_start))
    checks += [cron_health_check(key, job) for job, key in job_assets().items()]
    return checks
