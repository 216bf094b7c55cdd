-- Warehouse health: what is late? When each table was last known current (its last committed
-- refresh; for a mart also a run of its pg_cron job that found no day to refresh), its age, the
-- refreshes of the last 24 hours that replaced data, and the failed pg_cron runs of 24 hours.
CREATE OR REPLACE VIEW mart.refresh_latest AS
SELECT table_name,
       max(last_refresh) AS last_refresh,
       round((extract(epoch FROM now() - max(last_refresh)) / 60)::numeric, 1) AS minutes_ago,
       coalesce(sum(refreshes_24h), 0)::bigint AS refreshes_24h,
       coalesce(sum(failures_24h), 0)::bigint AS failures_24h
FROM (
    SELECT table_name, max(finished_at) AS last_refresh,
           count(*) FILTER (WHERE finished_at > now() - interval '24 hours'
                              AND (window_start IS NOT NULL OR snapshot_day IS NOT NULL)) AS refreshes_24h,
           0 AS failures_24h
    FROM dwh.refresh_log
    GROUP BY 1
    UNION ALL
    SELECT table_name, NULL, 0, sum(failed) FILTER (WHERE started_at > now() - interval '24 hours')
    FROM mart.cron_job_runs
    WHERE jobname IN (SELECT jobname FROM dwh.refresh_jobs)
    GROUP BY 1
) t
GROUP BY 1;
