-- depends: 0011.snapshots_without_day_index
-- The quality gate on pg_cron's path (sql/routines/03_quality_gate.sql) and the freshness
-- expectations of the refresh jobs (sql/routines/04_freshness.sql, mart.refresh_freshness).

-- A queued mart day is held while a copy the mart reads failed a blocking check.
ALTER TABLE dwh.mart_pending
    ADD COLUMN held_reason text,
    ADD COLUMN held_since timestamptz;
COMMENT ON COLUMN dwh.mart_pending.held_reason IS 'Why the day waits: the failed blocking checks of the copies the mart reads (NULL: not held).';
COMMENT ON COLUMN dwh.mart_pending.held_since IS 'When the day was first held.';

-- Each copy's blocking checks, as the SQL dwh.apply_quality_gate runs: written by `dwh migrate`
-- from the catalog (the same queries Dagster's checks run).
CREATE TABLE dwh.quality_gates (
    copy        text NOT NULL,   -- dwh.refresh_log.table_name of the copy, e.g. instances
    check_name  text NOT NULL,
    description text NOT NULL,
    query       text NOT NULL,   -- counts offending rows (column bad); $1..$5: start, end, first_day, end_day, log id
    PRIMARY KEY (copy, check_name)
);
REVOKE ALL ON dwh.quality_gates FROM dwh_reader;
COMMENT ON TABLE dwh.quality_gates IS 'The blocking checks of each copy, run at the end of its refreshes (from the catalog, written by dwh migrate).';
COMMENT ON COLUMN dwh.quality_gates.copy IS 'The copy, as dwh.refresh_log.table_name names it.';
COMMENT ON COLUMN dwh.quality_gates.check_name IS 'The check, as Dagster names it on the copy''s asset.';
COMMENT ON COLUMN dwh.quality_gates.description IS 'What the check demands.';
COMMENT ON COLUMN dwh.quality_gates.query IS 'The query counting offending rows (column bad); parameters $1..$5: window start, end, first day, end day, refresh_log id.';

-- The latest verdict of each copy's gate.
CREATE TABLE dwh.copy_gate (
    copy           text PRIMARY KEY,
    passed         boolean NOT NULL,
    reason         text,
    refresh_log_id bigint NOT NULL,
    checked_at     timestamptz NOT NULL
);
REVOKE ALL ON dwh.copy_gate FROM dwh_reader;
COMMENT ON TABLE dwh.copy_gate IS 'The latest quality-gate verdict of each copy: a failed one holds the queued days of the marts reading it.';
COMMENT ON COLUMN dwh.copy_gate.copy IS 'The copy, as dwh.refresh_log.table_name names it.';
COMMENT ON COLUMN dwh.copy_gate.passed IS 'Whether every blocking check of its latest refresh passed.';
COMMENT ON COLUMN dwh.copy_gate.reason IS 'The failed checks with their counts, and the refresh; NULL when it passed.';
COMMENT ON COLUMN dwh.copy_gate.refresh_log_id IS 'The refresh judged (dwh.refresh_log.id).';
COMMENT ON COLUMN dwh.copy_gate.checked_at IS 'When it was judged (the refresh''s transaction).';

-- How long each refresh usually takes (the catalog's typical_duration): with two intervals
-- of the job's schedule, how old its latest refresh may get.
ALTER TABLE dwh.refresh_jobs ADD COLUMN typical_duration interval NOT NULL DEFAULT interval '1 minute';
COMMENT ON COLUMN dwh.refresh_jobs.typical_duration IS 'How long its refresh usually takes (the catalog''s typical_duration).';
