"""The Prometheus source of the local stack: the usage exporter and a Prometheus server.

Prometheus (Debian's ``/usr/bin/prometheus``) keeps its config and TSDB under
``<home>/prometheus`` and scrapes the exporter every 60 s as job ``dwh_usage``. Every
stored usage series has the labels::

    __name__         dwh_instance_cpu_seconds_total | dwh_instance_memory_bytes | dwh_instance_storage_bytes
    instance_id      the control plane's instance id (uuid text)   -- from the exporter
    organization_id  the Clerk organization id                     -- from the exporter
    job              "dwh_usage"                                    -- added by the scrape
    instance         "usage_exporter"                               -- fixed by relabelling

``instance`` is pinned instead of being the exporter's host:port so that a changed port
does not start new series, and the history back-fill (run by ``start()`` before the
server first starts on a data directory) writes exactly the same label sets. The scrape
also yields Prometheus' own ``up`` and ``scrape_*`` series for the job.

Flags: retention is ten years (the 15d default would delete the back-filled history);
admin and lifecycle APIs stay off; Debian's default console paths
(/etc/prometheus/consoles, console_libraries) exist, so no console flags are needed.
Back-filled series have no staleness markers: a ``query_range`` at a step finer than
5 minutes repeats a deleted instance's last sample for up to 5 minutes (lookback).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from dwh_assets.local.config import REPO_ROOT, StackConfig
from dwh_assets.local import generator
from dwh_assets.local.prometheus_backfill import (
    DEFAULT_STEP,
    SCRAPE_INSTANCE,
    SCRAPE_JOB,
    backfill,
    read_marker,
)
from dwh_assets.local.process import ManagedProcess, StackError

SCRAPE_INTERVAL = "60s"
# Default retention (15d) would delete the back-filled history; keep ten years.
RETENTION = "3650d"


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


class UsageExporter(ManagedProcess):
    def __init__(self, cfg: StackConfig):
        super().__init__(
            name="usage-exporter",
            argv=[
                sys.executable, "-m", "dwh_assets.local.usage_exporter",
                "--port", str(cfg.ports["exporter"]),
                *cfg.world_args(),
            ],
            port=cfg.ports["exporter"],
            pid_file=cfg.pid_file("usage-exporter"),
            log_file=cfg.log_file("usage-exporter"),
            cwd=REPO_ROOT,
            start_timeout=120,
            ready=lambda: _http_ok(f"{cfg.exporter_url}/metrics"),
        )
        self.cfg = cfg


def prometheus_config(cfg: StackConfig, scrape_interval: str = SCRAPE_INTERVAL) -> str:
    """prometheus.yml: one job scraping the usage exporter (strings JSON-quoted)."""
    target = json.dumps(f"{cfg.host}:{cfg.ports['exporter']}")
    return f"""\
# written by dwh (dwh_assets/stack/prometheus.py); rewritten at every start
global:
  scrape_interval: {scrape_interval}
  evaluation_interval: {scrape_interval}
scrape_configs:
  - job_name: {json.dumps(SCRAPE_JOB)}
    scrape_interval: {scrape_interval}
    # The exporter's labels (instance_id, organization_id) never clash with the
    # scrape's job/instance, so they are kept as they are without honor_labels.
    honor_labels: false
    # Samples carry the exporter's timestamps: whole seconds, valued by usage_at.
    honor_timestamps: true
    static_configs:
      - targets: [{target}]
    relabel_configs:
      # A fixed instance label, the same the back-filled history carries.
      - target_label: instance
        replacement: {json.dumps(SCRAPE_INSTANCE)}
"""


class PrometheusServer(ManagedProcess):
    def __init__(self, cfg: StackConfig, *, backfill_step: int = DEFAULT_STEP, scrape_interval: str = SCRAPE_INTERVAL,
                 progress: Callable[[str], None] | None = None):
        if not re.fullmatch(r"[1-9][0-9]*[smh]", scrape_interval):
            raise ValueError(f"scrape interval {scrape_interval!r} is not a duration like 60s, 5m or 1h")
        self.cfg = cfg
        # Lines about a long back-fill (a year of 10,000 instances takes minutes).
        self.progress = progress
        self.backfill_step = backfill_step
        self.scrape_interval = scrape_interval
        self.config_file = cfg.prometheus_dir / "prometheus.yml"
        self.data_dir = cfg.prometheus_dir / "data"
        super().__init__(
            name="prometheus",
            argv=[
                shutil.which("prometheus") or "/usr/bin/prometheus",
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.data_dir}",
                f"--storage.tsdb.retention.time={RETENTION}",
                f"--web.listen-address={cfg.host}:{cfg.ports['prometheus']}",
            ],
            port=cfg.ports["prometheus"],
            pid_file=cfg.pid_file("prometheus"),
            log_file=cfg.log_file("prometheus"),
            cwd=cfg.prometheus_dir,
            start_timeout=120,
            ready=lambda: _http_ok(f"{cfg.prometheus_url}/-/ready"),
        )

    def start(self) -> bool:
        if self.is_running():
            return False
        if not Path(self.argv[0]).exists():
            raise StackError("prometheus not found; install it with `apt-get install prometheus`.")
        self.cfg.prometheus_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(prometheus_config(self.cfg, self.scrape_interval))
        self.backfill()
        return super().start()

    def backfill(self) -> None:
        """History up to now (no gap before the first scrape), once per data directory."""
        done = read_marker(self.data_dir)
        if done is not None:
            world_of_data = (done.seed, done.scale, done.anchor_day, done.history_days)
            if world_of_data != (self.cfg.seed, self.cfg.scale, self.cfg.anchor_day.isoformat(), self.cfg.history_days):
                raise StackError(
                    f"{self.data_dir} holds the history of another world (seed, scale, anchor day, history days = "
                    f"{world_of_data}); delete that directory to back-fill this stack's history."
                )
            return
        world = generator.build_world(self.cfg.seed, self.cfg.scale, self.cfg.anchor_day, self.cfg.history_days)
        now = dt.datetime.now(dt.timezone.utc)
        report = backfill(world, self.data_dir, step=self.backfill_step, end=now, progress=self.progress)
        if report is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_file, "a") as log:
                log.write(
                    f"back-filled {report.samples} samples of {report.series} series "
                    f"[{report.start}, {report.end}) step {report.step}s in {report.seconds}s\n"
                )
