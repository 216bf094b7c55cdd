-- Clerk users -> dwh.users (+ today's snapshot). Timestamps arrive as epoch ms.
CREATE OR REPLACE FUNCTION dwh.refresh_users(p_snapshot_day date DEFAULT (now() AT TIME ZONE 'UTC')::date)
RETURNS dwh.refresh_log
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
SELECT dwh.refresh_dimension('users', 'Clerk users', p_snapshot_day, $stage$
    SELECT DISTINCT ON (user_id)
           user_id, first_name, last_name, nullif(email, '') AS email, nullif(gender, '') AS gender,
           to_timestamp(created_at / 1000.0) AS created_at, to_timestamp(updated_at / 1000.0) AS updated_at,
           to_timestamp(last_sign_in_at / 1000.0) AS last_sign_in_at,
           coalesce(phone_numbers, 0)::int AS phone_numbers, username, coalesce(attrs, '{}') AS attrs
    FROM src_clerk.users
    ORDER BY user_id
$stage$,
-- Sign-ups count users (and those with an email) by creation day: the days of new, vanished
-- and changed users, before and after.
$stale$
    SELECT dwh.mark_marts_stale('users', ARRAY(
        SELECT DISTINCT (d AT TIME ZONE 'UTC')::date
        FROM pg_temp.stage_users s FULL JOIN dwh.users u USING (user_id)
        CROSS JOIN LATERAL (VALUES (s.created_at), (u.created_at)) AS t(d)
        WHERE d IS NOT NULL AND (s.user_id IS NULL OR u.user_id IS NULL
              OR (s.created_at, s.email IS NULL) IS DISTINCT FROM (u.created_at, u.email IS NULL))))
$stale$)
$$;
