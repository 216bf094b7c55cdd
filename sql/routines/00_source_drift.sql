-- A read of a Postgres source (postgres_fdw: the control plane, the relay) failed: say which
-- source did what. A source table whose columns changed since the warehouse imported it
-- (dropped, renamed, retyped) is named with the column; a source that did not answer within
-- the run's statement_timeout (the job's timeout) is named as such. Anything else is left to
-- the caller to re-raise as it was. The sources of a refresh are the catalog's
-- (dwh.settings 'refresh.sources.<table>', written by `dwh migrate`).

-- A postgres_fdw foreign table against its remote table as it is now: one row per column that
-- is gone, retyped or new there ('table gone' when the login sees no such table). Types are
-- compared as information_schema spells them on both sides. The remote columns are read
-- through a temporary foreign table of the source's information_schema.columns, on the same
-- server and user mapping as the data; a foreign table of another wrapper returns no row.
CREATE OR REPLACE FUNCTION dwh.source_drift(p_source regclass)
RETURNS TABLE (column_name text, change text, was text, now text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning  -- no notices about the temporary tables it replaces
AS $$
DECLARE
    v_server name;
    v_local_schema name;
    v_local_table name;
    v_schema text;
    v_table text;
BEGIN
    SELECT s.srvname, n.nspname, c.relname, coalesce(o_schema.option_value, n.nspname), coalesce(o_table.option_value, c.relname)
      INTO v_server, v_local_schema, v_local_table, v_schema, v_table
    FROM pg_foreign_table ft
    JOIN pg_foreign_server s ON s.oid = ft.ftserver
    JOIN pg_foreign_data_wrapper w ON w.oid = s.srvfdw AND w.fdwname = 'postgres_fdw'
    JOIN pg_class c ON c.oid = ft.ftrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_options_to_table(ft.ftoptions) o_schema ON o_schema.option_name = 'schema_name'
    LEFT JOIN pg_options_to_table(ft.ftoptions) o_table ON o_table.option_name = 'table_name'
    WHERE ft.ftrelid = p_source;
    IF v_server IS NULL THEN
        RETURN;
    END IF;
    DROP FOREIGN TABLE IF EXISTS pg_temp.dwh_source_columns;
    EXECUTE format('CREATE FOREIGN TABLE pg_temp.dwh_source_columns (table_schema text, table_name text, column_name text, '
                   'data_type text) SERVER %I OPTIONS (schema_name %L, table_name %L)', v_server, 'information_schema', 'columns');
    CREATE TEMP TABLE IF NOT EXISTS dwh_remote_columns (column_name text, data_type text) ON COMMIT DROP;
    TRUNCATE pg_temp.dwh_remote_columns;
    INSERT INTO pg_temp.dwh_remote_columns
    SELECT r.column_name, r.data_type FROM pg_temp.dwh_source_columns r WHERE r.table_schema = v_schema AND r.table_name = v_table;
    DROP FOREIGN TABLE pg_temp.dwh_source_columns;
    IF NOT EXISTS (SELECT FROM pg_temp.dwh_remote_columns) THEN
        RETURN QUERY SELECT NULL::text, 'table gone', NULL::text, NULL::text;
        RETURN;
    END IF;
    RETURN QUERY
    WITH here AS (
        SELECT coalesce((SELECT o.option_value FROM pg_options_to_table(a.attfdwoptions) o WHERE o.option_name = 'column_name'),
                        a.attname::text) AS name, ic.data_type::text AS data_type
        FROM pg_attribute a
        JOIN information_schema.columns ic
          ON ic.table_schema = v_local_schema AND ic.table_name = v_local_table AND ic.column_name = a.attname
        WHERE a.attrelid = p_source AND a.attnum > 0 AND NOT a.attisdropped
    )
    SELECT coalesce(h.name, r.column_name),
           CASE WHEN r.column_name IS NULL THEN 'gone' WHEN h.name IS NULL THEN 'new' ELSE 'retyped' END,
           h.data_type, r.data_type
    FROM here h FULL JOIN pg_temp.dwh_remote_columns r ON r.column_name = h.name
    WHERE h.data_type IS DISTINCT FROM r.data_type
    ORDER BY 2, 1;
END
$$;

-- Called from a refresh's handler around its source read, with the error it caught. Raises the
-- sentence for a stalled source (57014, the run's timeout) or a changed source table (HV00R
-- table gone, HV005 column gone, HV004 column retyped); returns when it is neither, and the
-- caller re-raises the original error.
CREATE OR REPLACE FUNCTION dwh.raise_source_read_error(p_table text, p_sqlstate text, p_message text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_sources regclass[] := ARRAY(SELECT to_regclass(s) FROM unnest(string_to_array(dwh.setting('refresh.sources.' || p_table, ''), ',')) s
                                  WHERE to_regclass(s) IS NOT NULL);
    v_source regclass;
    v_label text;
    v_first record;
    v_changes text;
BEGIN
    IF p_sqlstate = '57014' AND p_message LIKE '%statement timeout%' THEN
        RAISE EXCEPTION USING ERRCODE = 'query_canceled',
            MESSAGE = format('dwh.refresh_%s: source %s did not answer within the run''s timeout (statement_timeout %s)',
                             p_table, coalesce((SELECT string_agg(dwh.source_label(s), ', ') FROM unnest(v_sources) s), 'reads'),
                             current_setting('statement_timeout')),
            DETAIL = p_message,
            HINT = 'Nothing was changed; the next run tries again. The source may be locked or overloaded; if the refresh '
                   'needs longer, raise its timeout ([timeouts] of the deployment configuration, then `dwh migrate`).';
    END IF;
    -- A source that refuses the login or a privilege has not changed shape: nothing to compare.
    IF p_sqlstate IN ('42501', '28000', '28P01') OR p_sqlstate LIKE '08%' THEN
        RETURN;
    END IF;
    FOREACH v_source IN ARRAY v_sources LOOP
        SELECT * INTO v_first FROM dwh.source_drift(v_source) d WHERE d.change <> 'new'
        ORDER BY d.change = 'retyped', d.column_name LIMIT 1;
        CONTINUE WHEN NOT FOUND;
        v_label := dwh.source_label(v_source);
        SELECT string_agg(CASE d.change
                   WHEN 'gone' THEN format('column %I (%s) is gone', d.column_name, d.was)
                   WHEN 'retyped' THEN format('column %I is %s, it was %s', d.column_name, d.now, d.was)
                   WHEN 'new' THEN format('column %I (%s) is new', d.column_name, d.now) END, '; ')
          INTO v_changes
        FROM dwh.source_drift(v_source) d;
        RAISE EXCEPTION USING
            ERRCODE = CASE v_first.change WHEN 'table gone' THEN 'HV00R' WHEN 'gone' THEN 'HV005' ELSE 'HV004' END,
            MESSAGE = format('dwh.refresh_%s: source %s changed: %s', p_table, v_label, CASE v_first.change
                WHEN 'table gone' THEN 'the table is gone or no longer readable by the warehouse''s login'
                WHEN 'gone' THEN format('column %I is gone (dropped or renamed)', v_first.column_name)
                ELSE format('column %I is %s, the warehouse reads it as %s', v_first.column_name, v_first.now, v_first.was) END),
            DETAIL = concat_ws(E'\n', 'Since the warehouse imported it: ' || v_changes || '.', 'The read failed with: ' || p_message),
            HINT = 'Nothing was changed. Restore the column at the source, or change the warehouse to read the new one '
                   '(docs/source-contract.md); `dwh migrate` checks the source against its contract and re-imports its tables.';
    END LOOP;
END
$$;

-- How an error names a source table: the server and the remote table of a postgres_fdw table,
-- the foreign table itself otherwise.
CREATE OR REPLACE FUNCTION dwh.source_label(p_source regclass)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        (SELECT format('%s table %s.%s (%s)', replace(s.srvname, '_', ' '),
                       coalesce(o_schema.option_value, n.nspname), coalesce(o_table.option_value, c.relname), p_source)
         FROM pg_foreign_table ft
         JOIN pg_foreign_server s ON s.oid = ft.ftserver
         JOIN pg_foreign_data_wrapper w ON w.oid = s.srvfdw AND w.fdwname = 'postgres_fdw'
         JOIN pg_class c ON c.oid = ft.ftrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN pg_options_to_table(ft.ftoptions) o_schema ON o_schema.option_name = 'schema_name'
         LEFT JOIN pg_options_to_table(ft.ftoptions) o_table ON o_table.option_name = 'table_name'
         WHERE ft.ftrelid = p_source),
        p_source::text)
$$;
