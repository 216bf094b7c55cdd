-- depends: 0006.marts
-- What every table and column of dwh and mart holds. Dagster shows these comments as the
-- assets' column descriptions (read from the database after each refresh): edit them here.

COMMENT ON TABLE dwh.refresh_log IS 'One row per committed refresh, written in the refresh''s own transaction: if it rolls back, so does its row.';
COMMENT ON COLUMN dwh.refresh_log.id IS 'Identity of the refresh.';
COMMENT ON COLUMN dwh.refresh_log.table_name IS 'What was refreshed: a catalog table (users, metrics, ...) or a mart (mart.org_daily_usage).';
COMMENT ON COLUMN dwh.refresh_log.window_start IS 'Facts and marts: start of the replaced window [window_start, window_end).';
COMMENT ON COLUMN dwh.refresh_log.window_end IS 'Facts and marts: end (exclusive) of the replaced window; NULL when a mart job found no queued day.';
COMMENT ON COLUMN dwh.refresh_log.snapshot_day IS 'Dimensions: the day of the snapshot the refresh wrote.';
COMMENT ON COLUMN dwh.refresh_log.rows_inserted IS 'Rows inserted (facts, marts: the rows now in the window).';
COMMENT ON COLUMN dwh.refresh_log.rows_updated IS 'Rows updated in place (dimensions).';
COMMENT ON COLUMN dwh.refresh_log.rows_deleted IS 'Rows deleted: the window''s previous rows, or rows gone at the source.';
COMMENT ON COLUMN dwh.refresh_log.rows_source IS 'Rows the refresh read from its source.';
COMMENT ON COLUMN dwh.refresh_log.started_at IS 'When the refresh started (before waiting for its locks).';
COMMENT ON COLUMN dwh.refresh_log.finished_at IS 'When the refresh wrote this row, just before its commit.';
COMMENT ON COLUMN dwh.refresh_log.duration_ms IS 'finished_at - started_at, in milliseconds.';
COMMENT ON COLUMN dwh.refresh_log.lock_wait_ms IS 'Time spent waiting for the advisory locks of a concurrent refresh of the same table or days.';
COMMENT ON COLUMN dwh.refresh_log.backend_pid IS 'The PostgreSQL backend that ran the refresh (how a pg_cron run is matched to its refresh).';
COMMENT ON COLUMN dwh.refresh_log.application IS 'application_name of the session: dagster, pg_cron, psql, ...';

COMMENT ON TABLE dwh.settings IS 'Settings the routines read (backends, reader command, metric names, history start, cron database), written by dwh migrate. No secrets.';
COMMENT ON COLUMN dwh.settings.key IS 'Setting name, e.g. metrics.step_seconds.';
COMMENT ON COLUMN dwh.settings.value IS 'Setting value, as text.';

COMMENT ON TABLE dwh.users IS 'Clerk users, kept equal to the source (current state).';
COMMENT ON COLUMN dwh.users.user_id IS 'Clerk user id (user_...).';
COMMENT ON COLUMN dwh.users.first_name IS 'First name.';
COMMENT ON COLUMN dwh.users.last_name IS 'Last name.';
COMMENT ON COLUMN dwh.users.email IS 'The primary email address (the one primary_email_address_id names), NULL when there is none.';
COMMENT ON COLUMN dwh.users.gender IS 'Gender, as Clerk holds it (often NULL).';
COMMENT ON COLUMN dwh.users.created_at IS 'When the user signed up.';
COMMENT ON COLUMN dwh.users.updated_at IS 'When Clerk last changed the user.';
COMMENT ON COLUMN dwh.users.last_sign_in_at IS 'Last sign-in, NULL if never.';
COMMENT ON COLUMN dwh.users.phone_numbers IS 'How many phone numbers the user has (the numbers are in attrs).';
COMMENT ON COLUMN dwh.users.username IS 'Username, if the Clerk instance uses them.';
COMMENT ON COLUMN dwh.users.attrs IS 'The whole Clerk user object, as JSON (fields without a column of their own).';

COMMENT ON TABLE dwh.organizations IS 'Clerk organizations with the plan from the control plane, kept equal to the sources (current state).';
COMMENT ON COLUMN dwh.organizations.organization_id IS 'Clerk organization id (org_...).';
COMMENT ON COLUMN dwh.organizations.name IS 'Organization name.';
COMMENT ON COLUMN dwh.organizations.slug IS 'URL slug, NULL when unset.';
COMMENT ON COLUMN dwh.organizations.plan IS 'Billing plan, from the control plane''s organizations (free, hobby, pro, enterprise).';
COMMENT ON COLUMN dwh.organizations.created_by IS 'The user who created it, NULL when unknown.';
COMMENT ON COLUMN dwh.organizations.created_at IS 'When it was created.';
COMMENT ON COLUMN dwh.organizations.updated_at IS 'When Clerk last changed it.';
COMMENT ON COLUMN dwh.organizations.attrs IS 'The whole Clerk organization object, as JSON.';

COMMENT ON TABLE dwh.organization_memberships IS 'Who belongs to which organization, with their role (current state).';
COMMENT ON COLUMN dwh.organization_memberships.organization_id IS 'The organization.';
COMMENT ON COLUMN dwh.organization_memberships.user_id IS 'The member.';
COMMENT ON COLUMN dwh.organization_memberships.role IS 'The member''s role (org:admin, org:member, ...).';
COMMENT ON COLUMN dwh.organization_memberships.created_at IS 'When the membership began (from the Clerk object), NULL when unknown.';
COMMENT ON COLUMN dwh.organization_memberships.attrs IS 'The whole Clerk membership object, as JSON.';

COMMENT ON TABLE dwh.instances IS 'Database instances of the control plane, kept equal to the source (current state).';
COMMENT ON COLUMN dwh.instances.instance_id IS 'Instance id.';
COMMENT ON COLUMN dwh.instances.organization_id IS 'The Clerk organization that owns it.';
COMMENT ON COLUMN dwh.instances.name IS 'Instance name.';
COMMENT ON COLUMN dwh.instances.region IS 'Cloud region.';
COMMENT ON COLUMN dwh.instances.cpu IS 'Provisioned vCPUs.';
COMMENT ON COLUMN dwh.instances.memory_gb IS 'Provisioned memory, GB.';
COMMENT ON COLUMN dwh.instances.storage_gb IS 'Provisioned storage, GB.';
COMMENT ON COLUMN dwh.instances.created_at IS 'When it was created.';
COMMENT ON COLUMN dwh.instances.updated_at IS 'When the control plane last changed it.';
COMMENT ON COLUMN dwh.instances.deleted_at IS 'When it was deleted, NULL while it exists.';

COMMENT ON TABLE dwh.events IS 'The control plane''s event queue archive (pgmq shape), partitioned by day of enqueued_at.';
COMMENT ON COLUMN dwh.events.msg_id IS 'Queue message id.';
COMMENT ON COLUMN dwh.events.read_ct IS 'How often the message was read before it was archived.';
COMMENT ON COLUMN dwh.events.enqueued_at IS 'When the message was enqueued (the partition key).';
COMMENT ON COLUMN dwh.events.archived_at IS 'When it was archived.';
COMMENT ON COLUMN dwh.events.vt IS 'Visibility timeout at archive time.';
COMMENT ON COLUMN dwh.events.message IS 'The message, as JSON.';
COMMENT ON COLUMN dwh.events.event_type IS 'message->>''event'', stored for filtering.';

COMMENT ON TABLE dwh.instance_state IS 'Instance state transitions (creating, running, stopping, stopped, starting, deleted), partitioned by day of changed_at.';
COMMENT ON COLUMN dwh.instance_state.id IS 'Transition id at the control plane.';
COMMENT ON COLUMN dwh.instance_state.instance_id IS 'The instance.';
COMMENT ON COLUMN dwh.instance_state.state IS 'The state entered.';
COMMENT ON COLUMN dwh.instance_state.changed_at IS 'When it entered it (the partition key).';

COMMENT ON TABLE dwh.metric_series IS 'Each Prometheus label set once: the metric name and its labels.';
COMMENT ON COLUMN dwh.metric_series.series_id IS 'Identity of the series, referenced by dwh.metrics.';
COMMENT ON COLUMN dwh.metric_series.metric_name IS 'Prometheus metric name.';
COMMENT ON COLUMN dwh.metric_series.labels IS 'The series labels (without __name__), as JSON.';
COMMENT ON COLUMN dwh.metric_series.instance_id IS 'labels->>''instance_id''.';
COMMENT ON COLUMN dwh.metric_series.organization_id IS 'labels->>''organization_id''.';

COMMENT ON TABLE dwh.metrics IS 'Usage samples at the metrics step, narrow and partitioned by day of ts.';
COMMENT ON COLUMN dwh.metrics.series_id IS 'The series (dwh.metric_series).';
COMMENT ON COLUMN dwh.metrics.ts IS 'Sample time, on the step grid (the partition key).';
COMMENT ON COLUMN dwh.metrics.value IS 'Sample value (counters as they are: seconds, bytes).';

COMMENT ON VIEW dwh.metric_samples IS 'dwh.metrics with its series'' name and labels: the denormalised shape prometheus_fdw returns.';
COMMENT ON COLUMN dwh.metric_samples.metric_name IS 'Prometheus metric name.';
COMMENT ON COLUMN dwh.metric_samples.labels IS 'The series labels, as JSON.';
COMMENT ON COLUMN dwh.metric_samples.instance_id IS 'labels->>''instance_id''.';
COMMENT ON COLUMN dwh.metric_samples.organization_id IS 'labels->>''organization_id''.';
COMMENT ON COLUMN dwh.metric_samples.ts IS 'Sample time.';
COMMENT ON COLUMN dwh.metric_samples.value IS 'Sample value.';

COMMENT ON TABLE dwh.mart_inputs IS 'Which copies'' refreshes make which marts stale (from the catalog, written by dwh migrate).';
COMMENT ON COLUMN dwh.mart_inputs.mart IS 'Mart name.';
COMMENT ON COLUMN dwh.mart_inputs.copy IS 'Catalog table whose refreshes queue days of the mart.';
COMMENT ON TABLE dwh.mart_pending IS 'Days of a mart whose inputs changed since its last refresh of that day; its pg_cron job refreshes them.';
COMMENT ON COLUMN dwh.mart_pending.mart IS 'Mart name.';
COMMENT ON COLUMN dwh.mart_pending.day IS 'The UTC day to refresh.';
COMMENT ON COLUMN dwh.mart_pending.marked_at IS 'When a refresh first queued it.';

COMMENT ON TABLE mart.org_daily_usage_days IS 'Per organization and UTC day: the measures of mart.org_daily_usage, partitioned by day.';
COMMENT ON COLUMN mart.org_daily_usage_days.organization_id IS 'The organization.';
COMMENT ON COLUMN mart.org_daily_usage_days.day IS 'The UTC day (the partition key).';
COMMENT ON COLUMN mart.org_daily_usage_days.instances IS 'Instances alive at some time of the day.';
COMMENT ON COLUMN mart.org_daily_usage_days.vcpu_hours IS 'Provisioned vCPU-hours of the day (cpu x hours alive), 3 decimals.';
COMMENT ON COLUMN mart.org_daily_usage_days.storage_gb_days IS 'Storage in use, GB-days (the storage samples of the day), 3 decimals.';
COMMENT ON COLUMN mart.org_daily_usage_days.members IS 'Members as of the end of the day.';
COMMENT ON VIEW mart.org_daily_usage IS 'Per organization and UTC day: instances, vCPU-hours, storage GB-days and members, with the organization''s current name.';
COMMENT ON COLUMN mart.org_daily_usage.organization_id IS 'The organization.';
COMMENT ON COLUMN mart.org_daily_usage.day IS 'The UTC day.';
COMMENT ON COLUMN mart.org_daily_usage.organization_name IS 'The organization''s current name (joined at read time).';
COMMENT ON COLUMN mart.org_daily_usage.instances IS 'Instances alive at some time of the day.';
COMMENT ON COLUMN mart.org_daily_usage.vcpu_hours IS 'Provisioned vCPU-hours of the day, 3 decimals.';
COMMENT ON COLUMN mart.org_daily_usage.storage_gb_days IS 'Storage in use, GB-days, 3 decimals.';
COMMENT ON COLUMN mart.org_daily_usage.members IS 'Members as of the end of the day.';

COMMENT ON TABLE mart.daily_signups_days IS 'Sign-ups per UTC day, partitioned by day.';
COMMENT ON COLUMN mart.daily_signups_days.day IS 'The UTC day (the partition key).';
COMMENT ON COLUMN mart.daily_signups_days.signups IS 'Users created that day.';
COMMENT ON COLUMN mart.daily_signups_days.with_email IS 'Of them, users with a primary email address.';
COMMENT ON VIEW mart.daily_signups IS 'Sign-ups per UTC day with the running total of users.';
COMMENT ON COLUMN mart.daily_signups.day IS 'The UTC day.';
COMMENT ON COLUMN mart.daily_signups.signups IS 'Users created that day.';
COMMENT ON COLUMN mart.daily_signups.with_email IS 'Of them, users with a primary email address.';
COMMENT ON COLUMN mart.daily_signups.total_users IS 'Users created up to the end of the day (computed at read time).';

-- The snapshots hold the current tables' columns plus their day: the same comments, once.
DO $$
DECLARE
    v_table text;
    v_column record;
BEGIN
    FOREACH v_table IN ARRAY ARRAY['users', 'organizations', 'organization_memberships', 'instances'] LOOP
        EXECUTE format('COMMENT ON TABLE dwh.%I IS %L', v_table || '_snapshot',
                       format('Daily snapshots of dwh.%s: its rows as of each snapshot_day (partitioned by day).', v_table));
        EXECUTE format('COMMENT ON COLUMN dwh.%I.snapshot_day IS %L', v_table || '_snapshot',
                       'The day the snapshot was taken (the partition key).');
        FOR v_column IN
            SELECT a.attname, col_description(a.attrelid, a.attnum) AS description FROM pg_attribute a
            WHERE a.attrelid = ('dwh.' || v_table)::regclass AND a.attnum > 0 AND NOT a.attisdropped
        LOOP
            EXECUTE format('COMMENT ON COLUMN dwh.%I.%I IS %L', v_table || '_snapshot', v_column.attname, v_column.description);
        END LOOP;
    END LOOP;
END
$$;
