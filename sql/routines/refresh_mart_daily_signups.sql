-- mart.daily_signups_days for the UTC days of [p_start, p_end), from dwh.users; the running
-- total is computed at read time by the view mart.daily_signups.
-- The mart people read: every UTC day from the first sign-up through today (a day without one:
-- zeros, so that charts run to today), with the running total of users, computed at read time.
CREATE OR REPLACE VIEW mart.daily_signups AS
SELECT d.day::date AS day,
       coalesce(s.signups, 0)::bigint AS signups,
       coalesce(s.with_email, 0)::bigint AS with_email,
       sum(coalesce(s.signups, 0)) OVER (ORDER BY d.day)::bigint AS total_users
FROM generate_series((SELECT min(day) FROM mart.daily_signups_days), (now() AT TIME ZONE 'UTC')::date,
                     interval '1 day') AS d(day)
LEFT JOIN mart.daily_signups_days s ON s.day = d.day::date;

CREATE OR REPLACE FUNCTION dwh.refresh_mart_daily_signups(p_start timestamptz, p_end timestamptz)
RETURNS dwh.refresh_log
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_t0 timestamptz := clock_timestamp();
    v_wait double precision := dwh.begin_mart_refresh('daily_signups', p_start, p_end);
    v_del bigint;
    v_ins bigint;
BEGIN
    DELETE FROM mart.daily_signups_days WHERE day >= p_start::date AND day < p_end::date;
    GET DIAGNOSTICS v_del = ROW_COUNT;
    INSERT INTO mart.daily_signups_days (day, signups, with_email)
    SELECT (created_at AT TIME ZONE 'UTC')::date, count(*), count(email)
    FROM dwh.users
    WHERE created_at >= p_start AND created_at < p_end
    GROUP BY 1;
    GET DIAGNOSTICS v_ins = ROW_COUNT;
    RETURN dwh.log_refresh('mart.daily_signups', p_start, p_end, NULL, v_ins, 0, v_del, NULL, v_t0, v_wait);
END
$$;
