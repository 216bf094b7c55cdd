"""Superset's configuration for the local stack (SUPERSET_CONFIG_PATH points here).

No secret is written in this file, on a command line or in the environment: the stack
(``dwh_assets/local/superset.py``) passes only *paths* and a password-less metadata URI.

- ``DWH_SUPERSET_SECRET_KEY_FILE``: the 0600 file holding SECRET_KEY, generated at first start.
- ``DWH_SUPERSET_METADATA_URI``: ``postgresql+psycopg2://superset@127.0.0.1:<port>/superset``;
  libpq takes the password from ``PGPASSFILE`` (a passfile with only Superset's logins).
"""

import os
from pathlib import Path

SECRET_KEY = Path(os.environ["DWH_SUPERSET_SECRET_KEY_FILE"]).read_text().strip()
SQLALCHEMY_DATABASE_URI = os.environ["DWH_SUPERSET_METADATA_URI"]
SQLALCHEMY_TRACK_MODIFICATIONS = False
# The metadata database is the stack's Postgres, which may restart under Superset: a pooled
# connection is tested before use, so the first request after a restart does not fail on it.
SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}

# Loopback only, plain HTTP: the session cookie cannot be Secure here.
SESSION_COOKIE_SECURE = False
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
TALISMAN_ENABLED = False
WTF_CSRF_ENABLED = True
# Flask-Limiter keeps its counters in memory (one stack, loopback).
RATELIMIT_STORAGE_URI = "memory://"

# Only the connections the dashboards need: no SQLite, no file uploads, no example data.
PREVENT_UNSAFE_DB_CONNECTIONS = True
SUPERSET_LOAD_EXAMPLES = False
FEATURE_FLAGS = {
    "ALERT_REPORTS": False,
    "THUMBNAILS": False,
    "DASHBOARD_RBAC": False,
    "ENABLE_TEMPLATE_PROCESSING": False,
}
# No outbound calls: no telemetry, no map tiles from the internet.
SCARF_ANALYTICS = False
MAPBOX_API_KEY = ""

# Caches in memory per worker; chart data is cheap to recompute from views and marts.
CACHE_CONFIG = {"CACHE_TYPE": "SimpleCache", "CACHE_DEFAULT_TIMEOUT": 300}
DATA_CACHE_CONFIG = {"CACHE_TYPE": "SimpleCache", "CACHE_DEFAULT_TIMEOUT": 60}

ROW_LIMIT = 50000
SQLLAB_TIMEOUT = 120
SUPERSET_WEBSERVER_TIMEOUT = 120
