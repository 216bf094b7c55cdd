"""The benchmark runner's reports: a long benchmark's finished rounds are written as it goes,
marked partial, and latest.* keep the newest figure of every benchmark (no servers)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks import results as results_files
from benchmarks.harness import BenchResult, Goal, Row
from benchmarks.run import write_report


class Module:
    def __init__(self, title: str) -> None:
        self.TITLE = title


def row(benchmark: str, seconds: float) -> Row:
    return Row(benchmark=benchmark, case="case", method="method", rows=1000, seconds=seconds, client_peak_mb=1.0,
               client_base_mb=1.0, server_peak_mb=None, server_programs_peak_mb=None, checksum="1:2",
               source_checksum="1:2")


def report(out: Path, names: list[str], started_at: str, results: dict[str, BenchResult]) -> dict:
    args = argparse.Namespace(only=names, out=out, scale=1.0, repeat=3)
    environment = {"machine": {"cpu": "cpu", "cores": 2, "ram_gb": 24, "os": "linux"}, "versions": {"postgres": "15"},
                   "load_average": {}, "started_at": started_at}
    modules = {name: Module(f"{name} title") for name in names}
    write_report(args, "python -m benchmarks.run", time.monotonic(), environment, modules, results, {})
    return json.loads((out / f"{results_files.report_name(names, started_at)}.json").read_text())


def test_a_partial_benchmark_is_written_marked_and_replaced_by_its_finished_result(tmp_path):
    done = BenchResult(rows=[row("B1", 2.0)], goals=[Goal("B1", "goal", "1x", True)])
    report(tmp_path, ["B1"], "2026-12-01T10:00:00+00:00", {"B1": done})

    partial = BenchResult(rows=[row("B8", 5.0)], details={"partial": "1 of 3 rounds"})
    written = report(tmp_path, ["B8"], "2026-12-02T10:00:00+00:00", {"B8": partial})
    assert written["complete"] is False
    latest = json.loads((tmp_path / "latest.json").read_text())
    assert set(latest["benchmarks"]) == {"B1", "B8"}, "an older run's benchmark is kept beside the newer one"
    assert latest["benchmarks"]["B8"]["details"]["partial"] == "1 of 3 rounds"
    markdown = (tmp_path / "latest.md").read_text()
    assert "**Partial: 1 of 3 rounds**" in markdown
    assert markdown.count("Partial:") == 1, "the finished benchmark is not called partial"

    # The same run, finished: its dated report is rewritten, no longer partial.
    finished = BenchResult(rows=[row("B8", 4.0)], goals=[Goal("B8", "goal", "1x", True)])
    written = report(tmp_path, ["B8"], "2026-12-02T10:00:00+00:00", {"B8": finished})
    assert written["complete"] is True
    latest = json.loads((tmp_path / "latest.json").read_text())
    assert "partial" not in latest["benchmarks"]["B8"]["details"]
    assert latest["benchmarks"]["B8"]["rows"][0]["seconds"] == 4.0
    assert "Partial" not in (tmp_path / "latest.md").read_text()
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["b1-2026-12-01T1000.json", "b8-2026-12-02T1000.json",
                                                                "latest.json"]
