-- Growth: organizations and live instances at the end of each UTC day of the history.
-- A day with a dimension snapshot (dwh.*_snapshot, taken by each day's refresh) counts the
-- snapshot; a day before the first snapshot is reconstructed from the current tables'
-- created_at / deleted_at. `source` says which.
CREATE OR REPLACE VIEW mart.growth_daily AS
WITH days AS (
    SELECT d::date AS day
    FROM generate_series(
        coalesce((SELECT value::date FROM dwh.settings WHERE key = 'history.start'),
                 (SELECT min(created_at AT TIME ZONE 'UTC')::date FROM dwh.organizations),
                 current_date),
        (now() AT TIME ZONE 'UTC')::date,
        interval '1 day') AS d
),
org_snap AS (SELECT snapshot_day AS day, count(*) AS n FROM dwh.organizations_snapshot GROUP BY 1),
inst_snap AS (
    SELECT snapshot_day AS day, count(*) AS n
    FROM dwh.instances_snapshot
    WHERE deleted_at IS NULL OR deleted_at >= (snapshot_day + 1)::timestamp AT TIME ZONE 'UTC'
    GROUP BY 1
)
SELECT d.day,
       coalesce(os.n, (SELECT count(*) FROM dwh.organizations o
                        WHERE o.created_at < (d.day + 1)::timestamp AT TIME ZONE 'UTC'))::bigint AS organizations,
       coalesce(isn.n, (SELECT count(*) FROM dwh.instances i
                         WHERE i.created_at < (d.day + 1)::timestamp AT TIME ZONE 'UTC'
                           AND (i.deleted_at IS NULL OR i.deleted_at >= (d.day + 1)::timestamp AT TIME ZONE 'UTC')))::bigint
           AS instances,
       CASE WHEN os.n IS NOT NULL AND isn.n IS NOT NULL THEN 'snapshot' ELSE 'reconstructed' END AS source
FROM days d
LEFT JOIN org_snap os USING (day)
LEFT JOIN inst_snap isn USING (day);
