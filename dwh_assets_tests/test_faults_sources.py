"""Sources down or slow: every refresh fails by itself, in bounded time, with an error that
names the source and the cause, and leaves the data and the refresh log as they were.

The faults are real: the Clerk emulator's fault injection (5xx, 429 storms, hanging
answers), the session stack's Prometheus stopped, the control plane behind a closed or a
silent port. The reader's timeouts come from DWH_READER_* variables (as a user sets them).
Every test runs the refresh under a generous statement_timeout guard: a refresh that hung
would end with SQLSTATE 57014 instead of the source error the test expects.
"""

from __future__ import annotations

import datetime as dt
import json
import socket

import psycopg
import pytest
from psycopg import errors, sql

from dwh_assets.local.config import OWNER_ROLE, StackConfig
from dwh_assets.warehouse.sources.reader import DEFAULT_SETTINGS
from dwh_assets.local import secrets
from dwh_assets.local.process import StackError
from dwh_assets.warehouse.deployment import DeploymentError
from dwh_assets.warehouse.sources.reader_install import install_reader, reader_settings
from dwh_assets_tests.fault_helpers import FAST_READER_ENV, TableState, connect, failing_refresh, reader_env, refresh
from dwh_assets_tests.tiers import integration_fixture
from dwh_assets_tests.warehouse_helpers import utc_midnight

D0, D1 = utc_midnight(-5), utc_midnight(-4)
CLERK_TABLES = ("users", "organizations", "organization_memberships")


@pytest.fixture()
def fast_reader(cfg: StackConfig):
    with reader_env(cfg, **FAST_READER_ENV):
        yield


def assert_source_failure(error: psycopg.Error, sqlstate: str, message: str, *in_detail: str) -> None:
    assert error.sqlstate == sqlstate, f"{error.sqlstate}: {error}"
    assert error.diag.message_primary == message
    detail = error.diag.message_detail or ""
    for needle in in_detail:
        assert needle in detail, detail
    assert error.diag.message_hint, "a source failure must say what to do"


# ----- Clerk ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fault, sqlstate, cause, reason", [
    ({"status": 503}, "08006", "answered every retry with a server error (HTTP 5xx)",
     "HTTP 503 from /v1/users?limit=500&offset=0&order_by=%2Bcreated_at after 2 attempts"),
    ({"status": 429, "retry_after": 1}, "08006", "kept rate-limiting the reader (HTTP 429) until its retries ran out",
     "HTTP 429 from /v1/users?limit=500&offset=0&order_by=%2Bcreated_at after 2 attempts"),
    ({"delay_seconds": 300}, "08006", "did not answer in time",
     "no answer within 2s from /v1/users?limit=500&offset=0&order_by=%2Bcreated_at after 2 attempts"),
], ids=["5xx", "429-storm", "hanging"])
def test_clerk_fault_fails_the_users_refresh_and_keeps_the_data(cfg, loader, clerk, fast_reader, fault, sqlstate, cause, reason):
    refresh(loader, "refresh_users")
    before = TableState.of(loader, "users")
    clerk.request("POST", "/_admin/faults", fault)

    error = failing_refresh(loader, "refresh_users")
    assert_source_failure(error, sqlstate, f"dwh.refresh_users: source Clerk users {cause}", reason,
                          "clerk users\" failed: child process exited with exit code")
    before.assert_unchanged(loader, loader.info.backend_pid)

    clerk.request("DELETE", "/_admin/faults")
    assert refresh(loader, "refresh_users")["rows_source"] == before.data[0], "the source is back: the next run succeeds"


@pytest.mark.parametrize("table", CLERK_TABLES)
def test_every_clerk_refresh_names_its_source(loader, clerk, fast_reader, table):
    before = TableState.of(loader, table)
    clerk.request("POST", "/_admin/faults", {"status": 500})
    error = failing_refresh(loader, f"refresh_{table}")
    assert_source_failure(error, "08006", f"dwh.refresh_{table}: source Clerk {table} answered every retry with a server error (HTTP 5xx)",
                          f"HTTP 500 from /v1/{table}?")
    before.assert_unchanged(loader, loader.info.backend_pid)


def test_a_hanging_clerk_is_bounded_by_the_total_timeout(cfg, loader, clerk):
    """Many retries of a hanging source still end at total_timeout_seconds."""
    before = TableState.of(loader, "organizations")
    clerk.request("POST", "/_admin/faults", {"delay_seconds": 300})
    with reader_env(cfg, **{**FAST_READER_ENV, "DWH_READER__MAX_RETRIES": "1000", "DWH_READER__TOTAL_TIMEOUT_SECONDS": "5"}):
        error = failing_refresh(loader, "refresh_organizations")
    assert_source_failure(error, "08006", "dwh.refresh_organizations: source Clerk organizations did not answer in time",
                          "the read did not finish within total_timeout_seconds=5s")
    before.assert_unchanged(loader, loader.info.backend_pid)


def test_a_wrong_clerk_key_is_an_authentication_error(cfg, loader, clerk, fast_reader):
    before = TableState.of(loader, "users")
    secrets_file = cfg.reader_dir / "secrets.json"
    try:
        # Same file, owner and mode as installed; only the key is wrong.
        secrets_file.write_text(json.dumps({"clerk_secret_key": "sk_test_revoked_key"}))
        error = failing_refresh(loader, "refresh_users")
    finally:
        install_reader(cfg.deployment())
    assert_source_failure(error, "28000", "dwh.refresh_users: source Clerk users refused the reader's credentials (HTTP 401/403)",
                          "HTTP 401 from /v1/users")
    assert "sk_test_revoked_key" not in str(error) and secrets.clerk_secret_key(cfg) not in str(error)
    before.assert_unchanged(loader, loader.info.backend_pid)


# ----- Prometheus ----------------------------------------------------------------------------


def test_stopped_prometheus_fails_the_metrics_refresh_and_keeps_the_window(stack, cfg, loader, fast_reader):
    refresh(loader, "refresh_metrics", D0, D1)
    before = TableState.of(loader, "metrics", (D0, D1))
    assert before.data[0] > 0
    stack.prometheus.stop()
    try:
        error = failing_refresh(loader, "refresh_metrics", D0, D1)
    finally:
        stack.prometheus.start()
    assert_source_failure(error, "08001", "dwh.refresh_metrics: source Prometheus is unreachable",
                          f"cannot reach {cfg.prometheus_url}/api/v1/", "Connection refused")
    assert f"{cfg.reader_dir}/reader.json" in error.diag.message_hint
    before.assert_unchanged(loader, loader.info.backend_pid)
    assert refresh(loader, "refresh_metrics", D0, D1)["rows_inserted"] > 0, "Prometheus is back: the next run succeeds"


def test_a_day_prometheus_no_longer_holds_is_not_emptied(cfg, loader, owner):
    """Prometheus answers a day that the warehouse holds samples of with none (retention, a new
    server): the refresh refuses instead of emptying the day, and changes nothing."""
    day = utc_midnight(-cfg.history_days - 2)  # before the back-filled history, inside retention
    window = (day, day + dt.timedelta(days=1))
    owner.execute("SELECT dwh.ensure_partitions('dwh.metrics', %s, %s)", window)
    owner.execute("INSERT INTO dwh.metrics SELECT min(series_id), %s, 1 FROM dwh.metric_series",
                  (day + dt.timedelta(hours=10),))
    try:
        before = TableState.of(loader, "metrics", window)
        assert before.data[0] == 1
        error = failing_refresh(loader, "refresh_metrics", *window)
        assert error.diag.message_primary.startswith(
            f"dwh.refresh_metrics: Prometheus returned no samples for {day:%Y-%m-%d} (1 samples) of ")
        assert "still retains this window" in error.diag.message_hint
        before.assert_unchanged(loader, loader.info.backend_pid)
    finally:
        owner.execute("DELETE FROM dwh.metrics WHERE ts >= %s AND ts < %s", window)


# ----- control plane (postgres_fdw) ----------------------------------------------------------------


@pytest.fixture()
def dead_port():
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@integration_fixture()
def silent_port():
    """A loopback port that accepts TCP connections and never says a word (a hung server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


@pytest.mark.parametrize("routine, args, table, window", [
    ("refresh_instances", (), "instances", None),
    ("refresh_events", (D0, D1), "events", (D0, D1)),
])
@pytest.mark.parametrize("port_kind, reason", [
    ("dead", "Connection refused"),
    ("silent", "timeout expired"),  # the server's connect_timeout bounds it
])
def test_unreachable_control_plane_fails_in_bounded_time(cfg, request, loader, routine, args, table, window, port_kind, reason):
    port = request.getfixturevalue(f"{port_kind}_port")
    refresh(loader, routine, *args)
    before = TableState.of(loader, table, window)
    # The foreign server is moved in an uncommitted transaction: no other session sees it.
    with connect(cfg, OWNER_ROLE, autocommit=False) as owner:
        owner.execute(sql.SQL("ALTER SERVER control_plane OPTIONS (SET port {})").format(sql.Literal(str(port))))
        error = failing_refresh(owner, routine, *args)
        owner.rollback()
        failed_pid = owner.info.backend_pid
    assert isinstance(error, errors.SqlclientUnableToEstablishSqlconnection), f"{error.sqlstate}: {error}"
    assert error.diag.message_primary == 'could not connect to server "control_plane"'
    assert f'port {port} failed: {reason}' in error.diag.message_detail
    before.assert_unchanged(loader, failed_pid)


# ----- the settings behind the bounds ----------------------------------------------------------------


def test_reader_timeouts_are_configurable_from_the_environment(cfg, monkeypatch):
    monkeypatch.setenv("DWH_READER__TIMEOUT_SECONDS", "7.5")
    monkeypatch.setenv("DWH_READER__MAX_RETRIES", "9")
    settings = reader_settings(cfg.deployment())
    assert (settings["timeout_seconds"], settings["max_retries"]) == (7.5, 9)
    assert settings["clerk_url"] == cfg.clerk_url
    for variable, value, problem in [
        ("DWH_READER__MAX_RETRIES", "many", r"reader\.max_retries: Input should be a valid integer"),
        ("DWH_READER__TOTAL_TIMEOUT_SECONDS", "-1", r"reader\.total_timeout_seconds: Input should be greater than 0"),
        # A misspelt or derived setting is refused, not silently ignored (the URL comes from [clerk]).
        ("DWH_READER__CLERK_URL", "http://elsewhere", r"reader\.clerk_url: Extra inputs are not permitted"),
    ]:
        with monkeypatch.context() as m:
            m.setenv(variable, value)
            with pytest.raises(DeploymentError, match=problem):
                reader_settings(cfg.deployment())


def test_default_reader_bounds_are_finite():
    """Without any variable, a hanging source still ends: every wait has a finite default."""
    defaults = DEFAULT_SETTINGS
    assert 0 < defaults["timeout_seconds"] <= defaults["total_timeout_seconds"] <= 3600
    assert defaults["max_retry_after_seconds"] <= defaults["total_timeout_seconds"]
