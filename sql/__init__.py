"""The warehouse's SQL, installed as the package ``dwh_assets.sql`` (see pyproject.toml).

``migrations/`` are versioned (applied once each by ``dwh migrate``), ``routines/`` are
repeatable (``CREATE OR REPLACE``, applied on every migrate). ``dwh_assets.warehouse.sql_files``
finds them through ``importlib.resources``, in a checkout and in an installed wheel alike.
"""
