"""Run one benchmark method in a fresh Python process; print its time and memory as JSON.

    python -m benchmarks.child MODULE:FUNCTION '{"keyword": "arguments"}' [--preload pandas,sqlalchemy]

A fresh process per method makes "peak RSS of the driving process" mean that method's
peak, not the largest of everything run before it. ``--preload`` imports libraries before
the clock starts (a pandas user has pandas imported already). The method is called as
``FUNCTION(probe, **kwargs)`` and returns the number of rows it copied; it may hand its
database connections to ``probe.watch_backend`` so the server backend's private memory
(USS) and the programs it runs (RSS) are sampled too. The last line on stdout is the JSON report.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import threading
import time

import psutil
import psycopg

SAMPLE_SECONDS = 0.02


class Probe:
    """Samples this process' RSS and the watched server backends' USS until stopped."""

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._servers: list[psutil.Process] = []
        self.client_peak = self._me.memory_info().rss
        self.server_peak: int | None = None
        # Programs a watched backend runs (file_fdw's source reader): their summed RSS.
        self.programs_peak: int | None = None
        # CPU seconds of each watched backend and of each program they ran, last seen.
        self.cpu: dict[tuple[str, int], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch_backend(self, conn: psycopg.Connection) -> None:
        """Sample the private memory of ``conn``'s server process (needs root or its OS user)."""
        try:
            process = psutil.Process(conn.info.backend_pid)
            process.memory_full_info()
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            return
        self._servers.append(process)
        self._sample()

    def _sample(self) -> None:
        self.client_peak = max(self.client_peak, self._me.memory_info().rss)
        for process in list(self._servers):
            try:
                uss = process.memory_full_info().uss
            except (psutil.AccessDenied, psutil.NoSuchProcess):
                # Gone (its connection closed): the sampling thread may have dropped it already.
                with contextlib.suppress(ValueError):
                    self._servers.remove(process)
                continue
            self.server_peak = max(self.server_peak or 0, uss)
            self._note_cpu("server", process)
            programs = 0
            try:
                children = process.children(recursive=True)
            except (psutil.AccessDenied, psutil.NoSuchProcess):
                children = []  # a program that exits while it is being listed
            for child in children:
                try:
                    programs += child.memory_info().rss
                except (psutil.AccessDenied, psutil.NoSuchProcess):
                    pass
                self._note_cpu("programs", child)
            if programs:
                self.programs_peak = max(self.programs_peak or 0, programs)

    def _note_cpu(self, kind: str, process: psutil.Process) -> None:
        try:
            times = process.cpu_times()
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            return
        self.cpu[(kind, process.pid)] = times.user + times.system

    def cpu_seconds(self, kind: str) -> float | None:
        seen = [seconds for (k, _), seconds in self.cpu.items() if k == kind]
        return round(sum(seen), 2) if seen else None

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def high_water_mark() -> int:
    """This process image's peak RSS (VmHWM), which catches a peak between two samples.

    Not ru_maxrss: Linux carries the parent's peak across fork + exec into it.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.child")
    parser.add_argument("target", help="module:function")
    parser.add_argument("kwargs", help="keyword arguments as a JSON object")
    parser.add_argument("--preload", default="", help="comma-separated modules to import before timing")
    args = parser.parse_args(argv)
    for name in filter(None, args.preload.split(",")):
        importlib.import_module(name)
    module, _, function = args.target.partition(":")
    method = getattr(importlib.import_module(module), function)
    kwargs = json.loads(args.kwargs)
    baseline = psutil.Process().memory_info().rss
    with Probe() as probe:
        started = time.perf_counter()
        rows = method(probe, **kwargs)
        seconds = time.perf_counter() - started
    peak = max(probe.client_peak, high_water_mark())
    report = {
        "rows": int(rows),
        "seconds": seconds,
        "client_base_rss": baseline,
        "client_peak_rss": peak,
        "server_peak_uss": probe.server_peak,
        "server_programs_peak_rss": probe.programs_peak,
        # Sampled every SAMPLE_SECONDS: a program's last 20 ms may be missing.
        "server_cpu_seconds": probe.cpu_seconds("server"),
        "server_programs_cpu_seconds": probe.cpu_seconds("programs"),
    }
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
