"""Where the local demo stack lives, how its parts find each other, and its deployment config.

Everything is derived from a few environment variables so that tests can run a
throwaway stack next to the demo one:

- ``DWH_HOME``: the stack directory (default ``<repo>/.dwh``): data, logs, secrets.
- ``DWH_PG_PORT``, ``DWH_CLERK_PORT``, ``DWH_PROMETHEUS_PORT``, ``DWH_EXPORTER_PORT``,
  ``DWH_DAGSTER_PORT``, ``DWH_SUPERSET_PORT``: ports. Unset ports are chosen once (the default, or a free
  one when the default is taken) and remembered in ``<home>/stack.json``.
- ``DWH_SCALE`` / ``DWH_SEED`` / ``DWH_HISTORY_DAYS``: size, seed and history length (days,
  default 60) of the generated source data. Like the anchor day, they are fixed when the
  stack is first created and remembered in ``stack.json``: every source regenerates the
  same world from them, so a later change of the variable needs a new ``DWH_HOME``.
- ``DWH_SERVER_USER``: the unprivileged OS user that runs PostgreSQL when ``dwh``
  runs as root (default ``postgres``).

``StackConfig.deployment()`` is the deployment configuration of the stack's own servers;
``dwh up`` writes it to ``<home>/dwh.toml`` and migrates with it, as a real deployment would.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import shutil
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.connect import analyst_env, dagster_env
from dwh_assets.warehouse.deployment import DeploymentConfig

REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULT_PORTS = {
    "pg": 55432,
    "clerk": 58080,
    "prometheus": 59090,
    "exporter": 59100,
    "dagster": 3000,
    "superset": 8088,
}

WAREHOUSE_DB = "warehouse"
CONTROL_PLANE_DB = "control_plane"
DAGSTER_DB = "dagster"
SUPERSET_DB = "superset"

# Roles: the demo's warehouse logins are the project's privilege roles themselves (owner
# migrates, loader refreshes, reader reads marts and local copies; `dwh migrate` creates
# them); cp_reader is the control plane's read-only login that postgres_fdw uses;
# dagster owns Dagster's storage database; superset owns Superset's metadata database.
OWNER_ROLE = catalog.OWNER_GROUP
LOADER_ROLE = catalog.LOADER_GROUP
READER_ROLE = catalog.READER_GROUP
CONTROL_PLANE_READER_ROLE = "cp_reader"
DAGSTER_ROLE = "dagster"
SUPERSET_ROLE = "superset"
PASSWORD_ROLES = (OWNER_ROLE, LOADER_ROLE, READER_ROLE, CONTROL_PLANE_READER_ROLE, DAGSTER_ROLE, SUPERSET_ROLE)
# Superset's UI login (its password: <home>/secrets/superset_admin.password).
SUPERSET_ADMIN = "admin"

# Demo history length (days) unless DWH_HISTORY_DAYS says otherwise; the data generator,
# the Prometheus back-fill and the Dagster partitions (history.start) all start there.
DEFAULT_HISTORY_DAYS = 60
# The longest history the generator makes (10 years): the stack's Prometheus keeps that long.
MAX_HISTORY_DAYS = 3650
# Days a stack may keep running past its anchor day before its oldest history falls out of
# retention (see StackConfig.retention_days).
RETENTION_MARGIN_DAYS = 35


def server_psql() -> str:
    """The cluster's own psql (Debian keeps it next to the server; /usr/bin/psql is a wrapper)."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"), reverse=True):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("psql") or "/usr/bin/psql"


def checkout_root() -> Path | None:
    """The repository this package runs from, or None for an installed package (no checkout)."""
    return REPO_ROOT if (REPO_ROOT / "pyproject.toml").exists() else None


def _default_home() -> Path:
    return (checkout_root() or Path.cwd()) / ".dwh"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class StackState:
    """What ``dwh up`` decided once and every later command must agree on."""

    ports: dict[str, int] = field(default_factory=dict)
    # The day the generated history ends (UTC); fixed at first start so that the
    # sources stay consistent with each other across restarts.
    anchor_day: str = ""
    seed: int = 42
    scale: float = 1.0
    # Days of generated history before the anchor day (stacks created before this setting: 60).
    history_days: int = DEFAULT_HISTORY_DAYS


@dataclass(frozen=True)
class StackConfig:
    home: Path
    ports: dict[str, int]
    anchor_day: dt.date
    seed: int
    scale: float
    server_user: str
    history_days: int = DEFAULT_HISTORY_DAYS
    host: str = "127.0.0.1"

    # ----- directories ------------------------------------------------------------
    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @property
    def reader_dir(self) -> Path:
        """Where the stdlib-only source reader is installed for the database server."""
        return self.home / "reader"

    @property
    def prometheus_dir(self) -> Path:
        return self.home / "prometheus"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster_home"

    @property
    def superset_dir(self) -> Path:
        """Superset's home (SUPERSET_HOME): its init stamp; its metadata lives in Postgres."""
        return self.home / "superset"

    @property
    def superset_pgpass_file(self) -> Path:
        """A passfile with only Superset's two logins: its metadata role and the warehouse reader."""
        return self.secrets_dir / "superset.pgpass"

    @property
    def superset_secret_key_file(self) -> Path:
        return self.secrets_dir / "superset_secret_key"

    @property
    def superset_admin_password_file(self) -> Path:
        return self.secrets_dir / "superset_admin.password"

    @property
    def pgpass_file(self) -> Path:
        return self.secrets_dir / "pgpass"

    def password_file(self, role: str) -> Path:
        return self.secrets_dir / f"{role}.password"

    @property
    def deployment_file(self) -> Path:
        """The stack's deployment configuration (``dwh migrate --config``; ``DWH_CONFIG`` in ``dwh env``)."""
        return self.home / "dwh.toml"

    @property
    def clerk_secret_file(self) -> Path:
        """The Clerk secret key, readable by the emulator (it checks bearer tokens)."""
        return self.secrets_dir / "clerk_secret_key"

    def log_file(self, component: str) -> Path:
        return self.log_dir / f"{component}.log"

    def pid_file(self, component: str) -> Path:
        return self.socket_dir / f"{component}.pid"

    # ----- addresses --------------------------------------------------------------
    @property
    def pg_port(self) -> int:
        return self.ports["pg"]

    @property
    def clerk_url(self) -> str:
        # DWH_CLERK_URL points the reader at the real Clerk API (with CLERK_SECRET_KEY).
        return os.environ.get("DWH_CLERK_URL") or f"http://{self.host}:{self.ports['clerk']}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.host}:{self.ports['prometheus']}"

    @property
    def exporter_url(self) -> str:
        return f"http://{self.host}:{self.ports['exporter']}"

    @property
    def dagster_url(self) -> str:
        return f"http://{self.host}:{self.ports['dagster']}"

    @property
    def superset_url(self) -> str:
        return f"http://{self.host}:{self.ports['superset']}"

    @property
    def history_start(self) -> dt.date:
        return self.anchor_day - dt.timedelta(days=self.history_days)

    def world_args(self) -> list[str]:
        """The command-line arguments that make a source process rebuild this stack's world."""
        return ["--seed", str(self.seed), "--scale", str(self.scale), "--anchor-day", self.anchor_day.isoformat(),
                "--history-days", str(self.history_days)]

    def retention_days(self) -> dict[str, int]:
        """Retention for the tables whose catalog default is shorter than the generated history.

        A window is refused when it starts before the retention (dwh.check_window), and the
        first materialisation refreshes the whole history, so the stack keeps each table at
        least the history plus a month of running (pg_partman drops older partitions).
        """
        wanted = self.history_days + RETENTION_MARGIN_DAYS
        return {spec.name: wanted for spec in catalog.CATALOG if spec.retention_days < wanted}

    def dsn(self, dbname: str, user: str) -> str:
        """A libpq DSN over TCP; the password comes from the pgpass file, never the DSN."""
        return (
            f"host={self.host} port={self.pg_port} dbname={dbname} user={user} "
            f"passfile={self.pgpass_file}"
        )

    def superuser_dsn(self, dbname: str = "postgres") -> str:
        """The cluster's bootstrap superuser over the private Unix socket."""
        return f"host={self.socket_dir} port={self.pg_port} dbname={dbname} user={self.server_user}"

    def deployment_values(self) -> dict:
        """The deployment configuration of the stack's own servers (secrets as files, never values)."""
        local = {"host": self.host, "port": self.pg_port, "sslmode": "disable"}
        return {
            "warehouse": {
                **local, "database": WAREHOUSE_DB, "passfile": str(self.pgpass_file),
                # The cluster's bootstrap superuser over its private (0700) Unix socket directory.
                "admin": {"user": self.server_user, "host": str(self.socket_dir)},
                **{purpose: {"user": role, "password_file": str(self.password_file(role))}
                   for purpose, role in (("owner", OWNER_ROLE), ("loader", LOADER_ROLE), ("reader", READER_ROLE))},
            },
            "control_plane": {**local, "database": CONTROL_PLANE_DB, "user": CONTROL_PLANE_READER_ROLE,
                              "password_file": str(self.password_file(CONTROL_PLANE_READER_ROLE))},
            "clerk": {"api_url": self.clerk_url, "secret_key_file": str(self.clerk_secret_file)},
            "prometheus": {"url": self.prometheus_url},
            "reader": {"directory": str(self.reader_dir), "os_user": self.server_user, "psql": server_psql()},
            "history": {"start": self.history_start},
            # pg_cron runs the stack's jobs over its private socket, which this module sets up;
            # a probe would add up to a minute to every fresh `dwh up` (and test stack).
            "refresh": {"probe_cron": False},
            **({"retention_days": self.retention_days()} if self.retention_days() else {}),
        }

    def deployment(self) -> DeploymentConfig:
        """The stack's deployment configuration; ``DWH_*`` environment variables override it."""
        return DeploymentConfig.from_values(self.deployment_values())

    def write_deployment_file(self) -> Path:
        """``<home>/dwh.toml``: the same values as a file, for `dwh migrate --config` and people."""
        lines = ["# The local demo stack's deployment configuration, written by `dwh up` (do not edit:",
                 "# it is rewritten on every start). dwh.example.toml documents every setting."]
        lines += _toml_tables(self.deployment_values())
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.deployment_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.deployment_file)
        return self.deployment_file

    def client_env(self) -> dict[str, str]:
        """Environment for Dagster processes and shell sessions (no secrets: passfile)."""
        from dwh_assets.warehouse.defs.settings import SUPERSET_URL  # loads Dagster: only where Dagster runs

        deployment = self.deployment()
        return {
            "DAGSTER_HOME": str(self.dagster_home),
            "PGPASSFILE": str(self.pgpass_file),
            "DWH_HOME": str(self.home),
            "DWH_CONFIG": str(self.deployment_file),
            "DWH_PG_HOST": self.host,
            "DWH_PG_PORT": str(self.pg_port),
            **dagster_env(deployment),
            **analyst_env(deployment),
            "DWH_DAGSTER_PG_URL": f"postgresql+psycopg2://{DAGSTER_ROLE}@{self.host}:{self.pg_port}/{DAGSTER_DB}",
            # The dashboards' URLs in Dagster's asset metadata.
            SUPERSET_URL.env_var_name: self.superset_url,
        }

    def shell_env(self) -> dict[str, str]:
        """``client_env`` plus the project's virtualenv first on PATH, so `dagster` and `dwh` resolve."""
        bin_dir = str(Path(sys.executable).parent)
        path = os.environ.get("PATH", "")
        if bin_dir not in path.split(os.pathsep):
            path = os.pathsep.join([bin_dir, path]) if path else bin_dir
        return self.client_env() | {"PATH": path}


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, dt.date)):
        return str(value) if not isinstance(value, dt.date) else value.isoformat()
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def _toml_tables(values: dict, prefix: str = "") -> list[str]:
    """Nested dicts of scalars as TOML tables (enough for deployment_values)."""
    scalars = [f"{k} = {_toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
    lines = ([f"", f"[{prefix}]"] if prefix and scalars else []) + scalars
    for key, value in values.items():
        if isinstance(value, dict):
            lines += _toml_tables(value, f"{prefix}.{key}" if prefix else key)
    return lines


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer port/number") from None


def _history_days() -> int:
    days = _env_int("DWH_HISTORY_DAYS")
    if days is None:
        return DEFAULT_HISTORY_DAYS
    if not 1 <= days <= MAX_HISTORY_DAYS:
        raise SystemExit(f"DWH_HISTORY_DAYS={days} is out of range: 1..{MAX_HISTORY_DAYS} days")
    return days


def _state_path(home: Path) -> Path:
    return home / "stack.json"


def load_state(home: Path) -> StackState | None:
    path = _state_path(home)
    if not path.exists():
        return None
    return StackState(**json.loads(path.read_text()))


def save_state(home: Path, state: StackState) -> None:
    home.mkdir(parents=True, exist_ok=True)
    tmp = _state_path(home).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2, sort_keys=True))
    tmp.replace(_state_path(home))


def _server_user() -> str:
    if os.geteuid() == 0:
        return os.environ.get("DWH_SERVER_USER", "postgres")
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def load_config(*, create: bool = False) -> StackConfig:
    """The stack's configuration; ``create`` fixes ports and anchor on first use."""
    home = Path(os.environ.get("DWH_HOME") or _default_home()).resolve()
    state = load_state(home)
    if state is None:
        if not create:
            raise SystemExit(
                f"No stack at {home} (no stack.json). Run `dwh up` first, or set DWH_HOME."
            )
        state = StackState(
            anchor_day=dt.datetime.now(dt.timezone.utc).date().isoformat(),
            seed=_env_int("DWH_SEED") or 42,
            scale=float(os.environ.get("DWH_SCALE") or 1.0),
            history_days=_history_days(),
        )
    wanted_days = _env_int("DWH_HISTORY_DAYS")
    if wanted_days is not None and wanted_days != state.history_days:
        raise SystemExit(
            f"The stack in {home} was created with {state.history_days} days of history; DWH_HISTORY_DAYS="
            f"{wanted_days} needs a stack of its own: set DWH_HOME to another directory (or `dwh down` and "
            f"remove {home})."
        )
    changed = False
    for name, default in DEFAULT_PORTS.items():
        explicit = _env_int(f"DWH_{name.upper()}_PORT")
        if explicit is not None:
            if state.ports.get(name) != explicit:
                state.ports[name] = explicit
                changed = True
        elif name not in state.ports:
            state.ports[name] = default if port_is_free(default) else free_port()
            changed = True
    if create and (changed or not _state_path(home).exists()):
        save_state(home, state)
    return StackConfig(
        home=home,
        ports=dict(state.ports),
        anchor_day=dt.date.fromisoformat(state.anchor_day),
        seed=state.seed,
        scale=state.scale,
        server_user=_server_user(),
        history_days=state.history_days,
    )
