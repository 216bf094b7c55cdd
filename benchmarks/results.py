"""The results files: one dated report per run, and the newest figures of every benchmark.

A run writes its own report, ``<out>/<benchmarks>-<UTC start>.json`` and ``.md`` (rewritten
after every benchmark and each round of a long one, so a run that dies keeps what it
measured; such an entry is marked partial), then rebuilds
``latest.json`` and ``latest.md`` from every dated report in ``<out>``: each benchmark's
entry comes from the newest report that holds it (by ``finished_at``). A run of some
benchmarks therefore updates their entries and keeps the others', the dated reports are
the history, and a reader finds the current numbers in one place.

    .venv/bin/python -m benchmarks.results [--out DIR]   # rebuild latest.* from the dated reports

``latest.json`` keeps the shape of a run's report (``command``, ``machine``, ``versions``,
``scale``, ``repeat``, ``errors`` of the newest run; ``benchmarks``), and every benchmark's
entry carries its own ``run``: the command, time, load average and report file that made it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

LATEST = "latest"
RUN_KEYS = ("command", "finished_at", "wall_seconds", "scale", "repeat", "machine", "versions")


def report_name(names: list[str], started_at: str) -> str:
    """The dated report's file stem: ``b7-b8-2026-12-06T1030``."""
    stamp = started_at[:16].replace(":", "")
    return "-".join(n.lower() for n in names) + "-" + stamp


def write_run(out: Path, stem: str, report: dict) -> str:
    """Write one run's report (json + md) and rebuild latest.*; the run's markdown."""
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_run(report)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text(markdown)
    rebuild_latest(out)
    return markdown


def dated_reports(out: Path) -> list[tuple[str, dict]]:
    """Every run report in ``out`` (not latest.*), oldest first."""
    reports = []
    for path in sorted(out.glob("*.json")):
        if path.stem == LATEST:
            continue
        report = json.loads(path.read_text())
        if isinstance(report, dict) and "benchmarks" in report and "finished_at" in report:
            reports.append((path.name, report))
    return sorted(reports, key=lambda item: item[1]["finished_at"])


def merge(reports: list[tuple[str, dict]]) -> dict:
    """latest.json: the newest run's header, each benchmark from the newest report holding it."""
    if not reports:
        return {"benchmarks": {}, "errors": {}}
    newest_file, newest = reports[-1]
    latest = {key: newest.get(key) for key in (*RUN_KEYS, "complete")} | {"errors": newest.get("errors", {})}
    latest["newest_report"] = newest_file
    benchmarks: dict[str, dict] = {}
    for file, report in reports:
        for name, entry in report["benchmarks"].items():
            run = {key: report.get(key) for key in RUN_KEYS} | {"report": file}
            benchmarks[name] = dict(entry) | {"run": run}
    latest["benchmarks"] = dict(sorted(benchmarks.items(), key=lambda kv: _order(kv[0])))
    return latest


def _order(name: str) -> tuple[int, str]:
    digits = "".join(c for c in name if c.isdigit())
    return (int(digits) if digits else 0, name)


def rebuild_latest(out: Path) -> dict:
    latest = merge(dated_reports(out))
    (out / f"{LATEST}.json").write_text(json.dumps(latest, indent=2, default=str) + "\n")
    (out / f"{LATEST}.md").write_text(render_latest(latest))
    return latest


# ----- rendering ---------------------------------------------------------------------------


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def table_lines(rows: list[dict]) -> list[str]:
    lines = [
        "| case | method | rows | seconds | rows/s | ratio | client peak RSS MB (base) | server backend peak USS MB"
        " | server-run programs peak RSS MB | copy = source |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f} of {r['ratio_to']}"
        note = f" ({r['note']})" if r.get("note") else ""
        programs = r.get("server_programs_peak_mb")
        lines.append(
            f"| {r['case']} | {r['method']}{note} | {r['rows']:,} | {r['seconds']:.2f} | {r['rows_per_s']:,.0f} | "
            f"{ratio} | {_mb(r['client_peak_mb'])} ({_mb(r['client_base_mb'])}) | {_mb(r['server_peak_mb'])} | "
            f"{_mb(programs) if programs else '-'} | {'yes' if r['equal'] else 'NO'} |"
        )
    return lines


def goal_lines(goals: list[dict]) -> list[str]:
    lines = ["| goal | measured | met |", "| --- | --- | --- |"]
    for g in goals:
        note = f" — {g['note']}" if g.get("note") else ""
        lines.append(f"| {g['goal']} | {g['measured']}{note} | {'met' if g['met'] else 'missed'} |")
    return lines


def _load(entry: dict) -> str:
    load = entry.get("load_average")
    if not load:
        return ""
    return f"; load average {load['start'][0]:.2f} at start, {load['end'][0]:.2f} at end"


def _section(name: str, entry: dict, run_line: str) -> list[str]:
    partial = entry.get("details", {}).get("partial")
    if partial:
        run_line += f" **Partial: {partial}** (the run stopped or was still running; goals not judged)."
    return [f"## {name}: {entry['title']}", "", run_line, "",
            *table_lines(entry["rows"]), "", *goal_lines(entry["goals"]), ""]


def _run_line(run: dict) -> str:
    return (f"`{run['command']}` (scale {run['scale']}, best of {run['repeat']}; finished {run['finished_at']}, "
            f"{run['wall_seconds']} s wall)")


def _environment_lines(run: dict) -> list[str]:
    m, v = run["machine"], run["versions"]
    return [f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GiB RAM, {m['os']}", "",
            "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()), ""]


def render_run(report: dict) -> str:
    out = ["# Benchmark results", "", f"Command: {_run_line(report)}", "", *_environment_lines(report)]
    for name, entry in report["benchmarks"].items():
        out += _section(name, entry, f"Measured in this run{_load(entry)}.")
    for name, error in report.get("errors", {}).items():
        out += [f"## {name}: FAILED", "", error, ""]
    if not report.get("complete", True):
        out += ["(run still in progress or interrupted: not every selected benchmark has run)", ""]
    return "\n".join(out)


def render_latest(latest: dict) -> str:
    out = ["# Benchmark results: the newest figures of every benchmark", "",
           "Rebuilt from the dated reports beside this file (`.venv/bin/python -m benchmarks.results`); "
           "each section names the run that measured it.", ""]
    for name, entry in latest["benchmarks"].items():
        run = entry["run"]
        out += _section(name, entry, f"Run: {_run_line(run)}{_load(entry)}; report `{run['report']}`")
    runs = {entry["run"]["report"]: entry["run"] for entry in latest["benchmarks"].values()}
    if runs:
        out += ["## The runs", ""]
        for file, run in sorted(runs.items(), key=lambda kv: kv[1]["finished_at"]):
            out += [f"`{file}`: {_run_line(run)}", "", *_environment_lines(run)]
    for name, error in latest.get("errors", {}).items():
        out += [f"{name} failed in the newest run ({latest['newest_report']}): {error}", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.results", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="directory of the dated reports and latest.*")
    args = parser.parse_args(argv)
    latest = rebuild_latest(args.out)
    for name, entry in latest["benchmarks"].items():
        print(f"{name}: {entry['run']['report']} ({entry['run']['finished_at']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
