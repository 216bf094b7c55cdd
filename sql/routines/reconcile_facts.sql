-- The daily reconciliation: every kept day of each fact with an arrival watermark, counted at
-- the source and in the copy; the days that differ are replaced from the source in the same
-- transaction, and what was found is recorded in dwh.reconciliation (docs/architecture.md,
-- "Late data"). Only a few rows travel: one per day.

-- The query counting the rows per UTC day of [p_first, p_end) at a control-plane source, with
-- the sum of its integer key where it has one: one GROUP BY that postgres_fdw sends to the source
-- (its time index bounds the scan; the day is taken AT TIME ZONE INTERVAL '0', which it ships,
-- unlike 'UTC'), so a row per day travels.
CREATE OR REPLACE FUNCTION dwh.source_day_counts_query(w dwh.arrival_watermarks, p_first date, p_end date)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
    SELECT format(
        'SELECT day, n, s::numeric FROM (SELECT (%1$I AT TIME ZONE INTERVAL ''0'')::date AS day, count(*) AS n, %2$s AS s '
        'FROM %3$s WHERE %1$I >= %4$L::timestamptz AND %1$I < %5$L::timestamptz GROUP BY 1) c',
        w.time_column, CASE WHEN w.checksum_column IS NULL THEN 'NULL::numeric' ELSE format('sum(%I)', w.checksum_column) END,
        w.source, p_first::timestamptz, p_end::timestamptz)
$$;

-- Rows per UTC day of [p_first, p_end) at w's source (and their key sum): the query above, or
-- for Prometheus the reader's per-day count of the samples a refresh would copy.
CREATE OR REPLACE FUNCTION dwh.source_day_counts(w dwh.arrival_watermarks, p_first date, p_end date)
RETURNS TABLE (day date, row_count bigint, key_sum numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
BEGIN
    IF w.day_counts = 'prometheus' THEN
        RETURN QUERY SELECT c.day, c.samples, NULL::numeric FROM dwh.read_metric_day_counts(p_first, p_end) c;
        RETURN;
    END IF;
    RETURN QUERY EXECUTE dwh.source_day_counts_query(w, p_first, p_end);
END
$$;

-- The same of the copy (dwh.<table>); for metrics, the samples of the configured metrics.
CREATE OR REPLACE FUNCTION dwh.copy_day_counts(w dwh.arrival_watermarks, p_first date, p_end date)
RETURNS TABLE (day date, row_count bigint, key_sum numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
BEGIN
    IF w.day_counts = 'prometheus' THEN
        RETURN QUERY
        SELECT (m.ts AT TIME ZONE 'UTC')::date, count(*), NULL::numeric
        FROM dwh.metrics m JOIN dwh.metric_series s USING (series_id)
        WHERE m.ts >= p_first::timestamptz AND m.ts < p_end::timestamptz
          AND s.metric_name = ANY (string_to_array(dwh.setting('metrics.names'), ','))
        GROUP BY 1;
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT (%1$I AT TIME ZONE ''UTC'')::date, count(*), %2$s FROM dwh.%3$I '
        'WHERE %1$I >= $1 AND %1$I < $2 GROUP BY 1',
        w.time_column, CASE WHEN w.checksum_column IS NULL THEN 'NULL::numeric' ELSE format('sum(%I)::numeric', w.checksum_column) END,
        w.table_name)
    USING p_first::timestamptz, p_end::timestamptz;
END
$$;

-- Each UTC day of [p_first, p_end) found at w's source or in its copy, with both counts and
-- whether they (or their key sums) differ. `source_gone`: Prometheus holds nothing for the
-- day while the copy does (its own retention is shorter): not a difference a refresh repairs.
CREATE OR REPLACE FUNCTION dwh.compared_days(w dwh.arrival_watermarks, p_first date, p_end date)
RETURNS TABLE (day date, source_rows bigint, copy_rows bigint, differs boolean, source_gone boolean)
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(s.day, c.day), coalesce(s.row_count, 0), coalesce(c.row_count, 0),
           (s.row_count, s.key_sum) IS DISTINCT FROM (c.row_count, c.key_sum),
           w.day_counts = 'prometheus' AND s.day IS NULL
    FROM dwh.source_day_counts(w, p_first, p_end) s
    FULL JOIN dwh.copy_day_counts(w, p_first, p_end) c ON c.day = s.day
$$;

-- Reconcile one fact: every day from the first it keeps up to yesterday (today's rows are
-- still arriving: the scheduled refresh has it), compared with the source; the differing days
-- are replaced (through the fact's routine, which queues their marts). Takes the watermark's
-- row, as the scheduled refresh does, so the two never interleave.
CREATE OR REPLACE FUNCTION dwh.reconcile(p_table text)
RETURNS dwh.reconciliation
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_t0 timestamptz := clock_timestamp();
    w dwh.arrival_watermarks;
    v_first date := dwh.first_kept_day(p_table);
    v_end date := current_date;
    v_source bigint;
    v_copy bigint;
    v_differing date[];
    v_kept date[];
    v_repair date[];
    v_result dwh.reconciliation;
BEGIN
    SELECT * INTO w FROM dwh.arrival_watermarks WHERE table_name = p_table FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'dwh.reconcile: % is not a fact the warehouse reconciles', quote_literal(p_table)
            USING HINT = 'Facts with an arrival watermark in the catalog are reconciled; dwh migrate records them in dwh.arrival_watermarks.';
    END IF;
    SELECT sum(d.source_rows), sum(d.copy_rows),
           coalesce(array_agg(d.day ORDER BY d.day) FILTER (WHERE d.differs), '{}'),
           coalesce(array_agg(d.day ORDER BY d.day) FILTER (WHERE d.differs AND d.source_gone), '{}'),
           coalesce(array_agg(d.day ORDER BY d.day) FILTER (WHERE d.differs AND NOT d.source_gone), '{}')
      INTO v_source, v_copy, v_differing, v_kept, v_repair
    FROM dwh.compared_days(w, v_first, v_end) d;
    PERFORM dwh.refresh_days('dwh.refresh_' || p_table, v_repair);
    INSERT INTO dwh.reconciliation (table_name, first_day, end_day, days_compared, source_rows, copy_rows,
                                    differing_days, repaired_days, kept_days, started_at, finished_at)
    VALUES (p_table, v_first, v_end, greatest(v_end - v_first, 0), coalesce(v_source, 0), coalesce(v_copy, 0),
            v_differing, v_repair, v_kept, v_t0, clock_timestamp())
    RETURNING * INTO v_result;
    IF cardinality(v_differing) > 0 THEN
        RAISE NOTICE 'dwh.reconcile: % day(s) of % differed from the source; replaced: %; kept (not at the source): %',
            cardinality(v_differing), p_table, v_repair, v_kept;
    END IF;
    RETURN v_result;
END
$$;

-- What the pg_cron job runs: every reconciled fact, each on its own (a source that fails is
-- recorded with its error, the others are still reconciled), one dwh.refresh_log row for the run.
CREATE OR REPLACE FUNCTION dwh.reconcile_facts()
RETURNS SETOF dwh.reconciliation
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_t0 timestamptz := clock_timestamp();
    v_table text;
    v_result dwh.reconciliation;
    v_started timestamptz;
    v_message text;
    v_rows bigint := 0;
    v_days bigint := 0;
    v_purged bigint;
BEGIN
    FOR v_table IN SELECT table_name FROM dwh.arrival_watermarks ORDER BY table_name LOOP
        v_started := clock_timestamp();
        BEGIN
            v_result := dwh.reconcile(v_table);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
            RAISE WARNING 'dwh.reconcile_facts: % could not be reconciled: %', v_table, v_message;
            INSERT INTO dwh.reconciliation (table_name, error, started_at, finished_at)
            VALUES (v_table, v_message, v_started, clock_timestamp())
            RETURNING * INTO v_result;
        END;
        v_rows := v_rows + 1;
        v_days := v_days + v_result.days_compared;
        RETURN NEXT v_result;
    END LOOP;
    -- A row per fact and day: keep about the longest retention's worth.
    DELETE FROM dwh.reconciliation WHERE finished_at < now() - interval '400 days';
    GET DIAGNOSTICS v_purged = ROW_COUNT;
    PERFORM dwh.log_refresh('reconciliation', NULL, NULL, NULL, v_rows, 0, v_purged, v_days, v_t0, 0);
END
$$;
