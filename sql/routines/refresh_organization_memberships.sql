-- Clerk organization memberships (instance-wide endpoint) -> dwh.organization_memberships.
CREATE OR REPLACE FUNCTION dwh.refresh_organization_memberships(p_snapshot_day date DEFAULT (now() AT TIME ZONE 'UTC')::date)
RETURNS dwh.refresh_log
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
SELECT dwh.refresh_dimension('organization_memberships', 'Clerk organization_memberships', p_snapshot_day, $stage$
    SELECT DISTINCT ON (organization_id, user_id)
           organization_id, user_id, role,
           to_timestamp((attrs ->> 'created_at')::bigint / 1000.0) AS created_at,
           coalesce(attrs, '{}') AS attrs
    FROM src_clerk.organization_memberships
    ORDER BY organization_id, user_id
$stage$,
-- Members as of a day count memberships created before its end (all days without created_at).
$stale$
    SELECT dwh.mark_marts_stale_since('organization_memberships', (
        SELECT min(CASE
            WHEN m.user_id IS NULL OR s.user_id IS NULL OR s.created_at IS DISTINCT FROM m.created_at
                THEN coalesce(least(s.created_at, m.created_at), '-infinity')
        END)
        FROM pg_temp.stage_organization_memberships s
        FULL JOIN dwh.organization_memberships m USING (organization_id, user_id)))
$stale$)
$$;
