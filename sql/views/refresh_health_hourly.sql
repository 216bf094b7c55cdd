-- Warehouse health per table and hour: committed refreshes that replaced data (dwh.refresh_log:
-- pg_cron's and Dagster's alike) with rows, durations and lock waits, and failed pg_cron runs.
-- A mart's pg_cron job that found no day to refresh logs a run of no window (it proves the mart
-- current, see mart.refresh_latest) but refreshed nothing: it is not counted. The last 48 hours
-- are a full grid (every refreshed table x every hour, zeros where nothing ran), so an hourly
-- chart shows quiet hours as quiet instead of leaving them out.
CREATE OR REPLACE VIEW mart.refresh_health_hourly AS
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
    WHERE window_start IS NOT NULL OR snapshot_day IS NOT NULL
    GROUP BY 1, 2
),
-- Every job's failures, the maintenance jobs' too (under their own names, in hours they failed).
failures AS (
    SELECT hour, table_name, sum(failed) AS failures
    FROM mart.cron_job_runs
    WHERE runid IS NOT NULL
    GROUP BY 1, 2
    HAVING sum(failed) > 0 OR table_name IN (SELECT table_name FROM dwh.refresh_jobs)
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
