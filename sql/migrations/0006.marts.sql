-- depends: 0005.partitions
-- Marts are materialized views over local copies only (never foreign tables), refreshed
-- by dwh.refresh_mart() from Dagster after the copies they read.

-- Per organization and UTC day: instances alive, provisioned vCPU-hours (from instance
-- lifetimes), storage GB-days (from the storage samples) and members (as of that day).
CREATE MATERIALIZED VIEW mart.org_daily_usage AS
WITH step AS (
    SELECT coalesce((SELECT value::numeric FROM dwh.settings WHERE key = 'metrics.step_seconds'), 3600) AS seconds
),
usage AS (
    SELECT i.organization_id,
           (d AT TIME ZONE 'UTC')::date AS day,
           count(*) AS instances,
           sum(i.cpu * extract(epoch FROM least(coalesce(i.deleted_at, now()), d + interval '1 day')
                                         - greatest(i.created_at, d)) / 3600) AS vcpu_hours
    FROM dwh.instances i
    CROSS JOIN LATERAL generate_series(
        date_trunc('day', i.created_at, 'UTC'),
        coalesce(i.deleted_at, now()) - interval '1 microsecond',
        interval '1 day') AS d
    GROUP BY 1, 2
),
storage AS (
    SELECT s.organization_id,
           (m.ts AT TIME ZONE 'UTC')::date AS day,
           sum(m.value) / 1024.0 ^ 3 * (SELECT seconds FROM step) / 86400 AS storage_gb_days
    FROM dwh.metrics m
    JOIN dwh.metric_series s USING (series_id)
    WHERE s.metric_name = (SELECT value FROM dwh.settings WHERE key = 'metrics.storage')
    GROUP BY 1, 2
),
base AS (
    SELECT organization_id, day, u.instances, u.vcpu_hours, s.storage_gb_days
    FROM usage u
    FULL JOIN storage s USING (organization_id, day)
)
SELECT b.organization_id,
       b.day,
       o.name AS organization_name,
       coalesce(b.instances, 0)::bigint AS instances,
       round(coalesce(b.vcpu_hours, 0)::numeric, 3) AS vcpu_hours,
       round(coalesce(b.storage_gb_days, 0)::numeric, 3) AS storage_gb_days,
       (SELECT count(*) FROM dwh.organization_memberships mm
         WHERE mm.organization_id = b.organization_id
           AND (mm.created_at IS NULL OR mm.created_at < (b.day + 1)::timestamp AT TIME ZONE 'UTC')) AS members
FROM base b
LEFT JOIN dwh.organizations o ON o.organization_id = b.organization_id
WITH NO DATA;
CREATE UNIQUE INDEX org_daily_usage_key ON mart.org_daily_usage (organization_id, day);

-- Sign-ups per UTC day, with the running total.
CREATE MATERIALIZED VIEW mart.daily_signups AS
SELECT day,
       signups,
       with_email,
       sum(signups) OVER (ORDER BY day)::bigint AS total_users
FROM (
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day,
           count(*) AS signups,
           count(email) AS with_email
    FROM dwh.users
    GROUP BY 1
) per_day
WITH NO DATA;
CREATE UNIQUE INDEX daily_signups_key ON mart.daily_signups (day);
