"""Shared fixtures: one real local stack per test session.

The session stack lives in its own DWH_HOME under /tmp (the server's OS user must be
able to reach it) on free loopback ports, so it never collides with a demo stack.
Scale 0.5 gives 600 Clerk users, more than one page of 500.

The fixtures that start servers are declared with ``integration_fixture``: every test that
uses them, directly or through another fixture, is in the integration tier (tiers.py).
Superset, the slowest server to start, has its own session fixture, started on first use.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dwh_assets.local.config import (
    DEFAULT_PORTS,
    LOADER_ROLE,
    OWNER_ROLE,
    READER_ROLE,
    WAREHOUSE_DB,
    StackConfig,
    free_port,
    load_config,
)
from dwh_assets.local.local_stack import LocalStack
from dwh_assets.warehouse.migrate import migrate
from dwh_assets_tests import tiers
from dwh_assets_tests.tiers import integration_fixture
from dwh_assets_tests.warehouse_helpers import ClerkApi

TEST_SCALE = "0.5"


def pytest_configure(config: pytest.Config) -> None:
    # Registered here rather than with -p, so that it needs nothing but this directory on sys.path.
    config.pluginmanager.register(tiers, "dwh_assets_tests.tiers")


def make_home(prefix: str) -> Path:
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(home, 0o755)  # traversable by the server's OS user
    return home


def stack_env(home: Path, scale: str = TEST_SCALE) -> dict[str, str]:
    env = {"DWH_HOME": str(home), "DWH_SCALE": scale, "DWH_SEED": "42"}
    env.update({f"DWH_{name.upper()}_PORT": str(free_port()) for name in DEFAULT_PORTS})
    return env


def migrate_stack(cfg: StackConfig) -> str:
    """`dwh migrate` on a local stack, with its deployment configuration; the one-line summary."""
    return migrate(cfg.deployment(), progress=lambda _line: None).summary()


@integration_fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    """Every server but Superset (the ``superset`` fixture adds it), the warehouse migrated and materialised."""
    home = make_home("dwh-test-")
    saved = dict(os.environ)
    os.environ.update(stack_env(home))
    cfg = load_config(create=True)
    os.environ.update(cfg.client_env())
    local = LocalStack(cfg)
    try:
        local.up(dagster=True, superset=False)
        yield local
    finally:
        local.down()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(home, ignore_errors=True)


@integration_fixture(scope="session")
def fault_stack() -> Iterator[LocalStack]:
    """A second stack for the faults that would damage the session stack (a server crash and restart,
    a source that forgets its history), with Dagster (its sensor every few seconds) and Superset.

    Started by the first test that asks; the environment is the session stack's again once it runs
    (``fault_helpers.stack_environment`` points a block of code at it).
    """
    from dwh_assets.warehouse.defs.settings import SENSOR_INTERVAL_SECONDS

    home = make_home("dwh-test-faults-")
    saved = dict(os.environ)
    local = None
    try:
        os.environ.update(stack_env(home) | {SENSOR_INTERVAL_SECONDS.env_var_name: "5"})
        local = LocalStack(load_config(create=True), progress=lambda _line: None)
        problems = local.up(dagster=True, superset=True)
        assert problems == [], f"the fault stack did not come up whole: {problems}"
    except BaseException:
        if local is not None:
            local.down()
        shutil.rmtree(home, ignore_errors=True)
        raise
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        yield local
    finally:
        local.down()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def cfg(stack: LocalStack) -> StackConfig:
    return stack.cfg


@integration_fixture(scope="session")
def superset(stack: LocalStack) -> StackConfig:
    """The session stack with Superset running and ``dashboards/`` imported, started by the first test that asks.

    Its virtualenv is shared (.venv-superset); a failed start fails only the tests using this fixture.
    """
    problems = stack.start_superset()
    assert problems == [], f"Superset did not start (log: {stack.superset.log_file}): {problems}"
    return stack.cfg


def _connect(cfg: StackConfig, role: str) -> psycopg.Connection:
    return psycopg.connect(cfg.dsn(WAREHOUSE_DB, role), autocommit=True)


@pytest.fixture()
def loader(cfg: StackConfig) -> Iterator[psycopg.Connection]:
    with _connect(cfg, LOADER_ROLE) as conn:
        yield conn


@pytest.fixture()
def owner(cfg: StackConfig) -> Iterator[psycopg.Connection]:
    with _connect(cfg, OWNER_ROLE) as conn:
        yield conn


@pytest.fixture()
def reader_role(cfg: StackConfig) -> Iterator[psycopg.Connection]:
    with _connect(cfg, READER_ROLE) as conn:
        yield conn


@pytest.fixture()
def superuser(stack: LocalStack) -> Iterator[psycopg.Connection]:
    with stack.postgres.connect(WAREHOUSE_DB) as conn:
        yield conn


@pytest.fixture()
def clerk(cfg: StackConfig) -> Iterator[ClerkApi]:
    """The session stack's Clerk emulator; back to the generated world, faults cleared, afterwards."""
    api = ClerkApi(cfg)
    yield api
    api.reset()
