"""Where the warehouse's SQL lives, and the code version of a routine (a hash of its file).

``sql/migrations`` are versioned (applied once each by ``dwh migrate``); ``sql/routines``
are repeatable (``CREATE OR REPLACE``, applied on every migrate). A refresh routine's file is
its asset's ``code_version`` in Dagster: editing the SQL marks that asset, and only that
asset, as changed.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
MIGRATIONS_DIR = SQL_DIR / "migrations"
ROUTINES_DIR = SQL_DIR / "routines"


def routine_path(file_name: str) -> Path:
    return ROUTINES_DIR / file_name


@cache
def code_version(file_name: str) -> str:
    """The first 16 hex digits of the SHA-256 of ``sql/routines/<file_name>``."""
    return hashlib.sha256(routine_path(file_name).read_bytes()).hexdigest()[:16]
