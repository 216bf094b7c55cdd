"""Superset's configuration for the local stack (SUPERSET_CONFIG_PATH points here).

No secret is written in this file, on a command line or in the environment: the stack
(``dwh_assets/local/superset.py``) passes only *paths* and a password-less metadata URI.

- ``DWH_SUPERSET_SECRET_KEY_FILE``: the 0600 file holding SECRET_KEY, generated at first start.
- ``DWH_SUPERSET_METADATA_URI``: ``postgresql+psycopg2://superset@127.0.0.1:<port>/superset``;
  libpq takes the password from ``PGPASSFILE`` (a passfile with only Superset's logins).

What analysts see in SQL Lab is set here too (README, "Superset"): the warehouse's schemas
only, without pg_partman's partitions; no SQL validator; a query's own LIMIT kept; the
warehouse selected; and no request leaves the page for another host.
"""

import os
from pathlib import Path

from superset.security import SupersetSecurityManager

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
MAPBOX_API_KEY = ""

# No request leaves the page for another host. Superset 6.1's pre-built frontend draws its
# telemetry pixel (an <img> from apachesuperset.gateway.scarf.sh) in the menu of every page,
# whatever the configuration says (its SCARF_ANALYTICS switch is read when the frontend is
# built, not at run time), so the browser is told by a Content-Security-Policy to load from
# this server only: Superset's own default policy without its third-party hosts.
TALISMAN_ENABLED = True
TALISMAN_CONFIG = {
    "content_security_policy": {
        "base-uri": ["'self'"],
        "default-src": ["'self'"],
        "img-src": ["'self'", "blob:", "data:"],
        "worker-src": ["'self'", "blob:"],
        "connect-src": ["'self'"],
        "object-src": "'none'",
        "style-src": ["'self'", "'unsafe-inline'"],
        "font-src": ["'self'", "data:"],
        "script-src": ["'self'", "'strict-dynamic'"],
    },
    "content_security_policy_nonce_in": ["script-src"],
    "force_https": False,
    "session_cookie_secure": False,
}

# Caches in memory per worker; chart data is cheap to recompute from views and marts.
CACHE_CONFIG = {"CACHE_TYPE": "SimpleCache", "CACHE_DEFAULT_TIMEOUT": 300}
DATA_CACHE_CONFIG = {"CACHE_TYPE": "SimpleCache", "CACHE_DEFAULT_TIMEOUT": 60}

ROW_LIMIT = 50000
SQLLAB_TIMEOUT = 120
SUPERSET_WEBSERVER_TIMEOUT = 120

# ----- SQL Lab -------------------------------------------------------------------------------------

# No validator: Superset's default one for PostgreSQL runs `ecpg` (PostgreSQL's embedded-SQL
# preprocessor) on the web server, which is not installed, and marks every query as an error.
SQL_VALIDATORS_BY_ENGINE: dict[str, str] = {}
# The LIMIT dropdown's default, and the most rows a query returns whatever its LIMIT says.
DEFAULT_SQLLAB_LIMIT = 1000
SQL_MAX_ROW = 100000
DISPLAY_MAX_ROW = 10000

# The database SQL Lab opens with (the dashboards' connection, databases/warehouse.yaml), and
# the schemas it offers there: what the read-only login may read (catalog: READER_GROUP).
SQLLAB_DATABASE = "warehouse"
WAREHOUSE_SCHEMAS = ("dwh", "mart")

PARTITIONS = """
SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relispartition
"""


class WarehouseSecurityManager(SupersetSecurityManager):
    """Lists what an analyst can use: the warehouse's schemas, and tables without their partitions.

    Superset lists every schema of a database and every table of a schema, pg_partman's daily
    partitions among them (hundreds of ``mart.<name>_days_pYYYY...``), whatever the login may
    read; these two hooks are where Superset filters those lists for the user.
    """

    def get_schemas_accessible_by_user(self, database, catalog, schemas, hierarchical=True):
        schemas = super().get_schemas_accessible_by_user(database, catalog, schemas, hierarchical)
        if database.backend != "postgresql":
            return schemas
        return {schema for schema in schemas if schema in WAREHOUSE_SCHEMAS}

    def get_datasources_accessible_by_user(self, database, datasource_names, catalog=None, schema=None):
        names = super().get_datasources_accessible_by_user(database, datasource_names, catalog, schema)
        if database.backend != "postgresql" or not names:
            return names
        partitions = set()
        for each_schema in {name.schema or schema for name in names} - {None}:
            with database.get_raw_connection(catalog=catalog, schema=each_schema) as conn:
                cursor = conn.cursor()
                cursor.execute(PARTITIONS, (each_schema,))
                partitions |= {(each_schema, row[0]) for row in cursor.fetchall()}
        return [name for name in names if ((name.schema or schema), name.table) not in partitions]


CUSTOM_SECURITY_MANAGER = WarehouseSecurityManager


def _commit_sqllab_limit() -> None:
    """Run a SQL Lab query with the smaller of its own LIMIT and the dropdown's, as Superset means to.

    Superset 6.1 works that limit out and then runs the query from a session of its own that
    still reads the dropdown's (the limit is never committed), so ``LIMIT 20`` ran as
    ``LIMIT 1001``. Committing it, as the command already does for the new query, fixes that.
    """
    from superset.commands.sql_lab.execute import ExecuteSqlCommand
    from superset.extensions import db

    set_limit = ExecuteSqlCommand._set_query_limit_if_required

    def set_and_commit(self, rendered_query: str) -> None:
        set_limit(self, rendered_query)
        db.session.commit()  # pylint: disable=consider-using-transaction

    ExecuteSqlCommand._set_query_limit_if_required = set_and_commit


def _select_warehouse_in_sqllab(app) -> None:
    """SQL Lab opens with the warehouse selected: SQLLAB_DEFAULT_DBID, once the database exists.

    Its id is only known once the dashboards' import has created it (after Superset started).
    """

    @app.before_request
    def default_database() -> None:
        if app.config.get("SQLLAB_DEFAULT_DBID") is not None:
            return
        from superset.extensions import db
        from superset.models.core import Database

        found = db.session.query(Database.id).filter_by(database_name=SQLLAB_DATABASE).scalar()
        if found is not None:
            app.config["SQLLAB_DEFAULT_DBID"] = found


def FLASK_APP_MUTATOR(app) -> None:  # noqa: N802 (Superset's name for the hook)
    _commit_sqllab_limit()
    _select_warehouse_in_sqllab(app)
