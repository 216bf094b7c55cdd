-- depends: 0007.dashboard_filters
-- The owner's pg_cron jobs (pg_partman maintenance, its history purge) for the health dashboard.
-- pg_cron shows each role only its own jobs and runs (row-level security by username), and
-- dwh.cron_job_runs() (0002) runs as the loader login, whose jobs are the refreshes. This is the
-- same projection as the owner: `dwh migrate` hands it to the owner login (as the admin, after
-- the migrations) where that login is not dwh_owner itself. mart.cron_job_runs reads both; it is
-- dropped here (with the views that read it) and created again by the views' SQL files.
DROP VIEW IF EXISTS mart.cron_job_runs CASCADE;

CREATE FUNCTION dwh.cron_owner_job_runs()
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
REVOKE ALL ON FUNCTION dwh.cron_owner_job_runs() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dwh.cron_owner_job_runs() TO dwh_reader, dwh_loader;
COMMENT ON FUNCTION dwh.cron_owner_job_runs() IS
    'pg_cron jobs dwh:% of the owner login (maintenance) and their runs (14 days), for dwh_reader; owned by the owner login so row-level security shows its jobs.';
