-- The control plane's own tables (a source of the warehouse, database `control_plane`).
-- Idempotent: applied by dwh_assets/sources/control_plane.py on every `dwh up`.
-- The warehouse imports `public` and `pgmq` with IMPORT FOREIGN SCHEMA, so these
-- table and column names are its contract: change them only together with the warehouse.
--
-- Template: {reader} is the read-only login postgres_fdw uses
-- (config.CONTROL_PLANE_READER_ROLE); the loader fills it in as an identifier.

CREATE TABLE IF NOT EXISTS public.organizations (
    organization_id text PRIMARY KEY,
    name            text NOT NULL,
    plan            text NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS public.instances (
    instance_id     uuid PRIMARY KEY,
    organization_id text NOT NULL REFERENCES public.organizations,
    name            text NOT NULL,
    region          text NOT NULL,
    cpu             int NOT NULL,
    memory_gb       int NOT NULL,
    storage_gb      int NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    deleted_at      timestamptz
);

CREATE TABLE IF NOT EXISTS public.instance_state_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id uuid NOT NULL REFERENCES public.instances,
    state       text NOT NULL,
    changed_at  timestamptz NOT NULL
);
-- The warehouse reads state history by time window.
CREATE INDEX IF NOT EXISTS instance_state_history_changed_at_idx
    ON public.instance_state_history (changed_at);

-- The archive table of the pgmq queue `instance_events` (pgmq's a_<queue> shape).
CREATE SCHEMA IF NOT EXISTS pgmq;
CREATE TABLE IF NOT EXISTS pgmq.a_instance_events (
    msg_id      bigint PRIMARY KEY,
    read_ct     int NOT NULL DEFAULT 0,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    archived_at timestamptz NOT NULL DEFAULT now(),
    vt          timestamptz NOT NULL,
    message     jsonb NOT NULL
);
-- The warehouse reads events by enqueued_at window (its partition key).
CREATE INDEX IF NOT EXISTS a_instance_events_enqueued_at_idx
    ON pgmq.a_instance_events (enqueued_at);
-- ... and looks up what was archived since its last refresh by archived_at (pgmq's own index).
CREATE INDEX IF NOT EXISTS archived_at_idx_instance_events
    ON pgmq.a_instance_events (archived_at);

-- Read-only access for the warehouse, and nothing more.
GRANT USAGE ON SCHEMA public, pgmq TO {reader};
GRANT SELECT ON public.organizations, public.instances, public.instance_state_history,
    pgmq.a_instance_events TO {reader};

-- Bookkeeping of the generated demo data; not imported by the warehouse, not granted.
CREATE SCHEMA IF NOT EXISTS dwh_seed;
REVOKE ALL ON SCHEMA dwh_seed FROM PUBLIC;
CREATE TABLE IF NOT EXISTS dwh_seed.loaded_world (
    -- one row at most
    singleton         boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seed              bigint NOT NULL,
    scale             float8 NOT NULL,
    anchor_day        date NOT NULL,
    n_events          bigint NOT NULL,
    generator_version int NOT NULL,
    row_counts        jsonb NOT NULL,
    loaded_at         timestamptz NOT NULL DEFAULT now()
);
-- Days of history the world was generated with (control planes loaded before it was recorded: 60).
ALTER TABLE dwh_seed.loaded_world ADD COLUMN IF NOT EXISTS history_days int NOT NULL DEFAULT 60;
