-- Control plane instances -> dwh.instances (+ today's snapshot).
CREATE OR REPLACE FUNCTION dwh.refresh_instances(p_snapshot_day date DEFAULT (now() AT TIME ZONE 'UTC')::date)
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
BEGIN
    PERFORM dwh.check_snapshot_day('instances', p_snapshot_day);
    v_wait := dwh.lock_refresh('instances');
    CREATE TEMP TABLE stage_instances ON COMMIT DROP AS SELECT * FROM dwh.instances WITH NO DATA;
    -- The events' bulk path where the server may run it (binary, streamed: benchmarks/README.md, B1).
    IF dwh.setting('control_plane.transfer', 'fdw') = 'copy' THEN
        v_src := dwh.copy_from_foreign('pg_temp.stage_instances', 'src_control_plane.instances',
                                       ARRAY['instance_id', 'organization_id', 'name', 'region', 'cpu', 'memory_gb',
                                             'storage_gb', 'created_at', 'updated_at', 'deleted_at'], NULL, NULL, NULL);
    ELSE
        INSERT INTO pg_temp.stage_instances
        SELECT instance_id, organization_id, name, region, cpu, memory_gb, storage_gb, created_at, updated_at, deleted_at
        FROM src_control_plane.instances;
        GET DIAGNOSTICS v_src = ROW_COUNT;
    END IF;
    PERFORM dwh.check_source_drop('instances', v_src, (SELECT count(*) FROM dwh.instances));
    -- The marts' days this change affects: a new or vanished instance its whole life, a changed
    -- owner, size or creation its whole life, a changed deletion time from the earlier of the two.
    PERFORM dwh.mark_marts_stale_since('instances', (
        SELECT min(CASE
            WHEN i.instance_id IS NULL OR s.instance_id IS NULL THEN coalesce(s.created_at, i.created_at)
            WHEN (s.organization_id, s.cpu, s.created_at) IS DISTINCT FROM (i.organization_id, i.cpu, i.created_at)
                THEN least(s.created_at, i.created_at)
            WHEN s.deleted_at IS DISTINCT FROM i.deleted_at THEN least(s.deleted_at, i.deleted_at)
        END)
        FROM pg_temp.stage_instances s FULL JOIN dwh.instances i USING (instance_id)));
    v_counts := dwh.merge_dimension('instances', 'pg_temp.stage_instances', ARRAY['instance_id']);
    PERFORM dwh.write_snapshot('instances', p_snapshot_day);
    RETURN dwh.log_refresh('instances', NULL, NULL, p_snapshot_day, v_counts[1], v_counts[2], v_counts[3], v_src, v_t0, v_wait);
END
$$;
