"""A Superset that fails to start leaves the rest of the stack up, and `dwh status` says so.

Superset of the session stack is stopped, and ``dwh up`` runs again with a Superset
virtualenv whose gunicorn dies at once (``DWH_SUPERSET_VENV``). ``up`` finishes every other
step, reports the failure (exit 3 from the CLI), ``dwh status`` names it, and the warehouse
and Dagster keep answering. Afterwards Superset is started again from the real virtualenv.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from dwh_assets.local.config import READER_ROLE, WAREHOUSE_DB
from dwh_assets.local.local_stack import LocalStack
from dwh_assets.local.superset import VENV_ENV, import_dashboards


@pytest.fixture()
def broken_venv(tmp_path) -> Path:
    venv = tmp_path / "venv-superset"
    (venv / "bin").mkdir(parents=True)
    for name in ("gunicorn", "superset", "python"):
        script = venv / "bin" / name
        script.write_text("#!/bin/sh\necho 'simulated: Superset cannot start here' >&2\nexit 1\n")
        script.chmod(0o755)
    return venv


def test_a_superset_that_cannot_start_leaves_the_stack_usable(stack, superset, broken_venv, monkeypatch):
    cfg = stack.cfg
    stack.superset.stop()
    monkeypatch.setenv(VENV_ENV, str(broken_venv))
    try:
        broken = LocalStack(cfg, progress=lambda _line: None)
        problems = broken.up(dagster=True, superset=True)
        assert any(p.startswith("superset did not start: superset exited with code 1") for p in problems), problems
        states = {s.component: s.state for s in broken.status()}
        assert states["superset"].startswith("failed to start: superset exited with code 1"), states
        assert all(state == "running" for name, state in states.items() if name != "superset"), states

        done = subprocess.run([sys.executable, "-m", "dwh_assets.cli", "status"], capture_output=True, text=True,
                              env=dict(os.environ), timeout=120)
        assert done.returncode == 3
        assert "failed to start" in next(line for line in done.stdout.splitlines() if line.startswith("superset "))

        with psycopg.connect(cfg.dsn(WAREHOUSE_DB, READER_ROLE), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM mart.refresh_latest").fetchone()[0] > 0
        assert stack.webserver.is_running() and stack.postgres.is_running()
    finally:
        monkeypatch.delenv(VENV_ENV)
        restored = LocalStack(cfg, progress=lambda _line: None)
        assert restored.up(dagster=True, superset=True) == []
        stack.superset = restored.superset
    assert not stack.superset_failure_file.exists()
    assert stack.superset.is_running()
    import_dashboards(cfg)  # as the session left it
