-- depends: 0005.personal_data
-- mart.org_daily_usage's storage has always been computed in GiB-days (bytes / 2^30) but was
-- named GB-days: the stored column is renamed, its values stay. The view is dropped here and
-- created again, with the new name, by its SQL file (refresh_mart_org_daily_usage.sql) in the
-- same `dwh migrate`. (IF EXISTS: a new warehouse gets the table from the catalog afterwards.)
DROP VIEW IF EXISTS mart.org_daily_usage;
ALTER TABLE IF EXISTS mart.org_daily_usage_days RENAME COLUMN storage_gb_days TO storage_gib_days;
