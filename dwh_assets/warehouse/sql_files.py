"""Where the warehouse's SQL lives, and the code version of a SQL file (a hash of it).

``sql/migrations`` are versioned (applied once each by ``dwh migrate``); ``sql/routines``
(refresh routines, marts' views and routines, and the framework they share) and
``sql/views`` (plain views) are repeatable (``CREATE OR REPLACE``, applied on every migrate).
A catalog entry's file is its asset's ``code_version`` in Dagster: editing the SQL marks
that asset, and only that asset, as changed.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
MIGRATIONS_DIR = SQL_DIR / "migrations"
ROUTINES_DIR = SQL_DIR / "routines"
VIEWS_DIR = SQL_DIR / "views"


@cache
def code_version(path: Path) -> str:
    """The first 16 hex digits of the SHA-256 of the file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
