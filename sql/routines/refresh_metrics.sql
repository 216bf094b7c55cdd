-- Prometheus samples of [p_start, p_end) -> dwh.metric_series (label sets) + dwh.metrics,
-- replacing the window in one transaction, with one refresh_log row. The reader backend streams
-- the window straight into dwh.metrics (dwh.copy_metrics_streamed); the other backends stage it
-- chunk by chunk (dwh.copy_metrics_staged).
CREATE OR REPLACE FUNCTION dwh.refresh_metrics(p_start timestamptz, p_end timestamptz)
RETURNS dwh.refresh_log
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_t0 timestamptz := clock_timestamp();
    v_wait double precision := dwh.begin_fact_refresh('metrics', p_start, p_end);
    v_counts bigint[];  -- {samples read, deleted, inserted}
BEGIN
    IF dwh.setting('backend.prometheus', 'reader') = 'reader' THEN
        v_counts := dwh.copy_metrics_streamed(p_start, p_end);
    ELSE
        v_counts := dwh.copy_metrics_staged(p_start, p_end);
    END IF;
    PERFORM dwh.refuse_absent_metrics(p_start, p_end);
    PERFORM dwh.mark_marts_stale_window('metrics', p_start, p_end);
    RETURN dwh.log_refresh('metrics', p_start, p_end, NULL, v_counts[3], 0, v_counts[2], v_counts[1], v_t0, v_wait);
END
$$;

-- The reader backend: the window's series, listed by the source reader, join dwh.metric_series,
-- their ids go back to the reader (`series-map`), and one COPY FROM PROGRAM takes the samples
-- straight into dwh.metrics as binary rows while the reader reads them (`prometheus-copy`):
-- Prometheus, the reader and this backend work side by side, and COPY inserts in batches, with
-- no staging table and no sort (the reader sends each group of requests in key order).
-- dwh.metric_series gets every label set Prometheus lists for the window (from an hour before
-- it: query_range looks back from each evaluation time), even one without a point in it.
-- A series that appears while the window is read (a new instance in the live window) stops the
-- reader (exit code 10); the window is then read again, up to three times. A day of the window
-- that held samples and gets none is refused, as a Prometheus that lost it is more likely than
-- a day that lost its samples. Returns {samples read, deleted, inserted}.
CREATE OR REPLACE FUNCTION dwh.copy_metrics_streamed(p_start timestamptz, p_end timestamptz)
RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    c_attempts constant int := 3;
    c_series_changed constant int := 10;
    v_window text[] := ARRAY['--start', floor(extract(epoch FROM p_start))::bigint::text,
                             '--end', ceil(extract(epoch FROM p_end))::bigint::text,
                             '--step', dwh.setting('metrics.step_seconds', '3600')]
        || ARRAY(SELECT a.arg FROM unnest(string_to_array(dwh.setting('metrics.names'), ',')) WITH ORDINALITY AS m(name, i),
                      unnest(ARRAY['--metric', m.name]) WITH ORDINALITY AS a(arg, j) ORDER BY m.i, a.j);
    v_days timestamptz[];
    v_parts oid[];
    v_inserted0 bigint[];
    v_deleted0 bigint[];
    v_key text;
    v_del bigint;
    v_ins bigint;
    v_emptied text;
    v_message text;
    v_detail text;
BEGIN
    -- The window's daily partitions (dwh.begin_fact_refresh made them), to see which days emptied.
    SELECT array_agg(d ORDER BY d), array_agg(to_regclass('dwh.metrics_p' || to_char(d, pc.datetime_string))::oid ORDER BY d)
      INTO v_days, v_parts
    FROM partman.part_config pc,
         generate_series(date_trunc('day', p_start), p_end - interval '1 microsecond', interval '1 day') AS d
    WHERE pc.parent_table = 'dwh.metrics';
    FOR v_attempt IN 1..c_attempts LOOP
        BEGIN
            v_key := pg_backend_pid() || '-' || txid_current() || '-' || v_attempt;
            PERFORM dwh.add_metric_series(v_window, v_key);
            -- This transaction's inserts and deletes per partition so far (pgstat keeps them per
            -- transaction, for free), to tell the days this read emptied.
            SELECT array_agg(pg_stat_get_xact_tuples_inserted(p) ORDER BY i), array_agg(pg_stat_get_xact_tuples_deleted(p) ORDER BY i)
              INTO v_inserted0, v_deleted0
            FROM unnest(v_parts) WITH ORDINALITY AS u(p, i);
            DELETE FROM dwh.metrics WHERE ts >= p_start AND ts < p_end;
            GET DIAGNOSTICS v_del = ROW_COUNT;
            EXECUTE format('COPY dwh.metrics (series_id, ts, value) FROM PROGRAM %L (FORMAT binary)',
                           dwh.reader_command(ARRAY['prometheus-copy'] || v_window || ARRAY['--series-map', v_key]));
            GET DIAGNOSTICS v_ins = ROW_COUNT;
            SELECT string_agg(to_char(v_days[i], 'YYYY-MM-DD') || ' (' || (pg_stat_get_xact_tuples_deleted(p) - v_deleted0[i]) || ' samples)', ', ' ORDER BY i)
              INTO v_emptied
            FROM unnest(v_parts) WITH ORDINALITY AS u(p, i)
            WHERE pg_stat_get_xact_tuples_deleted(p) > v_deleted0[i] AND pg_stat_get_xact_tuples_inserted(p) = v_inserted0[i];
            IF v_emptied IS NOT NULL THEN
                RAISE EXCEPTION 'dwh.refresh_metrics: Prometheus returned no samples for % of [%, %), which the warehouse holds; refusing to empty them', v_emptied, p_start, p_end
                    USING HINT = 'Check that Prometheus is up and still retains this window.';
            END IF;
            RETURN ARRAY[v_ins, v_del, v_ins];
        EXCEPTION WHEN external_routine_exception THEN
            GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
            IF coalesce(substring(v_detail FROM 'exited with exit code (\d+)')::int, 0) <> c_series_changed THEN
                PERFORM dwh.raise_source_failure('metrics', 'Prometheus', v_message, v_detail);
            ELSIF v_attempt = c_attempts THEN
                RAISE EXCEPTION 'dwh.refresh_metrics: source Prometheus added series while [%, %) was read, % times in a row', p_start, p_end, c_attempts
                    USING ERRCODE = '08006', DETAIL = v_detail,
                          HINT = 'Nothing was changed. Rerun the refresh; a window that ends before now is not affected.';
            END IF;
            RAISE NOTICE 'dwh.refresh_metrics: Prometheus added a series while [%, %) was read; reading it again', p_start, p_end;
        END;
    END LOOP;
END
$$;

-- The series of the window (`prometheus-series`) -> dwh.metric_series (the new ones, in label
-- order: the first load numbers them as Prometheus sorts them), and their ids back to the reader
-- under p_key (`series-map`), each with its label set exactly as the reader wrote it.
CREATE OR REPLACE FUNCTION dwh.add_metric_series(p_window text[], p_key text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS stage_metric_series (metric_name text, labels text) ON COMMIT DROP;
    TRUNCATE pg_temp.stage_metric_series;
    EXECUTE format('COPY pg_temp.stage_metric_series FROM PROGRAM %L (FORMAT csv, ENCODING %L)',
                   dwh.reader_command(ARRAY['prometheus-series'] || p_window), 'UTF8');
    INSERT INTO dwh.metric_series (metric_name, labels)
    SELECT metric_name, labels::jsonb FROM pg_temp.stage_metric_series ORDER BY 1, 2
    ON CONFLICT (metric_name, labels) DO NOTHING;
    EXECUTE format('COPY (SELECT ms.series_id, s.metric_name, s.labels FROM pg_temp.stage_metric_series s '
                   'JOIN dwh.metric_series ms ON ms.metric_name = s.metric_name AND ms.labels = s.labels::jsonb) '
                   'TO PROGRAM %L (FORMAT csv, ENCODING %L)',
                   dwh.reader_command(ARRAY['series-map', '--key', p_key]), 'UTF8');
END
$$;

-- The other backends (tembo's prometheus_fdw): the window read in chunks of at most ~STAGE_ROWS
-- samples (series x points), newest first, each staged by dwh.read_metrics_window and inserted
-- sorted by day and series, so a first materialisation of a year of a large fleet stages a
-- bounded amount at a time while a routine window of a day or two is one chunk. A chunk's
-- length comes from the most series seen so far: the series the warehouse already knows for the
-- configured metrics (all it ever saw: an upper bound), or, on a first load, the series of the
-- previous chunk; the first chunk of a first load is one day. Newest first, because a fleet that
-- grows has its most series at the end. Returns {samples read, deleted, inserted}.
CREATE OR REPLACE FUNCTION dwh.copy_metrics_staged(p_start timestamptz, p_end timestamptz)
RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    c_stage_rows constant bigint := 2000000;
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
    RETURN ARRAY[v_src_total, v_del_total, v_ins_total];
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
