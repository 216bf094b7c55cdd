"""The code location's settings: every environment variable it reads, named once, here.

| variable | what it sets | default |
| --- | --- | --- |
| ``DWH_WAREHOUSE_DSN`` | the loader's libpq DSN (a passfile, never a password) | required |
| ``DWH_HISTORY_START`` | the first day of history, where the daily partitions start | required |
| ``DWH_SENSOR_INTERVAL_SECONDS`` | the ``pg_cron_runs`` sensor's minimum interval | 30 |
| ``DWH_NIGHTLY_CRON`` | when ``nightly_late_data_schedule`` runs (cron, UTC) | ``30 2 * * *`` |
| ``DWH_NIGHTLY_DAYS`` | how many days before today that run re-materialises | 3 |
| ``DWH_SUPERSET_URL`` | the Superset address in the dashboards' asset metadata | ``http://127.0.0.1:8088`` |
| ``DWH_DASHBOARDS_DIR`` | the dashboards (Superset's export format) shown as assets | the package's |
| ``DWH_ALERTS__WEBHOOK_URL_FILE`` | a file (mode 0600) holding the alert webhook's URL | no alerts |
| ``DWH_ALERTS__WEBHOOK_URL`` | the alert webhook's URL itself (a secret: never shown) | no alerts |
| ``DWH_ALERTS__LABEL`` | names the deployment in each alert | ``dwh`` |
| ``DWH_ALERTS__TIMEOUT_SECONDS`` | how long a webhook call may take | 10 |

Each is a Dagster ``EnvVar``. ``CodeLocationSettings.from_environment`` reads them when the
definitions load (never at import) and names every missing or malformed one in a single
error. The DSN and the webhook URL stay ``EnvVar``s in their resources' config: Dagster
resolves them when a run or a sensor uses them, so their values never enter a definitions
snapshot. ``dwh env`` prints the two required ones for a deployment, and the alerts' file,
label and timeout when its ``[alerts]`` names a file (the alert names share the deployment
configuration's ``DWH_ALERTS__*`` overrides).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
from croniter import croniter
from psycopg.conninfo import conninfo_to_dict

from dwh_assets.warehouse.errors import DwhError
from dwh_assets.warehouse.superset_export import PACKAGED_DASHBOARDS

WAREHOUSE_DSN = dg.EnvVar("DWH_WAREHOUSE_DSN")
HISTORY_START = dg.EnvVar("DWH_HISTORY_START")
SENSOR_INTERVAL_SECONDS = dg.EnvVar("DWH_SENSOR_INTERVAL_SECONDS")
NIGHTLY_CRON = dg.EnvVar("DWH_NIGHTLY_CRON")
NIGHTLY_DAYS = dg.EnvVar("DWH_NIGHTLY_DAYS")
SUPERSET_URL = dg.EnvVar("DWH_SUPERSET_URL")
DASHBOARDS_DIR = dg.EnvVar("DWH_DASHBOARDS_DIR")
ALERTS_WEBHOOK_URL = dg.EnvVar("DWH_ALERTS__WEBHOOK_URL")
ALERTS_WEBHOOK_URL_FILE = dg.EnvVar("DWH_ALERTS__WEBHOOK_URL_FILE")
ALERTS_LABEL = dg.EnvVar("DWH_ALERTS__LABEL")
ALERTS_TIMEOUT_SECONDS = dg.EnvVar("DWH_ALERTS__TIMEOUT_SECONDS")


class SettingsError(DwhError):
    """A setting of the code location is missing or malformed; the message names each one."""


@dataclass(frozen=True)
class CodeLocationSettings:
    """What the definitions are built from; ``from_environment`` is how the code location gets it."""

    history_start: dt.date
    warehouse_dsn: str = WAREHOUSE_DSN  # an EnvVar, resolved by Dagster; a literal DSN in tests
    sensor_interval_seconds: int = 30
    nightly_cron: str = "30 2 * * *"
    nightly_days: int = 3
    superset_url: str = "http://127.0.0.1:8088"
    dashboards_dir: Path = PACKAGED_DASHBOARDS
    alerts_webhook_url: str | None = None  # the EnvVar when set (resolved by Dagster), never the value
    alerts_webhook_url_file: Path | None = None
    alerts_label: str = "dwh"
    alerts_timeout_seconds: float = 10.0

    @property
    def alerts(self) -> bool:
        """Whether an alert webhook is configured (the alert sensor exists only then)."""
        return self.alerts_webhook_url is not None or self.alerts_webhook_url_file is not None

    @classmethod
    def from_environment(cls) -> CodeLocationSettings:
        values: dict[str, Any] = {}
        problems: list[str] = []
        for setting in SETTINGS:
            raw = (setting.env.get_value() or "").strip()
            if not raw:
                if setting.required:
                    problems.append(f"set {setting.name}={setting.example}: {setting.required}")
                continue
            try:
                values[setting.field] = setting.parse(raw)
            except ValueError:
                fix = (f"e.g. {setting.example}" if setting.required
                       else f"unset it for the default ({_DEFAULTS[setting.field]})")
                value = repr(raw) if setting.shown else "(not shown: it may hold a password)"
                problems.append(f"{setting.name}={value} is not {setting.expects}; {fix}")
        if problems:
            raise SettingsError("the Dagster code location cannot load:\n" + "\n".join(f"  - {p}" for p in problems))
        return cls(**values)


@dataclass(frozen=True)
class Setting:
    env: dg.EnvVar
    field: str  # the CodeLocationSettings field it fills
    expects: str  # what a valid value is, for the error
    example: str
    parse: Callable[[str], Any]
    required: str | None = None  # what it is, when it has no default
    shown: bool = True  # whether an error may repeat the value

    @property
    def name(self) -> str:
        return self.env.env_var_name


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError(raw)
    return value


def _cron(raw: str) -> str:
    # Five fields: croniter would also take a sixth (seconds), which Dagster's schedules do not.
    if len(raw.split()) != 5 or not croniter.is_valid(raw):
        raise ValueError(raw)
    return raw


def _dsn(raw: str) -> str:
    try:
        conninfo_to_dict(raw)
    except psycopg.ProgrammingError:
        raise ValueError(raw) from None
    return WAREHOUSE_DSN  # checked here, resolved by Dagster when the resource connects


def _http_url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError(raw)
    return raw.rstrip("/")


def _webhook_url(raw: str) -> str:
    if not raw.startswith(("https://", "http://")):
        raise ValueError("not a URL")
    return ALERTS_WEBHOOK_URL  # resolved by Dagster when the sensor sends


def _file(raw: str) -> Path:
    path = Path(raw)
    if not path.is_file():
        raise ValueError(raw)
    return path


def _label(raw: str) -> str:
    if not raw.isprintable():
        raise ValueError(raw)
    return raw


def _positive_seconds(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError(raw)
    return value


def _directory(raw: str) -> Path:
    path = Path(raw)
    if not path.is_dir():
        raise ValueError(raw)
    return path


SETTINGS = (
    Setting(WAREHOUSE_DSN, "warehouse_dsn", "a libpq connection string", "'host=… dbname=… user=… passfile=…'", _dsn,
            required="the loader's libpq DSN, naming a passfile (`dwh env --config FILE` prints it)", shown=False),
    Setting(HISTORY_START, "history_start", "a date (YYYY-MM-DD)", "YYYY-MM-DD", dt.date.fromisoformat,
            required="the first day of history, history.start of the deployment configuration "
                     "(`dwh env --config FILE` prints it)"),
    Setting(SENSOR_INTERVAL_SECONDS, "sensor_interval_seconds", "a whole number of seconds >= 1", "30", _positive_int),
    Setting(NIGHTLY_CRON, "nightly_cron", "a cron expression", "'30 2 * * *'", _cron),
    Setting(NIGHTLY_DAYS, "nightly_days", "a whole number of days >= 1", "3", _positive_int),
    Setting(SUPERSET_URL, "superset_url", "an http:// or https:// URL", "http://127.0.0.1:8088", _http_url),
    Setting(DASHBOARDS_DIR, "dashboards_dir", "a directory", "/path/to/dashboards", _directory),
    Setting(ALERTS_WEBHOOK_URL, "alerts_webhook_url", "an https:// URL", "https://hooks.slack.com/services/…",
            _webhook_url, shown=False),
    Setting(ALERTS_WEBHOOK_URL_FILE, "alerts_webhook_url_file", "an existing file", "/etc/dwh/alert-webhook-url", _file),
    Setting(ALERTS_LABEL, "alerts_label", "one line of printable text", "'dwh production'", _label),
    Setting(ALERTS_TIMEOUT_SECONDS, "alerts_timeout_seconds", "a number of seconds > 0", "10", _positive_seconds),
)
_DEFAULTS = {f.name: f.default for f in fields(CodeLocationSettings)}
