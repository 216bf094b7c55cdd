-- Deterministic pgmq archive rows, generated inside Postgres (millions load in seconds).
--
-- Event n (msg_id = n) picks one of the instances alive somewhere in
-- [window_start, window_end), numbered in instance_id order, by a seeded hash of n;
-- its enqueued_at lies in that instance's lifetime clipped to the window. Same seed,
-- same instances, same window => the same rows. Late-arriving data for tests:
--   SELECT dwh_seed.generate_instance_events(42, <max msg_id + 1>, 100,
--                                            '2024-05-01', '2024-05-02');
CREATE OR REPLACE FUNCTION dwh_seed.generate_instance_events(
    seed         bigint,
    first_msg_id bigint,
    event_count  bigint,
    window_start timestamptz,
    window_end   timestamptz
) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- one hash of the (small) instance list; a merge join would sort every chunk of events
SET enable_mergejoin = off
AS $$
DECLARE
    alive_count bigint;
    inserted    bigint;
BEGIN
    IF event_count <= 0 THEN
        RETURN 0;
    END IF;
    SELECT count(*) INTO alive_count
    FROM public.instances i
    WHERE greatest(i.created_at, window_start) < least(coalesce(i.deleted_at, 'infinity'), window_end);
    IF alive_count = 0 THEN
        RAISE EXCEPTION 'no instance is alive in [%, %): load the instances first or pick another window',
            window_start, window_end;
    END IF;

    WITH alive AS (
        SELECT row_number() OVER (ORDER BY i.instance_id) - 1 AS k,
               i.instance_id,
               i.organization_id,
               greatest(i.created_at, window_start) AS life_start,
               (extract(epoch FROM least(coalesce(i.deleted_at, 'infinity'), window_end)
                                   - greatest(i.created_at, window_start)) * 1000000)::bigint AS life_us
        FROM public.instances i
        WHERE greatest(i.created_at, window_start) < least(coalesce(i.deleted_at, 'infinity'), window_end)
    ),
    drawn AS (
        -- three independent 63-bit draws per event; the mask keeps them non-negative
        SELECT g.n,
               hashtextextended('instance:' || g.n, seed) & 9223372036854775807 AS h_instance,
               hashtextextended('time:' || g.n, seed) & 9223372036854775807 AS h_time,
               hashtextextended('detail:' || g.n, seed) & 9223372036854775807 AS h_detail
        FROM generate_series(first_msg_id, first_msg_id + event_count - 1) AS g(n)
    ),
    timed AS (
        SELECT d.n, a.instance_id, a.organization_id, d.h_detail,
               a.life_start + (d.h_time % a.life_us) * interval '1 microsecond' AS enqueued_at,
               -- the consumer archived it 20 ms .. 30 s after it was enqueued
               (20 + (d.h_detail >> 16) % 30000) * interval '1 millisecond' AS processing
        FROM drawn d
        JOIN alive a ON a.k = d.h_instance % alive_count
    )
    INSERT INTO pgmq.a_instance_events (msg_id, read_ct, enqueued_at, archived_at, vt, message)
    SELECT t.n,
           1 + (t.h_detail >> 8) % 3,
           t.enqueued_at,
           t.enqueued_at + t.processing,
           -- pgmq sets vt = read time + visibility timeout (30 s here)
           t.enqueued_at + t.processing + interval '30 seconds',
           jsonb_build_object(
               'event', (ARRAY['instance.started', 'instance.stopped', 'instance.restarted',
                               'instance.resized', 'backup.started', 'backup.completed',
                               'backup.completed', 'backup.failed'])[1 + t.h_detail % 8],
               'instance_id', t.instance_id,
               'organization_id', t.organization_id,
               'seq', t.n)
    FROM timed t;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    RETURN inserted;
END;
$$;
-- Only the loader (the database owner) generates data.
REVOKE ALL ON FUNCTION dwh_seed.generate_instance_events(bigint, bigint, bigint, timestamptz, timestamptz) FROM PUBLIC;
