-- depends: 0002.bookkeeping
-- Which table each refresh job refreshes, named as dwh.refresh_log names it ('users' for a
-- copy, 'mart.<name>' for a mart): written by `dwh migrate` from the catalog, so the health
-- views join it instead of parsing the table back out of the job's name.
CREATE TABLE dwh.refresh_jobs (
    jobname    text PRIMARY KEY,   -- the pg_cron job, e.g. dwh:refresh_users
    table_name text NOT NULL       -- dwh.refresh_log.table_name of its refreshes
);
REVOKE ALL ON dwh.refresh_jobs FROM dwh_reader;
COMMENT ON TABLE dwh.refresh_jobs IS 'Which table each pg_cron refresh job refreshes (from the catalog, written by dwh migrate).';
COMMENT ON COLUMN dwh.refresh_jobs.jobname IS 'The pg_cron job.';
COMMENT ON COLUMN dwh.refresh_jobs.table_name IS 'What its refreshes write in dwh.refresh_log.table_name.';
