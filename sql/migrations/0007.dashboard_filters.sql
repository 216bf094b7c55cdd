-- depends: 0006.storage_gib_days
-- The dashboards filter by organization, plan, region and instance state, so the relations
-- they read carry those columns (docs/catalog.md):
--
-- - mart.instance_state_daily is kept per organization and region too: its stored table is
--   dropped with its partitions and pg_partman registration, `dwh migrate` creates it again from
--   the catalog, and every day with a transition is queued, so the mart's pg_cron job rebuilds
--   them within minutes (or run it: SELECT dwh.refresh_pending_mart('instance_state_daily'));
-- - the views mart.growth_daily and mart.instance_current_state change their columns: dropped
--   here, created again by their SQL files in the same `dwh migrate`.
DROP VIEW IF EXISTS mart.growth_daily, mart.instance_current_state, mart.instance_state_daily;

DO $$
DECLARE
    v_template text;
BEGIN
    IF to_regclass('mart.instance_state_daily_days') IS NULL THEN
        RETURN;  -- a new warehouse: the catalog creates the table afterwards
    END IF;
    SELECT template_table INTO v_template FROM partman.part_config
    WHERE parent_table = 'mart.instance_state_daily_days';
    DELETE FROM partman.part_config WHERE parent_table = 'mart.instance_state_daily_days';
    DROP TABLE mart.instance_state_daily_days;
    IF to_regclass(v_template) IS NOT NULL THEN
        EXECUTE format('DROP TABLE %s', to_regclass(v_template));
    END IF;
    INSERT INTO dwh.mart_pending (mart, day)
    SELECT DISTINCT 'instance_state_daily', (changed_at AT TIME ZONE 'UTC')::date FROM dwh.instance_state
    ON CONFLICT DO NOTHING;
END
$$;
