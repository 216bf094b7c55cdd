-- depends: 0002.bookkeeping
-- Facts: partitioned by event time, daily (pg_partman in 0005). Keys include the
-- partition column, as PostgreSQL requires for unique constraints on partitioned tables.

CREATE TABLE dwh.events (
    msg_id       bigint      NOT NULL,
    read_ct      integer     NOT NULL,
    enqueued_at  timestamptz NOT NULL,
    archived_at  timestamptz NOT NULL,
    vt           timestamptz NOT NULL,
    message      jsonb       NOT NULL,
    event_type   text GENERATED ALWAYS AS (message ->> 'event') STORED,
    PRIMARY KEY (msg_id, enqueued_at)
) PARTITION BY RANGE (enqueued_at);

CREATE TABLE dwh.instance_state (
    id           bigint      NOT NULL,
    instance_id  uuid        NOT NULL,
    state        text        NOT NULL,
    changed_at   timestamptz NOT NULL,
    PRIMARY KEY (id, changed_at)
) PARTITION BY RANGE (changed_at);
CREATE INDEX ON dwh.instance_state (instance_id, changed_at);

-- Metrics, normalised: each label set once, samples narrow and partitioned by time.
CREATE TABLE dwh.metric_series (
    series_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    metric_name  text  NOT NULL,
    labels       jsonb NOT NULL,
    instance_id  text GENERATED ALWAYS AS (labels ->> 'instance_id') STORED,
    organization_id text GENERATED ALWAYS AS (labels ->> 'organization_id') STORED,
    UNIQUE (metric_name, labels)
);

CREATE TABLE dwh.metrics (
    series_id  bigint           NOT NULL REFERENCES dwh.metric_series,
    ts         timestamptz      NOT NULL,
    value      double precision NOT NULL,
    PRIMARY KEY (series_id, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX ON dwh.metrics (ts);

-- The denormalised shape (as prometheus_fdw returns it), for people and marts.
CREATE VIEW dwh.metric_samples AS
SELECT s.metric_name, s.labels, s.instance_id, s.organization_id, m.ts, m.value
FROM dwh.metrics m
JOIN dwh.metric_series s USING (series_id);
