-- depends: 0010.metrics_key_only
-- The dimensions' snapshot tables lose their index on snapshot_day: they are partitioned by
-- that day, so every row of a partition has the same snapshot_day and a query of a day reads
-- its one partition whole. The index served no query, and each refresh wrote a row into it for
-- every row of the snapshot (benchmarks/README.md, B1). The catalog no longer declares it;
-- this drops it from a warehouse created before.
DROP INDEX IF EXISTS dwh.users_snapshot_snapshot_day_idx;
DROP INDEX IF EXISTS dwh.organizations_snapshot_snapshot_day_idx;
DROP INDEX IF EXISTS dwh.organization_memberships_snapshot_snapshot_day_idx;
DROP INDEX IF EXISTS dwh.instances_snapshot_snapshot_day_idx;
