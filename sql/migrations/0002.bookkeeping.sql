-- depends: 0001.schemas
-- The warehouse's own bookkeeping: what every refresh logs, the settings the routines read,
-- which marts each copy's refresh makes stale, and pg_cron's history for the dashboards.
-- The catalog's tables, views and their comments are not here: `dwh migrate` creates them
-- from dwh_assets/warehouse/catalog.py (docs/catalog.md).
--
-- Deployments migrated before the catalog created its tables have applied 0001-0009 and
-- 0020 (what this file and the catalog now do); yoyo skips what a database has applied, so
-- they keep their objects, and `dwh migrate` checks those against the catalog.

-- One row per committed refresh, written in the refresh's own transaction: if the
-- refresh rolls back, so does its log row (the Dagster sensor relies on that).
CREATE TABLE dwh.refresh_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name     text        NOT NULL,
    window_start   timestamptz,            -- facts: [window_start, window_end)
    window_end     timestamptz,
    snapshot_day   date,                   -- dimensions: the snapshot written
    rows_inserted  bigint      NOT NULL,
    rows_updated   bigint      NOT NULL,
    rows_deleted   bigint      NOT NULL,
    rows_source    bigint,                 -- rows read from the source
    started_at     timestamptz NOT NULL,
    finished_at    timestamptz NOT NULL,
    duration_ms    double precision GENERATED ALWAYS AS (extract(epoch FROM finished_at - started_at) * 1000) STORED,
    lock_wait_ms   double precision NOT NULL DEFAULT 0,
    backend_pid    integer     NOT NULL DEFAULT pg_backend_pid(),
    application    text        NOT NULL DEFAULT current_setting('application_name'),
    CHECK (window_start IS NULL OR window_start < window_end)
);
CREATE INDEX refresh_log_table_finished ON dwh.refresh_log (table_name, finished_at DESC);
CREATE INDEX refresh_log_pid_finished ON dwh.refresh_log (backend_pid, finished_at);
COMMENT ON TABLE dwh.refresh_log IS 'One row per committed refresh, written in the refresh''s own transaction: if it rolls back, so does its row.';
COMMENT ON COLUMN dwh.refresh_log.id IS 'Identity of the refresh.';
COMMENT ON COLUMN dwh.refresh_log.table_name IS 'What was refreshed: a catalog table (users, metrics, ...) or a mart (mart.org_daily_usage).';
COMMENT ON COLUMN dwh.refresh_log.window_start IS 'Facts and marts: start of the replaced window [window_start, window_end).';
COMMENT ON COLUMN dwh.refresh_log.window_end IS 'Facts and marts: end (exclusive) of the replaced window; NULL when a mart job found no queued day.';
COMMENT ON COLUMN dwh.refresh_log.snapshot_day IS 'Dimensions: the day of the snapshot the refresh wrote.';
COMMENT ON COLUMN dwh.refresh_log.rows_inserted IS 'Rows inserted (facts, marts: the rows now in the window).';
COMMENT ON COLUMN dwh.refresh_log.rows_updated IS 'Rows updated in place (dimensions).';
COMMENT ON COLUMN dwh.refresh_log.rows_deleted IS 'Rows deleted: the window''s previous rows, or rows gone at the source.';
COMMENT ON COLUMN dwh.refresh_log.rows_source IS 'Rows the refresh read from its source.';
COMMENT ON COLUMN dwh.refresh_log.started_at IS 'When the refresh started (before waiting for its locks).';
COMMENT ON COLUMN dwh.refresh_log.finished_at IS 'When the refresh wrote this row, just before its commit.';
COMMENT ON COLUMN dwh.refresh_log.duration_ms IS 'finished_at - started_at, in milliseconds.';
COMMENT ON COLUMN dwh.refresh_log.lock_wait_ms IS 'Time spent waiting for the advisory locks of a concurrent refresh of the same table or days.';
COMMENT ON COLUMN dwh.refresh_log.backend_pid IS 'The PostgreSQL backend that ran the refresh (how a pg_cron run is matched to its refresh).';
COMMENT ON COLUMN dwh.refresh_log.application IS 'application_name of the session: dagster, pg_cron, psql, ...';

-- Settings the routines read (backend per source, reader program, metrics step);
-- written by `dwh migrate` from the stack configuration. No secrets here.
CREATE TABLE dwh.settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
REVOKE ALL ON dwh.settings FROM dwh_reader;
COMMENT ON TABLE dwh.settings IS 'Settings the routines read (backends, reader command, metric names, history start, cron database), written by dwh migrate. No secrets.';
COMMENT ON COLUMN dwh.settings.key IS 'Setting name, e.g. metrics.step_seconds.';
COMMENT ON COLUMN dwh.settings.value IS 'Setting value, as text.';

-- Which copies make which marts stale: written by `dwh migrate` from the catalog.
CREATE TABLE dwh.mart_inputs (
    mart text NOT NULL,   -- mart name, e.g. org_daily_usage
    copy text NOT NULL,   -- local copy name, e.g. metrics
    PRIMARY KEY (copy, mart)
);

-- Days of a mart whose inputs changed since its last refresh of that day.
CREATE TABLE dwh.mart_pending (
    mart      text NOT NULL,
    day       date NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mart, day)
);
REVOKE ALL ON dwh.mart_inputs, dwh.mart_pending FROM dwh_reader;
COMMENT ON TABLE dwh.mart_inputs IS 'Which copies'' refreshes make which marts stale (from the catalog, written by dwh migrate).';
COMMENT ON COLUMN dwh.mart_inputs.mart IS 'Mart name.';
COMMENT ON COLUMN dwh.mart_inputs.copy IS 'Catalog table whose refreshes queue days of the mart.';
COMMENT ON TABLE dwh.mart_pending IS 'Days of a mart whose inputs changed since its last refresh of that day; its pg_cron job refreshes them.';
COMMENT ON COLUMN dwh.mart_pending.mart IS 'Mart name.';
COMMENT ON COLUMN dwh.mart_pending.day IS 'The UTC day to refresh.';
COMMENT ON COLUMN dwh.mart_pending.marked_at IS 'When a refresh first queued it.';

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
