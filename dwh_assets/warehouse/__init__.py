"""The warehouse: the product, deployable onto any PostgreSQL 15+ with its sources.

- ``catalog``: one declaration per table, mart and job; everything else is derived from it;
- ``deployment``: the configuration of one deployment (TOML + ``DWH_*`` environment);
- ``connect``: connections as the admin, owner, loader and reader roles;
- ``bootstrap``, ``migrate``, ``cron_jobs``: ``dwh migrate``;
- ``sources``: the foreign-table DDL per backend and the stdlib source reader;
- ``defs``: the Dagster definitions (the code location is ``dwh_assets.definitions``).

Nothing here imports ``dwh_assets.local`` (the demo stack): imports run local -> warehouse.
"""
