-- The quality gate on pg_cron's path: a copy's blocking checks run at the end of each of its
-- refreshes, in the refresh's transaction (dwh.log_refresh calls dwh.apply_quality_gate). A
-- failure holds the queued days of the marts that read the copy (dwh.mart_pending.held_reason),
-- so their pg_cron jobs leave them alone; the copy's next passing refresh releases them. The
-- checks' SQL is the catalog's (dwh_assets/warehouse/quality_gate.py), written into
-- dwh.quality_gates by `dwh migrate`: Dagster evaluates the same text.

-- Hold (or release) every queued day of a mart, from the latest verdict of each copy it reads.
CREATE OR REPLACE FUNCTION dwh.hold_mart_days(p_mart text)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_reason text;
    v_rows bigint;
BEGIN
    -- One writer of a mart's holds at a time; callers take marts in name order (no deadlock).
    PERFORM pg_advisory_xact_lock(hashtext('dwh.hold_mart_days'), hashtext(p_mart));
    SELECT string_agg(format('dwh.%s: %s', g.copy, g.reason), '; ' ORDER BY g.copy) INTO v_reason
    FROM dwh.copy_gate g JOIN dwh.mart_inputs mi ON mi.copy = g.copy
    WHERE mi.mart = p_mart AND NOT g.passed;
    UPDATE dwh.mart_pending
       SET held_reason = v_reason,
           held_since = CASE WHEN v_reason IS NULL THEN NULL ELSE coalesce(held_since, now()) END
     WHERE mart = p_mart AND held_reason IS DISTINCT FROM v_reason;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;

-- Run the blocking checks of the copy a refresh wrote (nothing for a mart or a copy without
-- any), record the verdict and hold or release the marts that read the copy. Returns whether
-- the refresh passed. The refresh itself stays committed either way: the copy equals what the
-- refresh read, and the gate keeps it out of the marts until a refresh passes.
CREATE OR REPLACE FUNCTION dwh.apply_quality_gate(p_log dwh.refresh_log)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_gate record;
    v_result jsonb;
    v_checked int := 0;
    v_failures text[] := '{}';
    v_earlier text;
BEGIN
    FOR v_gate IN SELECT check_name, query FROM dwh.quality_gates WHERE copy = p_log.table_name ORDER BY check_name LOOP
        EXECUTE format('SELECT to_jsonb(q) FROM (%s) q', v_gate.query) INTO v_result
            USING p_log.window_start, p_log.window_end, p_log.window_start::date, p_log.window_end::date, p_log.id;
        v_checked := v_checked + 1;
        IF coalesce((v_result ->> 'bad')::bigint, 0) <> 0 THEN
            v_failures := v_failures || format('%s failed (%s)', v_gate.check_name,
                (SELECT string_agg(key || '=' || value, ', ' ORDER BY key) FROM jsonb_each_text(v_result - 'bad')));
        END IF;
    END LOOP;
    IF v_checked = 0 THEN
        RETURN true;
    END IF;
    -- The refreshes of one transaction (a scheduled refresh's late days, then its window) are
    -- judged together: a passing one does not release what an earlier one of them failed.
    SELECT reason INTO v_earlier FROM dwh.copy_gate WHERE copy = p_log.table_name AND checked_at = now() AND NOT passed;
    IF v_earlier IS NOT NULL AND cardinality(v_failures) = 0 THEN
        RETURN true;
    END IF;
    INSERT INTO dwh.copy_gate AS g (copy, passed, reason, refresh_log_id, checked_at)
    VALUES (p_log.table_name, cardinality(v_failures) = 0,
            CASE WHEN cardinality(v_failures) > 0
                 THEN concat_ws('; ', v_earlier, array_to_string(v_failures, '; ')
                                || format(' on refresh %s at %s', p_log.id, p_log.finished_at)) END,
            p_log.id, now())
    ON CONFLICT (copy) DO UPDATE SET passed = excluded.passed, reason = excluded.reason,
                                     refresh_log_id = excluded.refresh_log_id, checked_at = excluded.checked_at;
    PERFORM dwh.hold_mart_days(mi.mart) FROM (SELECT mart FROM dwh.mart_inputs WHERE copy = p_log.table_name ORDER BY mart) mi;
    IF cardinality(v_failures) > 0 THEN
        RAISE WARNING 'dwh.refresh_%: %; the marts reading it hold their queued days until a refresh passes',
            p_log.table_name, array_to_string(v_failures, '; ');
    END IF;
    RETURN cardinality(v_failures) = 0;
END
$$;
