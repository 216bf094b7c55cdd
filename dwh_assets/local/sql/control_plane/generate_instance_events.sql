-- Deterministic pgmq archive rows, generated inside Postgres (millions load in seconds).
--
-- Event n (msg_id = n) lands at a point of the fleet's instance-time in
-- [window_start, window_end), drawn uniformly by a seeded hash of n: the instances alive in
-- the window, numbered in instance_id order, each own a stretch of that instance-time as
-- long as its lifetime clipped to the window, and the draw picks an instance and a moment of
-- its life at once. So a day's events follow the instances alive on it (a fleet twice as
-- big has twice the events per day, whatever the length of the history), not the number of
-- instances created over the whole window. Same seed, same instances, same window => the
-- same rows. Late-arriving data for tests:
--   SELECT dwh_seed.generate_instance_events(42, <max msg_id + 1>, 100,
--                                            '2024-05-01', '2024-05-02');
-- The instances alive somewhere in [window_start, window_end), numbered from 0 in
-- instance_id order, with the stretch of their life inside the window (an inlined SQL
-- function: both statements of the generator number the same rows the same way).
CREATE OR REPLACE FUNCTION dwh_seed.alive_instances(window_start timestamptz, window_end timestamptz)
RETURNS TABLE (k bigint, instance_id uuid, organization_id text, life_start timestamptz, life_us bigint)
LANGUAGE sql STABLE
AS $$
    SELECT row_number() OVER (ORDER BY i.instance_id) - 1,
           i.instance_id,
           i.organization_id,
           greatest(i.created_at, window_start),
           (extract(epoch FROM least(coalesce(i.deleted_at, 'infinity'), window_end)
                               - greatest(i.created_at, window_start)) * 1000000)::bigint
    FROM public.instances i
    WHERE greatest(i.created_at, window_start) < least(coalesce(i.deleted_at, 'infinity'), window_end)
$$;

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
    -- where each alive instance's stretch of instance-time starts (microseconds, ascending)
    life_starts bigint[];
    total_us    bigint;
    inserted    bigint;
BEGIN
    IF event_count <= 0 THEN
        RETURN 0;
    END IF;
    SELECT count(*), array_agg(s.first_us ORDER BY s.k), max(s.first_us + s.life_us)
      INTO alive_count, life_starts, total_us
    FROM (SELECT a.k, a.life_us, sum(a.life_us) OVER (ORDER BY a.k) - a.life_us AS first_us
          FROM dwh_seed.alive_instances(window_start, window_end) a) s;
    IF alive_count = 0 THEN
        RAISE EXCEPTION 'no instance is alive in [%, %): load the instances first or pick another window',
            window_start, window_end;
    END IF;

    WITH drawn AS (
        -- two independent 63-bit draws per event; the mask keeps them non-negative
        SELECT g.n,
               (hashtextextended('time:' || g.n, seed) & 9223372036854775807) % total_us AS at_us,
               hashtextextended('detail:' || g.n, seed) & 9223372036854775807 AS h_detail
        FROM generate_series(first_msg_id, first_msg_id + event_count - 1) AS g(n)
    ),
    placed AS (
        -- width_bucket: a binary search of the stretches' starts for the one holding at_us
        SELECT d.n, d.at_us, d.h_detail, width_bucket(d.at_us, life_starts) - 1 AS k
        FROM drawn d
    ),
    timed AS (
        SELECT p.n, a.instance_id, a.organization_id, p.h_detail,
               a.life_start + (p.at_us - life_starts[p.k + 1]) * interval '1 microsecond' AS enqueued_at,
               -- the consumer archived it 20 ms .. 30 s after it was enqueued
               (20 + (p.h_detail >> 16) % 30000) * interval '1 millisecond' AS processing
        FROM placed p
        JOIN dwh_seed.alive_instances(window_start, window_end) a ON a.k = p.k
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
REVOKE ALL ON FUNCTION dwh_seed.alive_instances(timestamptz, timestamptz) FROM PUBLIC;
