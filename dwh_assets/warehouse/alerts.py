"""Alerts: one webhook message when an incident opens, one when it recovers.

An **incident** is a condition that holds now, keyed by what it is about: a failed pg_cron
refresh (``pg_cron_job_health`` failing), a stale table (``fresh_within_schedule``), any other
failed check (a copy's blocking check, a mart's held days, ...), a failed Dagster run. The
Dagster alert sensor (``defs.alert_sensor``) works out which hold each tick; ``IncidentBook``
compares them with those already announced (kept in the sensor's cursor, in Dagster's storage,
so a daemon restart neither repeats nor forgets one) and says what to send: a message per new
incident, one per recovered incident, nothing for one that merely goes on. A message that
could not be delivered is tried again on the next tick.

The destination is a Slack-compatible incoming webhook (``{"text": ...}``), configured in the
deployment's ``[alerts]`` section: its URL is a secret (it authorises posting), read from
``webhook_url_file`` (mode 0600) or ``DWH_ALERTS__WEBHOOK_URL`` on each send, and never
logged: errors name the HTTP status or the network error's class, not the URL.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dwh_assets.warehouse.deployment import read_secret_file

MAX_DETAIL = 400


@dataclass(frozen=True)
class Incident:
    key: str      # what it is about, stable across ticks: "check:dwh/users:row_count_matches_source", "run:..."
    kind: str     # "pg_cron refresh failed", "stale table", "check failed", "Dagster run failed"
    subject: str  # the asset and check, or the run's job
    detail: str   # why, from the check's metadata or the run's error
    since: str    # when it was first seen failing (ISO, UTC)


def failure_message(label: str, incident: Incident) -> dict[str, str]:
    # The error's first line: Postgres adds CONTEXT and the failing SQL after it, which Dagster shows in full.
    detail = (incident.detail.strip().splitlines() or [""])[0][:MAX_DETAIL]
    return {"text": f":red_circle: [{label}] {incident.kind}: {incident.subject}. {detail} (since {incident.since})"}


def recovery_message(label: str, incident: Incident, now: str) -> dict[str, str]:
    return {"text": f":large_green_circle: [{label}] recovered: {incident.subject} ({incident.kind} "
                    f"from {incident.since} to {now})"}


@dataclass
class IncidentBook:
    """The incidents already announced: the alert sensor's cursor."""

    announced: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> Incident fields

    @classmethod
    def parse(cls, raw: str | None) -> IncidentBook:
        return cls(**json.loads(raw)) if raw else cls()

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def changes(self, current: dict[str, Incident]) -> tuple[list[Incident], list[Incident]]:
        """(new incidents, recovered incidents) against what is announced."""
        opened = [incident for key, incident in sorted(current.items()) if key not in self.announced]
        recovered = [Incident(**fields) for key, fields in sorted(self.announced.items()) if key not in current]
        return opened, recovered

    def opened(self, incident: Incident) -> None:
        self.announced[incident.key] = asdict(incident)

    def closed(self, incident: Incident) -> None:
        self.announced.pop(incident.key, None)


class AlertDeliveryError(Exception):
    """The webhook did not take a message; the text never holds its URL."""


@dataclass(frozen=True)
class Webhook:
    """A Slack-compatible incoming webhook; its URL is read when sending, from the environment or a file."""

    url: str | None = None
    url_file: Path | None = None
    timeout_seconds: float = 10.0

    def resolve_url(self) -> str:
        if self.url:
            return self.url
        if self.url_file is None:
            raise AlertDeliveryError("no alert webhook: set alerts.webhook_url_file or DWH_ALERTS__WEBHOOK_URL")
        return read_secret_file(self.url_file, "the alert webhook URL")

    def send(self, message: dict[str, str]) -> None:
        """POST the message as JSON. stdlib's urllib: it logs nothing, where requests' urllib3 logs
        each request line (the URL's secret path) at DEBUG."""
        url = self.resolve_url()
        if not url.startswith(("https://", "http://")):
            raise AlertDeliveryError("the alert webhook URL must start with https:// (or http:// on loopback)")
        request = urllib.request.Request(url, data=json.dumps(message).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:  # noqa: S310 (scheme checked)
                response.read()
        except urllib.error.HTTPError as e:
            raise AlertDeliveryError(f"the alert webhook answered HTTP {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise AlertDeliveryError(f"could not reach the alert webhook ({type(reason).__name__})") from None
