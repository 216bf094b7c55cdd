-- The mart people read (the stored days as they are), and its refresh: mart.instance_state_daily_days
-- for the UTC days of [p_start, p_end), from dwh.instance_state.
CREATE OR REPLACE VIEW mart.instance_state_daily AS
SELECT day, state, transitions, instances FROM mart.instance_state_daily_days;

CREATE OR REPLACE FUNCTION dwh.refresh_mart_instance_state_daily(p_start timestamptz, p_end timestamptz)
RETURNS dwh.refresh_log
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_t0 timestamptz := clock_timestamp();
    v_wait double precision := dwh.begin_mart_refresh('instance_state_daily', p_start, p_end);
    v_del bigint;
    v_ins bigint;
BEGIN
    DELETE FROM mart.instance_state_daily_days WHERE day >= p_start::date AND day < p_end::date;
    GET DIAGNOSTICS v_del = ROW_COUNT;
    INSERT INTO mart.instance_state_daily_days (day, state, transitions, instances)
    SELECT (changed_at AT TIME ZONE 'UTC')::date, state, count(*), count(DISTINCT instance_id)
    FROM dwh.instance_state
    WHERE changed_at >= p_start AND changed_at < p_end
    GROUP BY 1, 2;
    GET DIAGNOSTICS v_ins = ROW_COUNT;
    RETURN dwh.log_refresh('mart.instance_state_daily', p_start, p_end, NULL, v_ins, 0, v_del, NULL, v_t0, v_wait);
END
$$;
