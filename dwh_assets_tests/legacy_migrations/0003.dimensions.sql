-- depends: 0002.bookkeeping
-- Dimensions: a current table kept equal to the source, plus daily snapshots
-- (partitioned by snapshot_day with pg_partman in 0005).

CREATE TABLE dwh.users (
    user_id          text PRIMARY KEY,
    first_name       text,
    last_name        text,
    email            text,
    gender           text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    last_sign_in_at  timestamptz,
    phone_numbers    integer NOT NULL DEFAULT 0,
    username         text,
    attrs            jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX users_created_at ON dwh.users (created_at);

CREATE TABLE dwh.organizations (
    organization_id  text PRIMARY KEY,
    name             text NOT NULL,
    slug             text,
    plan             text,
    created_by       text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    attrs            jsonb NOT NULL DEFAULT '{}'
);

CREATE TABLE dwh.organization_memberships (
    organization_id  text NOT NULL,
    user_id          text NOT NULL,
    role             text NOT NULL,
    created_at       timestamptz,
    attrs            jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (organization_id, user_id)
);
CREATE INDEX organization_memberships_user ON dwh.organization_memberships (user_id);

CREATE TABLE dwh.instances (
    instance_id      uuid PRIMARY KEY,
    organization_id  text NOT NULL,
    name             text NOT NULL,
    region           text NOT NULL,
    cpu              integer NOT NULL,
    memory_gb        integer NOT NULL,
    storage_gb       integer NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    deleted_at       timestamptz
);
CREATE INDEX instances_organization ON dwh.instances (organization_id);

-- Snapshots: the current table's rows as of snapshot_day.
CREATE TABLE dwh.users_snapshot (snapshot_day date NOT NULL, LIKE dwh.users) PARTITION BY RANGE (snapshot_day);
CREATE TABLE dwh.organizations_snapshot (snapshot_day date NOT NULL, LIKE dwh.organizations) PARTITION BY RANGE (snapshot_day);
CREATE TABLE dwh.organization_memberships_snapshot (snapshot_day date NOT NULL, LIKE dwh.organization_memberships) PARTITION BY RANGE (snapshot_day);
CREATE TABLE dwh.instances_snapshot (snapshot_day date NOT NULL, LIKE dwh.instances) PARTITION BY RANGE (snapshot_day);
CREATE INDEX ON dwh.users_snapshot (snapshot_day);
CREATE INDEX ON dwh.organizations_snapshot (snapshot_day);
CREATE INDEX ON dwh.organization_memberships_snapshot (snapshot_day);
CREATE INDEX ON dwh.instances_snapshot (snapshot_day);
