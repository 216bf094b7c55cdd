-- Growth: per UTC day, organization and region, the organization and its live instances at the
-- end of the day (today: now), so that a dashboard can filter by organization, plan or region;
-- count organizations with count(DISTINCT organization_id). A day with both dimension snapshots
-- (dwh.*_snapshot, taken by each day's refresh) counts the snapshots; any other day is
-- reconstructed from the current tables' created_at / deleted_at. `source` says which. The days
-- run from the first sign-up, organization or day of history, whichever came first, so that the
-- sign-up charts beside it cover the same days; a day without any organization is one row of NULLs.
CREATE OR REPLACE VIEW mart.growth_daily AS
WITH days AS (
    SELECT d::date AS day
    FROM generate_series(
        coalesce(least((SELECT value::date FROM dwh.settings WHERE key = 'history.start'),
                       (SELECT min(created_at AT TIME ZONE 'UTC')::date FROM dwh.organizations),
                       (SELECT min(created_at AT TIME ZONE 'UTC')::date FROM dwh.users)),
                 (now() AT TIME ZONE 'UTC')::date),
        (now() AT TIME ZONE 'UTC')::date,
        interval '1 day') AS d
),
snapshot_days AS (
    SELECT snapshot_day AS day FROM dwh.organizations_snapshot GROUP BY 1
    INTERSECT
    SELECT snapshot_day FROM dwh.instances_snapshot GROUP BY 1
),
organizations AS (
    SELECT s.snapshot_day AS day, s.organization_id
    FROM dwh.organizations_snapshot s
    WHERE s.snapshot_day IN (SELECT day FROM snapshot_days)
    UNION ALL
    SELECT d.day, o.organization_id
    FROM days d
    JOIN dwh.organizations o ON o.created_at < (d.day + 1)::timestamp AT TIME ZONE 'UTC'
    WHERE d.day NOT IN (SELECT day FROM snapshot_days)
),
live AS (
    SELECT s.snapshot_day AS day, s.organization_id, s.region, count(*) AS instances
    FROM dwh.instances_snapshot s
    WHERE s.snapshot_day IN (SELECT day FROM snapshot_days)
      AND (s.deleted_at IS NULL OR s.deleted_at >= (s.snapshot_day + 1)::timestamp AT TIME ZONE 'UTC')
    GROUP BY 1, 2, 3
    UNION ALL
    SELECT d.day, i.organization_id, i.region, count(*)
    FROM days d
    JOIN dwh.instances i ON i.created_at < (d.day + 1)::timestamp AT TIME ZONE 'UTC'
                        AND (i.deleted_at IS NULL OR i.deleted_at >= (d.day + 1)::timestamp AT TIME ZONE 'UTC')
    WHERE d.day NOT IN (SELECT day FROM snapshot_days)
    GROUP BY 1, 2, 3
),
per_organization AS (
    SELECT day, organization_id, l.region, coalesce(l.instances, 0) AS instances
    FROM organizations o
    FULL JOIN live l USING (day, organization_id)
)
SELECT d.day,
       p.organization_id,
       o.name AS organization_name,
       o.plan,
       p.region,
       coalesce(p.instances, 0)::bigint AS instances,
       CASE WHEN d.day IN (SELECT day FROM snapshot_days) THEN 'snapshot' ELSE 'reconstructed' END AS source
FROM days d
LEFT JOIN per_organization p USING (day)
LEFT JOIN dwh.organizations o USING (organization_id);
