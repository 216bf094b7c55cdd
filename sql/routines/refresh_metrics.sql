-- Prometheus samples of [p_start, p_end) -> dwh.metric_series (label sets) + dwh.metrics.
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
    v_src bigint;
    v_del bigint;
    v_ins bigint;
    v_existing bigint;
BEGIN
    v_src := dwh.read_metrics_window(p_start, p_end);
    -- prometheus_fdw answers errors with zero rows and a WARNING: never let an empty
    -- answer wipe a window that had samples.
    IF v_src = 0 THEN
        SELECT count(*) INTO v_existing FROM dwh.metrics WHERE ts >= p_start AND ts < p_end;
        IF v_existing > 0 THEN
            RAISE EXCEPTION 'dwh.refresh_metrics: Prometheus returned no samples for [%, %), which holds % in the warehouse; refusing to empty it', p_start, p_end, v_existing
                USING HINT = 'Check that Prometheus is up and still retains this window.';
        END IF;
    END IF;
    INSERT INTO dwh.metric_series (metric_name, labels)
    SELECT DISTINCT metric_name, metric_labels FROM pg_temp.stage_metrics
    ON CONFLICT (metric_name, labels) DO NOTHING;
    DELETE FROM dwh.metrics WHERE ts >= p_start AND ts < p_end;
    GET DIAGNOSTICS v_del = ROW_COUNT;
    INSERT INTO dwh.metrics (series_id, ts, value)
    SELECT s.series_id, to_timestamp(w.metric_time), w.metric_value
    FROM pg_temp.stage_metrics w
    JOIN dwh.metric_series s ON s.metric_name = w.metric_name AND s.labels = w.metric_labels
    WHERE to_timestamp(w.metric_time) >= p_start AND to_timestamp(w.metric_time) < p_end;
    GET DIAGNOSTICS v_ins = ROW_COUNT;
    PERFORM dwh.mark_marts_stale_window('metrics', p_start, p_end);
    RETURN dwh.log_refresh('metrics', p_start, p_end, NULL, v_ins, 0, v_del, v_src, v_t0, v_wait);
END
$$;
