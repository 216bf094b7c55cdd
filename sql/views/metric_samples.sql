-- The denormalised shape of the metrics (as prometheus_fdw returns it), for people and marts.
CREATE OR REPLACE VIEW dwh.metric_samples AS
SELECT s.metric_name, s.labels, s.instance_id, s.organization_id, m.ts, m.value
FROM dwh.metrics m
JOIN dwh.metric_series s USING (series_id);
