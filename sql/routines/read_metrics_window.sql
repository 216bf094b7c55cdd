-- Stage the Prometheus samples of [p_start, p_end) into the temporary table
-- pg_temp.stage_metrics(metric_name, metric_labels, metric_time, metric_value), through
-- the configured backend ('reader' or 'tembo', dwh.settings 'backend.prometheus').

-- tembo backend: prometheus_fdw pushes down only metric_name = const and strict
-- metric_time > / < int4 literals, and answers at most 11,000 points per series, so the
-- window becomes one literal query per metric and chunk of at most 11,000 x step.
CREATE OR REPLACE FUNCTION dwh.tembo_metric_queries(p_start timestamptz, p_end timestamptz, p_step int, p_metrics text[])
RETURNS SETOF text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_first bigint := ceil(extract(epoch FROM p_start) / p_step)::bigint * p_step;   -- aligned, >= start
    v_end bigint := ceil(extract(epoch FROM p_end))::bigint;                          -- exclusive
    v_chunk bigint := 11000::bigint * p_step;
    v_lo bigint;
    m text;
BEGIN
    IF v_end > 2147483647 OR v_first - 1 < -2147483648 THEN
        RAISE EXCEPTION 'window [%, %) is outside what prometheus_fdw accepts (int4 epoch seconds)', p_start, p_end;
    END IF;
    FOREACH m IN ARRAY p_metrics LOOP
        IF m !~ '^[a-zA-Z_:][a-zA-Z0-9_:]*$' THEN
            RAISE EXCEPTION 'invalid metric name %', quote_literal(m);
        END IF;
        v_lo := v_first;
        WHILE v_lo < v_end LOOP
            -- samples t with v_lo <= t < least(v_lo + chunk, end): strict bounds lo-1 < t < hi
            RETURN NEXT format(
                'SELECT metric_name, metric_labels, metric_time, metric_value FROM src_prometheus.metrics '
                'WHERE metric_name = %L AND metric_time > %s AND metric_time < %s',
                m, v_lo - 1, least(v_lo + v_chunk, v_end));
            v_lo := v_lo + v_chunk;
        END LOOP;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION dwh.read_metrics_window(p_start timestamptz, p_end timestamptz)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_backend text := dwh.setting('backend.prometheus', 'reader');
    v_step int := dwh.setting('metrics.step_seconds', '3600')::int;
    v_metrics text[] := string_to_array(dwh.setting('metrics.names'), ',');
    v_ft text := 'prometheus_window_' || pg_backend_pid() || '_' || txid_current();
    v_args text[];
    v_q text;
    v_rows bigint;
BEGIN
    CREATE TEMP TABLE stage_metrics (
        metric_name text, metric_labels jsonb, metric_time bigint, metric_value double precision
    ) ON COMMIT DROP;
    IF v_backend = 'reader' THEN
        v_args := ARRAY['prometheus', '--start', floor(extract(epoch FROM p_start))::bigint::text,
                        '--end', ceil(extract(epoch FROM p_end))::bigint::text, '--step', v_step::text];
        SELECT v_args || array_agg(x) FROM (SELECT unnest(ARRAY['--metric', m]) x FROM unnest(v_metrics) m) s INTO v_args;
        -- A temporary foreign table per window: the window is part of the program's
        -- arguments, concurrent refreshes don't collide, nothing lands in the catalog.
        EXECUTE format('CREATE FOREIGN TABLE pg_temp.%I (metric_name text, metric_labels jsonb, metric_time bigint, metric_value double precision) '
                       'SERVER dwh_reader OPTIONS (program %L, format %L, encoding %L)',
                       v_ft, dwh.reader_command(v_args), 'csv', 'UTF8');
        EXECUTE format('INSERT INTO pg_temp.stage_metrics SELECT * FROM pg_temp.%I', v_ft);
        EXECUTE format('DROP FOREIGN TABLE pg_temp.%I', v_ft);
    ELSIF v_backend = 'tembo' THEN
        FOR v_q IN SELECT dwh.tembo_metric_queries(p_start, p_end, v_step, v_metrics) LOOP
            EXECUTE 'INSERT INTO pg_temp.stage_metrics ' || v_q;
        END LOOP;
    ELSE
        RAISE EXCEPTION 'unknown Prometheus backend %: expected reader or tembo', quote_literal(v_backend);
    END IF;
    SELECT count(*) INTO v_rows FROM pg_temp.stage_metrics;
    RETURN v_rows;
END
$$;
