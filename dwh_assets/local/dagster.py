"""Dagster's webserver and daemon for the local stack.

Both run from the repository root with ``-w workspace.yaml`` and ``DAGSTER_HOME`` under
the stack directory; ``dagster.yaml`` is copied there so the instance stores runs, events
and schedules in the cluster's ``dagster`` database.
"""

from __future__ import annotations

import shutil
import sys
import urllib.request
from pathlib import Path

from dwh_assets.local.config import REPO_ROOT, StackConfig
from dwh_assets.local.process import ManagedProcess


def venv_bin(name: str) -> str:
    # The console scripts installed next to the running interpreter (the project's venv).
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def prepare_dagster_home(cfg: StackConfig) -> Path:
    cfg.dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO_ROOT / "dagster.yaml", cfg.dagster_home / "dagster.yaml")
    return cfg.dagster_home


def _graphql_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


class DagsterWebserver(ManagedProcess):
    def __init__(self, cfg: StackConfig):
        super().__init__(
            name="dagster-webserver",
            argv=[
                venv_bin("dagster-webserver"), "-h", cfg.host, "-p", str(cfg.ports["dagster"]),
                "-w", str(REPO_ROOT / "workspace.yaml"),
            ],
            port=cfg.ports["dagster"],
            pid_file=cfg.pid_file("dagster-webserver"),
            log_file=cfg.log_file("dagster-webserver"),
            env=cfg.client_env(),
            cwd=REPO_ROOT,
            start_timeout=180,
            ready=lambda: _graphql_ready(cfg.dagster_url),
        )
        self.cfg = cfg

    def start(self) -> bool:
        prepare_dagster_home(self.cfg)
        return super().start()


class DagsterDaemon(ManagedProcess):
    def __init__(self, cfg: StackConfig):
        super().__init__(
            name="dagster-daemon",
            argv=[venv_bin("dagster-daemon"), "run", "-w", str(REPO_ROOT / "workspace.yaml")],
            port=None,
            pid_file=cfg.pid_file("dagster-daemon"),
            log_file=cfg.log_file("dagster-daemon"),
            env=cfg.client_env(),
            cwd=REPO_ROOT,
            start_timeout=5,
        )
        self.cfg = cfg

    def start(self) -> bool:
        prepare_dagster_home(self.cfg)
        return super().start()
