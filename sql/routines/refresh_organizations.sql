-- Clerk organizations + the control plane's plan -> dwh.organizations (+ today's snapshot).
CREATE OR REPLACE FUNCTION dwh.refresh_organizations(p_snapshot_day date DEFAULT (now() AT TIME ZONE 'UTC')::date)
RETURNS dwh.refresh_log
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- Each source read once (MATERIALIZED): a rescanned reader table would call the API again.
SELECT dwh.refresh_dimension('organizations', 'Clerk organizations', p_snapshot_day, $stage$
    WITH cp AS MATERIALIZED (SELECT organization_id, plan FROM src_control_plane.organizations),
         o AS MATERIALIZED (SELECT * FROM src_clerk.organizations)
    SELECT DISTINCT ON (o.organization_id)
           o.organization_id, o.name, nullif(o.slug, '') AS slug, cp.plan, nullif(o.created_by, '') AS created_by,
           to_timestamp(o.created_at / 1000.0) AS created_at, to_timestamp(o.updated_at / 1000.0) AS updated_at,
           coalesce(o.attrs, '{}') AS attrs
    FROM o
    LEFT JOIN cp USING (organization_id)
    ORDER BY o.organization_id
$stage$)
$$;
