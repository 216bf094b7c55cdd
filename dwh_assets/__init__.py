"""dwh_assets: a data warehouse inside PostgreSQL, orchestrated by Dagster.

Two wings: ``dwh_assets.warehouse`` (the product) and ``dwh_assets.local`` (the demo stack
that `dwh up` starts). ``dwh_assets.definitions`` is the Dagster code location and
``dwh_assets.cli`` the ``dwh`` command.
"""
