-- A mart added the documented way (docs/adding-a-table.md): this file and one catalog entry.
-- Sign-ups per UTC day and email domain.
CREATE OR REPLACE VIEW mart.signup_domains AS
SELECT day, email_domain, signups FROM mart.signup_domains_days;

CREATE OR REPLACE FUNCTION dwh.refresh_mart_signup_domains(p_start timestamptz, p_end timestamptz)
RETURNS dwh.refresh_log
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_t0 timestamptz := clock_timestamp();
    v_wait double precision := dwh.begin_mart_refresh('signup_domains', p_start, p_end);
    v_del bigint;
    v_ins bigint;
BEGIN
    DELETE FROM mart.signup_domains_days WHERE day >= p_start::date AND day < p_end::date;
    GET DIAGNOSTICS v_del = ROW_COUNT;
    INSERT INTO mart.signup_domains_days (day, email_domain, signups)
    SELECT (created_at AT TIME ZONE 'UTC')::date, coalesce(split_part(email, '@', 2), ''), count(*)
    FROM dwh.users
    WHERE created_at >= p_start AND created_at < p_end
    GROUP BY 1, 2;
    GET DIAGNOSTICS v_ins = ROW_COUNT;
    RETURN dwh.log_refresh('mart.signup_domains', p_start, p_end, NULL, v_ins, 0, v_del, NULL, v_t0, v_wait);
END
$$;
