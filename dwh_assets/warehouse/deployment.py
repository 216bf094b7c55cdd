"""The configuration of one deployment: which Postgres is the warehouse, where the sources are.

One TOML file (``--config FILE`` or ``DWH_CONFIG``; a commented example is
``dwh.example.toml`` at the repository root), every value overridable by an environment
variable named ``DWH_<SECTION>__<KEY>`` (nested tables add ``__<KEY>``), for example
``DWH_WAREHOUSE__PORT=5433``, ``DWH_CLERK__BACKEND=tembo``,
``DWH_SCHEDULES__USERS='*/5 * * * *'``.

Secrets never come from the TOML file: a password or key is read from the file named by
``password_file`` / ``secret_key_file``, or from the environment (``DWH_WAREHOUSE__ADMIN__PASSWORD``,
``DWH_CONTROL_PLANE__PASSWORD``, ``DWH_CLERK__SECRET_KEY``, ...), or, for Postgres logins,
from libpq's own passfile (``passfile`` or ``PGPASSFILE``). A secret written into the TOML
file is refused with an error that says where to put it instead.

pydantic-settings does the typing, the validation messages (``warehouse.port: Input should
be a valid integer``) and the environment overrides; the file is read with stdlib ``tomllib``
first so that secrets in it can be refused before anything else looks at them.
"""

from __future__ import annotations

import datetime as dt
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from dwh_assets.warehouse import catalog, catalog_model
from dwh_assets.warehouse.errors import DwhError

CONFIG_ENV = "DWH_CONFIG"
ENV_PREFIX = "DWH_"
# Keys that hold a secret: allowed from the environment, refused in the file.
SECRET_KEYS = ("password", "secret_key", "webhook_url")

# reader: file_fdw + the source reader on the warehouse's server; tembo: clerk_fdw /
# prometheus_fdw; relay: the reader on a small self-hosted Postgres the warehouse reads
# through postgres_fdw and dblink (a managed warehouse, where no program may run).
Backend = Literal["reader", "tembo", "relay"]
# How dwh.refresh_events reads the control plane's event archive (see ControlPlaneSettings).
Transfer = Literal["auto", "fdw", "copy"]


class DeploymentError(DwhError):
    """The deployment configuration or the target server is not usable; the message says why."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Login(Section):
    """A Postgres login: its password from ``password_file``, the environment, or libpq's passfile."""

    user: str
    password_file: Path | None = None
    password: SecretStr | None = None  # environment only
    # Overrides the section's host for this login (a directory means a Unix socket).
    host: str | None = None

    def secret(self) -> str | None:
        """The password, if one is configured (``None``: libpq finds it, e.g. in a passfile)."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return read_secret_file(self.password_file, f"the password of {self.user}")
        return None


# One class per login, so that a partial override (DWH_WAREHOUSE__LOADER__PASSWORD alone)
# keeps the default user name.
class AdminLogin(Login):
    user: str = "postgres"


class OwnerLogin(Login):
    user: str = catalog.OWNER_GROUP


class LoaderLogin(Login):
    user: str = catalog.LOADER_GROUP


class ReaderLogin(Login):
    user: str = catalog.READER_GROUP


class WarehouseSettings(Section):
    host: str = "127.0.0.1"
    port: int = 5432
    database: str = "warehouse"
    sslmode: str = "prefer"
    # A libpq passfile with the roles' passwords, for connections that name no password
    # (Dagster's DSN, psql): its path is written into DSNs, never a password.
    passfile: Path | None = None
    # May CREATE ROLE and CREATE EXTENSION (a superuser, or rds_superuser & co).
    admin: AdminLogin = AdminLogin()
    # Login roles. Each is granted the project's privilege role of the same purpose
    # (catalog.OWNER_GROUP, LOADER_GROUP, READER_GROUP); by default they are the same role.
    owner: OwnerLogin = OwnerLogin()
    loader: LoaderLogin = LoaderLogin()
    reader: ReaderLogin = ReaderLogin()


class ControlPlaneSettings(Section):
    host: str = "127.0.0.1"
    port: int = 5432
    database: str = "control_plane"
    sslmode: str = "prefer"
    # The read-only login postgres_fdw uses; its password goes into user mappings
    # (readable only by the mapped role and superusers), nowhere else.
    user: str = "cp_reader"
    password_file: Path | None = None
    password: SecretStr | None = None  # environment only
    # How the events refresh moves a window: "fdw", one INSERT ... SELECT from the foreign
    # table; "copy", the control plane's binary COPY of the same query piped by psql into
    # COPY ... FROM PROGRAM (the database server runs psql as its OS user, with the password
    # in a passfile `dwh reader install` writes next to the reader); "auto": copy where the
    # server runs the source reader (the reader backend), else fdw.
    transfer: Transfer = "auto"
    # Read the control plane through the relay ([relay]) instead of directly: for a managed
    # warehouse that may not reach the control plane's network (one more postgres_fdw hop).
    via_relay: bool = False

    def secret(self) -> str:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return read_secret_file(self.password_file, "the control plane password")
        raise DeploymentError(
            "control_plane: no password for the control plane login: set control_plane.password_file "
            "or DWH_CONTROL_PLANE__PASSWORD (postgres_fdw needs a password for non-superusers)."
        )


class ClerkSettings(Section):
    api_url: str = "https://api.clerk.com"
    secret_key_file: Path | None = None
    secret_key: SecretStr | None = None  # environment only
    backend: Backend = "reader"

    def secret(self) -> str:
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        if self.secret_key_file is not None:
            return read_secret_file(self.secret_key_file, "the Clerk secret key")
        raise DeploymentError("clerk: no secret key: set clerk.secret_key_file or DWH_CLERK__SECRET_KEY.")


class MetricNames(Section):
    """The Prometheus metrics the warehouse copies, by what the marts use them for."""

    cpu: str = catalog.DEFAULT_METRICS["cpu"]
    memory: str = catalog.DEFAULT_METRICS["memory"]
    storage: str = catalog.DEFAULT_METRICS["storage"]

    @field_validator("cpu", "memory", "storage")
    @classmethod
    def _metric_name(cls, value: str) -> str:
        if not catalog.METRIC_NAME_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)")
        return value

    def as_dict(self) -> dict[str, str]:
        return {"cpu": self.cpu, "memory": self.memory, "storage": self.storage}


class PrometheusSettings(Section):
    url: str = "http://127.0.0.1:9090"
    step_seconds: int = Field(3600, ge=1, le=86400)
    backend: Backend = "reader"
    metrics: MetricNames = MetricNames()


class ReaderSettings(Section):
    """The ``reader`` backend: where the source reader lives on the *database host*."""

    # Installed there by `dwh reader install --config FILE` (run on the database host).
    directory: Path = Path("/var/lib/postgresql/dwh-reader")
    python: str = "/usr/bin/python3"
    # The database server's OS user, which file_fdw runs the reader as.
    os_user: str = "postgres"
    timeout_seconds: float = Field(30.0, gt=0)
    total_timeout_seconds: float = Field(600.0, gt=0)
    max_retries: int = Field(3, ge=0)
    backoff_seconds: float = Field(0.5, ge=0)
    max_retry_after_seconds: float = Field(60.0, ge=0)
    page_size: int = Field(500, ge=1, le=500)
    max_points_per_request: int = Field(11000, ge=1, le=11000)
    max_points_per_series: int = Field(5_000_000, ge=1)
    # Samples (points x series) one Prometheus answer may hold: bounds the memory of
    # Prometheus and of the reader per request, whatever the fleet's size. 250,000 halves
    # both against 500,000 for 1-3% more time on a 60-day copy (benchmarks/README.md, B8).
    max_samples_per_request: int = Field(250_000, ge=1)
    # psql on the database host, for control_plane.transfer = "copy" (Debian: its wrapper).
    psql: str = "/usr/bin/psql"

    def tuning(self) -> dict[str, float | int]:
        return self.model_dump(exclude={"directory", "python", "os_user", "psql"})


class RelaySettings(Section):
    """The ``relay`` backend: a self-hosted Postgres next to Dagster that runs the source reader.

    ``dwh relay install`` (on the relay's host) installs the reader there and, as ``admin``
    (a superuser of the relay), its foreign tables and window function in ``database``;
    the warehouse then reads them as ``user`` through postgres_fdw (tables) and dblink
    (Prometheus windows). The relay holds no data.
    """

    host: str = "127.0.0.1"
    port: int = 5432
    database: str = "dwh_relay"
    sslmode: str = "prefer"
    # The login the warehouse's foreign server uses: reads the relay's sources, nothing else.
    user: str = "dwh_relay"
    password_file: Path | None = None
    password: SecretStr | None = None  # environment only
    admin: AdminLogin = AdminLogin()

    def secret(self) -> str:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return read_secret_file(self.password_file, f"the password of the relay login {self.user}")
        raise DeploymentError(
            f"relay: no password for the relay login {self.user}: set relay.password_file or DWH_RELAY__PASSWORD "
            "(the warehouse's postgres_fdw and dblink connections need one)."
        )


class DagsterSettings(Section):
    """Dagster's own storage and instance directory, for ``dwh env --config`` (runs, events, schedules).

    ``dagster.yaml`` of the repository, copied into ``home``, reads the storage URL from
    ``DWH_DAGSTER_PG_URL``, which ``dwh env`` builds from these values (no password: libpq
    takes it from the passfile, ``PGPASSFILE``).
    """

    # DAGSTER_HOME: where dagster.yaml lives (and Dagster's local artifacts).
    home: Path = Path("/var/lib/dwh/dagster_home")
    # The Postgres holding Dagster's storage; host and port default to the warehouse's.
    host: str | None = None
    port: int | None = None
    database: str = "dagster"
    user: str = "dagster"

    def url(self, warehouse: WarehouseSettings) -> str:
        from urllib.parse import quote

        host, port = self.host or warehouse.host, self.port or warehouse.port
        return (f"postgresql+psycopg2://{quote(self.user, safe='')}@{host}:{port}/{quote(self.database, safe='')}"
                f"?sslmode={warehouse.sslmode}")


class HistorySettings(Section):
    # The first day the warehouse holds; Dagster's partitions start here (DWH_HISTORY_START).
    start: dt.date


class RefreshSettings(Section):
    # How much of a dimension one refresh may delete before it refuses (a broken source, usually).
    max_drop_fraction: float = Field(0.5, ge=0, le=1)
    # pg_cron's run history older than this is purged daily.
    cron_history_days: int = Field(14, ge=1)
    # After scheduling, prove with a one-shot job that pg_cron can run jobs as each role (costs
    # up to a minute when a role's jobs changed or its last probe failed; see warehouse/cron_probe.py).
    probe_cron: bool = True


class AlertsSettings(Section):
    """Where the Dagster daemon sends alerts (``warehouse.alerts``): a Slack-compatible webhook.

    Its URL is a secret: from ``webhook_url_file`` (mode 0600) or ``DWH_ALERTS__WEBHOOK_URL``,
    never from this file. No URL: no alerts (the sensor is not defined).
    """

    webhook_url_file: Path | None = None
    webhook_url: SecretStr | None = None  # environment only
    # Names the deployment in every message, e.g. "dwh production"; default: the warehouse database.
    label: str | None = None
    timeout_seconds: float = Field(10.0, gt=0)

    @property
    def enabled(self) -> bool:
        return self.webhook_url_file is not None or self.webhook_url is not None


class DeploymentConfig(BaseSettings):
    """Everything ``dwh migrate`` needs to know about one deployment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True, case_sensitive=False,
    )

    warehouse: WarehouseSettings = WarehouseSettings()
    control_plane: ControlPlaneSettings = ControlPlaneSettings()
    clerk: ClerkSettings = ClerkSettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    reader: ReaderSettings = ReaderSettings()
    relay: RelaySettings = RelaySettings()
    dagster: DagsterSettings = DagsterSettings()
    history: HistorySettings
    refresh: RefreshSettings = RefreshSettings()
    alerts: AlertsSettings = AlertsSettings()
    # pg_cron schedules (GMT) by job: a catalog table, a mart, or a maintenance job.
    schedules: dict[str, str] = {}
    # How long one pg_cron run of a table's or a mart's refresh may take, in seconds (its
    # statement_timeout): past it the run fails, naming what it waited for, and changes nothing.
    timeouts: dict[str, int] = {}
    # Days of daily partitions pg_partman keeps, by catalog table.
    retention_days: dict[str, int] = {}
    # A closed set of values the catalog checks (e.g. instance_states), where this deployment's
    # sources know others: the whole set, replacing the catalog's.
    accepted_values: dict[str, tuple[str, ...]] = {}

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (passed in as init values); nothing else is read.
        return env_settings, init_settings

    @field_validator("schedules")
    @classmethod
    def _known_jobs(cls, value: dict[str, str]) -> dict[str, str]:
        known = catalog.schedulable_jobs()
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"no job named {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for job, schedule in value.items():
            if len(schedule.split()) != 5:
                raise ValueError(f"{job}: {schedule!r} is not a five-field cron schedule (pg_cron runs in GMT)")
        return value

    @field_validator("timeouts")
    @classmethod
    def _known_refresh_jobs(cls, value: dict[str, int]) -> dict[str, int]:
        known = catalog.PRODUCT.timed_jobs()
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"no refresh job named {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        bad = {job: seconds for job, seconds in value.items() if seconds < 1}
        if bad:
            raise ValueError(f"a timeout is at least one second: {bad}")
        return value

    @field_validator("retention_days")
    @classmethod
    def _known_tables(cls, value: dict[str, int]) -> dict[str, int]:
        known = set(catalog.BY_NAME) | set(catalog.MART_BY_NAME)
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"no table named {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        bad = {k: v for k, v in value.items() if v < 1}
        if bad:
            raise ValueError(f"retention must be at least one day: {bad}")
        return value

    @field_validator("accepted_values")
    @classmethod
    def _known_value_sets(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        known = {accepted.name for accepted in catalog.PRODUCT.accepted_values()}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"no set of accepted values named {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for name, values in value.items():
            bad = [v for v in values if not v or "," in v]
            if not values or bad:
                raise ValueError(f"{name}: list at least one value, none empty or with a comma (found {list(values)})")
        return value

    @model_validator(mode="after")
    def _copy_needs_the_reader(self) -> DeploymentConfig:
        if self.control_plane.transfer == "copy" and (not self.uses_reader() or self.control_plane.via_relay):
            raise ValueError(
                "control_plane.transfer = \"copy\" runs psql on the database server, which needs a server that runs "
                "programs (the reader backend for clerk or prometheus) and reaches the control plane directly; "
                "use \"fdw\" or \"auto\"")
        return self

    @model_validator(mode="after")
    def _prometheus_step_divides_a_day(self) -> DeploymentConfig:
        if 86400 % self.prometheus.step_seconds:
            raise ValueError(f"prometheus.step_seconds={self.prometheus.step_seconds} must divide a day (86400 s)")
        return self

    # ----- derived values ---------------------------------------------------------------------

    def schedule(self, job: str) -> str:
        return self.schedules.get(job) or catalog.schedulable_jobs()[job]

    def timeout(self, entry: catalog_model.TableSpec | catalog_model.MartSpec) -> dt.timedelta:
        """How long one pg_cron run of ``entry``'s refresh may take: this deployment's, or the catalog's."""
        seconds = self.timeouts.get(entry.name)
        return dt.timedelta(seconds=seconds) if seconds else entry.timeout

    def retention(self, table: str) -> int | None:
        """Days of daily partitions kept for a catalog table or mart (None: all of them)."""
        spec = catalog.BY_NAME.get(table) or catalog.MART_BY_NAME[table]
        return self.retention_days.get(table) or spec.retention_days

    def accepted(self, accepted: catalog_model.AcceptedValues) -> tuple[str, ...]:
        """The values this deployment accepts: its own set, or the catalog's."""
        return tuple(self.accepted_values.get(accepted.name) or accepted.values)

    def backends(self) -> dict[str, str]:
        return {"clerk": self.clerk.backend, "prometheus": self.prometheus.backend}

    def uses_reader(self) -> bool:
        return "reader" in self.backends().values()

    def relay_sources(self) -> list[str]:
        """The sources read through the relay: clerk, prometheus (by backend), control_plane (via_relay)."""
        sources = [source for source, backend in self.backends().items() if backend == "relay"]
        return sources + (["control_plane"] if self.control_plane.via_relay else [])

    def uses_relay(self) -> bool:
        return bool(self.relay_sources())

    def control_plane_transfer(self) -> Literal["fdw", "copy"]:
        """control_plane.transfer with "auto" decided: copy where the server runs the reader."""
        if self.control_plane.transfer == "auto":
            return "copy" if self.uses_reader() else "fdw"
        return self.control_plane.transfer

    def logins(self) -> dict[str, Login]:
        """Purpose -> login role: owner, loader, reader."""
        return {"owner": self.warehouse.owner, "loader": self.warehouse.loader, "reader": self.warehouse.reader}

    @classmethod
    def load(cls, path: Path | str | None = None, environ: dict[str, str] | None = None) -> DeploymentConfig:
        """The file at ``path`` (or ``DWH_CONFIG``), overridden by ``DWH_*`` environment variables."""
        environ = os.environ if environ is None else environ
        path = path or environ.get(CONFIG_ENV)
        if not path:
            raise DeploymentError(
                f"no deployment configuration: pass --config FILE or set {CONFIG_ENV} "
                "(dwh.example.toml in the repository shows every setting)."
            )
        path = Path(path).expanduser()
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise DeploymentError(f"configuration file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise DeploymentError(f"{path} is not valid TOML: {e}") from None
        refuse_secrets(raw, path)
        try:
            return cls(**raw)
        except ValidationError as e:
            raise DeploymentError(f"{path} (or a DWH_* variable) is not a valid configuration:\n{explain(e)}") from None

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> DeploymentConfig:
        """A configuration built in code (the local demo stack); the environment still overrides."""
        refuse_secrets(values, Path("<values>"))
        try:
            return cls(**values)
        except ValidationError as e:
            raise DeploymentError(f"invalid deployment configuration:\n{explain(e)}") from None


def explain(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def refuse_secrets(raw: dict[str, Any], path: Path, where: str = "") -> None:
    for key, value in raw.items():
        here = f"{where}.{key}" if where else key
        if isinstance(value, dict):
            refuse_secrets(value, path, here)
        elif key in SECRET_KEYS:
            env = ENV_PREFIX + here.upper().replace(".", "__")
            raise DeploymentError(
                f"{path}: {here} holds a secret; secrets never go into the configuration file. "
                f"Put it in a file readable only by you and set {here}_file, or set {env} in the environment."
            )


def check_private(path: Path, what: str) -> None:
    """A file holding a secret must be readable by its owner only, as ssh and libpq demand of theirs."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError as e:
        raise DeploymentError(f"cannot read {what} from {path}: {e.strerror}") from None
    if mode & 0o077:
        raise DeploymentError(
            f"{path} ({what}) is readable by its group or others (mode {mode:04o}): run `chmod 600 {path}`")


def read_secret_file(path: Path, what: str) -> str:
    path = Path(path).expanduser()
    check_private(path, what)
    try:
        value = path.read_text().strip()
    except OSError as e:
        raise DeploymentError(f"cannot read {what} from {path}: {e.strerror}") from None
    if not value:
        raise DeploymentError(f"{path} is empty; it should hold {what}")
    return value
