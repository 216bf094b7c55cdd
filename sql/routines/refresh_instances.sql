-- Control plane instances -> dwh.instances (+ today's snapshot).
CREATE OR REPLACE FUNCTION dwh.refresh_instances(p_snapshot_day date DEFAULT (now() AT TIME ZONE 'UTC')::date)
RETURNS dwh.refresh_log
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
SELECT dwh.refresh_dimension('instances', 'control plane instances', p_snapshot_day, $stage$
    SELECT instance_id, organization_id, name, region, cpu, memory_gb, storage_gb, created_at, updated_at, deleted_at
    FROM src_control_plane.instances
$stage$,
-- The marts' days this change affects: a new or vanished instance its whole life, a changed
-- owner, size or creation its whole life, a changed deletion time from the earlier of the two.
$stale$
    SELECT dwh.mark_marts_stale_since('instances', (
        SELECT min(CASE
            WHEN i.instance_id IS NULL OR s.instance_id IS NULL THEN coalesce(s.created_at, i.created_at)
            WHEN (s.organization_id, s.cpu, s.created_at) IS DISTINCT FROM (i.organization_id, i.cpu, i.created_at)
                THEN least(s.created_at, i.created_at)
            WHEN s.deleted_at IS DISTINCT FROM i.deleted_at THEN least(s.deleted_at, i.deleted_at)
        END)
        FROM pg_temp.stage_instances s FULL JOIN dwh.instances i USING (instance_id)))
$stale$,
-- The same rows through the events' binary COPY path where the server may run it (B1).
'src_control_plane.instances')
$$;
