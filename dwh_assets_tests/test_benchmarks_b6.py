"""B6 (the steady-state hour) at a tiny scale: the hour it replays is the schedule's, and it ran right.

The integration test runs ``python -m benchmarks.run --only B6 --scale 0.01`` (two
throwaway stacks of 10 instances, 60 and 365 days of history) and checks what was
measured: the hour is exactly the pg_cron jobs the default schedules start between 12:00
and 13:00 UTC, every job and mart refresh succeeded with one refresh_log row each, every
other check passed, both warehouses hold the same fleet and the longer one really holds a year.
Timings are recorded by the harness, never asserted. The schedule arithmetic is tested
without a server.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections import Counter

import pytest

from benchmarks import b6_steady_hour as b6
from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.defs.checks import refresh_checks
from dwh_assets.local.config import REPO_ROOT
from dwh_assets_tests.tiers import integration_fixture

SCALE = "0.01"
THURSDAY = dt.date(2026, 12, 3)
SUNDAY = dt.date(2026, 12, 6)


@pytest.mark.parametrize("schedule, hour, day, minutes", [
    ("*/15 * * * *", 12, THURSDAY, [0, 15, 30, 45]),
    ("*/10 * * * *", 0, THURSDAY, [0, 10, 20, 30, 40, 50]),
    ("5 * * * *", 12, THURSDAY, [5]),
    ("30 3 * * *", 12, THURSDAY, []),
    ("30 3 * * *", 3, THURSDAY, [30]),
    ("1-10/3 12 * * *", 12, THURSDAY, [1, 4, 7, 10]),
    ("0,45 9-17 * * *", 12, THURSDAY, [0, 45]),
    ("0 12 * * 0", 12, THURSDAY, []),
    ("0 12 * * 0", 12, SUNDAY, [0]),
    ("0 12 * * 7", 12, SUNDAY, [0]),
    ("0 12 3 * 1", 12, THURSDAY, [0]),      # day of month or day of week, when both are restricted
    ("0 12 4 * 4", 12, THURSDAY, [0]),
    ("0 12 4 * 1", 12, THURSDAY, []),
    ("0 12 * 11 *", 12, THURSDAY, []),
])
def test_runs_in_hour_follows_cron(schedule, hour, day, minutes):
    assert b6.runs_in_hour(schedule, day, hour) == minutes


def test_runs_in_hour_refuses_what_is_not_a_schedule():
    with pytest.raises(b6.BenchError, match="five-field"):
        b6.runs_in_hour("*/5 * * *", THURSDAY, 12)


# The default schedules (catalog): between 12:00 and 13:00 UTC.
EXPECTED_HOUR = Counter({
    "refresh_users": 4, "refresh_organizations": 4, "refresh_organization_memberships": 4,
    "refresh_instances": 6, "refresh_instance_state": 6, "refresh_events": 6,
    "refresh_metrics": 1, "partman_maintenance": 1,
    # Each mart's job refreshes the days the copies queued, every 5 minutes from minute 2.
    "refresh_mart_org_daily_usage": 12, "refresh_mart_daily_signups": 12, "refresh_mart_instance_state_daily": 12,
})


@integration_fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench-b6")
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--only", "B6", "--scale", SCALE, "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200,
    )
    assert run.returncode == 0, f"benchmarks.run failed ({run.returncode}):\n{run.stderr[-4000:]}"
    return json.loads((out / "latest.json").read_text())


def test_b6_replays_the_scheduled_hour(report: dict) -> None:
    b6_report = report["benchmarks"]["B6"]
    plan = b6_report["details"]["plan"]
    assert Counter(line.split(" ", 1)[1] for line in plan) == EXPECTED_HOUR
    minutes = [int(line.split(" ", 1)[0]) for line in plan]
    assert minutes == sorted(minutes)
    runs = b6_report["details"]["runs"]
    for days in ("60", "365"):
        assert len(runs[days]) == report["repeat"]
        for run in runs[days]:
            steps = [s for s in run["steps"] if s["kind"] != "check"]
            assert [f"{s['minute']:02d} {s['step']}" for s in steps] == plan
            assert all(s["error"] is None for s in run["steps"]), [s for s in run["steps"] if s["error"]]
            checks = {s["step"]: s["passed"] for s in run["steps"] if s["kind"] == "check"}
            # Every copy is refreshed in the hour, so each of its checks ran.
            assert {f"check {c.asset.to_user_string()} {c.name}" for spec in catalog.CATALOG
                    for c in refresh_checks(spec)} <= set(checks)
            # Ten instances over a year leave days without an instance alive, which the
            # metrics completeness check rightly flags; every other check must pass.
            checks.pop("check dwh/metrics samples_complete", None)
            assert all(checks.values()), [name for name, passed in checks.items() if not passed]
            logged = Counter({table: n for table, n, _ in run["logged"]})
            refreshes = sum(n for job, n in EXPECTED_HOUR.items() if job.startswith("refresh_"))
            assert sum(logged.values()) == refreshes
            assert logged["events"] == EXPECTED_HOUR["refresh_events"]
            assert logged["mart.org_daily_usage"] == EXPECTED_HOUR["refresh_mart_org_daily_usage"]


def test_b6_compares_one_fleet_with_two_histories(report: dict) -> None:
    b6_report = report["benchmarks"]["B6"]
    stacks = b6_report["details"]["stacks"]
    assert stacks["60"]["scale"] == stacks["365"]["scale"] == float(SCALE)
    # A daily partition per day of history (and a few ahead): the long warehouse holds a year.
    assert stacks["365"]["partitions"]["dwh.metrics"] >= 365 > stacks["60"]["partitions"]["dwh.metrics"] >= 60
    assert stacks["365"]["rows"]["dwh.metrics"] > 3 * stacks["60"]["rows"]["dwh.metrics"] > 0
    # The same events per alive instance-day in both control planes.
    rates = [stacks[d]["events"] / stacks[d]["instance_days"] for d in ("60", "365")]
    assert rates[1] == pytest.approx(rates[0], rel=0.01)
    assert stacks["365"]["instance_days"] > 3 * stacks["60"]["instance_days"]
    hours = [row for row in b6_report["rows"] if row["method"] == "the whole hour"]
    assert [row["case"] for row in hours] == ["60 days of history", "365 days of history"]
    for row in b6_report["rows"]:
        assert row["checksum"] == row["source_checksum"], row
    # The daily reconciliation, measured next to the hour: every fact, every kept day, none differing.
    reconciled = {row["case"]: row for row in b6_report["rows"] if row["method"] == "the daily reconciliation"}
    assert set(reconciled) == {"60 days of history", "365 days of history"}
    for days in ("60", "365"):
        for run in b6_report["details"]["reconciliations"][days]:
            assert {f["table_name"] for f in run["facts"]} == {s.name for s in catalog.PRODUCT.reconciled()}
            assert all(f["error"] is None and f["differing"] == 0 for f in run["facts"]), run["facts"]
    compared = {days: {f["table_name"]: f["days_compared"] for f in b6_report["details"]["reconciliations"][days][0]["facts"]}
                for days in ("60", "365")}
    assert compared["365"]["events"] > 5 * compared["60"]["events"] >= 5 * 60
    assert [goal["goal"] for goal in b6_report["goals"]] == ["the hour at 365 days within 1.3x of the hour at 60 days"]
