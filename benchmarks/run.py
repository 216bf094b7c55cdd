"""Run the benchmarks side by side on one throwaway stack; print and write the results.

    .venv/bin/python -m benchmarks.run [--only B1,B4] [--scale 1.0] [--repeat 1]

``--scale 1.0`` is the reference size (B1: 1,000,000 events and a 100,000-row dimension;
B4: every series of the demo world, scale 1.0). Results go to
``benchmarks/results/latest.json`` and ``latest.md`` (``--out`` elsewhere), with the
machine, the versions and the exact command, rewritten after every benchmark (and after each
round of a long one, marked partial). Exit
status 1 when a method's copy differs from its source or a benchmark failed (the others
still run); timings never fail a run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import shlex
import signal
import sys
import time
from pathlib import Path

from benchmarks import results as results_files
from benchmarks.harness import BenchContext, BenchError, BenchResult, bench_stack, machine, say, versions

# One module per benchmark.
BENCHMARKS = {
    "B1": "benchmarks.b1_refresh",
    "B2": "benchmarks.b2_backfill",
    "B3": "benchmarks.b3_sensor",
    "B4": "benchmarks.b4_prometheus",
    "B5": "benchmarks.b5_dagster_overhead",
    "B6": "benchmarks.b6_steady_hour",
    "B7": "benchmarks.b7_fleet_hour",
    "B8": "benchmarks.b8_first_load",
    "B9": "benchmarks.b9_relay",
}
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated benchmarks (default: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the reference sizes (default 1.0)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; the fastest is reported")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for latest.json and latest.md")
    parser.add_argument("--home", type=Path, default=None,
                        help="reuse (and keep running) the stack in this directory instead of a throwaway one")
    parser.add_argument("--b6-homes", default=None, metavar="DIR60,DIR365",
                        help="B6: reuse two running, materialised stacks of the same scale (60 and 365 days of "
                             "history, e.g. made by `dwh up`) instead of starting and filling two")
    parser.add_argument("--b7-homes", default=None, metavar="DIR1,DIR10",
                        help="B7: reuse two running, materialised stacks of the same history (1x and 10x the "
                             "fleet, e.g. made by `dwh up` at DWH_SCALE=1 and 10) instead of starting and filling two")
    parser.add_argument("--b8-home", default=None, metavar="DIR",
                        help="B8: reuse a running stack of the year at 10x the fleet (e.g. made by "
                             "`dwh up --no-materialize` at DWH_SCALE=10 DWH_HISTORY_DAYS=365); its warehouse is emptied")
    args = parser.parse_args(argv)
    chosen = {name.strip().upper() for name in args.only.split(",") if name.strip()}
    unknown = sorted(chosen - set(BENCHMARKS))
    # Always in registry order, whatever order --only lists them in.
    args.only = [name for name in BENCHMARKS if name in chosen]
    if unknown or not chosen:
        parser.error(f"unknown benchmark(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(BENCHMARKS)}")
    if not 0 < args.scale <= 10:
        parser.error("--scale must be in (0, 10]")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.reuse = {}
    for name, option, count, what in (("B6", "b6_homes", 2, "the 60-day stack, then the 365-day stack"),
                                      ("B7", "b7_homes", 2, "the 1x stack, then the 10x stack"),
                                      ("B8", "b8_home", 1, "the stack of the year")):
        value = getattr(args, option)
        homes = [Path(h) for h in (value or "").split(",") if h]
        if value is not None and len(homes) != count:
            parser.error(f"--{option.replace('_', '-')} takes {count} director{'ies' if count > 1 else 'y'}: {what}")
        if homes:
            args.reuse[name] = homes
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (and SIGINT, which a background job ignores) unwind normally: the stack stops.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "-m", "benchmarks.run", *(sys.argv[1:] if argv is None else argv)])
    modules = {name: importlib.import_module(BENCHMARKS[name]) for name in args.only}
    started = time.monotonic()
    results: dict[str, BenchResult] = {}
    errors: dict[str, str] = {}
    with bench_stack(args.scale, dagster=any(m.NEEDS_DAGSTER for m in modules.values()), home=args.home) as stack:
        ctx = BenchContext(stack=stack, scale=args.scale, repeat=args.repeat, reuse=args.reuse)
        environment = {"machine": machine(), "versions": versions(ctx), "load_average": {},
                       "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        for name, module in modules.items():
            say(f"== {name}: {module.TITLE}")
            # The machine is shared: how busy it was says how far to trust the seconds.
            load = environment["load_average"][name] = {"start": os.getloadavg()}

            def partial(result: BenchResult, progress: str, name: str = name, load: dict = load) -> None:
                result.details["partial"] = progress
                load["end"] = os.getloadavg()
                write_report(args, command, started, environment, modules, results | {name: result}, errors)

            ctx.report_partial = partial
            try:
                results[name] = module.run(ctx)
            except Exception as e:  # one broken benchmark must not lose the others' results
                errors[name] = f"{type(e).__name__}: {e}"
                say(f"{name} failed: {errors[name]}")
            load["end"] = os.getloadavg()
            # Written after every benchmark, so a long run that dies keeps what it measured.
            write_report(args, command, started, environment, modules, results, errors)
    markdown = write_report(args, command, started, environment, modules, results, errors)
    print(markdown)
    wrong = [row for result in results.values() for row in result.rows if not row.equal]
    for row in wrong:
        say(f"WRONG COPY: {row.benchmark} {row.case} {row.method}: {row.checksum} != source {row.source_checksum}")
    return 1 if wrong or errors else 0


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def write_report(args: argparse.Namespace, command: str, started: float, environment: dict, modules: dict,
                 results: dict[str, BenchResult], errors: dict[str, str]) -> str:
    """Write this run's dated report and rebuild latest.json / latest.md; the run's markdown."""
    report = {
        "command": command,
        "started_at": environment["started_at"],
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(time.monotonic() - started, 1),
        "scale": args.scale,
        "repeat": args.repeat,
        "complete": len(results) + len(errors) == len(modules)
                    and not any(result.details.get("partial") for result in results.values()),
        "machine": environment["machine"],
        "versions": environment["versions"],
        "benchmarks": {
            name: {
                "title": modules[name].TITLE,
                "load_average": environment["load_average"].get(name),
                "rows": [row.as_dict() for row in result.rows],
                "goals": [goal.__dict__ for goal in result.goals],
                "details": result.details,
            }
            for name, result in results.items()
        },
        "errors": errors,
    }
    return results_files.write_run(args.out, results_files.report_name(args.only, environment["started_at"]), report)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        say(f"benchmark failed: {e}")
        sys.exit(2)
