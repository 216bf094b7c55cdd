-- Warehouse health: is each refreshed table fresh? Its last committed refresh against two
-- intervals of its pg_cron job's live schedule plus its typical duration (04_freshness.sql);
-- late too when the job is inactive or gone, or pg_cron stopped running anything.
CREATE OR REPLACE VIEW mart.refresh_freshness AS
SELECT j.jobname,
       j.table_name,
       c.schedule,
       c.active,
       l.last_refresh,
       e.expected_within,
       round((extract(epoch FROM now() - l.last_refresh) / 60)::numeric, 1) AS minutes_ago,
       NOT coalesce(now() - l.last_refresh <= e.expected_within, false) AS late,
       CASE WHEN c.jobname IS NULL THEN 'late: no pg_cron job ' || j.jobname
            WHEN e.expected_within IS NULL THEN 'late: no regular schedule to expect a refresh from'
            WHEN l.last_refresh IS NULL THEN 'late: never refreshed'
            WHEN now() - l.last_refresh <= e.expected_within THEN 'fresh'
            WHEN NOT c.active THEN 'late: its pg_cron job is inactive'
            ELSE 'late: no refresh for ' || date_trunc('second', now() - l.last_refresh)
       END AS status
FROM dwh.refresh_jobs j
LEFT JOIN (SELECT DISTINCT jobname, schedule, active FROM mart.cron_job_runs) c USING (jobname)
CROSS JOIN LATERAL (SELECT 2 * dwh.schedule_interval(c.schedule) + j.typical_duration AS expected_within) e
LEFT JOIN LATERAL (SELECT max(r.finished_at) AS last_refresh FROM dwh.refresh_log r
                   WHERE r.table_name = j.table_name) l ON true;
