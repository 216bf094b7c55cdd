"""Running unattended, without a server: freshness from schedules, the quality gate's SQL, the
alert sensor's bookkeeping and messages, the [alerts] configuration and its secret.

The same rules run against real servers in ``test_unattended.py`` and ``test_truthful_checks.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys

import dagster as dg
import pytest
from dagster._utils.error import serializable_error_info_from_exc_info

from dwh_assets.warehouse import alerts, catalog, freshness, quality_gate
from dwh_assets.warehouse.connect import dagster_env
from dwh_assets.warehouse.defs import CodeLocationSettings, build_definitions, check_keys
from dwh_assets.warehouse.defs.alert_sensor import root_cause
from dwh_assets.warehouse.defs.checks import FRESHNESS, freshness_evaluation
from dwh_assets.warehouse.deployment import DeploymentConfig, DeploymentError

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=UTC)

# schedule -> the longest wait between two of its ticks (pg_cron, GMT)
INTERVALS = {
    "*/10 * * * *": dt.timedelta(minutes=10),
    "*/15 * * * *": dt.timedelta(minutes=15),
    "5 * * * *": dt.timedelta(hours=1),
    "2-59/5 * * * *": dt.timedelta(minutes=5),
    "* * * * *": dt.timedelta(minutes=1),
    "30 3 * * *": dt.timedelta(days=1),
    "0 6,18 * * *": dt.timedelta(hours=12),
    "0 9-17 * * *": dt.timedelta(hours=16),        # 17:00 to 09:00 the next day
    "7,37 */2 * * *": dt.timedelta(minutes=90),    # 00:37 to 02:07
    "0 0 * * 1-5": dt.timedelta(days=7),           # restricted days: an upper bound
    "0 0 1 * *": dt.timedelta(days=31),
    "30 seconds": dt.timedelta(seconds=30),
}


@pytest.mark.parametrize(("schedule", "interval"), INTERVALS.items())
def test_the_interval_of_a_schedule_is_its_longest_wait(schedule, interval):
    assert freshness.schedule_interval(schedule) == interval


@pytest.mark.parametrize("schedule", ["@reboot", "61 * * * *", "*/0 * * * *", "1 2 3", "every minute"])
def test_a_schedule_without_a_regular_tick_has_no_interval(schedule):
    assert freshness.schedule_interval(schedule) is None


def test_every_catalog_entry_expects_two_intervals_plus_its_typical_duration():
    for entry in catalog.PRODUCT.refreshed():
        assert entry.freshness == 2 * INTERVALS[entry.schedule] + entry.typical_duration
    assert catalog.get("instances").freshness == dt.timedelta(minutes=21)
    assert catalog.get("metrics").freshness == dt.timedelta(hours=2, minutes=1)


def test_freshness_verdicts():
    spec = catalog.get("instances")  # */10, typical 1 minute: 21 minutes allowed
    job = {"schedule": "*/10 * * * *", "active": True}
    fresh = freshness_evaluation(spec, job, NOW - dt.timedelta(minutes=20), NOW)
    assert fresh[0] is True and fresh[1]["expected_within_minutes"] == 21.0
    late, meta = freshness_evaluation(spec, {**job, "active": False}, NOW - dt.timedelta(minutes=22), NOW)
    assert late is False and meta["status"].endswith("its pg_cron job is inactive")
    assert "pg_cron has not refreshed it" in freshness_evaluation(spec, job, NOW - dt.timedelta(hours=1), NOW)[1]["status"]
    assert freshness_evaluation(spec, job, None, NOW)[1]["status"].startswith("late: never refreshed")
    assert freshness_evaluation(spec, None, NOW, NOW)[1]["status"] == "late: no pg_cron job dwh:refresh_instances (run dwh migrate)"
    every_minute = freshness_evaluation(spec, {"schedule": "* * * * *", "active": True}, NOW - dt.timedelta(minutes=4), NOW)
    assert every_minute[0] is False, "the live schedule decides: 2 x 1 minute + 1 minute"


# ----- the quality gate's SQL ----------------------------------------------------------------------


def test_every_copy_has_a_gate_and_its_blocking_declared_checks_join_it():
    for spec in catalog.PRODUCT.tables:
        names = [c.name for c in quality_gate.gate_checks(spec)]
        assert names[0] == ("rows_match_source" if spec.kind is catalog.Kind.FACT else "row_count_matches_source")
        assert all(c.blocking for c in quality_gate.gate_checks(spec))
    assert [c.name for c in quality_gate.gate_checks(catalog.get("events"))] == ["rows_match_source", "key_is_unique"]
    blocking = catalog.WindowCheck("no_future_rows", "x", "SELECT count(*) AS bad FROM dwh.users", blocking=True)
    extended = dataclasses.replace(catalog.get("users"), checks=(blocking,))
    assert quality_gate.gate_checks(extended)[-1] == blocking


def test_a_gate_query_for_plpgsql_takes_positional_parameters():
    query = quality_gate.as_plpgsql(quality_gate.key_is_unique(catalog.get("events")))
    assert "%(" not in query and "$1::timestamptz - interval '1 days'" in query and "$2::timestamptz" in query
    assert quality_gate.as_plpgsql(quality_gate.rows_match_source(catalog.get("events"))).endswith("l.id = $5")
    odd = catalog.WindowCheck("odd", "x", "SELECT count(*) AS bad FROM dwh.users WHERE name = %(who)s", blocking=True)
    with pytest.raises(ValueError, match="uses %\\(who\\)s; a gate check may use only start, end"):
        quality_gate.as_plpgsql(odd)


def test_the_gate_rows_migrate_writes_are_the_checks_dagster_runs():
    rows = quality_gate.gate_rows(catalog.PRODUCT.tables)
    assert {(copy, name) for copy, name, _d, _q in rows} == {
        (spec.log_table, c.name) for spec in catalog.PRODUCT.tables for c in quality_gate.gate_checks(spec)}
    graph = build_definitions(CodeLocationSettings(NOW.date())).resolve_asset_graph()
    specs = {s.name: s for s in graph.get(dg.AssetKey(["dwh", "instances"])).assets_def.check_specs}
    assert specs["row_count_matches_source"].blocking
    assert {s.name for s in graph.get(dg.AssetKey(["mart", "org_daily_usage"])).assets_def.check_specs} >= {"no_days_held"}


def test_copies_carry_dagsters_freshness_policy_from_their_schedule_marts_do_not():
    graph = build_definitions(CodeLocationSettings(NOW.date())).resolve_asset_graph()
    instances = graph.get(dg.AssetKey(["dwh", "instances"]))
    assert instances.freshness_policy.fail_window.to_timedelta() == dt.timedelta(minutes=21)
    assert graph.get(dg.AssetKey(["mart", "daily_signups"])).freshness_policy is None


def test_check_keys_are_every_check_the_code_location_defines():
    defs = build_definitions(CodeLocationSettings(NOW.date()))
    assert set(check_keys()) == set(defs.resolve_asset_graph().asset_check_keys)
    assert dg.AssetCheckKey(dg.AssetKey(["mart", "daily_signups"]), FRESHNESS) in set(check_keys())


# ----- alerts --------------------------------------------------------------------------------------


def incident(key: str, detail: str = "why") -> alerts.Incident:
    return alerts.Incident(key=key, kind="check failed", subject=key, detail=detail, since="2026-12-06T12:00:00Z")


def test_an_incident_is_announced_once_and_its_recovery_once():
    book = alerts.IncidentBook()
    opened, recovered = book.changes({"a": incident("a")})
    assert [i.key for i in opened] == ["a"] and recovered == []
    book.opened(opened[0])
    book = alerts.IncidentBook.parse(book.dump())  # the cursor survives a daemon restart
    assert book.changes({"a": incident("a", "another tick, another count")}) == ([], [])
    opened, recovered = book.changes({})
    assert opened == [] and [i.key for i in recovered] == ["a"]
    book.closed(recovered[0])
    assert book.changes({}) == ([], []) and book.announced == {}


def test_a_failed_runs_alert_names_what_the_step_raised_not_dagsters_wrapper():
    try:
        try:
            raise PermissionError("permission denied for function refresh_mart_daily_signups")
        except PermissionError as cause:
            raise RuntimeError('Error occurred while executing op "mart__daily_signups":') from cause
    except RuntimeError:
        error = serializable_error_info_from_exc_info(sys.exc_info())
    assert root_cause(error) == "PermissionError: permission denied for function refresh_mart_daily_signups"


def test_messages_are_slack_compatible_and_say_what_and_since_when():
    failed = alerts.failure_message("dwh production", alerts.Incident(
        "check:dwh/instances row_count_matches_source", "check failed", "dwh/instances row_count_matches_source",
        "local_rows=600, source_rows=601", "2026-12-06T12:00:00Z"))
    assert json.loads(json.dumps(failed)) == {"text": ":red_circle: [dwh production] check failed: dwh/instances "
                                              "row_count_matches_source. local_rows=600, source_rows=601 (since "
                                              "2026-12-06T12:00:00Z)"}
    postgres = alerts.failure_message("dwh", incident("k", "pg_cron run failed: ERROR:  canceling statement due to "
                                                            "statement timeout\nCONTEXT:  SQL statement \"INSERT ...\""))
    assert postgres["text"] == (":red_circle: [dwh] check failed: k. pg_cron run failed: ERROR:  canceling statement "
                                "due to statement timeout (since 2026-12-06T12:00:00Z)"), "one line, not the SQL"
    recovered = alerts.recovery_message("dwh production", incident("x"), "2026-12-06T12:30:00Z")
    assert recovered["text"] == (":large_green_circle: [dwh production] recovered: x (check failed from "
                                 "2026-12-06T12:00:00Z to 2026-12-06T12:30:00Z)")


def test_a_webhook_url_in_the_file_is_refused_and_its_file_is_passed_to_dagster(tmp_path, monkeypatch):
    for name in [n for n in __import__("os").environ if n.startswith("DWH_")]:
        monkeypatch.delenv(name)
    toml = tmp_path / "dwh.toml"
    toml.write_text('[history]\nstart = 2026-01-01\n[alerts]\nwebhook_url = "https://hooks.example/T/B/s3cret"\n')
    with pytest.raises(DeploymentError) as refused:
        DeploymentConfig.load(toml)
    assert "alerts.webhook_url holds a secret" in str(refused.value) and "DWH_ALERTS__WEBHOOK_URL" in str(refused.value)
    assert "s3cret" not in str(refused.value)
    toml.write_text('[history]\nstart = 2026-01-01\n[alerts]\nwebhook_url_file = "/etc/dwh/alert-webhook-url"\n'
                    'label = "dwh production"\n')
    env = dagster_env(DeploymentConfig.load(toml))
    assert env["DWH_ALERTS__WEBHOOK_URL_FILE"] == "/etc/dwh/alert-webhook-url"
    assert env["DWH_ALERTS__LABEL"] == "dwh production"
    toml.write_text('[history]\nstart = 2026-01-01\n')
    assert not any(name.startswith("DWH_ALERTS") for name in dagster_env(DeploymentConfig.load(toml)))


def test_the_alert_sensor_exists_only_with_a_webhook(tmp_path):
    assert "alerts" not in [s.name for s in build_definitions(CodeLocationSettings(NOW.date())).sensors]
    url_file = tmp_path / "url"
    url_file.write_text("https://hooks.example/T/B/s3cret")
    defs = build_definitions(CodeLocationSettings(NOW.date(), alerts_webhook_url_file=url_file))
    assert [s.name for s in defs.sensors][-1] == "alerts"
    dg.Definitions.validate_loadable(defs)  # the sensor's webhook resource is bound
    assert "s3cret" not in repr(defs.resolve_sensor_def("alerts")), "the definitions hold the file's path, not the URL"


def test_a_webhook_file_readable_by_others_is_refused_before_any_send(tmp_path):
    url_file = tmp_path / "url"
    url_file.write_text("https://hooks.example/T/B/s3cret")
    url_file.chmod(0o644)
    with pytest.raises(DeploymentError, match="readable by its group or others"):
        alerts.Webhook(url_file=url_file).resolve_url()
    with pytest.raises(alerts.AlertDeliveryError, match="no alert webhook"):
        alerts.Webhook().resolve_url()
