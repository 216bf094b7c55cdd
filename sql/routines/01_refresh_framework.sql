-- What every refresh routine does before and after its own SQL: validate the window,
-- serialise on advisory locks, make sure partitions exist, and log in the same transaction.

-- Facts: [p_start, p_end) must be non-empty, not in the future, not older than retention.
CREATE OR REPLACE FUNCTION dwh.check_window(p_table text, p_start timestamptz, p_end timestamptz)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_retention interval;
    v_latest timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 day';
BEGIN
    IF p_start IS NULL OR p_end IS NULL THEN
        RAISE EXCEPTION 'dwh.refresh_%: window start and end are required', p_table;
    END IF;
    IF p_start >= p_end THEN
        RAISE EXCEPTION 'dwh.refresh_%: window [%, %) is empty or reversed', p_table, p_start, p_end
            USING HINT = 'The start must be before the end (windows are closed-open).';
    END IF;
    IF p_end > v_latest THEN
        RAISE EXCEPTION 'dwh.refresh_%: window [%, %) reaches into the future', p_table, p_start, p_end
            USING HINT = format('The latest refreshable window ends at %s (end of today, UTC).', v_latest);
    END IF;
    SELECT retention::interval INTO v_retention FROM partman.part_config WHERE parent_table = 'dwh.' || p_table;
    IF v_retention IS NOT NULL AND p_start < v_latest - v_retention - interval '1 day' THEN
        RAISE EXCEPTION 'dwh.refresh_%: window [%, %) starts before the retention of % (%)', p_table, p_start, p_end, p_table, v_retention
            USING HINT = 'Older partitions are dropped by pg_partman; raise retention_days in the catalog to keep more.';
    END IF;
END
$$;

-- Transaction-level advisory locks: one per (table, UTC day) for facts, one per table for
-- dimensions, taken in ascending order so overlapping windows serialise without deadlock
-- while disjoint windows run side by side. Returns how long it waited (ms).
CREATE OR REPLACE FUNCTION dwh.lock_refresh(p_table text, p_start timestamptz DEFAULT NULL, p_end timestamptz DEFAULT NULL)
RETURNS double precision
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_t0 timestamptz := clock_timestamp();
    v_class int := hashtext('dwh.refresh:' || p_table);
    v_day int;
    v_days int[];
BEGIN
    IF p_start IS NULL THEN
        v_days := ARRAY[-1];
    ELSE
        SELECT array_agg(d ORDER BY d) INTO v_days
        FROM generate_series(floor(extract(epoch FROM p_start) / 86400)::int,
                             ceil(extract(epoch FROM p_end) / 86400)::int - 1) AS d;
    END IF;
    FOREACH v_day IN ARRAY v_days LOOP
        IF NOT pg_try_advisory_xact_lock(v_class, v_day) THEN
            RAISE NOTICE 'dwh.refresh_%: waiting for a concurrent refresh of the same table/window', p_table;
            PERFORM pg_advisory_xact_lock(v_class, v_day);
        END IF;
    END LOOP;
    RETURN extract(epoch FROM clock_timestamp() - v_t0) * 1000;
END
$$;

-- Partitions for every day of a window (older than pg_partman's start, e.g. a backfill).
CREATE OR REPLACE FUNCTION dwh.ensure_partitions(p_parent text, p_start timestamptz, p_end timestamptz)
RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- pg_partman names and bounds partitions in the session's TimeZone: days are UTC days.
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_fmt text;
    v_missing timestamptz[];
BEGIN
    SELECT datetime_string INTO v_fmt FROM partman.part_config WHERE parent_table = p_parent;
    IF v_fmt IS NULL THEN
        RAISE EXCEPTION '% is not managed by pg_partman', p_parent;
    END IF;
    SELECT array_agg(d_local AT TIME ZONE 'UTC') INTO v_missing
    FROM generate_series(date_trunc('day', p_start AT TIME ZONE 'UTC'),
                         (p_end AT TIME ZONE 'UTC') - interval '1 microsecond', interval '1 day') AS d_local
    WHERE to_regclass(p_parent || '_p' || to_char(d_local, v_fmt)) IS NULL;
    IF v_missing IS NOT NULL THEN
        PERFORM partman.create_partition_time(p_parent, v_missing);
        RETURN cardinality(v_missing);
    END IF;
    RETURN 0;
END
$$;

-- Dimensions: a snapshot can only be taken of today's source state.
CREATE OR REPLACE FUNCTION dwh.check_snapshot_day(p_table text, p_day date)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_today date := (now() AT TIME ZONE 'UTC')::date;
BEGIN
    IF p_day IS NULL OR p_day <> v_today THEN
        RAISE EXCEPTION 'dwh.refresh_%: cannot build the snapshot of % from a current-state source (today is %)', p_table, coalesce(p_day::text, 'NULL'), v_today
            USING HINT = 'Dimension sources only know their current state: refresh today''s partition; past snapshots are kept as they were taken.';
    END IF;
END
$$;

-- A dimension source that suddenly returns far fewer rows is more likely broken than
-- emptied: refuse beyond the drop threshold instead of wiping the table.
CREATE OR REPLACE FUNCTION dwh.check_source_drop(p_table text, p_source_rows bigint, p_current_rows bigint)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_max_drop numeric := dwh.setting('refresh.max_drop_fraction', '0.5')::numeric;
BEGIN
    IF p_current_rows > 0 AND p_source_rows < p_current_rows * (1 - v_max_drop) THEN
        RAISE EXCEPTION 'dwh.refresh_%: the source returned % rows, the warehouse has %: refusing to delete more than % of the table', p_table, p_source_rows, p_current_rows, to_char(v_max_drop * 100, 'FM990') || '%'
            USING HINT = 'Check the source; if the drop is real, raise refresh.max_drop_fraction in dwh.settings for one run (refresh.max_drop_fraction in the deployment configuration + dwh migrate sets it for good).';
    END IF;
END
$$;

-- Make dwh.<p_table> equal to the staged source rows: update the rows that changed, insert the
-- new ones, delete the rows gone at the source. Three joins with the stage, so a row that did
-- not change is not written (INSERT ... ON CONFLICT DO UPDATE ... WHERE locks, and so writes,
-- every row it finds, changed or not) and a first load is a plain insert. The stage has the
-- current table's columns; returns {inserted, updated, deleted}.
CREATE OR REPLACE FUNCTION dwh.merge_dimension(p_table text, p_stage regclass, p_key text[])
RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cols text[];
    v_set text;
    v_cmp_t text;
    v_cmp_s text;
    v_match text := (SELECT string_agg(format('t.%1$s = s.%1$s', quote_ident(k)), ' AND ') FROM unnest(p_key) k);
    v_ins bigint;
    v_upd bigint := 0;
    v_del bigint;
BEGIN
    SELECT array_agg(quote_ident(attname::text) ORDER BY attnum) INTO v_cols
    FROM pg_attribute
    WHERE attrelid = ('dwh.' || p_table)::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '';
    SELECT string_agg(format('%1$s = s.%1$s', c), ', '), string_agg('t.' || c, ', '), string_agg('s.' || c, ', ')
      INTO v_set, v_cmp_t, v_cmp_s
    FROM unnest(v_cols) c WHERE c <> ALL (SELECT quote_ident(k) FROM unnest(p_key) k);
    IF v_set IS NOT NULL THEN
        EXECUTE format('UPDATE dwh.%I t SET %s FROM %s s WHERE %s AND (%s) IS DISTINCT FROM (%s)',
                       p_table, v_set, p_stage, v_match, v_cmp_t, v_cmp_s);
        GET DIAGNOSTICS v_upd = ROW_COUNT;
    END IF;
    EXECUTE format('INSERT INTO dwh.%I (%s) SELECT %s FROM %s s WHERE NOT EXISTS (SELECT 1 FROM dwh.%I t WHERE %s)',
                   p_table, array_to_string(v_cols, ', '), (SELECT string_agg('s.' || c, ', ') FROM unnest(v_cols) c),
                   p_stage, p_table, v_match);
    GET DIAGNOSTICS v_ins = ROW_COUNT;
    EXECUTE format('DELETE FROM dwh.%I t WHERE NOT EXISTS (SELECT 1 FROM %s s WHERE %s)', p_table, p_stage, v_match);
    GET DIAGNOSTICS v_del = ROW_COUNT;
    RETURN ARRAY[v_ins, v_upd, v_del];
END
$$;

-- Today's snapshot partition = the current table.
CREATE OR REPLACE FUNCTION dwh.write_snapshot(p_table text, p_day date)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_rows bigint;
BEGIN
    PERFORM dwh.ensure_partitions('dwh.' || p_table || '_snapshot', p_day::timestamptz, (p_day + 1)::timestamptz);
    EXECUTE format('DELETE FROM dwh.%I WHERE snapshot_day = $1', p_table || '_snapshot') USING p_day;
    EXECUTE format('INSERT INTO dwh.%I SELECT $1, * FROM dwh.%I', p_table || '_snapshot', p_table) USING p_day;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;

CREATE OR REPLACE FUNCTION dwh.log_refresh(
    p_table text, p_start timestamptz, p_end timestamptz, p_snapshot_day date,
    p_inserted bigint, p_updated bigint, p_deleted bigint, p_source_rows bigint,
    p_started_at timestamptz, p_lock_wait_ms double precision)
RETURNS dwh.refresh_log
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO dwh.refresh_log (table_name, window_start, window_end, snapshot_day, rows_inserted,
                                 rows_updated, rows_deleted, rows_source, started_at, finished_at, lock_wait_ms)
    VALUES (p_table, p_start, p_end, p_snapshot_day, coalesce(p_inserted, 0), coalesce(p_updated, 0),
            coalesce(p_deleted, 0), p_source_rows, p_started_at, clock_timestamp(), coalesce(p_lock_wait_ms, 0))
    RETURNING *
$$;

-- The common start of a fact refresh: validate, lock, make partitions. Returns lock wait (ms).
CREATE OR REPLACE FUNCTION dwh.begin_fact_refresh(p_table text, p_start timestamptz, p_end timestamptz)
RETURNS double precision
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_wait double precision;
BEGIN
    PERFORM dwh.check_window(p_table, p_start, p_end);
    v_wait := dwh.lock_refresh(p_table, p_start, p_end);
    PERFORM dwh.ensure_partitions('dwh.' || p_table, p_start, p_end);
    RETURN v_wait;
END
$$;

-- A source reader (file_fdw `program`) failed, and PostgreSQL only says "program ... failed:
-- child process exited with exit code N". The reader's exit code is its failure class
-- (EXIT_CODES in dwh_assets/sources/reader.py): re-raise naming the table, the source and
-- the cause, with the reader's one-line reason in DETAIL and what to do in HINT. Called from
-- the refresh routines' `EXCEPTION WHEN external_routine_exception` handlers.
CREATE OR REPLACE FUNCTION dwh.raise_source_failure(p_table text, p_source text, p_message text, p_detail text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_code int := substring(p_detail FROM 'exited with exit code (\d+)')::int;
    v_config_match text[] := regexp_match(p_message, '--config (?:''([^'']+)''|(\S+))');
    v_config text := coalesce(v_config_match[1], v_config_match[2], 'reader.json');
    v_cause text;
    v_state text;
    v_hint text;
    v_reason text;
BEGIN
    SELECT cause, sqlstate, hint INTO v_cause, v_state, v_hint
    FROM (VALUES
        (1, 'failed: the source reader hit an internal error', 'XX000',
            'This is a bug in the source reader; the reason is in DETAIL and the PostgreSQL log. Nothing was changed.'),
        (2, 'failed: the source reader refused its arguments or settings', '22023',
            format('Check the reader settings in %s (`dwh reader install` rewrites them from [reader] of the deployment configuration). Nothing was changed.', v_config)),
        (3, 'is unreachable', '08001',
            format('Check that the source is up and that its URL in %s is right; nothing was changed, rerun the refresh when it answers.', v_config)),
        (4, 'did not answer in time', '08006',
            'The source is hanging or slow; nothing was changed. Rerun later, or raise timeout_seconds / total_timeout_seconds (reader.timeout_seconds, reader.total_timeout_seconds in the deployment configuration, then `dwh reader install`).'),
        (5, 'answered every retry with a server error (HTTP 5xx)', '08006',
            'The source is failing; nothing was changed. Rerun the refresh when it recovers (reader.max_retries sets how often the reader retries).'),
        (6, 'kept rate-limiting the reader (HTTP 429) until its retries ran out', '08006',
            'Nothing was changed. Rerun later, or let the reader wait longer (reader.max_retries, reader.max_retry_after_seconds, then `dwh reader install`).'),
        (7, 'refused the reader''s credentials (HTTP 401/403)', '28000',
            'Check the API key (clerk.secret_key_file of the deployment configuration, then `dwh reader install`). Nothing was changed.'),
        (8, 'sent a payload the warehouse cannot load (malformed, missing or mistyped fields)', '22000',
            'The source object named in DETAIL is broken or the API changed; fix it at the source, then rerun. Nothing was changed.'),
        (9, 'rejected the reader''s request (HTTP 4xx)', '38000',
            format('Check the source URL in %s and the API version (DETAIL says what was refused). Nothing was changed.', v_config))
    ) AS m(code, cause, sqlstate, hint)
    WHERE code = v_code;
    IF v_cause IS NULL THEN
        v_cause := 'failed: its reader ' || CASE
            WHEN p_detail IN ('command not found', 'command not executable') THEN 'could not be started (' || p_detail || ')'
            ELSE 'ended abnormally (' || coalesce(p_detail, 'no detail') || ')' END;
        v_state := '38000';
        v_hint := 'Check that the installed reader runs as the database server''s OS user (`dwh reader install` installs it). Nothing was changed.';
    END IF;
    IF v_code IS NOT NULL THEN
        -- The reader left its one-line reason for this backend; a failure here must not hide the original.
        BEGIN
            CREATE TEMP TABLE source_failure_reason (reason text) ON COMMIT DROP;
            EXECUTE format('COPY pg_temp.source_failure_reason FROM PROGRAM %L WITH (FORMAT csv)',
                dwh.reader_command(ARRAY['last-error', '--since', (floor(extract(epoch FROM transaction_timestamp())) - 1)::bigint::text,
                                         '--exit-code', v_code::text]));
            SELECT string_agg(reason, ' ') INTO v_reason FROM pg_temp.source_failure_reason;
        EXCEPTION WHEN OTHERS THEN
            v_reason := NULL;
        END;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = v_state,
        MESSAGE = format('dwh.refresh_%s: source %s %s', p_table, p_source, v_cause),
        DETAIL = concat_ws(E'\n', coalesce(v_reason, 'The reader''s reason is in the PostgreSQL server log.'),
                           format('%s: %s', p_message, p_detail)),
        HINT = v_hint;
END
$$;
