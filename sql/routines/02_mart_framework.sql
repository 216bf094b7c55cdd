-- What the incremental marts share: queueing the days a copy's refresh changed, starting a
-- mart refresh of a window of whole UTC days, and refreshing whatever is queued.

-- Queue ``p_days`` for every mart that reads ``p_copy`` (dwh.mart_inputs), in the caller's
-- transaction: if the copy's refresh rolls back, so do its marks. Sorted inserts: two
-- refreshes marking overlapping days never deadlock.
CREATE OR REPLACE FUNCTION dwh.mark_marts_stale(p_copy text, p_days date[])
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rows bigint;
BEGIN
    INSERT INTO dwh.mart_pending (mart, day)
    SELECT DISTINCT mi.mart, d
    FROM dwh.mart_inputs mi CROSS JOIN unnest(p_days) AS d
    WHERE mi.copy = p_copy AND d IS NOT NULL
    ORDER BY 1, 2
    ON CONFLICT (mart, day) DO NOTHING;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;

-- Queue the UTC days a fact refresh's window [p_start, p_end) touched.
CREATE OR REPLACE FUNCTION dwh.mark_marts_stale_window(p_copy text, p_start timestamptz, p_end timestamptz)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
    SELECT dwh.mark_marts_stale(p_copy, ARRAY(
        SELECT d::date FROM generate_series(date_trunc('day', p_start), p_end - interval '1 microsecond', interval '1 day') AS d))
$$;

-- Queue every UTC day from ``p_from``'s (no earlier than the history start) through today.
CREATE OR REPLACE FUNCTION dwh.mark_marts_stale_since(p_copy text, p_from timestamptz)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
    SELECT CASE WHEN p_from IS NULL THEN 0 ELSE dwh.mark_marts_stale_window(p_copy,
        greatest(date_trunc('day', p_from), dwh.setting('history.start', '1970-01-01')::date::timestamptz),
        date_trunc('day', now()) + interval '1 day') END
$$;

-- The start of a mart refresh: whole UTC days, not in the future; the mart's advisory locks
-- (per day, like the facts'); its partitions. Returns the lock wait (ms).
CREATE OR REPLACE FUNCTION dwh.begin_mart_refresh(p_mart text, p_start timestamptz, p_end timestamptz)
RETURNS double precision
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_wait double precision;
BEGIN
    IF p_start IS NULL OR p_end IS NULL OR p_start >= p_end THEN
        RAISE EXCEPTION 'dwh.refresh_mart_%: window [%, %) is empty or reversed', p_mart, p_start, p_end
            USING HINT = 'The start must be before the end (windows are closed-open).';
    END IF;
    IF p_start <> date_trunc('day', p_start) OR p_end <> date_trunc('day', p_end) THEN
        RAISE EXCEPTION 'dwh.refresh_mart_%: window [%, %) is not made of whole UTC days', p_mart, p_start, p_end
            USING HINT = 'Marts are refreshed by day: give UTC midnights.';
    END IF;
    IF p_end > date_trunc('day', now()) + interval '1 day' THEN
        RAISE EXCEPTION 'dwh.refresh_mart_%: window [%, %) reaches into the future', p_mart, p_start, p_end;
    END IF;
    v_wait := dwh.lock_refresh('mart.' || p_mart, p_start, p_end);
    PERFORM dwh.ensure_partitions('mart.' || p_mart || '_days', p_start, p_end);
    -- Days queued before this point are covered by this refresh; later marks stay queued, and
    -- so do held days (a failed copy check): the copy's next passing refresh releases them.
    DELETE FROM dwh.mart_pending WHERE mart = p_mart AND day >= p_start::date AND day < p_end::date
                                   AND held_reason IS NULL;
    RETURN v_wait;
END
$$;

-- Refresh the queued days of a mart: one window from the first to the last queued day (the
-- days between are cheap to recompute and keep it one refresh and one log row). Days held by
-- the quality gate wait (03_quality_gate.sql). With nothing to refresh it logs a refresh of no
-- window, so a pg_cron run always leaves its proof.
CREATE OR REPLACE FUNCTION dwh.refresh_pending_mart(p_mart text)
RETURNS dwh.refresh_log
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_t0 timestamptz := clock_timestamp();
    v_first date;
    v_last date;
    v_log dwh.refresh_log;
BEGIN
    IF NOT EXISTS (SELECT FROM dwh.mart_inputs WHERE mart = p_mart) THEN
        RAISE EXCEPTION 'no mart named %', quote_literal(p_mart)
            USING HINT = 'Marts are declared in the catalog; `dwh migrate` records them in dwh.mart_inputs.';
    END IF;
    SELECT min(day), max(day) INTO v_first, v_last FROM dwh.mart_pending
    WHERE mart = p_mart AND day <= (now() AT TIME ZONE 'UTC')::date AND held_reason IS NULL;
    IF v_first IS NULL THEN
        RETURN dwh.log_refresh('mart.' || p_mart, NULL, NULL, NULL, 0, 0, 0, 0, v_t0, 0);
    END IF;
    EXECUTE format('SELECT * FROM dwh.%I($1, $2)', 'refresh_mart_' || p_mart)
        INTO v_log USING v_first::timestamptz, (v_last + 1)::timestamptz;
    RETURN v_log;
END
$$;
