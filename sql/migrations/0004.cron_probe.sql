-- depends: 0003.refresh_jobs
-- The last proof that pg_cron can run a job as a role in a database (`dwh migrate` runs a
-- one-shot probe job after scheduling): migrate probes again only when that role's jobs
-- changed or the last probe failed, so a migrate that changes nothing does not wait for
-- pg_cron's next minute. (IF NOT EXISTS: a warehouse may have applied it as 0030.cron_probe.)
CREATE TABLE IF NOT EXISTS dwh.cron_probe (
    role        text NOT NULL,         -- the login pg_cron ran the probe as
    database    text NOT NULL,         -- the database the probe ran in
    jobs        text NOT NULL,         -- fingerprint of that role's jobs in that database when probed
    succeeded   boolean NOT NULL,
    message     text,                  -- pg_cron's return_message, or why no run came
    probed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role, database)
);
COMMENT ON TABLE dwh.cron_probe IS 'The last pg_cron probe per role and database (dwh migrate): whether pg_cron could run a job there.';
COMMENT ON COLUMN dwh.cron_probe.role IS 'The login pg_cron ran the probe job as.';
COMMENT ON COLUMN dwh.cron_probe.database IS 'The database the probe job ran in.';
COMMENT ON COLUMN dwh.cron_probe.jobs IS 'A fingerprint of the role''s jobs in that database when it was probed.';
COMMENT ON COLUMN dwh.cron_probe.succeeded IS 'Whether pg_cron ran the probe successfully.';
COMMENT ON COLUMN dwh.cron_probe.message IS 'pg_cron''s return message, or why no run came.';
COMMENT ON COLUMN dwh.cron_probe.probed_at IS 'When the probe ended.';
