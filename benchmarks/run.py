"""Run the benchmarks side by side on one throwaway stack; print and write the results.

    .venv/bin/python -m benchmarks.run [--only B1,B4] [--scale 1.0] [--repeat 1]

``--scale 1.0`` is the reference size (B1: 1,000,000 events and a 100,000-row dimension;
B4: every series of the demo world, scale 1.0). Results go to
``benchmarks/results/latest.json`` and ``latest.md`` (``--out`` elsewhere), with the
machine, the versions and the exact command, rewritten after every benchmark. Exit
status 1 when a method's copy differs from its source or a benchmark failed (the others
still run); timings never fail a run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import shlex
import signal
import sys
import time
from pathlib import Path

from benchmarks.harness import BenchContext, BenchError, BenchResult, Goal, Row, bench_stack, machine, say, versions

# One module per benchmark.
BENCHMARKS = {
    "B1": "benchmarks.b1_refresh",
    "B2": "benchmarks.b2_backfill",
    "B3": "benchmarks.b3_sensor",
    "B4": "benchmarks.b4_prometheus",
    "B5": "benchmarks.b5_dagster_overhead",
    "B6": "benchmarks.b6_steady_hour",
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
    homes = [Path(h) for h in (args.b6_homes or "").split(",") if h]
    if args.b6_homes is not None and len(homes) != 2:
        parser.error("--b6-homes takes two directories: the 60-day stack, then the 365-day stack")
    args.b6_homes = homes
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
        ctx = BenchContext(stack=stack, scale=args.scale, repeat=args.repeat,
                           b6_homes=dict(zip((60, 365), args.b6_homes)))
        environment = {"machine": machine(), "versions": versions(ctx)}
        for name, module in modules.items():
            say(f"== {name}: {module.TITLE}")
            try:
                results[name] = module.run(ctx)
            except Exception as e:  # one broken benchmark must not lose the others' results
                errors[name] = f"{type(e).__name__}: {e}"
                say(f"{name} failed: {errors[name]}")
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
    """Write latest.json and latest.md for what has run so far; the markdown."""
    report = {
        "command": command,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(time.monotonic() - started, 1),
        "scale": args.scale,
        "repeat": args.repeat,
        "complete": len(results) + len(errors) == len(modules),
        **environment,
        "benchmarks": {
            name: {
                "title": modules[name].TITLE,
                "rows": [row.as_dict() for row in result.rows],
                "goals": [goal.__dict__ for goal in result.goals],
                "details": result.details,
            }
            for name, result in results.items()
        },
        "errors": errors,
    }
    markdown = render_markdown(report, results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "latest.md").write_text(markdown)
    return markdown


# ----- rendering ---------------------------------------------------------------------------


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def table_lines(rows: list[Row]) -> list[str]:
    lines = [
        "| case | method | rows | seconds | rows/s | ratio | client peak RSS MB (base) | server backend peak USS MB"
        " | server-run programs peak RSS MB | copy = source |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f} of {r.ratio_to}"
        note = f" ({r.note})" if r.note else ""
        lines.append(
            f"| {r.case} | {r.method}{note} | {r.rows:,} | {r.seconds:.2f} | {r.rows_per_s:,.0f} | {ratio} | "
            f"{_mb(r.client_peak_mb)} ({_mb(r.client_base_mb)}) | {_mb(r.server_peak_mb)} | "
            f"{_mb(r.server_programs_peak_mb) if r.server_programs_peak_mb else '-'} | {'yes' if r.equal else 'NO'} |"
        )
    return lines


def goal_lines(goals: list[Goal]) -> list[str]:
    lines = ["| goal | measured | met |", "| --- | --- | --- |"]
    for g in goals:
        note = f" — {g.note}" if g.note else ""
        lines.append(f"| {g.goal} | {g.measured}{note} | {'met' if g.met else 'missed'} |")
    return lines


def render_markdown(report: dict, results: dict[str, BenchResult]) -> str:
    m, v = report["machine"], report["versions"]
    out = [
        "# Benchmark results",
        "",
        f"Command: `{report['command']}` (scale {report['scale']}, best of {report['repeat']}; "
        f"finished {report['finished_at']}, {report['wall_seconds']} s wall)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GiB RAM, {m['os']}",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
    ]
    for name, result in results.items():
        out += [f"## {name}: {report['benchmarks'][name]['title']}", ""]
        out += table_lines(result.rows) + [""]
        out += goal_lines(result.goals) + [""]
    for name, error in report["errors"].items():
        out += [f"## {name}: FAILED", "", error, ""]
    if not report["complete"]:
        out += ["(run still in progress or interrupted: not every selected benchmark has run)", ""]
    return "\n".join(out)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        say(f"benchmark failed: {e}")
        sys.exit(2)
