"""Run a command and record the peak memory of every process it starts, daemons included.

    .venv/bin/python -m benchmarks.memwatch [--out FILE.json] [--interval 0.25] [--root PID ...] -- COMMAND [ARG ...]

The watcher makes itself a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``), so the
processes the command daemonises (``pg_ctl`` starting the postmaster, the stack's servers
started in their own sessions) stay in its process tree and are sampled too, until the
command exits. ``--root PID`` adds servers already running (a postmaster, Prometheus) and
everything they start. Every ``--interval`` seconds it reads, for each process, from
``/proc/PID/status``:

- ``VmHWM``: the process' own peak resident set (exact, also between two samples);
  for PostgreSQL processes it includes the shared buffers they touched;
- ``RssAnon``: its private anonymous memory (the peak of the samples): what the process
  itself allocated, without shared buffers or mapped files;
- CPU seconds (user + system, the last sample).

Processes are grouped by what they are (``category``): PostgreSQL backends by role and
database, its background processes, Prometheus, promtool, the stack's Python servers, the
``dagster`` CLI runs, the source reader, the command itself. The report lists each group's
largest process and the sum over the group; ``--out`` keeps every process. The exit status
is the command's.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
KB = 1024


@dataclass
class Seen:
    pid: int
    category: str
    command: str
    first_seen: float
    last_seen: float
    hwm_kb: int = 0
    anon_peak_kb: int = 0
    cpu_seconds: float = 0.0


@dataclass
class Watch:
    command: list[str]
    started_at: str
    interval: float
    processes: dict[int, Seen] = field(default_factory=dict)
    # the largest sum of RssAnon over all processes alive at one sample
    total_anon_peak_kb: int = 0
    samples: int = 0
    wall_seconds: float = 0.0
    exit_code: int | None = None
    load_average_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_average_end: tuple[float, float, float] = (0.0, 0.0, 0.0)


def set_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def children_of(pid: int) -> list[int]:
    """Direct children, from /proc/PID/task/*/children (no psutil needed)."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def descendants(root: int) -> list[int]:
    seen, todo = [], [root]
    while todo:
        pid = todo.pop()
        for child in children_of(pid):
            if child not in seen:
                seen.append(child)
                todo.append(child)
    return seen


def status(pid: int) -> dict[str, int] | None:
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "RssAnon"):
                values[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return values


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cmdline(pid: int) -> list[str]:
    try:
        return [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if a]
    except OSError:
        return []


_BACKEND = re.compile(r"^postgres: (\S+) (\S+) (?:\d+\.\d+\.\d+\.\d+|\[local\])")


def categorise(argv: list[str]) -> str:
    """What a process is, from its command line (PostgreSQL rewrites its own title)."""
    while argv and (Path(argv[0]).name == "env" or "=" in argv[0] or argv[0].startswith("-")):
        argv = argv[1:]
    if not argv:
        return "other"
    joined = " ".join(argv)
    if joined.startswith("postgres: "):
        m = _BACKEND.match(joined)
        if m:
            return f"postgres backend {m.group(1)}@{m.group(2)}"
        if "pg_cron" in joined or "pg_cron" in joined.split(":")[1]:
            return "postgres pg_cron worker"
        name = joined.split(":", 1)[1].strip().split(" ")[0:2]
        return "postgres " + " ".join(name)
    exe = Path(argv[0]).name
    if exe in ("postgres", "pg_ctl"):
        return f"postgres {exe}"
    if exe in ("prometheus", "promtool"):
        return exe
    if "dwh_source_reader.py" in joined:
        return "source reader (file_fdw program)"
    if "psql" == exe:
        return "psql (COPY program)"
    for module, name in (("dwh_assets.local.usage_exporter", "usage exporter"),
                         ("dwh_assets.local.clerk_emulator", "clerk emulator")):
        if module in joined:
            return name
    if "dagster" in joined:
        if "asset materialize" in joined:
            return "dagster CLI run (asset materialize)"
        if "dagster-webserver" in joined or "dagster-webserver" in exe:
            return "dagster webserver"
        if "dagster-daemon" in joined:
            return "dagster daemon"
        if "api grpc" in joined:
            return "dagster code server"
        return "dagster (other)"
    if exe in ("sh", "bash", "dash"):
        return "shell"
    return exe


def watch(argv: list[str], interval: float, roots: tuple[int, ...] = ()) -> Watch:
    """Run ``argv`` and sample it, what it starts, and ``roots`` (running servers) with all theirs."""
    set_subreaper()
    w = Watch(command=argv, started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), interval=interval,
              load_average_start=os.getloadavg())
    t0 = time.monotonic()
    proc = subprocess.Popen(argv)
    stop = {"flag": False}

    def forward(signum: int, _frame: object) -> None:
        stop["flag"] = True
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    me = os.getpid()
    while True:
        now = time.monotonic() - t0
        total_anon = 0
        for pid in dict.fromkeys([*descendants(me), *roots, *(d for root in roots for d in descendants(root))]):
            st = status(pid)
            if st is None:
                continue
            seen = w.processes.get(pid)
            if seen is None:
                args = cmdline(pid)
                seen = w.processes[pid] = Seen(pid, categorise(args), " ".join(args)[:300], now, now)
            seen.last_seen = now
            seen.hwm_kb = max(seen.hwm_kb, st.get("VmHWM", 0))
            seen.anon_peak_kb = max(seen.anon_peak_kb, st.get("RssAnon", 0))
            total_anon += st.get("RssAnon", 0)
            cpu = cpu_seconds(pid)
            if cpu is not None:
                seen.cpu_seconds = cpu
        w.total_anon_peak_kb = max(w.total_anon_peak_kb, total_anon)
        w.samples += 1
        # Reap what was re-parented to us and has exited (we are its subreaper); the
        # command itself is left to Popen.
        for pid in children_of(me):
            if pid != proc.pid:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        if proc.poll() is not None:
            break
        time.sleep(interval)
    w.exit_code = proc.returncode
    w.wall_seconds = round(time.monotonic() - t0, 1)
    w.load_average_end = os.getloadavg()
    return w


def summary(w: Watch) -> list[dict]:
    groups: dict[str, list[Seen]] = {}
    for s in w.processes.values():
        groups.setdefault(s.category, []).append(s)
    rows = []
    for category, procs in sorted(groups.items(), key=lambda kv: -max(p.hwm_kb for p in kv[1])):
        biggest = max(procs, key=lambda p: p.hwm_kb)
        rows.append({
            "category": category,
            "processes": len(procs),
            "peak_rss_mb": round(biggest.hwm_kb / KB, 1),
            "peak_private_mb": round(max(p.anon_peak_kb for p in procs) / KB, 1),
            "cpu_seconds": round(sum(p.cpu_seconds for p in procs), 1),
            "longest_seconds": round(max(p.last_seen - p.first_seen for p in procs), 1),
        })
    return rows


def markdown(w: Watch) -> str:
    lines = [
        f"command: `{' '.join(w.command)}` — exit {w.exit_code}, {w.wall_seconds} s wall, {w.samples} samples "
        f"every {w.interval} s; load average {w.load_average_start[0]:.2f} at start, {w.load_average_end[0]:.2f} at end; "
        f"largest sum of private memory at one sample: {w.total_anon_peak_kb / KB:,.0f} MB",
        "",
        "| process | count | peak RSS MB (largest) | peak private MB (largest) | CPU s (sum) | longest lived s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in summary(w):
        lines.append(f"| {r['category']} | {r['processes']} | {r['peak_rss_mb']:,.1f} | {r['peak_private_mb']:,.1f} | "
                     f"{r['cpu_seconds']:,.1f} | {r['longest_seconds']:,.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memwatch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write every process' numbers as JSON")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between samples")
    parser.add_argument("--root", type=int, action="append", default=[],
                        help="also sample this running process and everything it starts (e.g. a postmaster)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    w = watch(command, args.interval, tuple(args.root))
    report = markdown(w)
    print(report, file=sys.stderr)
    if args.out:
        data = asdict(w) | {"summary": summary(w)}
        data["processes"] = list(data["processes"].values())
        args.out.write_text(json.dumps(data, indent=2) + "\n")
    return w.exit_code or 0


if __name__ == "__main__":
    sys.exit(main())
