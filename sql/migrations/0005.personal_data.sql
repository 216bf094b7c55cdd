-- depends: 0004.cron_probe
-- Personal data (docs/personal-data.md): the reader's privileges come from the catalog's
-- marks alone, snapshots keep no personal column, and `dwh forget` has a key, a log and
-- the map of where each subject's id is held.

-- New tables (pg_partman's daily partitions among them) are granted to the reader by
-- nobody but `dwh migrate`: a partition read directly would skip its parent's column
-- privileges. Migrate also takes back what earlier default privileges gave to partitions.
ALTER DEFAULT PRIVILEGES IN SCHEMA dwh REVOKE SELECT ON TABLES FROM dwh_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA mart REVOKE SELECT ON TABLES FROM dwh_reader;

-- Snapshots are for counting (how many existed on a day): the personal columns leave every
-- partition at once. (A warehouse migrated after the catalog creates them has none: IF EXISTS.)
ALTER TABLE IF EXISTS dwh.users_snapshot
    DROP COLUMN IF EXISTS first_name, DROP COLUMN IF EXISTS last_name, DROP COLUMN IF EXISTS email,
    DROP COLUMN IF EXISTS gender, DROP COLUMN IF EXISTS last_sign_in_at, DROP COLUMN IF EXISTS phone_numbers,
    DROP COLUMN IF EXISTS username, DROP COLUMN IF EXISTS attrs;
ALTER TABLE IF EXISTS dwh.organization_memberships_snapshot DROP COLUMN IF EXISTS attrs;

-- rows_source of a dimension's refresh leaves out the rows of forgotten subjects (dwh.leave_out_forgotten).
COMMENT ON COLUMN dwh.refresh_log.rows_source IS 'Rows the refresh read from its source and kept (a dimension leaves out the subjects dwh forget erased).';

-- Where each erasure subject's id is held: written by `dwh migrate` from the catalog's
-- Column.subject marks; dwh.forget and the dimension refreshes read it.
CREATE TABLE dwh.subject_columns (
    copy        text NOT NULL,   -- the catalog table, as dwh.refresh_log names it (its refresh's lock)
    relation    text NOT NULL,   -- that table or its snapshot table
    column_name text NOT NULL,
    subject     text NOT NULL,   -- user, organization: what `dwh forget --<subject>` takes
    erase       text NOT NULL CHECK (erase IN ('row', 'value')),
    PRIMARY KEY (relation, column_name)
);
COMMENT ON TABLE dwh.subject_columns IS 'Where each erasure subject''s id is held (from the catalog, written by dwh migrate): dwh forget deletes the row or clears the value.';
COMMENT ON COLUMN dwh.subject_columns.copy IS 'The catalog table whose refresh writes the relation.';
COMMENT ON COLUMN dwh.subject_columns.relation IS 'The table or snapshot table holding the id.';
COMMENT ON COLUMN dwh.subject_columns.column_name IS 'The column holding the id.';
COMMENT ON COLUMN dwh.subject_columns.subject IS 'Whose id: user or organization.';
COMMENT ON COLUMN dwh.subject_columns.erase IS 'row: the row is about the subject and goes; value: the value is cleared.';

-- The key of the erasure log's hashes: without it, nobody can tell from the log whether an
-- id they hold was erased. The owner's alone; it never leaves the database (nor changes:
-- a new key would let every forgotten subject back in).
CREATE TABLE dwh.erasure_key (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    key       bytea NOT NULL
);
INSERT INTO dwh.erasure_key (key) VALUES (public.gen_random_bytes(32));
REVOKE ALL ON dwh.erasure_key FROM dwh_loader, dwh_reader;
COMMENT ON TABLE dwh.erasure_key IS 'The HMAC key of dwh.erasure_log.subject_hash (pgcrypto). Owner only; never rotated.';
COMMENT ON COLUMN dwh.erasure_key.singleton IS 'One row.';
COMMENT ON COLUMN dwh.erasure_key.key IS '32 random bytes.';

-- One row per `dwh forget`: that it happened, never whom. The dimension refreshes leave out
-- every subject logged here while the source still holds it.
CREATE TABLE dwh.erasure_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject        text NOT NULL,
    subject_hash   text NOT NULL,
    rows_deleted   jsonb NOT NULL,
    values_cleared jsonb NOT NULL,
    erased_at      timestamptz NOT NULL DEFAULT now(),
    erased_by      text NOT NULL DEFAULT session_user
);
CREATE INDEX erasure_log_subject_hash ON dwh.erasure_log (subject, subject_hash);
REVOKE ALL ON dwh.erasure_log FROM dwh_loader, dwh_reader;
COMMENT ON TABLE dwh.erasure_log IS 'One row per dwh forget: the subject''s keyed hash, what was removed, when and by whom; never the id. Refreshes leave out the subjects logged here.';
COMMENT ON COLUMN dwh.erasure_log.id IS 'Identity of the erasure.';
COMMENT ON COLUMN dwh.erasure_log.subject IS 'user or organization.';
COMMENT ON COLUMN dwh.erasure_log.subject_hash IS 'HMAC-SHA256 of subject:id with dwh.erasure_key, hex.';
COMMENT ON COLUMN dwh.erasure_log.rows_deleted IS 'Rows deleted, by relation.';
COMMENT ON COLUMN dwh.erasure_log.values_cleared IS 'Values cleared, by relation.column.';
COMMENT ON COLUMN dwh.erasure_log.erased_at IS 'When the erasure committed (its transaction''s start).';
COMMENT ON COLUMN dwh.erasure_log.erased_by IS 'The login that ran it.';
