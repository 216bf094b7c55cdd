"""What a test needs to see alerts as a person would: a webhook on loopback, and Dagster's daemon
played tick by tick (the pg_cron sensor, its events stored as the daemon stores them, then the
alert sensor). Shared by the tests of the quality gate, freshness, alerts and the faults.
"""

from __future__ import annotations

import http.server
import json

import dagster as dg

from dwh_assets.local.config import LOADER_ROLE, WAREHOUSE_DB, free_port
from dwh_assets.warehouse.defs import check_keys, cron_targets
from dwh_assets.warehouse.defs.alert_sensor import AlertWebhookResource, build_alert_sensor
from dwh_assets.warehouse.defs.cron_sensor import CronCursor, build_cron_sensor
from dwh_assets.warehouse.defs.metadata import key_of
from dwh_assets.warehouse.defs.partitions import daily_partitions
from dwh_assets.warehouse.defs.resources import WarehouseResource


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook on loopback: records every message it accepts; refuses the next ``refuse`` ones with 500."""

    def __init__(self):
        self.accepted: list[dict] = []
        self.refused = 0
        self.refuse = 0
        self.paths: set[str] = set()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.paths.add(self.path)
                if receiver.refuse:
                    receiver.refuse -= 1
                    receiver.refused += 1
                    self.send_response(500)
                else:
                    receiver.accepted.append(body)
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args):  # quiet: the test reads what it recorded
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)

    def texts(self) -> list[str]:
        return [m["text"] for m in self.accepted]


class Daemon:
    """The two sensors ticked as Dagster's daemon ticks them, on one Dagster instance."""

    def __init__(self, cfg, instance: dg.DagsterInstance, url_file, start_runid: int):
        self.cfg, self.instance = cfg, instance
        self.warehouse = WarehouseResource(dsn=cfg.dsn(WAREHOUSE_DB, LOADER_ROLE))
        self.webhook = AlertWebhookResource(url_file=str(url_file), label="dwh test", timeout_seconds=10)
        self.cron_sensor = build_cron_sensor(cron_targets(), daily_partitions(cfg.history_start))
        self.alert_sensor = build_alert_sensor(check_keys())
        self.cron_cursor = CronCursor(runid=start_runid).dump()
        self.alert_cursor: str | None = None
        self.events: list = []

    def tick(self) -> list:
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cron_cursor,
                                          resources={"warehouse": self.warehouse})
        result = self.cron_sensor(context)
        for event in result.asset_events:
            self.instance.report_runless_asset_event(event)
        self.cron_cursor = result.cursor
        self.events += result.asset_events
        context = dg.build_sensor_context(instance=self.instance, cursor=self.alert_cursor,
                                          resources={"alert_webhook": self.webhook})
        self.alert_cursor = self.alert_sensor(context).cursor
        return result.asset_events

    def checks(self, key: str, name: str) -> list[dg.AssetCheckEvaluation]:
        return [e for e in self.events if isinstance(e, dg.AssetCheckEvaluation)
                and e.asset_key == key_of(key) and e.check_name == name]
