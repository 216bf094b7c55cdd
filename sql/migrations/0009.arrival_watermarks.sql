-- depends: 0008.cron_owner_job_runs
-- How far each fact's scheduled refresh has followed its source's arrivals (docs/architecture.md,
-- "Late data"). `dwh migrate` writes the declaration columns from the catalog (a fact's
-- `arrival`); dwh.refresh_with_arrivals moves the watermark in the transaction of the refresh
-- that read up to it, so it advances only with a committed refresh; dwh.reconcile reads it.
-- Arrival values are kept as text of the source column's type (UTC for times).
CREATE TABLE dwh.arrival_watermarks (
    table_name         text PRIMARY KEY,        -- the fact, as dwh.refresh_log names it
    source             text NOT NULL,           -- the foreign table it copies
    time_column        text NOT NULL,           -- its partition (event time) column, at the source and in the copy
    arrival_column     text,                    -- the source column that grows as rows arrive; NULL: none (re-read horizon)
    overlap            interval NOT NULL,       -- how far behind the newest arrival each lookup starts
    checksum_column    text,                    -- an integer key the reconciliation sums per day; NULL: counts only
    day_counts         text NOT NULL CHECK (day_counts IN ('fdw', 'prometheus')),
    read_after         text,                    -- lookups read rows whose arrival value is past this; NULL: not started
    seen_up_to         text,                    -- the newest arrival value a committed refresh has seen
    next_read_after    text,                    -- seen_up_to as it was at next_since: read_after once overlap has passed
    next_since         timestamptz,
    late_days_replaced bigint NOT NULL DEFAULT 0,
    last_late_day      date,
    late_days_too_old  bigint NOT NULL DEFAULT 0,
    last_too_old_day   date,
    moved_at           timestamptz              -- when a committed refresh last moved it
);
REVOKE ALL ON dwh.arrival_watermarks FROM dwh_reader;
COMMENT ON TABLE dwh.arrival_watermarks IS 'Per fact: its arrival watermark (declared in the catalog, written by dwh migrate) and how far its committed scheduled refreshes have followed it.';
COMMENT ON COLUMN dwh.arrival_watermarks.table_name IS 'The fact, as dwh.refresh_log names it.';
COMMENT ON COLUMN dwh.arrival_watermarks.source IS 'The foreign table it copies.';
COMMENT ON COLUMN dwh.arrival_watermarks.time_column IS 'Its partition (event time) column.';
COMMENT ON COLUMN dwh.arrival_watermarks.arrival_column IS 'The source column whose value grows as rows arrive; NULL: the source has none, the scheduled window is the re-read horizon.';
COMMENT ON COLUMN dwh.arrival_watermarks.overlap IS 'How long a source transaction may take between taking an arrival value and committing: lookups re-read that much.';
COMMENT ON COLUMN dwh.arrival_watermarks.checksum_column IS 'An integer key the reconciliation sums per day besides counting; NULL: counts only.';
COMMENT ON COLUMN dwh.arrival_watermarks.day_counts IS 'How the reconciliation counts a day at the source: fdw (a pushed-down GROUP BY) or prometheus (the reader''s per-day count).';
COMMENT ON COLUMN dwh.arrival_watermarks.read_after IS 'Lookups read the rows whose arrival value is past this; NULL until the first scheduled refresh.';
COMMENT ON COLUMN dwh.arrival_watermarks.seen_up_to IS 'The newest arrival value a committed scheduled refresh has seen.';
COMMENT ON COLUMN dwh.arrival_watermarks.next_read_after IS 'seen_up_to as it was at next_since; it becomes read_after once overlap has passed.';
COMMENT ON COLUMN dwh.arrival_watermarks.next_since IS 'When next_read_after was taken.';
COMMENT ON COLUMN dwh.arrival_watermarks.late_days_replaced IS 'Days before the scheduled window that scheduled refreshes replaced because rows arrived for them.';
COMMENT ON COLUMN dwh.arrival_watermarks.last_late_day IS 'The latest such day.';
COMMENT ON COLUMN dwh.arrival_watermarks.late_days_too_old IS 'Days that received rows older than the history the warehouse keeps (history start, retention): not copied.';
COMMENT ON COLUMN dwh.arrival_watermarks.last_too_old_day IS 'The latest such day.';
COMMENT ON COLUMN dwh.arrival_watermarks.moved_at IS 'When a committed scheduled refresh last moved the watermark.';
