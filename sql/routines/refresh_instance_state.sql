-- Control plane instance state history -> dwh.instance_state, replacing [p_start, p_end).
CREATE OR REPLACE FUNCTION dwh.refresh_instance_state(p_start timestamptz, p_end timestamptz)
RETURNS dwh.refresh_log
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_t0 timestamptz := clock_timestamp();
    v_wait double precision := dwh.begin_fact_refresh('instance_state', p_start, p_end);
    v_del bigint;
    v_ins bigint;
BEGIN
    DELETE FROM dwh.instance_state WHERE changed_at >= p_start AND changed_at < p_end;
    GET DIAGNOSTICS v_del = ROW_COUNT;
    BEGIN
        INSERT INTO dwh.instance_state (id, instance_id, state, changed_at)
        SELECT id, instance_id, state, changed_at
        FROM src_control_plane.instance_state_history
        WHERE changed_at >= p_start AND changed_at < p_end;
        GET DIAGNOSTICS v_ins = ROW_COUNT;
    EXCEPTION WHEN query_canceled OR data_exception OR syntax_error_or_access_rule_violation OR fdw_error THEN
        -- A source that changed shape or did not answer in time is named (00_source_drift.sql).
        PERFORM dwh.raise_source_read_error('instance_state', SQLSTATE, SQLERRM);
        RAISE;
    END;
    PERFORM dwh.check_window_drop('instance_state', p_start, p_end, v_ins, v_del);
    PERFORM dwh.mark_marts_stale_window('instance_state', p_start, p_end);
    RETURN dwh.log_refresh('instance_state', p_start, p_end, NULL, v_ins, 0, v_del, v_ins, v_t0, v_wait);
END
$$;
