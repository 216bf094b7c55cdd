-- depends: 0008.instance_state_daily
-- dwh.metrics loses its foreign key to dwh.metric_series. Its only writer is
-- dwh.refresh_metrics, which takes every series_id from a join on dwh.metric_series, and
-- series are never deleted, so the key could not fail; but it fired a trigger per sample,
-- which was two thirds of the insert time (a year of 10,000 instances is ~100M samples).
ALTER TABLE dwh.metrics DROP CONSTRAINT IF EXISTS metrics_series_id_fkey;
