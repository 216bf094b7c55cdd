"""B2 (backfill) and B3 (sensor tick) end to end at a tiny scale: what they measure is right.

Runs ``python -m benchmarks.run --only B2,B3 --scale 0.02`` (its own throwaway stack) and
checks the results: B2's two methods each left the events window equal to the control
plane, from one run and from one run per partition; B3's ticks read exactly the 100 new
pg_cron runs at both history sizes. Timings are recorded by the harness, never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import b2_backfill, b3_sensor
from dwh_assets.local.config import REPO_ROOT
from dwh_assets_tests.tiers import integration_fixture

SCALE = "0.02"


@integration_fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench-b2-b3")
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--only", "B2,B3", "--scale", SCALE, "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, f"benchmarks.run failed ({run.returncode}):\n{run.stderr[-4000:]}"
    return json.loads((out / "latest.json").read_text())


def test_b2_both_backfills_copy_the_window_with_the_expected_runs(report: dict) -> None:
    b2 = report["benchmarks"]["B2"]
    details = b2["details"]
    partitions = details["partitions"]
    assert partitions == max(2, round(b2_backfill.FULL_DAYS * float(SCALE)))
    rows = b2["rows"]
    assert [row["method"] for row in rows] == [
        b2_backfill.METHODS["range"], b2_backfill.METHODS["each"].format(n=partitions)]
    for row in rows:
        assert row["rows"] == details["events_in_window"] > 0, row
        assert row["checksum"] == row["source_checksum"], f"{row['method']}: {row['checksum']}"
    assert details["range_runs"]["runs"] == 1
    assert details["each_runs"]["runs"] == partitions
    assert [goal["goal"] for goal in b2["goals"]] == ["single-run range >= 10x faster than one run per partition"]


def test_b3_ticks_read_exactly_the_new_runs_at_both_sizes(report: dict) -> None:
    b3 = report["benchmarks"]["B3"]
    rows = b3["rows"]
    assert len(rows) == 2
    for row in rows:
        assert row["rows"] == b3_sensor.NEW_RUNS, row
        assert row["checksum"] == row["source_checksum"], f"{row['case']}: {row['checksum']}"
        assert row["checksum"].startswith(f"{b3_sensor.NEW_RUNS} runs ") and row["checksum"].endswith(", 0 open")
        assert len(row["runs"]) == b3_sensor.TICKS
    small, large = (case["history_rows"] for case in b3["details"]["cases"].values())
    assert 0 < small < large
    for case in b3["details"]["cases"].values():
        assert case["committed_new_runs"] > 0
        assert "job_run_details_pkey" in "\n".join(case["explain"]["new_runs"])
