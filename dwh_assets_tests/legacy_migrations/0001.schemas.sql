-- Schemas of the warehouse (docs/architecture.md, "Schemas").
CREATE SCHEMA src_control_plane;
CREATE SCHEMA src_clerk;
CREATE SCHEMA src_prometheus;
CREATE SCHEMA dwh;
CREATE SCHEMA mart;

COMMENT ON SCHEMA src_control_plane IS 'Foreign tables of the control plane (postgres_fdw, IMPORT FOREIGN SCHEMA).';
COMMENT ON SCHEMA src_clerk IS 'Foreign tables of Clerk (reader backend: file_fdw + source reader; or clerk_fdw).';
COMMENT ON SCHEMA src_prometheus IS 'Foreign tables of Prometheus (reader backend: per-window temporary tables; or prometheus_fdw).';
COMMENT ON SCHEMA dwh IS 'Local copies (pg_partman partitioned), refresh routines and the refresh log.';
COMMENT ON SCHEMA mart IS 'Relations for dashboards, built from local copies only.';

-- The loader runs refreshes and reads sources (for checks); the reader sees dwh and mart only.
GRANT USAGE ON SCHEMA dwh, mart TO dwh_loader, dwh_reader;
GRANT USAGE ON SCHEMA src_control_plane, src_clerk, src_prometheus TO dwh_loader;

-- Routines are not callable by PUBLIC; grants name who may run what.
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA dwh GRANT SELECT ON TABLES TO dwh_loader, dwh_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA mart GRANT SELECT ON TABLES TO dwh_loader, dwh_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA src_control_plane GRANT SELECT ON TABLES TO dwh_loader;
ALTER DEFAULT PRIVILEGES IN SCHEMA src_clerk GRANT SELECT ON TABLES TO dwh_loader;
ALTER DEFAULT PRIVILEGES IN SCHEMA src_prometheus GRANT SELECT ON TABLES TO dwh_loader;
