-- Clerk users -> dwh.users (+ today's snapshot). Timestamps arrive as epoch ms.
CREATE OR REPLACE FUNCTION dwh.refresh_users(p_snapshot_day date DEFAULT (now() AT TIME ZONE 'UTC')::date)
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
    PERFORM dwh.check_snapshot_day('users', p_snapshot_day);
    v_wait := dwh.lock_refresh('users');
    -- Read the source once (each scan of a reader table is a full API read).
    CREATE TEMP TABLE stage_users ON COMMIT DROP AS
    SELECT DISTINCT ON (user_id)
           user_id, first_name, last_name, nullif(email, '') AS email, nullif(gender, '') AS gender,
           to_timestamp(created_at / 1000.0) AS created_at, to_timestamp(updated_at / 1000.0) AS updated_at,
           to_timestamp(last_sign_in_at / 1000.0) AS last_sign_in_at,
           coalesce(phone_numbers, 0)::int AS phone_numbers, username, coalesce(attrs, '{}') AS attrs
    FROM src_clerk.users
    ORDER BY user_id;
    GET DIAGNOSTICS v_src = ROW_COUNT;
    PERFORM dwh.check_source_drop('users', v_src, (SELECT count(*) FROM dwh.users));
    -- Sign-ups count users (and those with an email) by creation day: the days of new, vanished
    -- and changed users, before and after.
    PERFORM dwh.mark_marts_stale('users', ARRAY(
        SELECT DISTINCT (d AT TIME ZONE 'UTC')::date
        FROM pg_temp.stage_users s FULL JOIN dwh.users u USING (user_id)
        CROSS JOIN LATERAL (VALUES (s.created_at), (u.created_at)) AS t(d)
        WHERE d IS NOT NULL AND (s.user_id IS NULL OR u.user_id IS NULL
              OR (s.created_at, s.email IS NULL) IS DISTINCT FROM (u.created_at, u.email IS NULL))));
    v_counts := dwh.merge_dimension('users', 'pg_temp.stage_users', ARRAY['user_id']);
    PERFORM dwh.write_snapshot('users', p_snapshot_day);
    RETURN dwh.log_refresh('users', NULL, NULL, p_snapshot_day, v_counts[1], v_counts[2], v_counts[3], v_src, v_t0, v_wait);
EXCEPTION WHEN external_routine_exception THEN
    -- The source reader failed: say which source and why (the data stays as it was).
    GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
    PERFORM dwh.raise_source_failure('users', 'Clerk users', v_message, v_detail);
    RETURN NULL;
END
$$;
