-- A source reader (file_fdw `program`) failed, and PostgreSQL only says "program ... failed:
-- child process exited with exit code N". The reader's exit code is its failure class
-- (EXIT_CODES in dwh_assets/sources/reader.py): re-raise naming the table, the source and
-- the cause, with the reader's one-line reason in DETAIL and what to do in HINT. Called from
-- the refresh routines' `EXCEPTION WHEN external_routine_exception` handlers.
CREATE OR REPLACE FUNCTION dwh.raise_source_failure(p_table text, p_source text, p_message text, p_detail text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_code int := substring(p_detail FROM 'exited with exit code (\d+)')::int;
    v_config_match text[] := regexp_match(p_message, '--config (?:''([^'']+)''|(\S+))');
    v_config text := coalesce(v_config_match[1], v_config_match[2], 'reader.json');
    v_cause text;
    v_state text;
    v_hint text;
    v_reason text;
BEGIN
    SELECT cause, sqlstate, hint INTO v_cause, v_state, v_hint
    FROM (VALUES
        (1, 'failed: the source reader hit an internal error', 'XX000',
            'This is a bug in the source reader; the reason is in DETAIL and the PostgreSQL log. Nothing was changed.'),
        (2, 'failed: the source reader refused its arguments or settings', '22023',
            format('Check the reader settings in %s (`dwh reader install` rewrites them from [reader] of the deployment configuration). Nothing was changed.', v_config)),
        (3, 'is unreachable', '08001',
            format('Check that the source is up and that its URL in %s is right; nothing was changed, rerun the refresh when it answers.', v_config)),
        (4, 'did not answer in time', '08006',
            'The source is hanging or slow; nothing was changed. Rerun later, or raise timeout_seconds / total_timeout_seconds (reader.timeout_seconds, reader.total_timeout_seconds in the deployment configuration, then `dwh reader install`).'),
        (5, 'answered every retry with a server error (HTTP 5xx)', '08006',
            'The source is failing; nothing was changed. Rerun the refresh when it recovers (reader.max_retries sets how often the reader retries).'),
        (6, 'kept rate-limiting the reader (HTTP 429) until its retries ran out', '08006',
            'Nothing was changed. Rerun later, or let the reader wait longer (reader.max_retries, reader.max_retry_after_seconds, then `dwh reader install`).'),
        (7, 'refused the reader''s credentials (HTTP 401/403)', '28000',
            'Check the API key (clerk.secret_key_file of the deployment configuration, then `dwh reader install`). Nothing was changed.'),
        (8, 'sent a payload the warehouse cannot load (malformed, missing or mistyped fields)', '22000',
            'The source object named in DETAIL is broken or the API changed; fix it at the source, then rerun. Nothing was changed.'),
        (9, 'rejected the reader''s request (HTTP 4xx)', '38000',
            format('Check the source URL in %s and the API version (DETAIL says what was refused). Nothing was changed.', v_config))
    ) AS m(code, cause, sqlstate, hint)
    WHERE code = v_code;
    IF v_cause IS NULL THEN
        v_cause := 'failed: its reader ' || CASE
            WHEN p_detail IN ('command not found', 'command not executable') THEN 'could not be started (' || p_detail || ')'
            ELSE 'ended abnormally (' || coalesce(p_detail, 'no detail') || ')' END;
        v_state := '38000';
        v_hint := 'Check that the installed reader runs as the database server''s OS user (`dwh reader install` installs it). Nothing was changed.';
    END IF;
    IF v_code IS NOT NULL THEN
        -- The reader left its one-line reason for this backend; a failure here must not hide the original.
        BEGIN
            CREATE TEMP TABLE source_failure_reason (reason text) ON COMMIT DROP;
            EXECUTE format('COPY pg_temp.source_failure_reason FROM PROGRAM %L WITH (FORMAT csv)',
                dwh.reader_command(ARRAY['last-error', '--since', (floor(extract(epoch FROM transaction_timestamp())) - 1)::bigint::text,
                                         '--exit-code', v_code::text]));
            SELECT string_agg(reason, ' ') INTO v_reason FROM pg_temp.source_failure_reason;
        EXCEPTION WHEN OTHERS THEN
            v_reason := NULL;
        END;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = v_state,
        MESSAGE = format('dwh.refresh_%s: source %s %s', p_table, p_source, v_cause),
        DETAIL = concat_ws(E'\n', coalesce(v_reason, 'The reader''s reason is in the PostgreSQL server log.'),
                           format('%s: %s', p_message, p_detail)),
        HINT = v_hint;
END
$$;
