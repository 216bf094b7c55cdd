-- depends: 0001.schemas
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
COMMENT ON TABLE dwh.refresh_log IS 'One row per committed refresh (same transaction as the data).';

-- Settings the routines read (backend per source, reader program, metrics step);
-- written by `dwh migrate` from the stack configuration. No secrets here.
CREATE TABLE dwh.settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
REVOKE ALL ON dwh.settings FROM dwh_reader;
