"""The whole local stack: which components, in which order, and the steps between them.

``up`` is idempotent: a running component is left alone, a stopped one is started, and
the set-up steps (roles, source data, reader, migrations) only do what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from dwh_assets.local.config import StackConfig, checkout_root
from dwh_assets.local.clerk import ClerkEmulator
from dwh_assets.local.dagster import DagsterDaemon, DagsterWebserver, prepare_dagster_home
from dwh_assets.local.postgres import Postgres
from dwh_assets.local.process import StackError
from dwh_assets.local.prometheus import PrometheusServer, UsageExporter
from dwh_assets.local.superset import Superset, import_dashboards
from dwh_assets.warehouse.errors import DwhError


class Component(Protocol):
    name: str

    @property
    def port(self) -> int | None: ...
    @property
    def log_file(self): ...
    def pid(self) -> int | None: ...
    def is_running(self) -> bool: ...
    def start(self) -> bool: ...
    def stop(self) -> bool: ...


@dataclass
class ComponentStatus:
    component: str
    port: int | None
    pid: int | None
    state: str
    log_file: str


Progress = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


class LocalStack:
    def __init__(self, cfg: StackConfig, progress: Progress = _print):
        self.cfg = cfg
        self.progress = progress
        self.postgres = Postgres(cfg)
        self.clerk = ClerkEmulator(cfg)
        self.exporter = UsageExporter(cfg)
        self.prometheus = PrometheusServer(cfg, progress=lambda line: self.progress(f"      {line}"))
        self.webserver = DagsterWebserver(cfg)
        self.daemon = DagsterDaemon(cfg)
        self.superset = Superset(cfg)
        # Steps that failed without stopping `dwh up` (Superset): what `dwh up` reports at the end.
        self.problems: list[str] = []

    @property
    def components(self) -> list[Component]:
        return [self.postgres, self.clerk, self.exporter, self.prometheus, self.webserver, self.daemon, self.superset]

    @property
    def superset_failure_file(self):
        """Why Superset last failed to start (``dwh status`` shows it); removed once it runs."""
        return self.cfg.socket_dir / "superset.failed"

    def _start_superset(self) -> object:
        """Superset is optional for the warehouse: a failure is reported, the rest stays up."""
        try:
            started = self.superset.start()
        except DwhError as e:
            self.superset.stop()
            self.superset_failure_file.parent.mkdir(parents=True, exist_ok=True)
            self.superset_failure_file.write_text(str(e).splitlines()[0] + "\n")
            self.problems.append(f"superset did not start: {e}")
            return f"FAILED, the rest of the stack is unaffected: {str(e).splitlines()[0]} (log: {self.superset.log_file})"
        self.superset_failure_file.unlink(missing_ok=True)
        return started

    def _import_dashboards(self) -> object:
        if not self.superset.is_running():
            return "skipped: superset is not running"
        try:
            return import_dashboards(self.cfg)
        except DwhError as e:
            self.problems.append(f"dashboards were not imported: {e}")
            return f"FAILED, nothing was imported: {e}"

    def _step(self, i: int, n: int, label: str, fn: Callable[[], object]) -> object:
        t0 = time.monotonic()
        self.progress(f"[{i}/{n}] {label} ...")
        result = fn()
        if isinstance(result, bool):
            what = "started" if result else "already running"
        elif isinstance(result, (list, dict)) and not result:
            what = "nothing to do"
        else:
            what = str(result) if result is not None else "done"
        self.progress(f"[{i}/{n}] {label}: {what} ({time.monotonic() - t0:.1f}s)")
        return result

    def _event_progress(self, done: int, total: int) -> None:
        self.progress(f"      control plane events: {done:,} / {total:,}")

    def up(self, *, dagster: bool = True, superset: bool = False) -> list[str]:
        """Start what is not running; returns the problems of optional steps (Superset: `dwh up` asks for it)."""
        if checkout_root() is None:
            raise StackError("the demo stack runs from a checkout of the repository (it uses dagster.yaml, "
                             "workspace.yaml and superset/ there), and this dwh_assets is an installed package; "
                             "to deploy it onto your own Postgres, run `dwh migrate --config FILE` (README)")
        from dwh_assets.local.control_plane import ensure_control_plane
        from dwh_assets.warehouse.migrate import migrate
        from dwh_assets.warehouse.sources.reader_install import install_reader

        steps: list[tuple[str, Callable[[], object]]] = [
            (f"postgres on 127.0.0.1:{self.cfg.pg_port}", self.postgres.start),
            ("roles and databases", lambda: ", ".join(self.postgres.provision()) or "present"),
            ("control plane data", lambda: ensure_control_plane(self.cfg, progress=self._event_progress)),
            (f"clerk emulator on {self.cfg.clerk_url}", self.clerk.start),
            (f"usage exporter on {self.cfg.exporter_url}", self.exporter.start),
            (f"prometheus on {self.cfg.prometheus_url}", self.prometheus.start),
            ("deployment configuration", lambda: f"written to {self.cfg.write_deployment_file()}"),
            ("source reader for file_fdw", lambda: f"installed in {install_reader(self.cfg.deployment())}"),
            # The same migrate a real deployment runs, with the stack's deployment configuration.
            ("warehouse migrations and pg_cron jobs",
             lambda: migrate(self.cfg.deployment(), progress=lambda line: self.progress(f"      {line}")).summary()),
            # The Dagster instance directory serves the `dagster` CLI even without webserver/daemon.
            ("dagster instance (Postgres storage)", lambda: prepare_dagster_home(self.cfg)),
        ]
        if dagster:
            steps += [
                (f"dagster webserver on {self.cfg.dagster_url}", self.webserver.start),
                ("dagster daemon", self.daemon.start),
            ]
        if superset:
            steps += self._superset_steps()
        return self._run(steps)

    def start_superset(self) -> list[str]:
        """Superset and its dashboards on a stack that is up; returns the problems, as ``up`` does."""
        return self._run(self._superset_steps())

    def _superset_steps(self) -> list[tuple[str, Callable[[], object]]]:
        return [
            (f"superset on {self.cfg.superset_url}", self._start_superset),
            ("superset dashboards (dashboards/)", self._import_dashboards),
        ]

    def _run(self, steps: list[tuple[str, Callable[[], object]]]) -> list[str]:
        self.problems = []
        for i, (label, fn) in enumerate(steps, 1):
            self._step(i, len(steps), label, fn)
        return list(self.problems)

    def down(self) -> None:
        for component in reversed(self.components):
            stopped = component.stop()
            self.progress(f"{component.name}: {'stopped' if stopped else 'not running'}")

    def status(self) -> list[ComponentStatus]:
        rows = []
        for c in self.components:
            pid = c.pid()
            if pid is None:
                state = "stopped"
                if c is self.superset and self.superset_failure_file.exists():
                    state = f"failed to start: {self.superset_failure_file.read_text().strip()}"
            elif c.is_running():
                state = "running"
            else:
                state = "starting/unresponsive"
            rows.append(ComponentStatus(c.name, c.port, pid, state, str(c.log_file)))
        return rows
