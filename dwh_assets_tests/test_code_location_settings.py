"""The code location's settings, without a server: one object, read when the definitions load.

Importing ``dwh_assets.definitions`` reads nothing; loading it reads every ``DWH_*`` setting
of ``defs/settings.py`` through Dagster's ``EnvVar``, and one error names every setting that
is missing or malformed. The nightly schedule's cron and days are settings like the rest.
"""

from __future__ import annotations

import ast
import datetime as dt
import importlib
import inspect
import re

import dagster as dg
import pytest

import dwh_assets.definitions
from dwh_assets.warehouse.defs import build_definitions
from dwh_assets.warehouse.defs.settings import SETTINGS, CodeLocationSettings, SettingsError
from dwh_assets.warehouse.superset_export import PACKAGED_DASHBOARDS

REQUIRED = {"DWH_WAREHOUSE_DSN": "host=db.example dbname=warehouse user=dwh_loader passfile=/etc/dwh/pgpass",
            "DWH_HISTORY_START": "2026-01-01"}


@pytest.fixture()
def environ(monkeypatch):
    """No DWH_* setting of the code location is set; the test sets what it means to."""
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)

    def set_(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_


def test_only_the_dsn_and_the_history_start_are_required(environ):
    environ(**REQUIRED)
    settings = CodeLocationSettings.from_environment()
    assert settings == CodeLocationSettings(dt.date(2026, 1, 1))
    assert settings.dashboards_dir == PACKAGED_DASHBOARDS
    # The DSN stays a Dagster EnvVar: resolved when the resource connects, never part of the definitions.
    assert isinstance(settings.warehouse_dsn, dg.EnvVar) and settings.warehouse_dsn.env_var_name == "DWH_WAREHOUSE_DSN"


def test_every_setting_is_read_from_its_variable(environ, tmp_path):
    dashboards = tmp_path / "dashboards"
    dashboards.mkdir()
    environ(**REQUIRED, DWH_SENSOR_INTERVAL_SECONDS="7", DWH_NIGHTLY_CRON="15 4 * * 1-5", DWH_NIGHTLY_DAYS="10",
            DWH_SUPERSET_URL="https://bi.example.com/", DWH_DASHBOARDS_DIR=str(dashboards))
    assert CodeLocationSettings.from_environment() == CodeLocationSettings(
        dt.date(2026, 1, 1), sensor_interval_seconds=7, nightly_cron="15 4 * * 1-5", nightly_days=10,
        superset_url="https://bi.example.com", dashboards_dir=dashboards)
    assert {s.name for s in SETTINGS} == {"DWH_WAREHOUSE_DSN", "DWH_HISTORY_START", "DWH_SENSOR_INTERVAL_SECONDS",
                                          "DWH_NIGHTLY_CRON", "DWH_NIGHTLY_DAYS", "DWH_SUPERSET_URL", "DWH_DASHBOARDS_DIR",
                                          "DWH_ALERTS__WEBHOOK_URL", "DWH_ALERTS__WEBHOOK_URL_FILE", "DWH_ALERTS__LABEL",
                                          "DWH_ALERTS__TIMEOUT_SECONDS"}


def test_one_error_names_every_missing_or_malformed_setting(environ):
    environ(DWH_SENSOR_INTERVAL_SECONDS="0", DWH_NIGHTLY_CRON="every night", DWH_NIGHTLY_DAYS="three",
            DWH_SUPERSET_URL="bi.example.com", DWH_DASHBOARDS_DIR="/nonexistent/dashboards",
            DWH_ALERTS__WEBHOOK_URL="hooks.example/T0/B0/s3cret-token", DWH_ALERTS__WEBHOOK_URL_FILE="/nonexistent/url",
            DWH_ALERTS__LABEL="two\tlines", DWH_ALERTS__TIMEOUT_SECONDS="-1")
    with pytest.raises(SettingsError) as raised:
        CodeLocationSettings.from_environment()
    assert "s3cret-token" not in str(raised.value), "the webhook URL is a secret"
    assert "DWH_ALERTS__WEBHOOK_URL=(not shown: it may hold a password) is not an https:// URL" in str(raised.value)
    lines = str(raised.value).splitlines()
    assert lines[0] == "the Dagster code location cannot load:"
    assert [re.search(r"DWH_[A-Z_]+", line)[0] for line in lines[1:]] == [s.name for s in SETTINGS]
    message = str(raised.value)
    assert "set DWH_HISTORY_START=YYYY-MM-DD: the first day of history" in message
    assert "DWH_NIGHTLY_CRON='every night' is not a cron expression; unset it for the default (30 2 * * *)" in message
    assert "DWH_SENSOR_INTERVAL_SECONDS='0' is not a whole number of seconds >= 1" in message


def test_a_malformed_dsn_is_named_without_its_value_and_a_bad_date_with_it(environ):
    environ(DWH_WAREHOUSE_DSN="host db.example password=s3cret", DWH_HISTORY_START="2026-13-01",
            DWH_NIGHTLY_CRON="0 30 2 * * *")
    with pytest.raises(SettingsError) as raised:
        CodeLocationSettings.from_environment()
    message = str(raised.value)
    assert "DWH_WAREHOUSE_DSN=(not shown: it may hold a password) is not a libpq connection string" in message
    assert "s3cret" not in message
    assert "DWH_HISTORY_START='2026-13-01' is not a date" in message
    assert "DWH_NIGHTLY_CRON='0 30 2 * * *' is not a cron expression" in message, "seconds: Dagster takes five fields"


def test_the_nightly_schedule_follows_its_cron_and_days():
    defs = build_definitions(CodeLocationSettings(dt.date(2026, 1, 1), nightly_cron="15 4 * * 1-5", nightly_days=10))
    schedule = defs.resolve_schedule_def("nightly_late_data_schedule")
    assert schedule.cron_schedule == "15 4 * * 1-5" and schedule.execution_timezone == "UTC"
    tick = dt.datetime(2026, 3, 20, 4, 15, tzinfo=dt.timezone.utc)
    with dg.build_schedule_context(scheduled_execution_time=tick) as context:
        request = schedule.evaluate_tick(context).run_requests[0]
    assert (request.partition_key_range.start, request.partition_key_range.end) == ("2026-03-10", "2026-03-20")


def test_the_sensor_interval_is_the_setting():
    defs = build_definitions(CodeLocationSettings(dt.date(2026, 1, 1), sensor_interval_seconds=7))
    assert defs.resolve_sensor_def("pg_cron_runs").minimum_interval_seconds == 7


def test_importing_the_code_location_reads_no_setting_and_loading_it_does(environ):
    """Without any setting the module imports; Dagster's call of ``defs`` is what fails, by name."""
    module = importlib.reload(dwh_assets.definitions)
    imported = {alias.name for node in ast.parse(inspect.getsource(module)).body if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.parse(inspect.getsource(module)).body if isinstance(node, ast.ImportFrom)}
    assert imported == {"dagster"}, "the module's top level imports nothing of the warehouse"
    with pytest.raises(SettingsError, match="set DWH_WAREHOUSE_DSN=(.|\n)*set DWH_HISTORY_START="):
        module.defs()
    environ(**REQUIRED)
    assert module.defs().resolve_asset_graph().has(dg.AssetKey(["dwh", "users"]))
