-- depends: 0009.metrics_without_series_fk
-- Relations the dashboards read (dashboards/, Superset). Plain views: computed when they
-- are read, so nothing refreshes them and they are never stale. The catalog lists them in
-- VIEWS (not MARTS, which are incremental tables refreshed per day), and Dagster shows
-- them as observable-only assets downstream of what they read. dwh_reader reads them
-- through the default privileges of 0001 (SELECT on every relation of mart).

-- Growth: organizations and live instances at the end of each UTC day of the history.
-- A day with a dimension snapshot (dwh.*_snapshot, taken by each day's refresh) counts the
-- snapshot; a day before the first snapshot is reconstructed from the current tables'
-- created_at / deleted_at. `source` says which.
CREATE VIEW mart.growth_daily AS
WITH days AS (
    SELECT d::date AS day
    FROM generate_series(
        coalesce((SELECT value::date FROM dwh.settings WHERE key = 'history.start'),
                 (SELECT min(created_at AT TIME ZONE 'UTC')::date FROM dwh.organizations),
                 current_date),
        (now() AT TIME ZONE 'UTC')::date,
        interval '1 day') AS d
),
org_snap AS (SELECT snapshot_day AS day, count(*) AS n FROM dwh.organizations_snapshot GROUP BY 1),
inst_snap AS (
    SELECT snapshot_day AS day, count(*) AS n
    FROM dwh.instances_snapshot
    WHERE deleted_at IS NULL OR deleted_at >= (snapshot_day + 1)::timestamp AT TIME ZONE 'UTC'
    GROUP BY 1
)
SELECT d.day,
       coalesce(os.n, (SELECT count(*) FROM dwh.organizations o
                        WHERE o.created_at < (d.day + 1)::timestamp AT TIME ZONE 'UTC'))::bigint AS organizations,
       coalesce(isn.n, (SELECT count(*) FROM dwh.instances i
                         WHERE i.created_at < (d.day + 1)::timestamp AT TIME ZONE 'UTC'
                           AND (i.deleted_at IS NULL OR i.deleted_at >= (d.day + 1)::timestamp AT TIME ZONE 'UTC')))::bigint
           AS instances,
       CASE WHEN os.n IS NOT NULL AND isn.n IS NOT NULL THEN 'snapshot' ELSE 'reconstructed' END AS source
FROM days d
LEFT JOIN org_snap os USING (day)
LEFT JOIN inst_snap isn USING (day);
COMMENT ON VIEW mart.growth_daily IS
    'Organizations and live instances per UTC day: the dimension snapshot where one was taken, else reconstructed from lifetimes.';

-- Fleet, today: every instance with its region, size and latest state (from the state history;
-- ''deleted'' once deleted_at has passed, ''unknown'' without any transition in the retained history).
CREATE VIEW mart.instance_current_state AS
SELECT i.instance_id,
       i.organization_id,
       i.region,
       i.cpu,
       i.memory_gb,
       format('%s vCPU / %s GB', i.cpu, i.memory_gb) AS size,
       CASE WHEN i.deleted_at IS NOT NULL AND i.deleted_at <= now() THEN 'deleted'
            ELSE coalesce(s.state, 'unknown') END AS state,
       s.changed_at AS state_since
FROM dwh.instances i
LEFT JOIN LATERAL (
    SELECT st.state, st.changed_at
    FROM dwh.instance_state st
    WHERE st.instance_id = i.instance_id
    ORDER BY st.changed_at DESC, st.id DESC
    LIMIT 1
) s ON true;
COMMENT ON VIEW mart.instance_current_state IS 'Each instance with region, size and its latest state.';

-- pg_cron's run history of the project's jobs. cron.job and cron.job_run_details are
-- row-level-secured (username = current_user) and the reader has no grant on schema cron,
-- so it reads them only through this function: SECURITY DEFINER, no arguments, a fixed
-- projection of the jobs named 'dwh:%' with their runs of the last 14 days (a job that has
-- not run yet: one row without a run), messages cut to 300 characters. The refresh jobs
-- belong to the loader login, so `dwh migrate` hands this function to that login (as the
-- admin, after the migrations): its own jobs are then what it sees. In a deployment whose
-- pg_cron lives in another database it returns no rows (the Dagster sensor reads there).
CREATE FUNCTION dwh.cron_job_runs()
RETURNS TABLE (jobname text, schedule text, active boolean, runid bigint, status text,
               started_at timestamptz, finished_at timestamptz, duration_ms double precision,
               return_message text)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF to_regclass('cron.job_run_details') IS NULL OR to_regclass('cron.job') IS NULL THEN
        RETURN;
    END IF;
    -- Dynamic, so the function exists where pg_cron does not live in this database.
    RETURN QUERY EXECUTE $q$
        SELECT j.jobname::text, j.schedule::text, j.active, d.runid::bigint, d.status::text,
               d.start_time, d.end_time,
               extract(epoch FROM d.end_time - d.start_time)::double precision * 1000,
               left(d.return_message, 300)
        FROM cron.job j
        LEFT JOIN cron.job_run_details d
               ON d.jobid = j.jobid AND d.start_time > now() - interval '14 days'
        WHERE j.jobname LIKE 'dwh:%' AND j.database = current_database()
    $q$;
END
$$;
REVOKE ALL ON FUNCTION dwh.cron_job_runs() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dwh.cron_job_runs() TO dwh_reader;
COMMENT ON FUNCTION dwh.cron_job_runs() IS
    'pg_cron jobs dwh:% and their runs (14 days), for dwh_reader; owned by the loader login so row-level security shows its jobs.';

-- Warehouse health: pg_cron runs (and jobs without one yet), named like dwh.refresh_log names
-- what it refreshes: 'users' for a table, 'mart.<name>' for a mart.
CREATE VIEW mart.cron_job_runs AS
SELECT jobname,
       CASE WHEN jobname LIKE 'dwh:refresh_mart_%' THEN 'mart.' || substr(jobname, length('dwh:refresh_mart_') + 1)
            WHEN jobname LIKE 'dwh:refresh_%' THEN substr(jobname, length('dwh:refresh_') + 1)
            ELSE jobname END AS table_name,
       schedule,
       active,
       runid,
       status,
       started_at,
       date_trunc('hour', started_at) AS hour,
       finished_at,
       duration_ms,
       (status = 'failed')::int AS failed,
       return_message
FROM dwh.cron_job_runs();
COMMENT ON VIEW mart.cron_job_runs IS 'pg_cron jobs of the warehouse and their runs (14 days): status, duration, failures.';

-- Warehouse health per table and hour: committed refreshes (dwh.refresh_log: pg_cron's and
-- Dagster's alike) with rows, durations and lock waits, and failed pg_cron runs. The last 48
-- hours are a full grid (every refreshed table x every hour, zeros where nothing ran), so an
-- hourly chart shows quiet hours as quiet instead of leaving them out.
CREATE VIEW mart.refresh_health_hourly AS
WITH refreshes AS (
    SELECT date_trunc('hour', finished_at) AS hour,
           table_name,
           count(*) AS refreshes,
           sum(rows_inserted + rows_updated + rows_deleted) AS rows_written,
           sum(rows_source) AS rows_read,
           avg(duration_ms) AS avg_duration_ms,
           max(duration_ms) AS max_duration_ms,
           sum(lock_wait_ms) AS lock_wait_ms,
           count(*) FILTER (WHERE lock_wait_ms > 0) AS refreshes_that_waited
    FROM dwh.refresh_log
    GROUP BY 1, 2
),
failures AS (
    SELECT hour, table_name, sum(failed) AS failures
    FROM mart.cron_job_runs
    WHERE runid IS NOT NULL AND jobname LIKE 'dwh:refresh_%'
    GROUP BY 1, 2
),
grid AS (
    SELECT h AS hour, t.table_name
    FROM generate_series(date_trunc('hour', now()) - interval '47 hours', date_trunc('hour', now()), interval '1 hour') AS h
    CROSS JOIN (SELECT table_name FROM refreshes UNION SELECT table_name FROM failures) t
),
keys AS (
    SELECT hour, table_name FROM grid
    UNION SELECT hour, table_name FROM refreshes
    UNION SELECT hour, table_name FROM failures
)
SELECT k.hour,
       k.table_name,
       coalesce(r.refreshes, 0)::bigint AS refreshes,
       coalesce(f.failures, 0)::bigint AS failures,
       coalesce(r.rows_written, 0)::bigint AS rows_written,
       r.rows_read::bigint AS rows_read,
       round(r.avg_duration_ms::numeric, 1) AS avg_duration_ms,
       round(r.max_duration_ms::numeric, 1) AS max_duration_ms,
       round(coalesce(r.lock_wait_ms, 0)::numeric, 1) AS lock_wait_ms,
       coalesce(r.refreshes_that_waited, 0)::bigint AS refreshes_that_waited
FROM keys k
LEFT JOIN refreshes r USING (hour, table_name)
LEFT JOIN failures f USING (hour, table_name);
COMMENT ON VIEW mart.refresh_health_hourly IS
    'Per table and hour (the last 48 hours complete): committed refreshes, rows, duration, lock waits, failed pg_cron runs.';

-- Warehouse health: what is late? The last committed refresh of each table, its age, and
-- the failed pg_cron runs of the last 24 hours.
CREATE VIEW mart.refresh_latest AS
SELECT table_name,
       max(last_refresh) AS last_refresh,
       round((extract(epoch FROM now() - max(last_refresh)) / 60)::numeric, 1) AS minutes_ago,
       coalesce(sum(refreshes_24h), 0)::bigint AS refreshes_24h,
       coalesce(sum(failures_24h), 0)::bigint AS failures_24h
FROM (
    SELECT table_name, max(finished_at) AS last_refresh,
           count(*) FILTER (WHERE finished_at > now() - interval '24 hours') AS refreshes_24h,
           0 AS failures_24h
    FROM dwh.refresh_log
    GROUP BY 1
    UNION ALL
    SELECT table_name, NULL, 0, sum(failed) FILTER (WHERE started_at > now() - interval '24 hours')
    FROM mart.cron_job_runs
    WHERE jobname LIKE 'dwh:refresh_%'
    GROUP BY 1
) t
GROUP BY 1;
COMMENT ON VIEW mart.refresh_latest IS
    'Each refreshed table: its last committed refresh, age in minutes, refreshes and failed pg_cron runs in 24 hours.';
