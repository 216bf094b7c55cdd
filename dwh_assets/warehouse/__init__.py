"""The warehouse: the product, deployable onto any PostgreSQL 15+ with its sources.

- ``catalog``: one declaration per table, mart and job; everything else is derived from it;
- ``deployment``: the configuration of one deployment (TOML + ``DWH_*`` environment);
- ``connect``: connections as the admin, owner, loader and reader roles;
- ``bootstrap``, ``migrate``, ``cron_jobs``: ``dwh migrate``;
- ``sources``: the foreign-table DDL per backend and the stdlib source reader;
- ``sql_files``, ``superset_export`` (and ``dashboards/``): the SQL and the dashboards the
  package carries, found through it;
- ``errors``: ``DwhError``, a failure told as a sentence;
- ``defs``: the Dagster definitions (the code location is ``dwh_assets.definitions``).

Nothing here imports ``dwh_assets.local`` (the demo stack): imports run local -> warehouse.
"""
