-- What every refresh routine does before and after its own SQL: validate the window,
-- serialise on advisory locks, make sure partitions exist, and log in the same transaction.

-- Register a table for daily partitions with pg_partman (`dwh migrate` calls it for each catalog
-- table it creates). The one place that knows pg_partman's major version: 4.x spells it
-- ('native', 'daily'), 5.x ('range', '1 day').
CREATE OR REPLACE FUNCTION dwh.partman_create_daily(p_parent text, p_control text, p_start date)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_major int := split_part((SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'), '.', 1)::int;
BEGIN
    IF v_major >= 5 THEN
        EXECUTE 'SELECT partman.create_parent(p_parent_table := $1, p_control := $2, p_interval := $3, p_type := $4, p_premake := $5, p_start_partition := $6)'
        USING p_parent, p_control, '1 day', 'range', 7, p_start::text;
    ELSE
        PERFORM partman.create_parent(
            p_parent_table := p_parent, p_control := p_control, p_type := 'native',
            p_interval := 'daily', p_premake := 7, p_start_partition := p_start::text);
    END IF;
    -- Keep creating future partitions even when no new data arrives.
    UPDATE partman.part_config SET infinite_time_partitions = true WHERE parent_table = p_parent;
END
$$;

-- The first UTC day a fact's retention keeps (pg_partman drops older partitions); NULL: all.
CREATE OR REPLACE FUNCTION dwh.retention_start(p_table text)
RETURNS date
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (now() AT TIME ZONE 'UTC')::date - retention::interval
    FROM partman.part_config WHERE parent_table = 'dwh.' || p_table
$$;

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
    IF p_start < dwh.retention_start(p_table)::timestamp AT TIME ZONE 'UTC' THEN
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

-- The same guard for a fact's window: a source that returns far fewer rows for a window than
-- the warehouse held has more likely purged them (an event archive kept for a few days) than
-- lost them, and the warehouse is where that history lives on: refuse instead of emptying it.
CREATE OR REPLACE FUNCTION dwh.check_window_drop(p_table text, p_start timestamptz, p_end timestamptz,
                                                 p_source_rows bigint, p_deleted_rows bigint)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_max_drop numeric := dwh.setting('refresh.max_drop_fraction', '0.5')::numeric;
BEGIN
    IF p_deleted_rows > 0 AND p_source_rows < p_deleted_rows * (1 - v_max_drop) THEN
        RAISE EXCEPTION 'dwh.refresh_%: the source returned % rows for [%, %), the warehouse holds %: refusing to delete more than % of the window', p_table, p_source_rows, p_start, p_end, p_deleted_rows, to_char(v_max_drop * 100, 'FM990') || '%'
            USING HINT = 'Nothing was changed. A source that purged these days no longer holds them, and the warehouse keeps them; if the rows are really gone, raise refresh.max_drop_fraction in dwh.settings for one run.';
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

-- Today's snapshot partition = the current table, in the snapshot's columns (no personal ones).
CREATE OR REPLACE FUNCTION dwh.write_snapshot(p_table text, p_day date)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_rows bigint;
    v_cols text := (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
                    WHERE attrelid = ('dwh.' || p_table || '_snapshot')::regclass AND attnum > 0 AND NOT attisdropped
                      AND attname <> 'snapshot_day');
BEGIN
    PERFORM dwh.ensure_partitions('dwh.' || p_table || '_snapshot', p_day::timestamptz, (p_day + 1)::timestamptz);
    EXECUTE format('DELETE FROM dwh.%I WHERE snapshot_day = $1', p_table || '_snapshot') USING p_day;
    EXECUTE format('INSERT INTO dwh.%I (snapshot_day, %s) SELECT $1, %s FROM dwh.%I', p_table || '_snapshot', v_cols, v_cols, p_table)
        USING p_day;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;

-- The refresh's log row, then the quality gate of the copy it wrote (03_quality_gate.sql),
-- both in the refresh's own transaction, whoever called it (pg_cron, Dagster, psql).
CREATE OR REPLACE FUNCTION dwh.log_refresh(
    p_table text, p_start timestamptz, p_end timestamptz, p_snapshot_day date,
    p_inserted bigint, p_updated bigint, p_deleted bigint, p_source_rows bigint,
    p_started_at timestamptz, p_lock_wait_ms double precision)
RETURNS dwh.refresh_log
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_log dwh.refresh_log;
BEGIN
    INSERT INTO dwh.refresh_log (table_name, window_start, window_end, snapshot_day, rows_inserted,
                                 rows_updated, rows_deleted, rows_source, started_at, finished_at, lock_wait_ms)
    VALUES (p_table, p_start, p_end, p_snapshot_day, coalesce(p_inserted, 0), coalesce(p_updated, 0),
            coalesce(p_deleted, 0), p_source_rows, p_started_at, clock_timestamp(), coalesce(p_lock_wait_ms, 0))
    RETURNING * INTO v_log;
    PERFORM dwh.apply_quality_gate(v_log);
    RETURN v_log;
END
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

-- The signature before p_copy_from, which would otherwise stay beside this one.
DROP FUNCTION IF EXISTS dwh.refresh_dimension(text, text, date, text, text);

-- The skeleton every dimension refresh shares: today's snapshot only, the table's lock, the
-- source read once into pg_temp.stage_<table> by the routine's own query (each scan of a
-- reader table is a full API read), the drop guard, the routine's statement that queues the
-- marts' days the change affects (it compares the stage with dwh.<table>), the merge on the
-- primary key, the snapshot and the log row, all in the caller's transaction. A failed read
-- is re-raised naming the table and the source: a source reader's failure, a Postgres source
-- that changed shape or did not answer within the run's timeout (00_source_drift.sql).
CREATE OR REPLACE FUNCTION dwh.refresh_dimension(
    p_table text, p_source text, p_snapshot_day date, p_stage text, p_mark_stale text DEFAULT NULL,
    p_copy_from text DEFAULT NULL)
RETURNS dwh.refresh_log
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_t0 timestamptz := clock_timestamp();
    v_stage text := 'stage_' || p_table;
    v_key text[] := (SELECT array_agg(a.attname::text ORDER BY k.i)
                     FROM pg_index x CROSS JOIN unnest(x.indkey) WITH ORDINALITY AS k(attnum, i)
                     JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
                     WHERE x.indrelid = ('dwh.' || p_table)::regclass AND x.indisprimary);
    v_wait double precision;
    v_src bigint;
    v_current bigint;
    v_counts bigint[];
    v_message text;
    v_detail text;
BEGIN
    PERFORM dwh.check_snapshot_day(p_table, p_snapshot_day);
    v_wait := dwh.lock_refresh(p_table);
    BEGIN
        IF p_copy_from IS NOT NULL AND dwh.setting('control_plane.transfer', 'fdw') = 'copy' THEN
            -- p_copy_from (a postgres_fdw table with the dimension's columns) through the events'
            -- binary COPY path, which parses each value once instead of row by row (benchmarks/README.md, B1).
            EXECUTE format('CREATE TEMP TABLE %I ON COMMIT DROP AS SELECT * FROM dwh.%I WITH NO DATA', v_stage, p_table);
            v_src := dwh.copy_from_foreign(('pg_temp.' || quote_ident(v_stage))::regclass, p_copy_from::regclass,
                                           (SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute
                                            WHERE attrelid = ('dwh.' || p_table)::regclass AND attnum > 0
                                              AND NOT attisdropped AND attgenerated = ''),
                                           NULL, NULL, NULL);
        ELSE
            EXECUTE format('CREATE TEMP TABLE %I ON COMMIT DROP AS %s', v_stage, p_stage);
            GET DIAGNOSTICS v_src = ROW_COUNT;
        END IF;
    EXCEPTION
        WHEN external_routine_exception THEN
            -- The source reader failed: say which source and why (the data stays as it was).
            GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
            PERFORM dwh.raise_source_failure(p_table, p_source, v_message, v_detail);
        WHEN query_canceled OR data_exception OR syntax_error_or_access_rule_violation OR fdw_error THEN
            PERFORM dwh.raise_source_read_error(p_table, SQLSTATE, SQLERRM);
            RAISE;
    END;
    -- Whom `dwh forget` erased stays out while the source still holds them (03_erasure.sql).
    v_src := v_src - dwh.leave_out_forgotten(p_table, ('pg_temp.' || quote_ident(v_stage))::regclass);
    EXECUTE format('SELECT count(*) FROM dwh.%I', p_table) INTO v_current;
    PERFORM dwh.check_source_drop(p_table, v_src, v_current);
    IF p_mark_stale IS NOT NULL THEN
        EXECUTE p_mark_stale;
    END IF;
    v_counts := dwh.merge_dimension(p_table, ('pg_temp.' || quote_ident(v_stage))::regclass, v_key);
    PERFORM dwh.write_snapshot(p_table, p_snapshot_day);
    RETURN dwh.log_refresh(p_table, NULL, NULL, p_snapshot_day, v_counts[1], v_counts[2], v_counts[3], v_src, v_t0, v_wait);
END
$$;
