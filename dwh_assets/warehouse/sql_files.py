"""Where the warehouse's SQL lives, and the code version of a SQL file (a hash of it).

The SQL is the package ``dwh_assets.sql`` (the repository's ``sql/``, mapped into the package
by pyproject.toml), found through ``importlib.resources``: the same files in a checkout and
in an installed wheel. ``migrations`` are versioned (applied once each by ``dwh migrate``);
``routines`` (refresh routines, marts' views and routines, and the framework they share) and
``views`` (plain views) are repeatable (``CREATE OR REPLACE``, applied on every migrate). A
catalog entry's file is its asset's ``code_version`` in Dagster: editing the SQL marks that
asset, and only that asset, as changed.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib.resources import files
from pathlib import Path

from dwh_assets.warehouse.errors import DwhError


def _package_sql_dir() -> Path:
    try:
        # A directory on disk, not just a Traversable: yoyo reads migrations from a path, and
        # pip installs packages unzipped.
        return Path(str(files("dwh_assets.sql")))
    except ModuleNotFoundError:
        raise DwhError("the package dwh_assets.sql (the warehouse's SQL) is not installed: an editable install "
                       "older than its mapping in pyproject.toml; reinstall with `pip install -e .` "
                       "(or `bash .ci/setup`)") from None


SQL_DIR = _package_sql_dir()
MIGRATIONS_DIR = SQL_DIR / "migrations"
ROUTINES_DIR = SQL_DIR / "routines"
VIEWS_DIR = SQL_DIR / "views"


@cache
def code_version(path: Path) -> str:
    """The first 16 hex digits of the SHA-256 of the file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
