"""B7 (the fleet axis) and B8 (a year's first load) at a tiny scale: they measure what they say.

One ``python -m benchmarks.run --only B7,B8 --scale 0.01``: B7 on two throwaway stacks of 10
and 100 instances over the same history, B8 on a stack of 100 instances and a year. Checked:
B7 replays the scheduled hour on both fleets without an error; B8's three ways of filling
``dwh.metrics`` (Prometheus serving the copy's requests, the streamed copy, COPY from a file)
all hold exactly Prometheus' samples, and the first materialization refreshed every table with
a range run planned per asset, not per partition. Timings are recorded, never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from benchmarks import b7_fleet_hour as b7
from benchmarks import b8_first_load as b8
from dwh_assets.local.config import REPO_ROOT
from dwh_assets.warehouse import catalog
from dwh_assets_tests.test_benchmarks_b6 import EXPECTED_HOUR
from dwh_assets_tests.tiers import integration_fixture

SCALE = "0.01"


@integration_fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench-b7-b8")
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--only", "B7,B8", "--scale", SCALE, "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=2400,
    )
    assert run.returncode == 0, f"benchmarks.run failed ({run.returncode}):\n{run.stderr[-4000:]}"
    return json.loads((out / "latest.json").read_text())


def test_b7_replays_the_hour_on_two_fleets_ten_times_apart(report: dict) -> None:
    b7_report = report["benchmarks"]["B7"]
    stacks = b7_report["details"]["stacks"]
    small, large = sorted(int(n) for n in stacks)
    assert large == 10 * small > 0
    assert stacks[str(small)]["history_days"] == stacks[str(large)]["history_days"] == b7.HISTORY_DAYS
    assert stacks[str(large)]["rows"]["dwh.events"] > 5 * stacks[str(small)]["rows"]["dwh.events"]
    plan = b7_report["details"]["plan"]
    assert Counter(line.split(" ", 1)[1] for line in plan) == EXPECTED_HOUR
    for runs in b7_report["details"]["runs"].values():
        for run in runs:
            assert all(s["error"] is None for s in run["steps"]), [s for s in run["steps"] if s["error"]]
            refreshes = sum(n for job, n in EXPECTED_HOUR.items() if job.startswith("refresh_"))
            assert sum(n for _, n, _ in run["logged"]) == refreshes
    for row in b7_report["rows"]:
        assert row["checksum"] == row["source_checksum"], row
    assert [g["goal"].split(" (")[0] for g in b7_report["goals"]] == [
        f"the hour at {large:,} instances within 10x of the hour at {small:,}",
        f"the hour's work at {large:,} instances under 120 s",
    ]


def test_b8_fills_the_metrics_of_a_year_exactly_three_ways(report: dict) -> None:
    b8_report = report["benchmarks"]["B8"]
    rows = {row["method"]: row for row in b8_report["rows"]}
    copies = [rows[label] for label in b8.METHODS.values()]
    samples = int(copies[1]["source_checksum"].split(":")[0])
    assert samples > 0
    for row in copies:
        assert row["rows"] == samples, row
        assert row["checksum"] == row["source_checksum"], f"{row['method']}: not Prometheus' samples"
    assert b8_report["details"]["history_days"] == b8.HISTORY_DAYS


def test_b8_first_materialization_refreshes_everything_with_a_range_run_planned_per_asset(report: dict) -> None:
    b8_report = report["benchmarks"]["B8"]
    first = b8_report["details"]["first_materialization"]
    refreshed = {table for table, _, _ in first["refreshes"]}
    assert {s.name for s in catalog.CATALOG} | {m.relation for m in catalog.MARTS} <= refreshed
    partitioned = sum(1 for s in catalog.CATALOG if s.kind is catalog.Kind.FACT) + len(catalog.MARTS)
    dimensions = sum(1 for s in catalog.CATALOG if s.kind is catalog.Kind.DIMENSION)
    # One planned event per asset, whatever the number of partitions (Dagster's switch, via `dwh env`).
    assert first["dagster_events"]["ASSET_MATERIALIZATION_PLANNED"] == partitioned + dimensions
    # Yet every partition of the year is materialised.
    assert first["dagster_events"]["ASSET_MATERIALIZATION"] >= partitioned * b8.HISTORY_DAYS
    assert first["connections"]["dagster"]["peak"] >= 1
    assert first["private_peak_mb"] > 0 and first["memory"]
