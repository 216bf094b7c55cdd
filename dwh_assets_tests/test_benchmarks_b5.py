"""B5 (Dagster overhead) end to end at a tiny scale: both history sizes and the floor are measured.

Correctness only: the rows exist, each case ran its runs, the 365-day case really holds more
history than the 60-day one. Timings are recorded by the harness, never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dwh_assets.local.config import REPO_ROOT

pytestmark = pytest.mark.integration


def test_b5_measures_60_and_365_days_and_the_floor(tmp_path) -> None:
    run = subprocess.run([sys.executable, "-m", "benchmarks.run", "--only", "B5", "--scale", "0.01", "--repeat", "1",
                          "--out", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"benchmarks.run failed ({run.returncode}):\n{run.stderr[-4000:]}"
    b5 = json.loads((tmp_path / "latest.json").read_text())["benchmarks"]["B5"]
    cases = [row["case"] for row in b5["rows"]]
    assert any("60 days" in c for c in cases) and any("365 days" in c for c in cases) and any("floor" in c for c in cases)
    assert all(row["seconds"] > 0 and len(row["runs"]) == 1 for row in b5["rows"])
    details = b5["details"]
    assert details["history_365_days"]["events_in_table"] > details["history_60_days"]["events_in_table"] > 0
    assert len(b5["goals"]) == 3
