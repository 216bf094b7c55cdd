"""The deployment configuration: the file, the environment over it, secrets only from files or the environment."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from dwh_assets.local.config import REPO_ROOT
from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.connect import conninfo, dagster_env
from dwh_assets.warehouse.deployment import DeploymentConfig, DeploymentError

EXAMPLE = REPO_ROOT / "dwh.example.toml"


@pytest.fixture(autouse=True)
def no_dwh_environment(monkeypatch):
    """The developer's shell may have DWH_* set (`eval "$(dwh env)"`): these tests start without."""
    import os

    for name in list(os.environ):
        if name.startswith("DWH_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dwh.toml"
    path.write_text(text)
    return path


def test_the_example_file_is_a_valid_configuration():
    cfg = DeploymentConfig.load(EXAMPLE)
    assert cfg.warehouse.host == "warehouse.db.internal" and cfg.warehouse.sslmode == "verify-full"
    assert cfg.warehouse.admin.user == "postgres"
    assert [login.user for login in cfg.logins().values()] == ["dwh_owner", "dwh_loader", "dwh_reader"]
    assert cfg.control_plane.user == "cp_reader" and cfg.clerk.backend == "reader"
    assert cfg.prometheus.metrics.as_dict() == catalog.DEFAULT_METRICS
    assert cfg.history.start == dt.date(2026, 1, 1)
    # Defaults come from the catalog where the file leaves them out.
    assert cfg.schedule("users") == catalog.get("users").schedule
    assert cfg.retention("metrics") == 180


def test_the_environment_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DWH_WAREHOUSE__PORT", "6432")
    monkeypatch.setenv("DWH_WAREHOUSE__ADMIN__USER", "rds_admin")
    monkeypatch.setenv("DWH_CLERK__BACKEND", "tembo")
    monkeypatch.setenv("DWH_SCHEDULES__USERS", "*/5 * * * *")
    monkeypatch.setenv("DWH_PROMETHEUS__METRICS__STORAGE", "node_filesystem_used_bytes")
    cfg = DeploymentConfig.load(EXAMPLE)
    assert cfg.warehouse.port == 6432 and cfg.warehouse.host == "warehouse.db.internal"
    assert cfg.warehouse.admin.user == "rds_admin"
    assert cfg.clerk.backend == "tembo"
    assert cfg.schedule("users") == "*/5 * * * *" and cfg.schedule("events") == catalog.get("events").schedule
    assert cfg.prometheus.metrics.storage == "node_filesystem_used_bytes"
    assert cfg.prometheus.metrics.cpu == catalog.DEFAULT_METRICS["cpu"]


def test_the_file_comes_from_dwh_config(tmp_path, monkeypatch):
    monkeypatch.setenv("DWH_CONFIG", str(write(tmp_path, "[history]\nstart = 2025-06-01\n")))
    assert DeploymentConfig.load().history.start == dt.date(2025, 6, 1)


def test_no_file_is_a_clear_error():
    with pytest.raises(DeploymentError, match="pass --config FILE or set DWH_CONFIG"):
        DeploymentConfig.load()


@pytest.mark.parametrize("section, key, variable", [
    ("[warehouse.admin]", "password", "DWH_WAREHOUSE__ADMIN__PASSWORD"),
    ("[control_plane]", "password", "DWH_CONTROL_PLANE__PASSWORD"),
    ("[clerk]", "secret_key", "DWH_CLERK__SECRET_KEY"),
])
def test_a_secret_in_the_file_is_refused(tmp_path, section, key, variable):
    path = write(tmp_path, f'[history]\nstart = 2026-01-01\n{section}\n{key} = "hunter2hunter2"\n')
    with pytest.raises(DeploymentError) as refused:
        DeploymentConfig.load(path)
    message = str(refused.value)
    assert "secrets never go into the configuration file" in message and variable in message
    assert f"{key}_file" in message and "hunter2" not in message


def test_secrets_come_from_files_or_the_environment(tmp_path, monkeypatch):
    secret = tmp_path / "cp.password"
    secret.write_text("from-the-file\n")
    secret.chmod(0o600)
    path = write(tmp_path, f'[history]\nstart = 2026-01-01\n[control_plane]\npassword_file = "{secret}"\n')
    assert DeploymentConfig.load(path).control_plane.secret() == "from-the-file"
    monkeypatch.setenv("DWH_CONTROL_PLANE__PASSWORD", "from-the-environment")
    cfg = DeploymentConfig.load(path)
    assert cfg.control_plane.secret() == "from-the-environment"
    assert "from-the-environment" not in repr(cfg), "secrets are masked in reprs and logs"


def test_a_missing_secret_file_names_the_file(tmp_path):
    path = write(tmp_path, '[history]\nstart = 2026-01-01\n[clerk]\nsecret_key_file = "/nonexistent/key"\n')
    with pytest.raises(DeploymentError, match="cannot read the Clerk secret key from /nonexistent/key"):
        DeploymentConfig.load(path).clerk.secret()


@pytest.mark.parametrize("text, problem", [
    ("[warehouse]\nport = 'five'\n", r"warehouse\.port: Input should be a valid integer"),
    ("", r"history: Field required"),
    ("[history]\nstart = 2026-13-45\n", r"not valid TOML"),
    ("[schedules]\nuserz = '* * * * *'\n", r"no job named userz; known: .*users"),
    ("[schedules]\nusers = 'every minute'\n", r"not a five-field cron schedule"),
    ("[retention_days]\nmetrics = 0\n", r"at least one day"),
    ("[retention_days]\nmetricz = 30\n", r"no table named metricz"),
    ("[prometheus]\nstep_seconds = 7\n", r"must divide a day"),
    ("[prometheus.metrics]\ncpu = 'cpu; DROP TABLE x'\n", r"not a Prometheus metric name"),
    ("[clerk]\nbackend = 'clerk_fdw'\n", r"clerk\.backend: Input should be 'reader', 'tembo' or 'relay'"),
    ("[warehouse]\nhots = 'typo'\n", r"warehouse\.hots: Extra inputs are not permitted"),
])
def test_bad_values_are_refused_with_their_location(tmp_path, text, problem):
    start = "" if "history" in text or not text else "[history]\nstart = 2026-01-01\n"
    with pytest.raises(DeploymentError, match=problem):
        DeploymentConfig.load(write(tmp_path, start + text))


def test_dsns_for_other_programs_name_a_passfile_never_a_password(tmp_path, monkeypatch):
    monkeypatch.setenv("DWH_WAREHOUSE__LOADER__PASSWORD", "loader-secret-value")
    cfg = DeploymentConfig.load(EXAMPLE)
    env = dagster_env(cfg)
    assert env["DWH_HISTORY_START"] == "2026-01-01"
    dsn = env["DWH_WAREHOUSE_DSN"]
    assert "user=dwh_loader" in dsn and "passfile=/etc/dwh/pgpass" in dsn and "dbname=warehouse" in dsn
    assert "loader-secret-value" not in dsn and "password" not in dsn
    assert "user=dwh_reader" in conninfo(cfg, "reader")


def test_dagster_gets_the_instance_switches_that_batch_a_range_runs_events():
    env = dagster_env(DeploymentConfig.load(EXAMPLE))
    # Dagster reads these itself: batched materializations, one planned event per asset of a range run.
    assert int(env["DAGSTER_EVENT_BATCH_SIZE"]) >= 366, "a year's partitions of one asset in one batch"
    assert env["DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"] == "true"


# ----- how the events refresh reads the control plane ---------------------------------------------


def test_control_plane_transfer_auto_is_copy_only_where_the_server_runs_programs(monkeypatch):
    assert DeploymentConfig.load(EXAMPLE).control_plane_transfer() == "copy"  # the reader backend
    monkeypatch.setenv("DWH_CLERK__BACKEND", "tembo")
    monkeypatch.setenv("DWH_PROMETHEUS__BACKEND", "tembo")
    assert DeploymentConfig.load(EXAMPLE).control_plane_transfer() == "fdw"
    monkeypatch.setenv("DWH_CONTROL_PLANE__TRANSFER", "copy")
    with pytest.raises(DeploymentError, match=r"transfer = \\?\"copy\\?\" runs psql on the database server"):
        DeploymentConfig.load(EXAMPLE)
    monkeypatch.setenv("DWH_CONTROL_PLANE__TRANSFER", "fdw")
    monkeypatch.delenv("DWH_CLERK__BACKEND")
    assert DeploymentConfig.load(EXAMPLE).control_plane_transfer() == "fdw"
    monkeypatch.setenv("DWH_CONTROL_PLANE__TRANSFER", "bulk")
    with pytest.raises(DeploymentError, match="control_plane.transfer"):
        DeploymentConfig.load(EXAMPLE)


def test_control_plane_passfile_line_escapes_colons_and_backslashes(monkeypatch):
    from dwh_assets.warehouse.sources.reader_install import control_plane_pgpass

    monkeypatch.setenv("DWH_CONTROL_PLANE__PASSWORD", r"pa:ss\word")
    monkeypatch.setenv("DWH_CONTROL_PLANE__HOST", "fe80::1")
    line = control_plane_pgpass(DeploymentConfig.load(EXAMPLE)).decode()
    assert line == r"fe80\:\:1:5432:control_plane:cp_reader:pa\:ss\\word" + "\n"
