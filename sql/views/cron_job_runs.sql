-- Warehouse health: pg_cron runs (and jobs without one yet) of the loader's refresh jobs and the
-- owner's maintenance jobs, each with the table it refreshes as dwh.refresh_log names it
-- (dwh.refresh_jobs, from the catalog; a maintenance job: its own name). pg_cron's tables are
-- row-level-secured by username: each role's runs come through a function it owns,
-- dwh.cron_job_runs() (the loader's, migration 0002) and dwh.cron_owner_job_runs() (0008).
CREATE OR REPLACE VIEW mart.cron_job_runs AS
SELECT r.jobname,
       coalesce(j.table_name, r.jobname) AS table_name,
       r.runs_as,
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
FROM (SELECT 'loader' AS runs_as, * FROM dwh.cron_job_runs()
      UNION ALL
      SELECT 'owner', * FROM dwh.cron_owner_job_runs()) r
LEFT JOIN dwh.refresh_jobs j USING (jobname);
