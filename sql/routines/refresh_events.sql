-- Control plane event archive -> dwh.events, replacing exactly [p_start, p_end).
-- One INSERT ... SELECT: postgres_fdw pushes the window down to the source.
CREATE OR REPLACE FUNCTION dwh.refresh_events(p_start timestamptz, p_end timestamptz)
RETURNS dwh.refresh_log
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_t0 timestamptz := clock_timestamp();
    v_wait double precision := dwh.begin_fact_refresh('events', p_start, p_end);
    v_del bigint;
    v_ins bigint;
BEGIN
    DELETE FROM dwh.events WHERE enqueued_at >= p_start AND enqueued_at < p_end;
    GET DIAGNOSTICS v_del = ROW_COUNT;
    INSERT INTO dwh.events (msg_id, read_ct, enqueued_at, archived_at, vt, message)
    SELECT msg_id, read_ct, enqueued_at, archived_at, vt, message
    FROM src_control_plane.a_instance_events
    WHERE enqueued_at >= p_start AND enqueued_at < p_end;
    GET DIAGNOSTICS v_ins = ROW_COUNT;
    PERFORM dwh.mark_marts_stale_window('events', p_start, p_end);
    RETURN dwh.log_refresh('events', p_start, p_end, NULL, v_ins, 0, v_del, v_ins, v_t0, v_wait);
END
$$;
