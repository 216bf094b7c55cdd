"""Install the source reader where the database server can run it, and quote its command.

``file_fdw``'s ``program`` option makes PostgreSQL run a shell command **as the database
server's OS user** (``postgres`` when ``dwh`` runs as root), from the data directory,
with the server's environment. So the reader can rely on nothing from this repository
or its virtualenv: it is a stdlib-only file (``dwh_assets/sources/reader.py``) copied to
``<DWH_HOME>/reader/dwh_source_reader.py`` and run with the system ``/usr/bin/python3``
(override with ``DWH_READER_PYTHON``). Next to it:

- ``reader.json``: non-secret settings (API URLs, timeouts, retries, page size, where the
  secrets are). Foreign table options are world-readable, so no secret goes there.
  Every tunable setting can be set from the environment of ``dwh up``:
  ``DWH_READER_<SETTING>`` (e.g. ``DWH_READER_TIMEOUT_SECONDS=10``,
  ``DWH_READER_TOTAL_TIMEOUT_SECONDS=120``, ``DWH_READER_MAX_RETRIES=5``).
- ``secrets.json``: ``{"clerk_secret_key": ...}``, mode 0600.
- ``errors/``: the last failure reason per PostgreSQL backend, which the refresh routines'
  error handler reads back (``dwh.raise_source_failure``).

All three and the directory (0700) belong to the server's OS user; installing again
rewrites them (atomically), so a changed key or port takes effect.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from dwh_assets.config import StackConfig
from dwh_assets.sources import reader
from dwh_assets.stack import postgres, secrets
from dwh_assets.stack.process import StackError

READER_SOURCE = Path(reader.__file__)
READER_NAME = "dwh_source_reader.py"
SETTINGS_NAME = "reader.json"
SECRETS_NAME = "secrets.json"
ERRORS_NAME = "errors"
DEFAULT_PYTHON = "/usr/bin/python3"
# Settings the stack derives (URLs, paths) are not taken from DWH_READER_* variables.
DERIVED_SETTINGS = ("clerk_url", "prometheus_url", "secrets_file", "errors_dir")
ENV_PREFIX = "DWH_READER_"


def reader_path(cfg: StackConfig) -> Path:
    return cfg.reader_dir / READER_NAME


def settings_path(cfg: StackConfig) -> Path:
    return cfg.reader_dir / SETTINGS_NAME


def reader_python() -> str:
    return os.environ.get("DWH_READER_PYTHON") or DEFAULT_PYTHON


def env_overrides(environ: dict | None = None) -> dict:
    """Tunable reader settings from ``DWH_READER_<SETTING>`` variables, typed like the defaults."""
    environ = os.environ if environ is None else environ
    values = {}
    for key, default in reader.DEFAULT_SETTINGS.items():
        raw = environ.get(ENV_PREFIX + key.upper())
        if key in DERIVED_SETTINGS or raw in (None, ""):
            continue
        try:
            values[key] = int(raw) if isinstance(default, int) else float(raw)
        except ValueError:
            kind = "an integer" if isinstance(default, int) else "a number"
            raise StackError(f"{ENV_PREFIX}{key.upper()}={raw!r} is not {kind}") from None
    return values


def reader_settings(cfg: StackConfig, overrides: dict | None = None) -> dict:
    """reader.json: defaults, then the stack's URLs and paths, DWH_READER_* variables, ``overrides``."""
    settings = {
        **reader.DEFAULT_SETTINGS,
        "clerk_url": cfg.clerk_url,
        "prometheus_url": cfg.prometheus_url,
        "secrets_file": str(cfg.reader_dir / SECRETS_NAME),
        "errors_dir": str(cfg.reader_dir / ERRORS_NAME),
        **env_overrides(),
    }
    unknown = set(overrides or {}) - set(settings)
    if unknown:
        raise ValueError(f"unknown reader settings {sorted(unknown)}; known: {sorted(settings)}")
    settings.update(overrides or {})
    try:
        return reader.validate_settings(settings, "the reader settings")
    except reader.ReaderError as e:
        raise StackError(f"{e} (from DWH_READER_* variables or the stack configuration)") from None


def _write_owned(cfg: StackConfig, path: Path, data: bytes, mode: int) -> None:
    """Write atomically, created with ``mode`` and owned by the server user before it is visible."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    postgres.chown_to_server(cfg, tmp, mode)
    os.replace(tmp, path)


def install_reader(cfg: StackConfig, settings: dict | None = None) -> Path:
    """Install reader, settings and Clerk key for the server user; returns the reader's path.

    ``settings`` overrides entries of ``reader.json`` (e.g. shorter timeouts in tests).
    """
    postgres.check_searchable(cfg, cfg.reader_dir, "the source reader for file_fdw")
    cfg.reader_dir.mkdir(parents=True, exist_ok=True)
    postgres.chown_to_server(cfg, cfg.reader_dir, 0o700)
    values = reader_settings(cfg, settings)
    _write_owned(cfg, Path(values["secrets_file"]),
                 json.dumps({"clerk_secret_key": secrets.clerk_secret_key(cfg)}).encode(), 0o600)
    install_settings(cfg, settings)
    _write_owned(cfg, reader_path(cfg), READER_SOURCE.read_bytes(), 0o700)
    return reader_path(cfg)


def install_settings(cfg: StackConfig, overrides: dict | None = None, name: str = SETTINGS_NAME) -> Path:
    """Write a settings file for the installed reader (another ``name``: a variant, e.g. for a test)."""
    if "/" in name or name.startswith("."):
        raise ValueError(f"settings file name {name!r} must be a plain file name")
    values = reader_settings(cfg, overrides)
    errors_dir = Path(values["errors_dir"])
    errors_dir.mkdir(exist_ok=True)
    postgres.chown_to_server(cfg, errors_dir, 0o700)
    path = cfg.reader_dir / name
    _write_owned(cfg, path, (json.dumps(values, indent=2) + "\n").encode(), 0o600)
    return path


def reader_argv(cfg: StackConfig, *args: str, config: Path | None = None) -> list[str]:
    """The installed reader's command line (``-I``: ignore PYTHON* variables and user site)."""
    settings = config or settings_path(cfg)
    return [reader_python(), "-I", str(reader_path(cfg)), "--config", str(settings), *map(str, args)]


def reader_program(cfg: StackConfig, *args: str, config: Path | None = None) -> str:
    """The shell command for file_fdw's ``program`` option, every element quoted.

    PostgreSQL hands this string to ``/bin/sh -c`` as the server's OS user, so each
    argument is ``shlex.quote``d: a value can never become shell syntax. The reader
    validates its arguments again (metric names, integer windows).
    """
    return " ".join(shlex.quote(a) for a in reader_argv(cfg, *args, config=config))
