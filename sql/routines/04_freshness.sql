-- Freshness from a pg_cron schedule, for the health view (mart.refresh_freshness). The same
-- rules as dwh_assets/warehouse/freshness.py, which the Dagster code location uses; a test
-- compares the two on the catalog's schedules and more.

-- The values one cron field allows: *, a, a-b, each with an optional /step, comma-separated.
CREATE OR REPLACE FUNCTION dwh.cron_field_values(p_field text, p_low int, p_high int)
RETURNS int[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_item text;
    v_span text;
    v_step int;
    v_first int;
    v_last int;
    v_values int[] := '{}';
BEGIN
    FOREACH v_item IN ARRAY string_to_array(p_field, ',') LOOP
        v_span := split_part(v_item, '/', 1);
        v_step := coalesce(nullif(split_part(v_item, '/', 2), '')::int, 1);
        IF v_span = '*' THEN
            v_first := p_low; v_last := p_high;
        ELSIF v_span LIKE '%-%' THEN
            v_first := split_part(v_span, '-', 1)::int; v_last := split_part(v_span, '-', 2)::int;
        ELSE
            v_first := v_span::int;
            v_last := CASE WHEN v_item LIKE '%/%' THEN p_high ELSE v_first END;
        END IF;
        IF v_step < 1 OR v_first < p_low OR v_last > p_high OR v_first > v_last THEN
            RAISE EXCEPTION 'cron field % is out of range %-%', p_field, p_low, p_high;
        END IF;
        v_values := v_values || ARRAY(SELECT generate_series(v_first, v_last, v_step));
    END LOOP;
    RETURN v_values;
END
$$;

-- The longest wait between two ticks of a pg_cron schedule; NULL when it has no regular tick.
CREATE OR REPLACE FUNCTION dwh.schedule_interval(p_schedule text)
RETURNS interval
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_fields text[] := regexp_split_to_array(btrim(p_schedule), '\s+');
    v_ticks int[];
BEGIN
    IF p_schedule ~* '^\s*\d+\s+seconds?\s*$' THEN
        RETURN make_interval(secs => substring(p_schedule FROM '\d+')::int);
    END IF;
    IF cardinality(v_fields) <> 5 THEN
        RETURN NULL;
    END IF;
    BEGIN
        SELECT array_agg(DISTINCT h * 60 + m ORDER BY h * 60 + m) INTO v_ticks
        FROM unnest(dwh.cron_field_values(v_fields[2], 0, 23)) h, unnest(dwh.cron_field_values(v_fields[1], 0, 59)) m;
    EXCEPTION WHEN OTHERS THEN
        RETURN NULL;  -- not a schedule these rules read: no expectation
    END;
    IF (v_fields[3], v_fields[4]) <> ('*', '*') THEN
        RETURN interval '31 days';
    END IF;
    IF v_fields[5] <> '*' THEN
        RETURN interval '7 days';
    END IF;
    RETURN make_interval(mins => (
        SELECT max(gap) FROM (
            SELECT coalesce(lead(t) OVER (ORDER BY t), v_ticks[1] + 1440) - t AS gap FROM unnest(v_ticks) t) g));
END
$$;

-- The health views call it as whoever reads them (a view runs its functions as its reader).
GRANT EXECUTE ON FUNCTION dwh.cron_field_values(text, int, int), dwh.schedule_interval(text) TO dwh_loader, dwh_reader;
