-- Clerk organizations + the control plane's plan -> dwh.organizations (+ today's snapshot).
CREATE OR REPLACE FUNCTION dwh.refresh_organizations(p_snapshot_day date DEFAULT (now() AT TIME ZONE 'UTC')::date)
RETURNS dwh.refresh_log
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_t0 timestamptz := clock_timestamp();
    v_wait double precision;
    v_src bigint;
    v_counts bigint[];
    v_message text;
    v_detail text;
BEGIN
    PERFORM dwh.check_snapshot_day('organizations', p_snapshot_day);
    v_wait := dwh.lock_refresh('organizations');
    CREATE TEMP TABLE stage_cp_orgs ON COMMIT DROP AS
    SELECT organization_id, plan FROM src_control_plane.organizations;
    CREATE TEMP TABLE stage_organizations ON COMMIT DROP AS
    SELECT DISTINCT ON (o.organization_id)
           o.organization_id, o.name, nullif(o.slug, '') AS slug, cp.plan, nullif(o.created_by, '') AS created_by,
           to_timestamp(o.created_at / 1000.0) AS created_at, to_timestamp(o.updated_at / 1000.0) AS updated_at,
           coalesce(o.attrs, '{}') AS attrs
    FROM src_clerk.organizations o
    LEFT JOIN stage_cp_orgs cp USING (organization_id)
    ORDER BY o.organization_id;
    GET DIAGNOSTICS v_src = ROW_COUNT;
    PERFORM dwh.check_source_drop('organizations', v_src, (SELECT count(*) FROM dwh.organizations));
    v_counts := dwh.merge_dimension('organizations', 'pg_temp.stage_organizations', ARRAY['organization_id']);
    PERFORM dwh.write_snapshot('organizations', p_snapshot_day);
    RETURN dwh.log_refresh('organizations', NULL, NULL, p_snapshot_day, v_counts[1], v_counts[2], v_counts[3], v_src, v_t0, v_wait);
EXCEPTION WHEN external_routine_exception THEN
    -- The source reader failed: say which source and why (the data stays as it was).
    GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
    PERFORM dwh.raise_source_failure('organizations', 'Clerk organizations', v_message, v_detail);
    RETURN NULL;
END
$$;
