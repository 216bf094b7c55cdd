-- Erasure (docs/personal-data.md): `dwh forget` removes a subject (a Clerk user or organization)
-- from every table and snapshot that holds its id, in one transaction, and logs a keyed hash
-- of the id; the dimension refreshes then leave the subject out while the source still holds it.
-- Where ids are held is dwh.subject_columns, which `dwh migrate` writes from the catalog.

-- HMAC-SHA256 of 'subject:id' (pgcrypto): equal ids give equal hashes, and without the key
-- nobody can test an id against the log.
CREATE OR REPLACE FUNCTION dwh.keyed_hash(p_key bytea, p_subject text, p_id text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT encode(public.hmac(convert_to(p_subject || ':' || p_id, 'UTF8'), p_key, 'sha256'), 'hex') $$;

CREATE OR REPLACE FUNCTION dwh.subject_hash(p_subject text, p_id text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT dwh.keyed_hash((SELECT key FROM dwh.erasure_key), p_subject, p_id) $$;

-- Whether p_id, found in p_column (schema.table.column), is the id of a forgotten subject:
-- the checks excuse such an id where a copy without personal data still holds it (the
-- control plane's instances of a forgotten organization). SECURITY DEFINER: the key is the owner's.
CREATE OR REPLACE FUNCTION dwh.is_forgotten(p_column text, p_id text)
RETURNS boolean
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (
        SELECT FROM dwh.subject_columns s JOIN dwh.erasure_log e USING (subject)
        WHERE s.relation || '.' || s.column_name = p_column AND e.subject_hash = dwh.subject_hash(s.subject, p_id))
$$;

-- A dimension refresh's stage without the forgotten: rows about a forgotten subject are
-- deleted, a forgotten subject's id elsewhere is cleared (and taken out of attrs, the source
-- object it came from). Returns the rows deleted. Hashes are computed only for the subjects
-- the log holds.
CREATE OR REPLACE FUNCTION dwh.leave_out_forgotten(p_copy text, p_stage regclass)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    v_rows bigint;
    v_left_out bigint := 0;
    v_cleared bigint := 0;
    v_key bytea := (SELECT key FROM dwh.erasure_key);
    v_forgotten text := 'SELECT subject_hash FROM dwh.erasure_log WHERE subject = $2';
BEGIN
    FOR r IN SELECT s.column_name, s.subject, s.erase FROM dwh.subject_columns s
             WHERE s.relation = 'dwh.' || p_copy AND EXISTS (SELECT FROM dwh.erasure_log e WHERE e.subject = s.subject)
             ORDER BY s.column_name LOOP
        IF r.erase = 'row' THEN
            EXECUTE format('DELETE FROM %s s WHERE dwh.keyed_hash($1, $2, s.%I) IN (%s)', p_stage, r.column_name, v_forgotten)
                USING v_key, r.subject;
            GET DIAGNOSTICS v_rows = ROW_COUNT;
            v_left_out := v_left_out + v_rows;
        ELSE
            EXECUTE format('UPDATE %s s SET %I = NULL%s WHERE dwh.keyed_hash($1, $2, s.%I) IN (%s)', p_stage, r.column_name,
                           CASE WHEN EXISTS (SELECT FROM pg_attribute WHERE attrelid = p_stage AND attname = 'attrs'
                                             AND NOT attisdropped) THEN format(', attrs = s.attrs - %L', r.column_name) ELSE '' END,
                           r.column_name, v_forgotten)
                USING v_key, r.subject;
            GET DIAGNOSTICS v_rows = ROW_COUNT;
            v_cleared := v_cleared + v_rows;
        END IF;
    END LOOP;
    IF v_left_out + v_cleared > 0 THEN
        RAISE NOTICE 'dwh.refresh_%: left out % row(s) and cleared % id(s) of subjects dwh forget erased', p_copy, v_left_out, v_cleared;
    END IF;
    RETURN v_left_out;
END
$$;

-- Remove (or clear) a subject everywhere dwh.subject_columns says its id is held, queue the
-- marts' days those rows counted in, and log it without the id. One transaction: it all
-- commits or nothing does. The refreshes' locks are taken first, so no refresh that staged
-- the subject before can write it back after. Only the owner may run it.
CREATE OR REPLACE FUNCTION dwh.forget(p_subject text, p_id text)
RETURNS dwh.erasure_log
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    r record;
    v_rows bigint;
    v_since timestamptz;
    v_deleted jsonb := '{}';
    v_cleared jsonb := '{}';
    v_log dwh.erasure_log;
BEGIN
    IF NOT EXISTS (SELECT FROM dwh.subject_columns WHERE subject = p_subject) THEN
        RAISE EXCEPTION 'dwh.forget: no subject %', coalesce(quote_literal(p_subject), 'NULL')
            USING HINT = 'Subjects are ' || coalesce((SELECT string_agg(DISTINCT subject, ', ') FROM dwh.subject_columns), 'none yet: run dwh migrate') || '.';
    END IF;
    IF p_id IS NULL OR p_id !~ '\S' THEN
        RAISE EXCEPTION 'dwh.forget: the % id is empty', p_subject USING HINT = 'Give the id the source knows it by.';
    END IF;
    FOR r IN SELECT DISTINCT copy FROM dwh.subject_columns WHERE subject = p_subject ORDER BY copy LOOP
        PERFORM dwh.lock_refresh(r.copy);
    END LOOP;
    FOR r IN SELECT s.*, EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = s.relation::regclass AND a.attname = 'created_at'
                                 AND NOT a.attisdropped) AS dated
             FROM dwh.subject_columns s WHERE s.subject = p_subject ORDER BY s.copy, s.relation, s.column_name LOOP
        -- The oldest creation among the rows: the marts' days from then on counted them.
        EXECUTE format(
            CASE r.erase WHEN 'row' THEN 'WITH gone AS (DELETE FROM %1$s WHERE %2$I = $1 RETURNING %3$s AS since) '
                         ELSE 'WITH gone AS (UPDATE %1$s SET %2$I = NULL%4$s WHERE %2$I = $1 RETURNING %3$s AS since) ' END
            || 'SELECT count(*), min(coalesce(since, ''-infinity'')) FROM gone',
            r.relation::regclass, r.column_name, CASE WHEN r.dated THEN 'created_at' ELSE 'NULL::timestamptz' END,
            CASE WHEN EXISTS (SELECT FROM pg_attribute WHERE attrelid = r.relation::regclass AND attname = 'attrs'
                              AND NOT attisdropped) THEN format(', attrs = attrs - %L', r.column_name) ELSE '' END)
            USING p_id INTO v_rows, v_since;
        IF r.erase = 'row' THEN
            v_deleted := v_deleted || jsonb_build_object(r.relation, v_rows);
        ELSE
            v_cleared := v_cleared || jsonb_build_object(r.relation || '.' || r.column_name, v_rows);
        END IF;
        IF v_rows > 0 AND r.relation = 'dwh.' || r.copy THEN
            PERFORM dwh.mark_marts_stale_since(r.copy, v_since);
        END IF;
    END LOOP;
    INSERT INTO dwh.erasure_log (subject, subject_hash, rows_deleted, values_cleared)
    VALUES (p_subject, dwh.subject_hash(p_subject, p_id), v_deleted, v_cleared)
    RETURNING * INTO v_log;
    RETURN v_log;
END
$$;
REVOKE ALL ON FUNCTION dwh.forget(text, text) FROM PUBLIC;
