-- A setting of dwh.settings, or a clear error naming it (settings are written by `dwh migrate`).
CREATE OR REPLACE FUNCTION dwh.setting(p_key text, p_default text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v text;
BEGIN
    SELECT value INTO v FROM dwh.settings WHERE key = p_key;
    IF v IS NULL THEN
        IF p_default IS NOT NULL THEN
            RETURN p_default;
        END IF;
        RAISE EXCEPTION 'dwh setting % is missing', p_key
            USING HINT = 'Run `dwh migrate`, which writes dwh.settings from the stack configuration.';
    END IF;
    RETURN v;
END
$$;

-- POSIX-shell single quoting: the only way a value reaches file_fdw's `program` string.
CREATE OR REPLACE FUNCTION dwh.shell_quote(p text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
AS $$ SELECT '''' || replace(p, '''', '''"''"''') || '''' $$;

-- The command line of the source reader for file_fdw, every argument validated and quoted.
CREATE OR REPLACE FUNCTION dwh.reader_command(p_args text[])
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a text;
    v_cmd text := dwh.setting('reader.command');
BEGIN
    FOREACH a IN ARRAY p_args LOOP
        -- Arguments are object names, epoch seconds, steps and metric names.
        IF a IS NULL OR a !~ '^[A-Za-z0-9_:.+-]+$' THEN
            -- to_json: control characters (a newline) are shown escaped, the message stays one line.
            RAISE EXCEPTION 'refusing reader argument %: only letters, digits and _:.+- are allowed', coalesce(to_json(a)::text, 'NULL');
        END IF;
        v_cmd := v_cmd || ' ' || dwh.shell_quote(a);
    END LOOP;
    RETURN v_cmd;
END
$$;
