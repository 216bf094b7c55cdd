-- depends: 0006.marts
-- dwh.refresh_mart refreshes populated marts CONCURRENTLY so readers are never blocked,
-- which needs a unique index on plain columns (no expression, no WHERE) of each mart: its
-- key. 0006 already declares them; this makes the keys a checked invariant of every
-- warehouse. A DO block, because yoyo prints the rows of a bare SELECT.
DO $$
DECLARE
    v_mart regclass;
BEGIN
    IF to_regclass('mart.org_daily_usage_key') IS NULL THEN
        CREATE UNIQUE INDEX org_daily_usage_key ON mart.org_daily_usage (organization_id, day);
    END IF;
    IF to_regclass('mart.daily_signups_key') IS NULL THEN
        CREATE UNIQUE INDEX daily_signups_key ON mart.daily_signups (day);
    END IF;
    FOR v_mart IN
        SELECT c.oid::regclass FROM pg_class c
        WHERE c.relnamespace = 'mart'::regnamespace AND c.relkind = 'm'
          AND NOT EXISTS (SELECT FROM pg_index i
                          WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid
                            AND i.indpred IS NULL AND i.indexprs IS NULL)
    LOOP
        RAISE EXCEPTION 'mart % has no unique index on plain columns', v_mart
            USING HINT = 'REFRESH MATERIALIZED VIEW CONCURRENTLY (dwh.refresh_mart) needs one: create it on the mart''s key.';
    END LOOP;
END
$$;
COMMENT ON INDEX mart.org_daily_usage_key IS 'The mart''s key; REFRESH MATERIALIZED VIEW CONCURRENTLY needs it.';
COMMENT ON INDEX mart.daily_signups_key IS 'The mart''s key; REFRESH MATERIALIZED VIEW CONCURRENTLY needs it.';
