-- Prometheus samples of [p_start, p_end) -> dwh.metric_series (label sets) + dwh.metrics.
--
-- The window is read in chunks of at most ~STAGE_ROWS samples (series x points), newest
-- first, so a first materialisation of a year of a large fleet stages a bounded amount at
-- a time (the reader's memory, the temporary stage and the sort are bounded too), while a
-- routine window of a day or two is one chunk. A chunk's length comes from the most series
-- seen so far: the series the warehouse already knows for the configured metrics (all it
-- ever saw: an upper bound), or, on a first load, the series of the previous chunk; the
-- first chunk of a first load is one day. Newest first, because a fleet that grows has its
-- most series at the end. Everything stays one transaction: the window is replaced
-- completely, with one refresh_log row, or not at all.
CREATE OR REPLACE FUNCTION dwh.refresh_metrics(p_start timestamptz, p_end timestamptz)
RETURNS dwh.refresh_log
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    c_stage_rows constant bigint := 2000000;
    v_t0 timestamptz := clock_timestamp();
    v_wait double precision := dwh.begin_fact_refresh('metrics', p_start, p_end);
    v_step int := dwh.setting('metrics.step_seconds', '3600')::int;
    v_series bigint;
    v_points bigint;
    v_lo timestamptz;
    v_hi timestamptz := p_end;
    v_src bigint;
    v_chunk_series bigint;
    v_existing bigint;
    v_del bigint;
    v_ins bigint;
    v_src_total bigint := 0;
    v_del_total bigint := 0;
    v_ins_total bigint := 0;
BEGIN
    SELECT count(*) INTO v_series FROM dwh.metric_series
    WHERE metric_name = ANY (string_to_array(dwh.setting('metrics.names'), ','));
    WHILE v_hi > p_start LOOP
        v_points := CASE WHEN v_series = 0 THEN 86400 / v_step ELSE greatest(1, c_stage_rows / v_series) END;
        -- On the step grid, so that chunks tile the window sample by sample.
        v_lo := greatest(p_start, to_timestamp((ceil(extract(epoch FROM v_hi) / v_step) - v_points) * v_step));
        v_src := dwh.read_metrics_window(v_lo, v_hi);
        -- prometheus_fdw answers errors with zero rows and a WARNING: never let an empty
        -- answer wipe a chunk that had samples.
        IF v_src = 0 THEN
            SELECT count(*) INTO v_existing FROM dwh.metrics WHERE ts >= v_lo AND ts < v_hi;
            IF v_existing > 0 THEN
                RAISE EXCEPTION 'dwh.refresh_metrics: Prometheus returned no samples for [%, %), which holds % in the warehouse; refusing to empty it', v_lo, v_hi, v_existing
                    USING HINT = 'Check that Prometheus is up and still retains this window.';
            END IF;
        END IF;
        WITH seen AS (
            SELECT metric_name, metric_labels::jsonb AS labels FROM pg_temp.stage_metrics WHERE kind = 's'
        ), added AS (
            INSERT INTO dwh.metric_series (metric_name, labels)
            SELECT metric_name, labels FROM seen
            ON CONFLICT (metric_name, labels) DO NOTHING
        )
        SELECT count(*) INTO v_chunk_series FROM seen;
        v_series := greatest(v_series, v_chunk_series);
        -- The chunk's series numbers -> series ids, with statistics (a temporary table has
        -- none unless analysed, and a misjudged join of samples to series is a nested loop).
        CREATE TEMP TABLE IF NOT EXISTS stage_metric_ids (series_no int PRIMARY KEY, series_id bigint NOT NULL) ON COMMIT DROP;
        TRUNCATE pg_temp.stage_metric_ids;
        INSERT INTO pg_temp.stage_metric_ids
        SELECT s.series_no, ms.series_id
        FROM pg_temp.stage_metrics s
        JOIN dwh.metric_series ms ON ms.metric_name = s.metric_name AND ms.labels = s.metric_labels::jsonb
        WHERE s.kind = 's';
        ANALYZE pg_temp.stage_metric_ids;
        DELETE FROM dwh.metrics WHERE ts >= v_lo AND ts < v_hi;
        GET DIAGNOSTICS v_del = ROW_COUNT;
        -- Sorted by day, series and time: each partition and its key index are filled in
        -- one run instead of a partition switch at every sample. EXECUTE: planned with this
        -- chunk's bounds every time (a generic plan would guess the range's selectivity).
        -- Integer bounds: to_timestamp(t) >= v_lo <=> t >= ceil(epoch of v_lo), same for < v_hi.
        EXECUTE
            'INSERT INTO dwh.metrics (series_id, ts, value) '
            'SELECT m.series_id, to_timestamp(v.metric_time), v.metric_value '
            'FROM pg_temp.stage_metrics v JOIN pg_temp.stage_metric_ids m USING (series_no) '
            'WHERE v.kind = ''v'' AND v.metric_time >= $1 AND v.metric_time < $2 '
            'ORDER BY v.metric_time / 86400, m.series_id, v.metric_time'
        USING ceil(extract(epoch FROM v_lo))::bigint, ceil(extract(epoch FROM v_hi))::bigint;
        GET DIAGNOSTICS v_ins = ROW_COUNT;
        v_src_total := v_src_total + v_src;
        v_del_total := v_del_total + v_del;
        v_ins_total := v_ins_total + v_ins;
        v_hi := v_lo;
    END LOOP;
    PERFORM dwh.refuse_absent_metrics(p_start, p_end);
    PERFORM dwh.mark_marts_stale_window('metrics', p_start, p_end);
    RETURN dwh.log_refresh('metrics', p_start, p_end, NULL, v_ins_total, 0, v_del_total, v_src_total, v_t0, v_wait);
END
$$;

-- A configured metric without a single sample on a day of the window on which the others have
-- samples was renamed or is no longer exported (or its name in the deployment is wrong): the
-- refresh fails naming it and the days, rather than commit the window without it. Day by day,
-- each query planned with its bounds (one partition), stopping at the first sample it finds.
CREATE OR REPLACE FUNCTION dwh.refuse_absent_metrics(p_start timestamptz, p_end timestamptz)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_names text[] := string_to_array(dwh.setting('metrics.names'), ',');
    v_day timestamptz;
    v_lo timestamptz;
    v_hi timestamptz;
    v_name text;
    v_found boolean;
    v_absent text;
    v_days text[] := '{}';
BEGIN
    FOR v_day IN SELECT generate_series(date_trunc('day', p_start), p_end - interval '1 microsecond', interval '1 day') LOOP
        v_lo := greatest(v_day, p_start);
        v_hi := least(v_day + interval '1 day', p_end);
        EXECUTE 'SELECT EXISTS (SELECT FROM dwh.metrics WHERE ts >= $1 AND ts < $2)' INTO v_found USING v_lo, v_hi;
        CONTINUE WHEN NOT v_found;  -- a day without any sample is the empty-window rule's and samples_complete's
        FOREACH v_name IN ARRAY v_names LOOP
            EXECUTE 'SELECT EXISTS (SELECT FROM dwh.metric_series s JOIN dwh.metrics x USING (series_id) '
                    'WHERE s.metric_name = $3 AND x.ts >= $1 AND x.ts < $2)' INTO v_found USING v_lo, v_hi, v_name;
            IF NOT v_found AND (v_absent IS NULL OR v_absent = v_name) THEN
                v_absent := v_name;
                v_days := v_days || v_day::date::text;
            END IF;
        END LOOP;
    END LOOP;
    IF v_absent IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'HV005',
            MESSAGE = format('dwh.refresh_metrics: source Prometheus has no samples of metric %s (table dwh.metrics) on %s, '
                             'while the other metrics have: renamed or no longer exported', v_absent, array_to_string(v_days, ', ')),
            HINT = format('Nothing was changed. If Prometheus exports it under another name now, set %s to that name in the '
                          'deployment configuration and run `dwh migrate`.',
                          coalesce((SELECT 'prometheus.' || key FROM dwh.settings WHERE key LIKE 'metrics.%' AND value = v_absent
                                    AND key NOT IN ('metrics.names', 'metrics.step_seconds') LIMIT 1), 'prometheus.metrics'));
    END IF;
END
$$;
