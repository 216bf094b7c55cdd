"""The alert sensor: incidents from what Dagster already records, sent to the [alerts] webhook.

Each tick reads Dagster's own state, whoever produced it:

- the latest evaluation of every check of the code location (``get_latest_asset_check_execution_by_key``):
  a failed ``pg_cron_job_health`` is a failed pg_cron refresh (the pg_cron sensor reports
  failed, rolled-back, stuck and missed runs there), a failed ``fresh_within_schedule`` a stale
  table, any other failed check a failed check (a copy's blocking check, a mart's held days, ...);
- the latest finished runs (``get_run_records``): a run key (job and asset selection) whose
  newest finished run failed is a failed Dagster run, until a newer run of it succeeds.

``alerts.IncidentBook``, kept as the cursor, turns them into one message per incident and
one per recovery. Dagster 1.13 has ``run_failure_sensor`` (and the Slack integration's
``make_slack_on_run_failure_sensor``) for runs, but nothing that alerts on check results or
freshness in open source, nor a recovery message: this sensor covers all four with one state.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._utils.error import SerializableErrorInfo

from dwh_assets.warehouse import alerts
from dwh_assets.warehouse.defs.checks import FRESHNESS, PG_CRON_HEALTH

UTC = dt.timezone.utc
RECENT_RUNS = 200
CHECK_KINDS = {PG_CRON_HEALTH: "pg_cron refresh failed", FRESHNESS: "stale table"}


class AlertWebhookResource(dg.ConfigurableResource):
    """The [alerts] webhook: its URL from ``DWH_ALERTS__WEBHOOK_URL`` (an EnvVar) or a file, read when sending."""

    url: str | None = None
    url_file: str | None = None
    label: str = "dwh"
    timeout_seconds: float = 10.0

    def webhook(self) -> alerts.Webhook:
        from pathlib import Path

        return alerts.Webhook(self.url or None, Path(self.url_file) if self.url_file else None, self.timeout_seconds)


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _detail(metadata: dict[str, Any]) -> str:
    """The sentence a check left (reason, status), else its metadata as key=value."""
    values = {k: getattr(v, "value", v) for k, v in metadata.items()}
    for key in ("reason", "status"):
        if isinstance(values.get(key), str):
            return values[key]
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items()) if not k.startswith(("dagster/", "pg_cron_")))


def check_incidents(instance: dg.DagsterInstance, check_keys: Iterable[dg.AssetCheckKey]) -> dict[str, alerts.Incident]:
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(list(check_keys))
    found = {}
    for key, record in records.items():
        if record.status is not AssetCheckExecutionRecordStatus.FAILED or record.event is None:
            continue
        evaluation = record.event.dagster_event.event_specific_data
        subject = f"{key.asset_key.to_user_string()} {key.name}"
        found[f"check:{subject}"] = alerts.Incident(
            key=f"check:{subject}", kind=CHECK_KINDS.get(key.name, "check failed"), subject=subject,
            detail=_detail(dict(evaluation.metadata)), since=_iso(record.create_timestamp))
    return found


def _run_key(run: dg.DagsterRun) -> str:
    """The job, and the assets it was asked for (``dagster asset materialize --select``), when it names them."""
    assets = ",".join(sorted(k.to_user_string() for k in run.asset_selection or ()))
    return f"{run.job_name}[{assets}]" if assets else run.job_name


def root_cause(error: SerializableErrorInfo) -> str:
    """The first line of what the step raised: Dagster wraps it ("Error occurred while executing op ...")."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip().splitlines()[0]


def _run_error(instance: dg.DagsterInstance, run_id: str) -> str:
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        error = entry.dagster_event.step_failure_data.error
        if error is not None:
            return f"step {entry.dagster_event.step_key} failed: {root_cause(error)}"
    return "the run failed (see its logs in Dagster)"


def run_incidents(instance: dg.DagsterInstance, announced: dict[str, dict[str, str]]) -> dict[str, alerts.Incident]:
    """Run keys whose newest finished run failed; an announced one stays open until a newer success is seen."""
    newest: dict[str, Any] = {}
    for record in instance.get_run_records(
            dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]), limit=RECENT_RUNS):
        newest.setdefault(_run_key(record.dagster_run), record)
    found = {}
    for run_key, record in newest.items():
        if record.dagster_run.status is dg.DagsterRunStatus.FAILURE:
            key = f"run:{run_key}"
            found[key] = alerts.Incident(
                key=key, kind="Dagster run failed", subject=f"run {record.dagster_run.run_id[:8]} of {run_key}",
                detail=_run_error(instance, record.dagster_run.run_id), since=_iso(record.update_timestamp.timestamp()))
    for key, fields in announced.items():
        if key.startswith("run:") and key not in found and key.removeprefix("run:") not in newest:
            found[key] = alerts.Incident(**fields)  # its runs scrolled past RECENT_RUNS: no success seen yet
    return found


def deliver(book: alerts.IncidentBook, current: dict[str, alerts.Incident], webhook: alerts.Webhook, label: str,
            now: str, log) -> tuple[int, list[str]]:
    """Send what changed; returns (messages sent, delivery errors). Undelivered ones are retried next tick."""
    opened, recovered = book.changes(current)
    sent, errors = 0, []
    for incident, message, record in (
            *((i, alerts.failure_message(label, i), book.opened) for i in opened),
            *((i, alerts.recovery_message(label, i, now), book.closed) for i in recovered)):
        try:
            webhook.send(message)
        except alerts.AlertDeliveryError as e:
            errors.append(f"{incident.subject}: {e}")
            continue
        record(incident)
        sent += 1
        log.info(f"alert sent: {message['text']}")
    return sent, errors


def build_alert_sensor(check_keys: list[dg.AssetCheckKey], *, minimum_interval_seconds: int = 30,
                       name: str = "alerts") -> dg.SensorDefinition:
    @dg.sensor(name=name, minimum_interval_seconds=minimum_interval_seconds,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Sends the [alerts] webhook one message when a pg_cron refresh, a check or a Dagster run "
                           "fails or a table goes stale, and one when it recovers (state in the cursor).")
    def alerts_sensor(context: dg.SensorEvaluationContext, alert_webhook: AlertWebhookResource) -> dg.SensorResult:
        book = alerts.IncidentBook.parse(context.cursor)
        current = check_incidents(context.instance, check_keys) | run_incidents(context.instance, book.announced)
        now = dt.datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        sent, errors = deliver(book, current, alert_webhook.webhook(), alert_webhook.label, now, context.log)
        for error in errors:
            context.log.warning(f"alert not delivered, tried again next tick: {error}")
        summary = f"{len(current)} open incident(s); {sent} message(s) sent, {len(errors)} not delivered"
        return dg.SensorResult(cursor=book.dump(), skip_reason=summary)

    return alerts_sensor
