"""Background processes of the local stack: start detached, find again by pid file, stop.

Each component that is a plain long-running program (Clerk emulator, usage exporter,
Prometheus, Dagster webserver and daemon) is a ``ManagedProcess``: its pid lives in
``<home>/run/<name>.pid``, its output goes to ``<home>/logs/<name>.log``, and it counts
as running only while that pid is alive *and* its port answers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dwh_assets.warehouse.errors import DwhError


class StackError(DwhError):
    """A stack component failed to start or stop; the message says what to do."""


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@dataclass
class ManagedProcess:
    name: str
    argv: Sequence[str]
    # None for a process that serves no port (dagster-daemon): then only its pid counts.
    port: int | None
    pid_file: Path
    log_file: Path
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    start_timeout: float = 60.0
    # Extra readiness check beyond "port accepts connections" (e.g. an HTTP probe).
    ready: Callable[[], bool] | None = None

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def answers(self) -> bool:
        return self.port is None or port_open(self.port)

    def is_running(self) -> bool:
        return self.pid() is not None and self.answers()

    def start(self) -> bool:
        """Start unless already running; returns True when it started something."""
        if self.is_running():
            return False
        if self.pid() is not None:
            # Alive but not answering: a previous start still booting, or wedged.
            if wait_until(self.answers, 15):
                return False
            self.stop()
        if self.port is not None and port_open(self.port):
            raise StackError(
                f"{self.name}: port {self.port} is already in use by another program; "
                "stop it or choose another port with its DWH_*_PORT variable (README, 'The local demo stack')."
            )
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))

        def up() -> bool:
            if proc.poll() is not None:
                raise StackError(
                    f"{self.name} exited with code {proc.returncode} while starting; "
                    f"last lines of {self.log_file}:\n{tail(self.log_file)}"
                )
            return self.answers() and (self.ready is None or self.ready())

        if not wait_until(up, self.start_timeout, interval=0.25):
            raise StackError(
                f"{self.name} was not ready (port {self.port}) within {self.start_timeout:.0f}s; "
                f"last lines of {self.log_file}:\n{tail(self.log_file)}"
            )
        return True

    def stop(self, timeout: float = 20.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        # The process leads its own session: signal the group so children stop too.
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not wait_until(lambda: not pid_alive(pid), timeout):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_until(lambda: not pid_alive(pid), 5)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        self.pid_file.unlink(missing_ok=True)
        return True
