-- depends: 0005.partitions
-- Marts, incremental: per-day measures in tables partitioned by day (pg_partman), refreshed
-- per window [start, end) like the facts (dwh.refresh_mart_<name>); the labels and running
-- totals a day's measures don't determine are joined at read time by a view named after the
-- mart, so a renamed organization or one more signup never forces a rebuild of history.
--
-- Freshness without a human: the copies' refreshes queue the days they changed for the marts
-- that read them (dwh.mart_pending, in their own transaction), and each mart's pg_cron job
-- (dwh.refresh_pending_mart) refreshes exactly those days every few minutes.

-- Which copies make which marts stale: written by `dwh migrate` from the catalog.
CREATE TABLE dwh.mart_inputs (
    mart text NOT NULL,   -- mart name, e.g. org_daily_usage
    copy text NOT NULL,   -- local copy name, e.g. metrics
    PRIMARY KEY (copy, mart)
);

-- Days of a mart whose inputs changed since its last refresh of that day.
CREATE TABLE dwh.mart_pending (
    mart      text NOT NULL,
    day       date NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mart, day)
);
REVOKE ALL ON dwh.mart_inputs, dwh.mart_pending FROM dwh_reader;

-- Per organization and UTC day: instances alive, provisioned vCPU-hours (from instance
-- lifetimes), storage GB-days (from the storage samples) and members (as of that day).
CREATE TABLE mart.org_daily_usage_days (
    organization_id text    NOT NULL,
    day             date    NOT NULL,
    instances       bigint  NOT NULL,
    vcpu_hours      numeric NOT NULL,
    storage_gb_days numeric NOT NULL,
    members         bigint  NOT NULL,
    PRIMARY KEY (organization_id, day)
) PARTITION BY RANGE (day);

CREATE VIEW mart.org_daily_usage AS
SELECT d.organization_id, d.day, o.name AS organization_name, d.instances, d.vcpu_hours, d.storage_gb_days, d.members
FROM mart.org_daily_usage_days d
LEFT JOIN dwh.organizations o USING (organization_id);

-- Sign-ups per UTC day; the view adds the running total.
CREATE TABLE mart.daily_signups_days (
    day        date   NOT NULL PRIMARY KEY,
    signups    bigint NOT NULL,
    with_email bigint NOT NULL
) PARTITION BY RANGE (day);

CREATE VIEW mart.daily_signups AS
SELECT day, signups, with_email, sum(signups) OVER (ORDER BY day)::bigint AS total_users
FROM mart.daily_signups_days;

DO $$
BEGIN
    PERFORM dwh.partman_create_daily('mart.org_daily_usage_days', 'day', current_date - 90);
    PERFORM dwh.partman_create_daily('mart.daily_signups_days', 'day', current_date - 90);
END
$$;
