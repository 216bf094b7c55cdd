-- Run by the cluster superuser on the warehouse database before the owner's migrations
-- (dwh_assets/migrate.py). Only what needs a superuser lives here: extensions and the
-- grants that let dwh_owner migrate without being a superuser. Idempotent.

CREATE SCHEMA IF NOT EXISTS partman AUTHORIZATION dwh_owner;
CREATE EXTENSION IF NOT EXISTS pg_partman SCHEMA partman;
CREATE EXTENSION IF NOT EXISTS pg_cron;
CREATE EXTENSION IF NOT EXISTS postgres_fdw;
CREATE EXTENSION IF NOT EXISTS file_fdw;

-- pg_partman keeps its configuration in tables the owner's maintenance must write.
GRANT ALL ON SCHEMA partman TO dwh_owner;
GRANT ALL ON ALL TABLES IN SCHEMA partman TO dwh_owner;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA partman TO dwh_owner;
GRANT EXECUTE ON ALL PROCEDURES IN SCHEMA partman TO dwh_owner;

GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO dwh_owner;
GRANT USAGE ON FOREIGN DATA WRAPPER file_fdw TO dwh_owner;
-- file_fdw 'program' tables run the source readers; only the owner may define them.
GRANT pg_execute_server_program TO dwh_owner;

-- The loader's refresh jobs are scheduled for it by `dwh migrate` (cron.schedule_in_database);
-- it reads its own rows of cron.job_run_details (row-level security) for the Dagster sensor.
GRANT USAGE ON SCHEMA cron TO dwh_loader;

-- Nothing is created in public by anyone but the owner.
ALTER SCHEMA public OWNER TO dwh_owner;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
