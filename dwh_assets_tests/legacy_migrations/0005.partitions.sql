-- depends: 0003.dimensions 0004.facts
-- Daily partitions with pg_partman. The one place that knows pg_partman's major
-- version: 4.x spells it ('native', 'daily'), 5.x ('range', '1 day').
CREATE FUNCTION dwh.partman_create_daily(p_parent text, p_control text, p_start date)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_major int := split_part((SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'), '.', 1)::int;
BEGIN
    IF v_major >= 5 THEN
        EXECUTE 'SELECT partman.create_parent(p_parent_table := $1, p_control := $2, p_interval := $3, p_type := $4, p_premake := $5, p_start_partition := $6)'
        USING p_parent, p_control, '1 day', 'range', 7, p_start::text;
    ELSE
        PERFORM partman.create_parent(
            p_parent_table := p_parent, p_control := p_control, p_type := 'native',
            p_interval := 'daily', p_premake := 7, p_start_partition := p_start::text);
    END IF;
    -- Keep creating future partitions even when no new data arrives.
    UPDATE partman.part_config SET infinite_time_partitions = true WHERE parent_table = p_parent;
END
$$;

-- Facts start with partitions for the demo history; older windows get theirs on demand
-- (dwh.ensure_partitions), and pg_partman's retention drops what ages out.
DO $$
BEGIN
    PERFORM dwh.partman_create_daily('dwh.events', 'enqueued_at', current_date - 90);
    PERFORM dwh.partman_create_daily('dwh.instance_state', 'changed_at', current_date - 90);
    PERFORM dwh.partman_create_daily('dwh.metrics', 'ts', current_date - 90);
    PERFORM dwh.partman_create_daily('dwh.users_snapshot', 'snapshot_day', current_date - 7);
    PERFORM dwh.partman_create_daily('dwh.organizations_snapshot', 'snapshot_day', current_date - 7);
    PERFORM dwh.partman_create_daily('dwh.organization_memberships_snapshot', 'snapshot_day', current_date - 7);
    PERFORM dwh.partman_create_daily('dwh.instances_snapshot', 'snapshot_day', current_date - 7);
END
$$;
