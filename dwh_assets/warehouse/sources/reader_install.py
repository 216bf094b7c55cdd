"""Install the source reader where the database server can run it, and quote its command.

``file_fdw``'s ``program`` option makes PostgreSQL run a shell command **as the database
server's OS user**, on the database host, from the data directory, with the server's
environment. So the reader relies on nothing from this repository or its virtualenv: it is
a stdlib-only file (``reader.py``) copied to ``<reader.directory>/dwh_source_reader.py`` and
run by the system Python (``reader.python``, default ``/usr/bin/python3``). Next to it:

- ``reader.json``: non-secret settings (API URLs, timeouts, retries, page size, where the
  secrets are), from the deployment configuration's ``[reader]``, ``[clerk]`` and
  ``[prometheus]``. Foreign table options are world-readable, so no secret goes there.
- ``secrets.json``: ``{"clerk_secret_key": ...}``, mode 0600.
- ``control_plane.pgpass`` (``control_plane.transfer`` = copy): a libpq passfile with the
  control plane's password, mode 0600, for the psql that ``dwh.refresh_events`` runs; the
  command line names the file, never the password.
- ``errors/``: the last failure reason per PostgreSQL backend, which the refresh routines'
  error handler reads back (``dwh.raise_source_failure``).
- ``state/``: a metrics refresh's series map, between the two calls of the reader that
  share it (``dwh.copy_metrics_streamed``).

All of it belongs to the server's OS user (``reader.os_user``), the directory is 0700.
``dwh reader install --config FILE`` runs this on the database host (as root or as that
user); installing again rewrites everything atomically, so a changed key or URL takes effect.
``dwh migrate`` then checks, through the server, that the installed reader runs.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
from pathlib import Path

from psycopg import sql

from dwh_assets.warehouse.deployment import DeploymentConfig, DeploymentError
from dwh_assets.warehouse.sources import reader

READER_SOURCE = Path(reader.__file__)
READER_NAME = "dwh_source_reader.py"
SETTINGS_NAME = "reader.json"
SECRETS_NAME = "secrets.json"
CONTROL_PLANE_PASSFILE_NAME = "control_plane.pgpass"
ERRORS_NAME = "errors"
STATE_NAME = "state"


def reader_path(cfg: DeploymentConfig) -> Path:
    return cfg.reader.directory / READER_NAME


def settings_path(cfg: DeploymentConfig) -> Path:
    return cfg.reader.directory / SETTINGS_NAME


def control_plane_passfile(cfg: DeploymentConfig) -> Path:
    return cfg.reader.directory / CONTROL_PLANE_PASSFILE_NAME


def _pgpass_field(value: str) -> str:
    # libpq passfile syntax: backslash escapes a colon or a backslash.
    return value.replace("\\", "\\\\").replace(":", "\\:")


def control_plane_pgpass(cfg: DeploymentConfig) -> bytes:
    """One passfile line for the control plane login (host:port:database:user:password)."""
    cp = cfg.control_plane
    fields = [cp.host, str(cp.port), cp.database, cp.user, cp.secret()]
    return (":".join(_pgpass_field(f) for f in fields) + "\n").encode()


def reader_settings(cfg: DeploymentConfig, overrides: dict | None = None) -> dict:
    """reader.json: the configuration's URLs and tuning, then ``overrides`` (e.g. shorter timeouts in tests)."""
    settings = {
        **reader.DEFAULT_SETTINGS,
        **cfg.reader.tuning(),
        "clerk_url": cfg.clerk.api_url,
        "prometheus_url": cfg.prometheus.url,
        "secrets_file": str(cfg.reader.directory / SECRETS_NAME),
        "errors_dir": str(cfg.reader.directory / ERRORS_NAME),
        "state_dir": str(cfg.reader.directory / STATE_NAME),
        "psql": cfg.reader.psql,
        "control_plane_passfile": str(control_plane_passfile(cfg)) if cfg.control_plane_transfer() == "copy" else None,
    }
    unknown = set(overrides or {}) - set(settings)
    if unknown:
        raise ValueError(f"unknown reader settings {sorted(unknown)}; known: {sorted(settings)}")
    settings.update(overrides or {})
    try:
        return reader.validate_settings(settings, "the reader settings")
    except reader.ReaderError as e:
        raise DeploymentError(f"{e} (from [reader], [clerk] or [prometheus] of the configuration)") from None


def _server_user(cfg: DeploymentConfig) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(cfg.reader.os_user)
    except KeyError:
        raise DeploymentError(
            f"OS user {cfg.reader.os_user!r} (reader.os_user, the database server's OS user) does not exist "
            "on this host: run `dwh reader install` on the database host."
        ) from None


def _own(cfg: DeploymentConfig, path: Path, mode: int) -> None:
    user = _server_user(cfg)
    if os.geteuid() == 0:
        os.chown(path, user.pw_uid, user.pw_gid)
    elif os.geteuid() != user.pw_uid:
        raise DeploymentError(
            f"the reader must belong to {cfg.reader.os_user}, which runs it: run `dwh reader install` "
            f"as root or as {cfg.reader.os_user} on the database host."
        )
    os.chmod(path, mode)


def check_searchable(os_user: str, path: Path, purpose: str) -> None:
    """When running as root: ``os_user`` must reach ``path`` through every parent directory."""
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam(os_user)
    except KeyError:
        raise DeploymentError(f"OS user {os_user!r}, which runs {purpose}, does not exist on this host") from None
    for parent in reversed(path.parents):
        st = parent.stat()
        ok = (st.st_mode & 0o001 or (st.st_uid == user.pw_uid and st.st_mode & 0o100)
              or (st.st_gid == user.pw_gid and st.st_mode & 0o010))
        if not ok:
            raise DeploymentError(
                f"{parent} is not searchable by OS user {os_user!r}, which runs {purpose}; "
                f"`chmod o+x {parent}` or choose a directory it can reach."
            )


def _write_owned(cfg: DeploymentConfig, path: Path, data: bytes, mode: int) -> None:
    """Write atomically, created with ``mode`` and owned by the server user before it is visible."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    _own(cfg, tmp, mode)
    os.replace(tmp, path)


def install_reader(cfg: DeploymentConfig, settings: dict | None = None) -> Path:
    """Install reader, settings and (for the reader Clerk backend) the Clerk key; returns the reader's path."""
    directory = cfg.reader.directory
    check_searchable(cfg.reader.os_user, directory, "the source reader (reader.directory)")
    directory.mkdir(parents=True, exist_ok=True)
    _own(cfg, directory, 0o700)
    values = reader_settings(cfg, settings)
    # The reader reads Clerk where it runs: the warehouse's server (reader) or the relay's.
    secrets = {"clerk_secret_key": cfg.clerk.secret()} if cfg.clerk.backend in ("reader", "relay") else {}
    _write_owned(cfg, Path(values["secrets_file"]), json.dumps(secrets).encode(), 0o600)
    passfile = control_plane_passfile(cfg)
    if values["control_plane_passfile"]:
        _write_owned(cfg, passfile, control_plane_pgpass(cfg), 0o600)
    else:
        passfile.unlink(missing_ok=True)
    install_settings(cfg, settings)
    _write_owned(cfg, reader_path(cfg), READER_SOURCE.read_bytes(), 0o700)
    return reader_path(cfg)


def install_settings(cfg: DeploymentConfig, overrides: dict | None = None, name: str = SETTINGS_NAME) -> Path:
    """Write a settings file for the installed reader (another ``name``: a variant, e.g. for a test)."""
    if "/" in name or name.startswith("."):
        raise ValueError(f"settings file name {name!r} must be a plain file name")
    values = reader_settings(cfg, overrides)
    for private in (values["errors_dir"], values["state_dir"]):
        Path(private).mkdir(exist_ok=True)
        _own(cfg, Path(private), 0o700)
    path = cfg.reader.directory / name
    _write_owned(cfg, path, (json.dumps(values, indent=2) + "\n").encode(), 0o600)
    return path


def reader_argv(cfg: DeploymentConfig, *args: str, config: Path | None = None) -> list[str]:
    """The installed reader's command line (``-I``: ignore PYTHON* variables and user site)."""
    settings = config or settings_path(cfg)
    return [cfg.reader.python, "-I", str(reader_path(cfg)), "--config", str(settings), *map(str, args)]


def reader_program(cfg: DeploymentConfig, *args: str, config: Path | None = None) -> str:
    """The shell command for file_fdw's ``program`` option, every element quoted.

    PostgreSQL hands this string to ``/bin/sh -c`` as the server's OS user, so each
    argument is ``shlex.quote``d: a value can never become shell syntax. The reader
    validates its arguments again (metric names, integer windows).
    """
    return " ".join(shlex.quote(a) for a in reader_argv(cfg, *args, config=config))


def check_command(cfg: DeploymentConfig) -> sql.Composed:
    """``COPY pg_temp.dwh_reader_check FROM PROGRAM``: the reader's self-check, as the server runs it."""
    args = ["check"] + (["--clerk-key"] if cfg.clerk.backend in ("reader", "relay") else [])
    args += ["--control-plane-copy"] if cfg.control_plane_transfer() == "copy" else []
    return sql.SQL("COPY pg_temp.dwh_reader_check FROM PROGRAM {} WITH (FORMAT csv)").format(sql.Literal(reader_program(cfg, *args)))


def not_installed(cfg: DeploymentConfig, reason: str) -> str:
    return (
        f"the database server cannot run the source reader at {reader_path(cfg)} with {cfg.reader.python} "
        f"({reason}): install it on the database host with `dwh reader install --config FILE` "
        f"(as root or {cfg.reader.os_user}), or choose another reader.directory"
    )
