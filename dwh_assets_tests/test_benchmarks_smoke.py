"""The benchmark harness end to end at a tiny scale: results are written, every copy is right.

Runs ``python -m benchmarks.run --scale 0.01`` (its own throwaway stack, 10,000 events,
1,000 instances, 10 instances' Prometheus series) and checks the results files: every
benchmark, case and method is present, and every method's target holds exactly the
source's rows (count and checksum). Timings are recorded by the harness, never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import b1_refresh, b4_prometheus
from dwh_assets.local.config import REPO_ROOT
from dwh_assets_tests.tiers import integration_fixture

SCALE = "0.01"


@integration_fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench-results")
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--only", "B1,B4", "--scale", SCALE, "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, f"benchmarks.run failed ({run.returncode}):\n{run.stderr[-4000:]}"
    report = json.loads((out / "latest.json").read_text())
    return report, (out / "latest.md").read_text()


def rows_of(report: dict, name: str) -> list[dict]:
    return report["benchmarks"][name]["rows"]


def test_results_describe_the_run(results: tuple[dict, str]) -> None:
    report, markdown = results
    assert report["command"].startswith(".venv/bin/python -m benchmarks.run ")
    assert f"--scale {SCALE}" in report["command"]
    assert report["machine"]["cores"] >= 1 and report["machine"]["ram_gb"] > 0
    for component in ("postgres", "pg_cron", "pg_partman", "dagster", "python"):
        assert report["versions"][component], component
    assert report["command"] in markdown
    assert set(report["benchmarks"]) == {"B1", "B4"}


def test_b1_has_every_case_and_method_and_equal_copies(results: tuple[dict, str]) -> None:
    report, markdown = results
    rows = rows_of(report, "B1")
    cases = {row["case"] for row in rows}
    assert cases == {"events, 1/10 window", "events, whole window", "instances dimension"}
    for case in cases:
        methods = {row["method"] for row in rows if row["case"] == case}
        assert set(b1_refresh.METHODS.values()) <= methods, case
    sweep = [row for row in rows if "fetch_size" in row["method"]]
    assert sweep, "the fetch_size sweep is missing"
    for row in rows:
        assert row["rows"] > 0, row
        count = int(row["source_checksum"].split(":")[0])
        assert row["rows"] == count, row
        assert row["checksum"] == row["source_checksum"], f"{row['case']} / {row['method']}: copy differs from source"
        assert row["equal"] is True
        assert f"| {row['case']} | {row['method']}" in markdown
    whole = [row for row in rows if row["case"] == "events, whole window"]
    small = [row for row in rows if row["case"] == "events, 1/10 window"]
    assert 0 < small[0]["rows"] < whole[0]["rows"] == round(b1_refresh.FULL_EVENTS * float(SCALE))
    dimension = [row for row in rows if row["case"] == "instances dimension"]
    assert dimension[0]["rows"] == round(b1_refresh.FULL_DIMENSION * float(SCALE))
    goals = [goal["goal"] for goal in report["benchmarks"]["B1"]["goals"]]
    assert "(a) driving-process memory flat in row count" in goals
    assert any("(a) >= 20x (b)" in goal for goal in goals)


def test_b4_loads_the_same_samples_both_ways(results: tuple[dict, str]) -> None:
    report, _ = results
    rows = rows_of(report, "B4")
    assert {row["method"] for row in rows} == set(b4_prometheus.METHODS.values())
    counts = {row["rows"] for row in rows}
    assert len(counts) == 1 and counts.pop() > 0
    for row in rows:
        assert row["checksum"] == row["source_checksum"], f"{row['method']}: samples differ from Prometheus"
    assert [goal["goal"] for goal in report["benchmarks"]["B4"]["goals"]] == [
        "reader path faster than prometheus-api-client + pandas"
    ]
