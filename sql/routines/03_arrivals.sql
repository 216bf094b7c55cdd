-- Late-arriving rows. A fact's scheduled refresh replaces its window (today and the lookback)
-- and, first, every day before it that received rows since the last committed lookup, found
-- through the source's arrival column (dwh.arrival_watermarks, from the catalog's `arrival`);
-- the daily reconciliation (reconcile_facts.sql) catches what a lookup cannot see.
-- docs/architecture.md, "Late data".

-- The first UTC day a fact keeps: the history's start, or its retention's if later.
CREATE OR REPLACE FUNCTION dwh.first_kept_day(p_table text)
RETURNS date
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT greatest(dwh.setting('history.start', '1970-01-01')::date, dwh.retention_start(p_table))
$$;

-- The type of a foreign table's column, as a cast names it.
CREATE OR REPLACE FUNCTION dwh.column_type(p_relation regclass, p_column text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format_type(atttypid, atttypmod) FROM pg_attribute
    WHERE attrelid = p_relation AND attname = p_column AND attnum > 0 AND NOT attisdropped
$$;

-- The later of two arrival values of type p_type (text, as dwh.arrival_watermarks keeps them).
-- A time is capped at now(): a source clock ahead of ours must not push the watermark past
-- rows still to come (it only makes the next lookups read a little more).
CREATE OR REPLACE FUNCTION dwh.later_arrival(p_type text, p_a text, p_b text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v text;
BEGIN
    EXECUTE format('SELECT greatest($1::%s, $2::%s)::text', p_type, p_type) INTO v USING p_a, p_b;
    IF v IS NOT NULL AND p_type = 'timestamp with time zone' THEN
        v := least(v::timestamptz, now())::text;
    END IF;
    RETURN v;
END
$$;

-- The query that finds the UTC days of the rows that arrived at w's source past its read_after:
-- `unseen`, the days with a row past seen_up_to (no committed lookup saw it), `overlap`, the
-- days whose rows all lie in (read_after, seen_up_to] (seen before, or committed late by a long
-- transaction), and `newest`, the newest arrival value found. Its inner GROUP BY is what
-- postgres_fdw sends to the source, which answers it from its index on the arrival column: the
-- day is taken AT TIME ZONE INTERVAL '0' (a 'UTC' text carries a collation postgres_fdw will not
-- ship) and the bounds are literals of the column's type (constants it ships).
CREATE OR REPLACE FUNCTION dwh.arrival_lookup_query(w dwh.arrival_watermarks)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format(
        'SELECT max(newest)::text, coalesce(array_agg(day ORDER BY day) FILTER (WHERE newest > %1$L::%2$s), ''{}''), '
        'coalesce(array_agg(day ORDER BY day) FILTER (WHERE newest <= %1$L::%2$s), ''{}'') '
        'FROM (SELECT (%3$I AT TIME ZONE INTERVAL ''0'')::date AS day, max(%4$I) AS newest FROM %5$s '
        'WHERE %4$I > %6$L::%2$s GROUP BY 1) s',
        coalesce(w.seen_up_to, w.read_after), dwh.column_type(w.source::regclass, w.arrival_column),
        w.time_column, w.arrival_column, w.source, w.read_after)
$$;

-- Run that lookup (or, before the first, read where the arrivals stand).
CREATE OR REPLACE FUNCTION dwh.arrived_days(w dwh.arrival_watermarks, OUT newest text, OUT unseen date[], OUT overlap date[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
BEGIN
    unseen := '{}';
    overlap := '{}';
    IF w.read_after IS NULL THEN
        -- No watermark yet: start at the newest arrival (what came before was copied by the first load).
        EXECUTE format('SELECT m::text FROM (SELECT max(%I) AS m FROM %s) s', w.arrival_column, w.source) INTO newest;
        RETURN;
    END IF;
    EXECUTE dwh.arrival_lookup_query(w) INTO newest, unseen, overlap;
END
$$;

-- Replace the days of p_days (ascending) with p_routine, one call per run of consecutive
-- days, in the caller's transaction; returns each call's refresh_log row.
CREATE OR REPLACE FUNCTION dwh.refresh_days(p_routine text, p_days date[])
RETURNS SETOF dwh.refresh_log
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_from date;
    v_to date;
BEGIN
    FOR v_from, v_to IN
        SELECT min(d), max(d) + 1 FROM (SELECT d, d - (row_number() OVER (ORDER BY d))::int AS run
                                        FROM unnest(p_days) AS d) s
        GROUP BY run ORDER BY 1
    LOOP
        RETURN QUERY EXECUTE format('SELECT * FROM %s($1, $2)', p_routine) USING v_from::timestamptz, v_to::timestamptz;
    END LOOP;
END
$$;

-- The scheduled refresh of a fact with an arrival watermark: the days before [p_start, p_end)
-- that received rows since the last lookup (a day of the overlap only when its count differs
-- from the source's: it was replaced already unless a long transaction committed late), then
-- the window; the watermark moves in the same transaction. Days older than what the warehouse
-- keeps (the history's start, retention) are counted in the watermark's row and not copied.
-- Every replaced day queues its marts (through the fact's routine). Returns the log rows.
CREATE OR REPLACE FUNCTION dwh.refresh_with_arrivals(p_table text, p_start timestamptz, p_end timestamptz)
RETURNS SETOF dwh.refresh_log
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    w dwh.arrival_watermarks;
    a record;
    v_routine text := 'dwh.refresh_' || p_table;
    v_kept date;
    v_late date[] := '{}';
    v_old date[] := '{}';
    v_seen text;
    v_promote boolean;
BEGIN
    -- The watermark's row is the lock: one scheduled refresh or reconciliation of a fact at a time.
    SELECT * INTO w FROM dwh.arrival_watermarks WHERE table_name = p_table FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'dwh.refresh_with_arrivals: % has no arrival watermark', quote_literal(p_table)
            USING HINT = 'A fact declares it in the catalog (arrival); dwh migrate records it in dwh.arrival_watermarks.';
    END IF;
    IF w.arrival_column IS NOT NULL THEN
        BEGIN
            a := dwh.arrived_days(w);
        EXCEPTION
            WHEN query_canceled OR data_exception OR syntax_error_or_access_rule_violation OR fdw_error THEN
                -- The lookup is the run's first read of the source: a stall or drift is named as the refresh's own.
                PERFORM dwh.raise_source_read_error(p_table, SQLSTATE, SQLERRM);
                RAISE;
        END;
        v_kept := dwh.first_kept_day(p_table);
        -- A day at or after the window's start is in the window (or not yet refreshable: the window reaches it later).
        v_late := ARRAY(
            SELECT d FROM unnest(a.unseen) d WHERE d < p_start::date
            UNION
            SELECT d FROM unnest(a.overlap) d WHERE d < p_start::date AND d >= v_kept
              AND EXISTS (SELECT FROM dwh.compared_days(w, d, d + 1) c WHERE c.differs)
            ORDER BY 1);
        v_old := ARRAY(SELECT d FROM unnest(v_late) d WHERE d < v_kept);
        v_late := ARRAY(SELECT d FROM unnest(v_late) d WHERE d >= v_kept ORDER BY d);
        IF cardinality(v_old) > 0 THEN
            RAISE WARNING 'dwh.refresh_with_arrivals: rows arrived for % day(s) of % before %, the first day the warehouse keeps; they are not copied (latest: %)',
                cardinality(v_old), p_table, v_kept, (SELECT max(d) FROM unnest(v_old) d);
        END IF;
        -- Older days first, the window last: advisory locks are taken in day order, as every refresh takes them.
        RETURN QUERY SELECT * FROM dwh.refresh_days(v_routine, v_late);
    END IF;
    RETURN QUERY EXECUTE format('SELECT * FROM %s($1, $2)', v_routine) USING p_start, p_end;
    IF w.arrival_column IS NULL THEN
        RETURN;
    END IF;
    v_seen := dwh.later_arrival(dwh.column_type(w.source::regclass, w.arrival_column), w.seen_up_to, a.newest);
    -- read_after trails seen_up_to by at least `overlap`: it takes a value seen that long ago.
    v_promote := w.read_after IS NULL OR w.next_since <= now() - w.overlap;
    UPDATE dwh.arrival_watermarks SET
        read_after = CASE WHEN w.read_after IS NULL THEN v_seen WHEN v_promote THEN w.next_read_after ELSE w.read_after END,
        seen_up_to = v_seen,
        next_read_after = CASE WHEN v_promote THEN v_seen ELSE w.next_read_after END,
        next_since = CASE WHEN v_promote THEN now() ELSE w.next_since END,
        late_days_replaced = w.late_days_replaced + cardinality(v_late),
        last_late_day = greatest(w.last_late_day, (SELECT max(d) FROM unnest(v_late) d)),
        late_days_too_old = w.late_days_too_old + cardinality(v_old),
        last_too_old_day = greatest(w.last_too_old_day, (SELECT max(d) FROM unnest(v_old) d)),
        moved_at = now()
    WHERE table_name = p_table;
END
$$;
