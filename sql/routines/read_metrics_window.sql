-- Stage the Prometheus samples of [p_start, p_end) into the temporary table
-- pg_temp.stage_metrics(metric_name, metric_labels, metric_time, metric_value), through
-- the configured backend ('reader' or 'tembo', dwh.settings 'backend.prometheus').

-- tembo backend. prometheus_fdw (tembo-io/prometheus_fdw src/lib.rs) pushes down only
-- `metric_name = <text>`, `metric_time > <int4>` and `metric_time < <int4>` (a bigint literal
-- is dropped) and sends them verbatim as query_range's query, start and end; Prometheus
-- evaluates at start, start + step, ... <= end, refuses (end - start) / step > 11,000, and
-- PostgreSQL re-applies the strict bounds to the rows. So each chunk asks for
-- start = lo - step (on the step grid, then dropped by `>`) and end <= start + 11,000 x step:
-- it keeps the grid points lo <= t < end, and consecutive chunks tile [p_start, p_end).
-- Labels lose __name__ (prometheus_fdw returns it), as the reader backend's do.
CREATE OR REPLACE FUNCTION dwh.tembo_metric_queries(p_start timestamptz, p_end timestamptz, p_step int, p_metrics text[])
RETURNS SETOF text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_first bigint;   -- the first grid point >= p_start
    v_end bigint;     -- grid points t < v_end are inside the window
    v_lo bigint;
    v_hi bigint;
    m text;
BEGIN
    IF p_start IS NULL OR p_end IS NULL OR p_step IS NULL OR p_step < 1 THEN
        RAISE EXCEPTION 'dwh.tembo_metric_queries: window [%, %) and a step of at least 1 second are required (step %)', p_start, p_end, p_step;
    END IF;
    v_first := ceil(extract(epoch FROM p_start) / p_step)::bigint * p_step;
    v_end := ceil(extract(epoch FROM p_end))::bigint;
    -- -2147483648 is not an int4 literal (it parses as -(2147483648::bigint)).
    IF v_end > 2147483647 OR v_first - p_step < -2147483647 THEN
        RAISE EXCEPTION 'dwh.tembo_metric_queries: window [%, %) is outside what prometheus_fdw accepts (int4 epoch seconds)', p_start, p_end
            USING HINT = 'prometheus_fdw only pushes down int4 time bounds: refresh windows between 1901-12-13 and 2038-01-19.';
    END IF;
    FOREACH m IN ARRAY coalesce(p_metrics, '{}') LOOP
        IF m IS NULL OR m !~ '^[a-zA-Z_:][a-zA-Z0-9_:]*$' THEN
            RAISE EXCEPTION 'dwh.tembo_metric_queries: invalid metric name %', coalesce(quote_literal(m), 'NULL')
                USING HINT = 'Metric names match [a-zA-Z_:][a-zA-Z0-9_:]* (dwh.settings metrics.names).';
        END IF;
        v_lo := v_first;
        WHILE v_lo < v_end LOOP
            v_hi := least(v_lo + 10999::bigint * p_step, v_end);
            RETURN NEXT format(
                'SELECT metric_name, metric_labels - %L AS metric_labels, metric_time, metric_value FROM src_prometheus.metrics '
                'WHERE metric_name = %L AND metric_time > %s AND metric_time < %s',
                '__name__', m, v_lo - p_step, v_hi);
            v_lo := v_hi;
        END LOOP;
    END LOOP;
END
$$;

-- The reader backend's window: a temporary foreign table whose program runs the source
-- reader for [p_start, p_end) (rows: kind 's' per series, then 'v' per sample, see below);
-- returns its name. The window is part of the program's arguments, concurrent refreshes don't
-- collide, nothing lands in the catalog. Used in the warehouse (reader backend) and on the
-- relay (dwh.relay_metrics_window).
CREATE OR REPLACE FUNCTION dwh.reader_metrics_table(p_start timestamptz, p_end timestamptz, p_step int, p_metrics text[])
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ft text := 'prometheus_window_' || pg_backend_pid() || '_' || txid_current() || '_' || floor(random() * 1e9)::bigint;
    v_args text[] := ARRAY['prometheus', '--start', floor(extract(epoch FROM p_start))::bigint::text,
                           '--end', ceil(extract(epoch FROM p_end))::bigint::text, '--step', p_step::text, '--series-rows'];
BEGIN
    SELECT v_args || array_agg(x) FROM (SELECT unnest(ARRAY['--metric', m]) x FROM unnest(p_metrics) m) s INTO v_args;
    EXECUTE format('CREATE FOREIGN TABLE pg_temp.%I (kind "char", series_no int, metric_name text, metric_labels text, metric_time bigint, metric_value double precision) '
                   'SERVER dwh_reader OPTIONS (program %L, format %L, encoding %L)',
                   v_ft, dwh.reader_command(v_args), 'csv', 'UTF8');
    RETURN v_ft;
END
$$;

-- On the relay (sources/relay.py): the window's rows for a warehouse that calls through
-- dblink (postgres_fdw cannot pass arguments to a remote function, and file_fdw pushes no
-- WHERE down). A reader failure is re-raised as the refresh's sentence, which dblink hands
-- to the warehouse with its SQLSTATE, DETAIL and HINT.
CREATE OR REPLACE FUNCTION dwh.relay_metrics_window(p_start timestamptz, p_end timestamptz, p_step int, p_metrics text[])
RETURNS TABLE (kind "char", series_no int, metric_name text, metric_labels text, metric_time bigint, metric_value double precision)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ft text := dwh.reader_metrics_table(p_start, p_end, p_step, p_metrics);
    v_message text;
    v_detail text;
BEGIN
    BEGIN
        RETURN QUERY EXECUTE format('SELECT * FROM pg_temp.%I', v_ft);
    EXCEPTION WHEN external_routine_exception THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
        PERFORM dwh.raise_source_failure('metrics', 'Prometheus (through the relay)', v_message, v_detail);
    END;
    EXECUTE format('DROP FOREIGN TABLE pg_temp.%I', v_ft);
END
$$;

-- Stage the samples of [p_start, p_end) into pg_temp.stage_metrics(kind, series_no,
-- metric_name, metric_labels, metric_time, metric_value): one row of kind 's' per series
-- (its number, name and labels as JSON text), then rows of kind 'v' (the series' number,
-- a time, a value). Label sets travel once per window, not once per sample: a year of a
-- large fleet is hundreds of millions of samples, and parsing their labels again and again
-- was most of the work. Called once per chunk of a refresh: the stage is emptied first.
-- Returns the number of samples.
CREATE OR REPLACE FUNCTION dwh.read_metrics_window(p_start timestamptz, p_end timestamptz)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_backend text := dwh.setting('backend.prometheus', 'reader');
    v_step int := dwh.setting('metrics.step_seconds', '3600')::int;
    v_metrics text[] := string_to_array(dwh.setting('metrics.names'), ',');
    v_ft text;
    v_q text;
    v_rows bigint;
    v_message text;
    v_detail text;
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS stage_metrics (
        kind "char", series_no int, metric_name text, metric_labels text, metric_time bigint, metric_value double precision
    ) ON COMMIT DROP;
    TRUNCATE pg_temp.stage_metrics;
    IF v_backend = 'reader' THEN
        v_ft := dwh.reader_metrics_table(p_start, p_end, v_step, v_metrics);
        BEGIN
            EXECUTE format('INSERT INTO pg_temp.stage_metrics SELECT * FROM pg_temp.%I', v_ft);
        EXCEPTION WHEN external_routine_exception THEN
            -- The source reader failed: say that it was Prometheus and why.
            GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
            PERFORM dwh.raise_source_failure('metrics', 'Prometheus', v_message, v_detail);
        END;
        EXECUTE format('DROP FOREIGN TABLE pg_temp.%I', v_ft);
    ELSIF v_backend = 'relay' THEN
        -- The relay's reader reads the window; dblink passes it (the server dwh_relay and its
        -- user mapping, foreign_tables.relay_ddl) and streams the rows back.
        INSERT INTO pg_temp.stage_metrics
        SELECT * FROM public.dblink('dwh_relay', format('SELECT * FROM dwh.relay_metrics_window(%L, %L, %s, %L)',
                                                        p_start, p_end, v_step, v_metrics))
            AS r(kind "char", series_no int, metric_name text, metric_labels text, metric_time bigint, metric_value double precision);
    ELSIF v_backend = 'tembo' THEN
        -- prometheus_fdw answers in the contract's shape (labels per sample): number the
        -- series here, into the same stage.
        CREATE TEMP TABLE IF NOT EXISTS stage_metrics_tembo (
            metric_name text, metric_labels jsonb, metric_time bigint, metric_value double precision
        ) ON COMMIT DROP;
        TRUNCATE pg_temp.stage_metrics_tembo;
        FOR v_q IN SELECT dwh.tembo_metric_queries(p_start, p_end, v_step, v_metrics) LOOP
            EXECUTE 'INSERT INTO pg_temp.stage_metrics_tembo ' || v_q;
        END LOOP;
        INSERT INTO pg_temp.stage_metrics (kind, series_no, metric_name, metric_labels)
        SELECT 's', row_number() OVER (), metric_name, metric_labels::text
        FROM (SELECT DISTINCT metric_name, metric_labels FROM pg_temp.stage_metrics_tembo) d;
        INSERT INTO pg_temp.stage_metrics (kind, series_no, metric_time, metric_value)
        SELECT 'v', s.series_no, t.metric_time, t.metric_value
        FROM pg_temp.stage_metrics_tembo t
        JOIN pg_temp.stage_metrics s ON s.kind = 's' AND s.metric_name = t.metric_name AND s.metric_labels = t.metric_labels::text;
    ELSE
        RAISE EXCEPTION 'unknown Prometheus backend %: expected reader, relay or tembo', quote_literal(v_backend);
    END IF;
    -- Temporary tables get no statistics unless asked: without them the planner joins the
    -- samples to their series by nested loop.
    ANALYZE pg_temp.stage_metrics;
    SELECT count(*) INTO v_rows FROM pg_temp.stage_metrics WHERE kind = 'v';
    RETURN v_rows;
END
$$;

-- ----- per-day sample counts, for the daily reconciliation ----------------------------------

-- The reader backend's per-day counts of [p_first, p_end): a temporary foreign table whose
-- program asks Prometheus for count(<metric>) at every step (one series per request) and sums
-- it per UTC day (rows: metric_name, day, samples); returns its name. Used in the warehouse
-- and on the relay (dwh.relay_metric_day_counts).
CREATE OR REPLACE FUNCTION dwh.reader_metric_day_counts_table(p_first date, p_end date, p_step int, p_metrics text[])
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_ft text := 'prometheus_days_' || pg_backend_pid() || '_' || txid_current() || '_' || floor(random() * 1e9)::bigint;
    v_args text[] := ARRAY['prometheus-days', '--start', extract(epoch FROM p_first::timestamptz)::bigint::text,
                           '--end', extract(epoch FROM p_end::timestamptz)::bigint::text, '--step', p_step::text];
BEGIN
    SELECT v_args || array_agg(x) FROM (SELECT unnest(ARRAY['--metric', m]) x FROM unnest(p_metrics) m) s INTO v_args;
    EXECUTE format('CREATE FOREIGN TABLE pg_temp.%I (metric_name text, day date, samples bigint) '
                   'SERVER dwh_reader OPTIONS (program %L, format %L, encoding %L)',
                   v_ft, dwh.reader_command(v_args), 'csv', 'UTF8');
    RETURN v_ft;
END
$$;

-- On the relay: the per-day counts for a warehouse that calls through dblink.
CREATE OR REPLACE FUNCTION dwh.relay_metric_day_counts(p_first date, p_end date, p_step int, p_metrics text[])
RETURNS TABLE (metric_name text, day date, samples bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ft text := dwh.reader_metric_day_counts_table(p_first, p_end, p_step, p_metrics);
    v_message text;
    v_detail text;
BEGIN
    BEGIN
        RETURN QUERY EXECUTE format('SELECT * FROM pg_temp.%I', v_ft);
    EXCEPTION WHEN external_routine_exception THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
        PERFORM dwh.raise_source_failure('metrics', 'Prometheus (through the relay)', v_message, v_detail);
    END;
    EXECUTE format('DROP FOREIGN TABLE pg_temp.%I', v_ft);
END
$$;

-- Samples per UTC day of [p_first, p_end) (whole days) that a refresh of the configured
-- metrics would copy, as Prometheus counts them: a few requests and one row per day, however
-- many series. The tembo backend cannot ask prometheus_fdw for count(), so it says so.
CREATE OR REPLACE FUNCTION dwh.read_metric_day_counts(p_first date, p_end date)
RETURNS TABLE (day date, samples bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_backend text := dwh.setting('backend.prometheus', 'reader');
    v_step int := dwh.setting('metrics.step_seconds', '3600')::int;
    v_metrics text[] := string_to_array(dwh.setting('metrics.names'), ',');
    v_ft text;
    v_message text;
    v_detail text;
BEGIN
    IF p_first >= p_end THEN
        RETURN;
    END IF;
    IF v_backend = 'reader' THEN
        v_ft := dwh.reader_metric_day_counts_table(p_first, p_end, v_step, v_metrics);
        BEGIN
            RETURN QUERY EXECUTE format('SELECT day, sum(samples)::bigint FROM pg_temp.%I GROUP BY 1', v_ft);
        EXCEPTION WHEN external_routine_exception THEN
            GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
            PERFORM dwh.raise_source_failure('metrics', 'Prometheus', v_message, v_detail);
        END;
        EXECUTE format('DROP FOREIGN TABLE pg_temp.%I', v_ft);
    ELSIF v_backend = 'relay' THEN
        RETURN QUERY
        SELECT r.day, sum(r.samples)::bigint
        FROM public.dblink('dwh_relay', format('SELECT * FROM dwh.relay_metric_day_counts(%L, %L, %s, %L)',
                                               p_first, p_end, v_step, v_metrics))
            AS r(metric_name text, day date, samples bigint)
        GROUP BY 1;
    ELSE
        RAISE EXCEPTION 'dwh.read_metric_day_counts: the % backend cannot count samples per day', v_backend
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'prometheus_fdw passes no PromQL function; the daily reconciliation of dwh.metrics needs the reader or relay backend.';
    END IF;
END
$$;
