"""Secrets of the local stack: generated once, kept in 0600 files, never on a command line.

- ``secrets/<role>.password``: one password per database role (``config.PASSWORD_ROLES``);
  the stack's deployment configuration names these files (``password_file``).
- ``secrets/pgpass``: the same, in libpq's passfile format, so DSNs carry no password.
- ``secrets/superset.pgpass``: the same format, with only Superset's logins (its metadata
  role and the warehouse reader), the one passfile Superset's processes see.
- ``secrets/superset_secret_key``, ``secrets/superset_admin.password``: Superset's
  ``SECRET_KEY`` (read by ``superset/superset_config.py`` from the file) and the password
  of its ``admin`` UI login.
- ``secrets/clerk_secret_key``: the Clerk Backend API key (the emulator checks it; the
  reader sends it). Set ``CLERK_SECRET_KEY`` to use a real key instead.

The copy the database server's reader uses lives in ``reader/secrets.json``, owned by the
server's OS user (see ``warehouse/sources/reader_install.py``).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from dwh_assets.local.config import PASSWORD_ROLES, READER_ROLE, SUPERSET_ROLE, StackConfig


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(path.with_suffix(".tmp"), path)


def passwords(cfg: StackConfig) -> dict[str, str]:
    """Role passwords, generating any that are missing."""
    current = {}
    for role in PASSWORD_ROLES:
        path = cfg.password_file(role)
        if not path.exists():
            _write_private(path, secrets.token_urlsafe(24) + "\n")
        current[role] = path.read_text().strip()
    return current


def write_pgpass(cfg: StackConfig) -> Path:
    lines = [
        f"{cfg.host}:{cfg.pg_port}:*:{role}:{password}"
        for role, password in passwords(cfg).items()
    ]
    _write_private(cfg.pgpass_file, "\n".join(lines) + "\n")
    superset_lines = [line for line in lines if line.split(":")[3] in (SUPERSET_ROLE, READER_ROLE)]
    _write_private(cfg.superset_pgpass_file, "\n".join(superset_lines) + "\n")
    return cfg.pgpass_file


def _generated(path: Path, nbytes: int) -> str:
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(nbytes) + "\n")
    return path.read_text().strip()


def superset_secret_key(cfg: StackConfig) -> str:
    """Superset's SECRET_KEY (signs sessions, encrypts stored connection secrets); made once."""
    return _generated(cfg.superset_secret_key_file, 48)


def superset_admin_password(cfg: StackConfig) -> str:
    return _generated(cfg.superset_admin_password_file, 18)


def clerk_secret_key(cfg: StackConfig) -> str:
    path = cfg.clerk_secret_file
    from_env = os.environ.get("CLERK_SECRET_KEY")
    if from_env and (not path.exists() or path.read_text().strip() != from_env):
        _write_private(path, from_env)
    elif not path.exists():
        _write_private(path, "sk_test_" + secrets.token_urlsafe(32))
    return path.read_text().strip()
