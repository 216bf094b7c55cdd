-- Rebuild a mart (materialized view) from the local copies; logged like every refresh.
-- Once a mart is populated it is refreshed CONCURRENTLY (an EXCLUSIVE lock: readers keep
-- reading the previous contents until the refresh commits; it needs the unique key index
-- of 0007.mart_keys). The first build is a plain refresh, the only kind an unpopulated
-- materialized view accepts.
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
    v_mart regclass := to_regclass('mart.' || quote_ident(p_mart));
    v_populated boolean;
    v_wait double precision;
    v_rows bigint;
BEGIN
    IF v_mart IS NULL OR (SELECT relkind FROM pg_class WHERE oid = v_mart) <> 'm' THEN
        RAISE EXCEPTION 'no mart named %', quote_literal(p_mart)
            USING HINT = 'Marts are the materialized views of schema mart.';
    END IF;
    v_wait := dwh.lock_refresh('mart.' || p_mart);
    -- Read after the lock: a concurrent first build may just have populated it.
    SELECT relispopulated INTO v_populated FROM pg_class WHERE oid = v_mart;
    IF v_populated THEN
        EXECUTE format('REFRESH MATERIALIZED VIEW CONCURRENTLY mart.%I', p_mart);
    ELSE
        EXECUTE format('REFRESH MATERIALIZED VIEW mart.%I', p_mart);
    END IF;
    EXECUTE format('SELECT count(*) FROM mart.%I', p_mart) INTO v_rows;
    RETURN dwh.log_refresh('mart.' || p_mart, NULL, NULL, NULL, v_rows, 0, 0, NULL, v_t0, v_wait);
END
$$;
