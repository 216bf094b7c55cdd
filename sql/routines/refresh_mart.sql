-- Rebuild a mart (materialized view) from the local copies; logged like every refresh.
CREATE OR REPLACE FUNCTION dwh.refresh_mart(p_mart text)
RETURNS dwh.refresh_log
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- The marts' days (generate_series + interval '1 day') are UTC days whatever the caller's TimeZone.
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_t0 timestamptz := clock_timestamp();
    v_wait double precision;
    v_rows bigint;
BEGIN
    IF to_regclass('mart.' || quote_ident(p_mart)) IS NULL
       OR (SELECT relkind FROM pg_class WHERE oid = to_regclass('mart.' || quote_ident(p_mart))) <> 'm' THEN
        RAISE EXCEPTION 'no mart named %', quote_literal(p_mart)
            USING HINT = 'Marts are the materialized views of schema mart.';
    END IF;
    v_wait := dwh.lock_refresh('mart.' || p_mart);
    EXECUTE format('REFRESH MATERIALIZED VIEW mart.%I', p_mart);
    EXECUTE format('SELECT count(*) FROM mart.%I', p_mart) INTO v_rows;
    RETURN dwh.log_refresh('mart.' || p_mart, NULL, NULL, NULL, v_rows, 0, 0, NULL, v_t0, v_wait);
END
$$;
