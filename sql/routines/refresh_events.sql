-- Copy [p_start, p_end) of a postgres_fdw foreign table (all of it when p_time_column is NULL,
-- as for a dimension's stage) into a local table with the source's
-- own binary COPY, piped by psql into COPY ... FROM PROGRAM: the rows arrive in binary, in
-- a stream (the source, psql and this backend run side by side) and are written with
-- COPY's batched inserts, where INSERT ... SELECT over postgres_fdw fetches text in turns
-- and inserts row by row (benchmarks/README.md, B1: about twice as fast).
--
-- The foreign table stays the source: the remote query is built from its options
-- (schema_name, table_name, column_name) and the connection from its server's options and
-- the caller's user mapping (the login, never the password: psql reads that from the
-- passfile `dwh reader install` wrote for the server's OS user, dwh.settings
-- 'control_plane.passfile'). A postgres_fdw probe of the same table comes first, so an
-- unreachable or refusing source fails exactly as the fdw path does. Values are cast on the
-- source to the target's column types (binary COPY needs the same types on both sides).
-- The caller must be allowed to run server programs (pg_execute_server_program); the
-- program's command line holds no secret. Returns the rows copied.
CREATE OR REPLACE FUNCTION dwh.copy_from_foreign(
    p_target regclass, p_source regclass, p_columns text[], p_time_column text,
    p_start timestamptz, p_end timestamptz)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    -- libpq keywords a postgres_fdw server may carry that psql can use; nothing secret.
    c_libpq constant text[] := ARRAY['host', 'hostaddr', 'port', 'dbname', 'sslmode', 'sslrootcert', 'sslcert',
        'sslkey', 'sslcrl', 'sslcrldir', 'sslsni', 'connect_timeout', 'keepalives', 'keepalives_idle',
        'keepalives_interval', 'keepalives_count', 'tcp_user_timeout', 'target_session_attrs', 'gssencmode',
        'krbsrvname', 'channel_binding', 'requirepeer'];
    v_server oid;
    v_options text[];
    v_login text;
    v_conninfo text;
    v_remote text;
    v_select text;
    v_found int;
    v_program text;
    v_rows bigint;
    v_message text;
    v_detail text;
    v_code int;
BEGIN
    -- The probe: connects (or fails) through postgres_fdw, as the fdw path would, and reads the
    -- columns, so a source that lost one fails here as it would there.
    EXECUTE format('SELECT %s FROM %s LIMIT 1', (SELECT string_agg(quote_ident(c), ', ') FROM unnest(p_columns) c), p_source);

    SELECT ft.ftserver, coalesce(quote_ident(o_schema.option_value), quote_ident(n.nspname)) || '.'
               || coalesce(quote_ident(o_table.option_value), quote_ident(c.relname))
      INTO v_server, v_remote
    FROM pg_foreign_table ft
    JOIN pg_class c ON c.oid = ft.ftrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_options_to_table(ft.ftoptions) o_schema ON o_schema.option_name = 'schema_name'
    LEFT JOIN pg_options_to_table(ft.ftoptions) o_table ON o_table.option_name = 'table_name'
    WHERE ft.ftrelid = p_source;
    IF v_server IS NULL THEN
        RAISE EXCEPTION 'dwh.copy_from_foreign: % is not a foreign table', p_source;
    END IF;

    -- Each column under its remote name, cast to the target column's type.
    SELECT string_agg(format('%s::%s',
                             quote_ident(coalesce((SELECT option_value FROM pg_options_to_table(fa.attfdwoptions)
                                                   WHERE option_name = 'column_name'), fa.attname)),
                             format_type(ta.atttypid, ta.atttypmod)), ', ' ORDER BY k.i), count(*)
      INTO v_select, v_found
    FROM unnest(p_columns) WITH ORDINALITY AS k(col, i)
    JOIN pg_attribute fa ON fa.attrelid = p_source AND fa.attname = k.col AND NOT fa.attisdropped
    JOIN pg_attribute ta ON ta.attrelid = p_target AND ta.attname = k.col AND NOT ta.attisdropped;
    IF v_found <> cardinality(p_columns) THEN
        RAISE EXCEPTION 'dwh.copy_from_foreign: % and % do not both have the columns %', p_source, p_target, p_columns;
    END IF;
    v_remote := format('COPY (SELECT %s FROM %s%s) TO STDOUT (FORMAT binary)', v_select, v_remote,
                       CASE WHEN p_time_column IS NOT NULL
                            THEN format(' WHERE %I >= %L::timestamptz AND %I < %L::timestamptz', p_time_column, p_start, p_time_column, p_end)
                            ELSE '' END);

    -- The connection: the server's libpq options, the login of the caller's user mapping.
    SELECT array_agg(format('%s=''%s''', o.option_name, replace(replace(o.option_value, '\', '\\'), '''', '\''')))
      INTO v_options
    FROM pg_foreign_server s, pg_options_to_table(s.srvoptions) o
    WHERE s.oid = v_server AND o.option_name = ANY (c_libpq);
    SELECT o.option_value INTO v_login
    FROM pg_user_mappings um, pg_options_to_table(um.umoptions) o
    WHERE um.srvid = v_server AND o.option_name = 'user'
      AND (um.umuser = 0 OR um.umuser = (SELECT oid FROM pg_roles WHERE rolname = current_user))
    ORDER BY um.umuser DESC  -- the caller's own mapping before a PUBLIC one
    LIMIT 1;
    v_login := coalesce(v_login, current_user);
    v_conninfo := array_to_string(v_options || ARRAY[
        format('user=''%s''', replace(replace(v_login, '\', '\\'), '''', '\''')),
        format('passfile=''%s''', replace(replace(dwh.setting('control_plane.passfile'), '\', '\\'), '''', '\''')),
        'application_name=''dwh_warehouse_copy'''], ' ');


    -- -X: no psqlrc; -w: never prompt; -q: no command tag in the data stream.
    v_program := concat_ws(' ', dwh.shell_quote(dwh.setting('control_plane.psql')), '-X', '-w', '-q',
                           '-v', 'ON_ERROR_STOP=1', '-d', dwh.shell_quote(v_conninfo), '-c', dwh.shell_quote(v_remote));
    BEGIN
        EXECUTE format('COPY %s (%s) FROM PROGRAM %L (FORMAT binary)',
                       p_target, (SELECT string_agg(quote_ident(c), ', ') FROM unnest(p_columns) c), v_program);
        GET DIAGNOSTICS v_rows = ROW_COUNT;
    EXCEPTION WHEN external_routine_exception THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
        v_code := substring(v_detail FROM 'exited with exit code (\d+)')::int;
        RAISE EXCEPTION USING
            ERRCODE = CASE v_code WHEN 2 THEN '08001' ELSE '38000' END,
            MESSAGE = format('copying %s from %s: psql %s', p_target, p_source, CASE v_code
                WHEN 2 THEN 'could not connect to the source or lost the connection'
                WHEN 3 THEN 'got an error from the source''s query'
                ELSE 'failed' END),
            DETAIL = concat_ws(E'\n', 'psql''s own message is in the PostgreSQL server log.', v_detail),
            HINT = 'Check the control plane, and the passfile `dwh reader install` writes (control_plane.transfer = "fdw" reads through postgres_fdw instead). Nothing was changed.';
    END;
    RETURN v_rows;
END
$$;

-- Control plane event archive -> dwh.events, replacing exactly [p_start, p_end).
-- dwh.settings 'control_plane.transfer': 'copy' (the bulk path above; `dwh migrate` sets it
-- where the server may run programs) or 'fdw' (one INSERT ... SELECT: postgres_fdw pushes
-- the window down to the source). Either way one transaction, one refresh_log row.
CREATE OR REPLACE FUNCTION dwh.refresh_events(p_start timestamptz, p_end timestamptz)
RETURNS dwh.refresh_log
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_t0 timestamptz := clock_timestamp();
    v_wait double precision := dwh.begin_fact_refresh('events', p_start, p_end);
    v_del bigint;
    v_ins bigint;
BEGIN
    DELETE FROM dwh.events WHERE enqueued_at >= p_start AND enqueued_at < p_end;
    GET DIAGNOSTICS v_del = ROW_COUNT;
    BEGIN
        IF dwh.setting('control_plane.transfer', 'fdw') = 'copy' THEN
            v_ins := dwh.copy_from_foreign('dwh.events', 'src_control_plane.a_instance_events',
                                           ARRAY['msg_id', 'read_ct', 'enqueued_at', 'archived_at', 'vt', 'message'],
                                           'enqueued_at', p_start, p_end);
        ELSE
            INSERT INTO dwh.events (msg_id, read_ct, enqueued_at, archived_at, vt, message)
            SELECT msg_id, read_ct, enqueued_at, archived_at, vt, message
            FROM src_control_plane.a_instance_events
            WHERE enqueued_at >= p_start AND enqueued_at < p_end;
            GET DIAGNOSTICS v_ins = ROW_COUNT;
        END IF;
    EXCEPTION WHEN query_canceled OR data_exception OR syntax_error_or_access_rule_violation OR fdw_error
                   OR external_routine_exception THEN
        -- A source that changed shape or did not answer in time is named (00_source_drift.sql).
        PERFORM dwh.raise_source_read_error('events', SQLSTATE, SQLERRM);
        RAISE;
    END;
    PERFORM dwh.check_window_drop('events', p_start, p_end, v_ins, v_del);
    PERFORM dwh.mark_marts_stale_window('events', p_start, p_end);
    RETURN dwh.log_refresh('events', p_start, p_end, NULL, v_ins, 0, v_del, v_ins, v_t0, v_wait);
END
$$;
