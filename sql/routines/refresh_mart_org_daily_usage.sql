-- mart.org_daily_usage_days for the UTC days of [p_start, p_end), from the local copies:
-- instances alive and vCPU-hours from dwh.instances' lifetimes, storage GiB-days (bytes / 2^30)
-- from the storage samples of dwh.metrics (the metric named by dwh.settings 'metrics.storage'),
-- members as of each day from dwh.organization_memberships. Organization names and plans are
-- joined at read time by the view mart.org_daily_usage. Today's row is the day so far.
-- The mart people read: the stored days with the organization's current name and plan, joined
-- at read time so a rename never forces a rebuild of history.
CREATE OR REPLACE VIEW mart.org_daily_usage AS
SELECT d.organization_id, d.day, o.name AS organization_name, o.plan, d.instances, d.vcpu_hours, d.storage_gib_days,
       d.members
FROM mart.org_daily_usage_days d
LEFT JOIN dwh.organizations o USING (organization_id);

CREATE OR REPLACE FUNCTION dwh.refresh_mart_org_daily_usage(p_start timestamptz, p_end timestamptz)
RETURNS dwh.refresh_log
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_t0 timestamptz := clock_timestamp();
    v_wait double precision := dwh.begin_mart_refresh('org_daily_usage', p_start, p_end);
    v_step numeric := dwh.setting('metrics.step_seconds', '3600')::numeric;
    v_storage text := dwh.setting('metrics.storage');
    v_del bigint;
    v_ins bigint;
BEGIN
    DELETE FROM mart.org_daily_usage_days WHERE day >= p_start::date AND day < p_end::date;
    GET DIAGNOSTICS v_del = ROW_COUNT;
    INSERT INTO mart.org_daily_usage_days (organization_id, day, instances, vcpu_hours, storage_gib_days, members)
    WITH days AS (
        SELECT d AS day_start, d + interval '1 day' AS day_end
        FROM generate_series(p_start, p_end - interval '1 day', interval '1 day') AS d
    ),
    usage AS (
        SELECT i.organization_id, d.day_start::date AS day, count(*) AS instances,
               sum(i.cpu * extract(epoch FROM least(coalesce(i.deleted_at, now()), d.day_end)
                                             - greatest(i.created_at, d.day_start)) / 3600) AS vcpu_hours
        FROM dwh.instances i
        JOIN days d ON i.created_at < d.day_end AND coalesce(i.deleted_at, now()) > d.day_start
        GROUP BY 1, 2
    ),
    storage AS (
        SELECT s.organization_id, (m.ts AT TIME ZONE 'UTC')::date AS day,
               sum(m.value) / 1024.0 ^ 3 * v_step / 86400 AS storage_gib_days
        FROM dwh.metrics m
        JOIN dwh.metric_series s USING (series_id)
        WHERE s.metric_name = v_storage AND m.ts >= p_start AND m.ts < p_end
        GROUP BY 1, 2
    ),
    base AS (
        SELECT organization_id, day, u.instances, u.vcpu_hours, s.storage_gib_days
        FROM usage u
        FULL JOIN storage s USING (organization_id, day)
    )
    SELECT b.organization_id, b.day,
           coalesce(b.instances, 0),
           round(coalesce(b.vcpu_hours, 0)::numeric, 3),
           round(coalesce(b.storage_gib_days, 0)::numeric, 3),
           (SELECT count(*) FROM dwh.organization_memberships mm
             WHERE mm.organization_id = b.organization_id
               AND (mm.created_at IS NULL OR mm.created_at < (b.day + 1)::timestamptz))
    FROM base b;
    GET DIAGNOSTICS v_ins = ROW_COUNT;
    RETURN dwh.log_refresh('mart.org_daily_usage', p_start, p_end, NULL, v_ins, 0, v_del, NULL, v_t0, v_wait);
END
$$;
