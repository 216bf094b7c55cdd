-- Clerk organization memberships (instance-wide endpoint) -> dwh.organization_memberships.
CREATE OR REPLACE FUNCTION dwh.refresh_organization_memberships(p_snapshot_day date DEFAULT (now() AT TIME ZONE 'UTC')::date)
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
    PERFORM dwh.check_snapshot_day('organization_memberships', p_snapshot_day);
    v_wait := dwh.lock_refresh('organization_memberships');
    CREATE TEMP TABLE stage_organization_memberships ON COMMIT DROP AS
    SELECT DISTINCT ON (organization_id, user_id)
           organization_id, user_id, role,
           to_timestamp((attrs ->> 'created_at')::bigint / 1000.0) AS created_at,
           coalesce(attrs, '{}') AS attrs
    FROM src_clerk.organization_memberships
    ORDER BY organization_id, user_id;
    GET DIAGNOSTICS v_src = ROW_COUNT;
    PERFORM dwh.check_source_drop('organization_memberships', v_src, (SELECT count(*) FROM dwh.organization_memberships));
    -- Members as of a day count memberships created before its end (all days without created_at).
    PERFORM dwh.mark_marts_stale_since('organization_memberships', (
        SELECT min(CASE
            WHEN m.user_id IS NULL OR s.user_id IS NULL OR s.created_at IS DISTINCT FROM m.created_at
                THEN coalesce(least(s.created_at, m.created_at), '-infinity')
        END)
        FROM pg_temp.stage_organization_memberships s
        FULL JOIN dwh.organization_memberships m USING (organization_id, user_id)));
    v_counts := dwh.merge_dimension('organization_memberships', 'pg_temp.stage_organization_memberships', ARRAY['organization_id', 'user_id']);
    PERFORM dwh.write_snapshot('organization_memberships', p_snapshot_day);
    RETURN dwh.log_refresh('organization_memberships', NULL, NULL, p_snapshot_day, v_counts[1], v_counts[2], v_counts[3], v_src, v_t0, v_wait);
EXCEPTION WHEN external_routine_exception THEN
    -- The source reader failed: say which source and why (the data stays as it was).
    GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
    PERFORM dwh.raise_source_failure('organization_memberships', 'Clerk organization_memberships', v_message, v_detail);
    RETURN NULL;
END
$$;
