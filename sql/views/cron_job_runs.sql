-- Warehouse health: pg_cron runs (and jobs without one yet), each with the table it refreshes
-- as dwh.refresh_log names it (dwh.refresh_jobs, from the catalog; a maintenance job: its own name).
-- pg_cron's tables are row-level-secured: the runs come through dwh.cron_job_runs()
-- (migration 0002).
CREATE OR REPLACE VIEW mart.cron_job_runs AS
SELECT r.jobname,
       coalesce(j.table_name, r.jobname) AS table_name,
       r.schedule,
       r.active,
       r.runid,
       r.status,
       r.started_at,
       date_trunc('hour', r.started_at) AS hour,
       r.finished_at,
       r.duration_ms,
       (r.status = 'failed')::int AS failed,
       r.return_message
FROM dwh.cron_job_runs() r
LEFT JOIN dwh.refresh_jobs j USING (jobname);
