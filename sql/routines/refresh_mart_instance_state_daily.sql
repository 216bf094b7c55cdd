-- The mart people read (the stored days with the owner's current name and plan, joined at read
-- time), and its refresh: mart.instance_state_daily_days for the UTC days of [p_start, p_end),
-- from dwh.instance_state, per organization and region of the instances (dwh.instances; 'unknown'
-- for an instance not copied yet, whose days its copy's refresh queues again).
CREATE OR REPLACE VIEW mart.instance_state_daily AS
SELECT d.day, d.state, d.transitions, d.instances, d.organization_id, d.region, o.name AS organization_name, o.plan
FROM mart.instance_state_daily_days d
LEFT JOIN dwh.organizations o USING (organization_id);

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
    INSERT INTO mart.instance_state_daily_days (day, state, transitions, instances, organization_id, region)
    SELECT (s.changed_at AT TIME ZONE 'UTC')::date, s.state, count(*), count(DISTINCT s.instance_id),
           coalesce(i.organization_id, 'unknown'), coalesce(i.region, 'unknown')
    FROM dwh.instance_state s
    LEFT JOIN dwh.instances i USING (instance_id)
    WHERE s.changed_at >= p_start AND s.changed_at < p_end
    GROUP BY 1, 2, 5, 6;
    GET DIAGNOSTICS v_ins = ROW_COUNT;
    RETURN dwh.log_refresh('mart.instance_state_daily', p_start, p_end, NULL, v_ins, 0, v_del, NULL, v_t0, v_wait);
END
$$;
