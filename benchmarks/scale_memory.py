"""Peak memory of the demo's data generation at several fleet sizes and history lengths.

    .venv/bin/python -m benchmarks.scale_memory [--sizes 1x60,1x365,10x60,10x365] [--out FILE.json]

For each ``SCALExDAYS`` (``DWH_SCALE`` x ``DWH_HISTORY_DAYS``), each step runs in a fresh
process and its peak is that process' own ``VmHWM`` (and, for the processes it drives,
the peak sampled every 50 ms):

- **world**: ``generator.build_world`` (what the Clerk emulator, the exporter, the
  control-plane load and the back-fill each hold);
- **control-plane load**: ``control_plane.load_control_plane`` into a throwaway cluster:
  the Python process (the world streamed through ``COPY``) and the server backend that
  generates the events (``EVENTS_PER_SCALE`` per scale unit, in chunks);
- **back-fill**: ``prometheus_backfill.backfill`` into a temporary data directory: the
  Python process writing OpenMetrics and the largest ``promtool`` it runs.

Prints a table (and writes every number with ``--out``). Nothing here is a pass/fail test:
``benchmarks/README.md`` says what "flat" means and what was measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


def _hwm(pid: int | str = "self") -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler:
    """Peak VmHWM / private memory of some processes (and their children), every 50 ms."""

    def __init__(self, pids: list[int], children_of: int | None = None):
        self.pids = pids
        self.children_of = children_of
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.05):
            for pid in self.pids:
                self._note("server backend", pid)
            if self.children_of is not None:
                try:
                    for child in psutil.Process(self.children_of).children(recursive=True):
                        self._note(child.name(), child.pid)
                except psutil.Error:
                    pass

    def _note(self, name: str, pid: int) -> None:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        values = {k: int(v.split()[0]) * 1024 for k, _, v in (line.partition(":") for line in text.splitlines())
                  if k in ("VmHWM", "RssAnon")}
        self.peaks[f"{name} peak RSS"] = max(self.peaks.get(f"{name} peak RSS", 0), values.get("VmHWM", 0))
        self.peaks[f"{name} peak private"] = max(self.peaks.get(f"{name} peak private", 0), values.get("RssAnon", 0))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ----- the steps, each in a child process (python -m benchmarks.scale_memory --step ...) -------------


def step_world(scale: float, days: int, anchor: str) -> dict:
    from dwh_assets.local.generator import build_world

    base = _hwm()
    t0 = time.perf_counter()
    world = build_world(42, scale, dt.date.fromisoformat(anchor), days)
    return {"seconds": time.perf_counter() - t0, "peak_rss": _hwm(), "base_rss": base,
            "instances": len(world.instances), "users": len(world.users)}


def step_control_plane(scale: float, days: int, anchor: str, dsn: str) -> dict:
    import psycopg

    from dwh_assets.local.control_plane import load_control_plane
    from dwh_assets.local.generator import build_world

    base = _hwm()
    t0 = time.perf_counter()
    world = build_world(42, scale, dt.date.fromisoformat(anchor), days)
    with psycopg.connect(dsn) as conn:
        with Sampler([conn.info.backend_pid]) as sampler:
            counts = load_control_plane(conn, world)
    return {"seconds": time.perf_counter() - t0, "peak_rss": _hwm(), "base_rss": base, "rows": counts,
            **sampler.peaks}


def step_backfill(scale: float, days: int, anchor: str, data_dir: str) -> dict:
    from dwh_assets.local.generator import build_world
    from dwh_assets.local.prometheus_backfill import backfill

    base = _hwm()
    world = build_world(42, scale, dt.date.fromisoformat(anchor), days)
    with Sampler([], children_of=os.getpid()) as sampler:
        report = backfill(world, Path(data_dir))
    return {"seconds": report.seconds, "peak_rss": _hwm(), "base_rss": base, "samples": report.samples,
            "blocks": report.blocks, "block_seconds": report.block_seconds, **sampler.peaks}


STEPS = {"world": step_world, "control_plane": step_control_plane, "backfill": step_backfill}


def run_step(name: str, **kwargs: object) -> dict:
    argv = [sys.executable, "-m", "benchmarks.scale_memory", "--step", name, json.dumps(kwargs)]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} {kwargs} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----- the driver ------------------------------------------------------------------------------------


def measure(sizes: list[tuple[float, int]], progress=print) -> list[dict]:
    from dwh_assets.local.config import CONTROL_PLANE_DB, DEFAULT_PORTS, free_port, load_config
    from dwh_assets.local.postgres import Postgres, chown_to_server

    anchor = dt.datetime.now(dt.timezone.utc).date().isoformat()
    home = Path(tempfile.mkdtemp(prefix="dwh-scale-mem-", dir="/tmp"))
    os.chmod(home, 0o755)
    saved = dict(os.environ)
    os.environ.update({"DWH_HOME": str(home), **{f"DWH_{n.upper()}_PORT": str(free_port()) for n in DEFAULT_PORTS}})
    cfg = load_config(create=True)
    postgres = Postgres(cfg)
    results = []
    try:
        postgres.start()
        postgres.provision()
        dsn = cfg.superuser_dsn(CONTROL_PLANE_DB)
        for scale, days in sizes:
            row: dict = {"scale": scale, "history_days": days}
            progress(f"{scale:g} x {days} days: world ...")
            row["world"] = run_step("world", scale=scale, days=days, anchor=anchor)
            progress(f"{scale:g} x {days} days: control-plane load ...")
            row["control_plane"] = run_step("control_plane", scale=scale, days=days, anchor=anchor, dsn=dsn)
            data_dir = home / f"prom-{scale:g}-{days}" / "data"
            data_dir.parent.mkdir()
            progress(f"{scale:g} x {days} days: back-fill ...")
            row["backfill"] = run_step("backfill", scale=scale, days=days, anchor=anchor, data_dir=str(data_dir))
            shutil.rmtree(data_dir.parent, ignore_errors=True)
            results.append(row)
            progress(table([row]).splitlines()[-1])
    finally:
        postgres.stop()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(home, ignore_errors=True)
    return results


def _mb(value: int | None) -> str:
    return "-" if not value else f"{value / MB:,.0f}"


def table(results: list[dict]) -> str:
    lines = [
        "| fleet x history | world: build peak RSS MB (s) | control-plane load: Python peak RSS MB | "
        "event-generating backend peak private MB | back-fill: Python peak RSS MB | largest promtool peak RSS MB "
        "(private) | samples | back-fill s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        w, c, b = r["world"], r["control_plane"], r["backfill"]
        lines.append(
            f"| {w['instances']:,} instances x {r['history_days']} days | {_mb(w['peak_rss'])} ({w['seconds']:.1f}) | "
            f"{_mb(c['peak_rss'])} | {_mb(c.get('server backend peak private'))} | {_mb(b['peak_rss'])} | "
            f"{_mb(b.get('promtool peak RSS'))} ({_mb(b.get('promtool peak private'))}) | {b['samples']:,} | {b['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1x60,1x365,10x60,10x365", help="SCALExDAYS, comma-separated")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("kwargs", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        print(json.dumps(STEPS[args.step](**json.loads(args.kwargs)), default=str))
        return 0
    sizes = [(float(s.split("x")[0]), int(s.split("x")[1])) for s in args.sizes.split(",")]
    started = time.time()
    load = os.getloadavg()
    results = measure(sizes, progress=lambda line: print(line, file=sys.stderr, flush=True))
    out = table(results)
    print(out)
    if args.out:
        args.out.write_text(json.dumps({"results": results, "load_average_start": load,
                                        "load_average_end": os.getloadavg(),
                                        "wall_seconds": round(time.time() - started, 1)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
