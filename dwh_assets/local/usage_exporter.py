"""The usage exporter: Prometheus metrics for every instance of the world alive now.

Run as ``python -m dwh_assets.local.usage_exporter --port P --seed S --scale X
--anchor-day D [--history-days N]``. It serves ``/metrics`` on 127.0.0.1 with three series per alive
instance (labels ``instance_id``, ``organization_id``), computed at scrape time by
``generator.usage_at``; the history back-fill (``prometheus_backfill.py``) uses the
same function, so live and back-filled samples lie on one curve.

Each sample carries an explicit timestamp (whole seconds) and the value ``usage_at``
gives at exactly that second: a stored live sample can be checked against the model,
and its time matches the warehouse's ``metric_time`` (bigint seconds) without rounding.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dwh_assets.local import generator
from dwh_assets.local.config import DEFAULT_HISTORY_DAYS
from dwh_assets.local.generator import METRIC_CPU, METRIC_MEMORY, METRIC_STORAGE, Instance

LABELS = ("instance_id", "organization_id")
HELP = {
    METRIC_CPU: "CPU seconds used by the instance since it was created.",
    METRIC_MEMORY: "Memory in use by the instance, in bytes.",
    METRIC_STORAGE: "Storage in use by the instance, in bytes.",
}


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UsageCollector(Collector):
    """Computes every alive instance's usage when Prometheus scrapes."""

    def __init__(self, instances: list[Instance], clock: Callable[[], dt.datetime] = _utc_now):
        self.instances = instances
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self.clock().replace(microsecond=0)
        ts = now.timestamp()
        # The counter family is named without `_total`: the client appends it on exposition.
        cpu = CounterMetricFamily(METRIC_CPU.removesuffix("_total"), HELP[METRIC_CPU], labels=LABELS)
        memory = GaugeMetricFamily(METRIC_MEMORY, HELP[METRIC_MEMORY], labels=LABELS)
        storage = GaugeMetricFamily(METRIC_STORAGE, HELP[METRIC_STORAGE], labels=LABELS)
        for inst in self.instances:
            if not inst.alive_at(now):
                continue
            usage = generator.usage_at(inst, now)
            labels = [inst.id, inst.organization_id]
            cpu.add_metric(labels, usage[METRIC_CPU], timestamp=ts)
            memory.add_metric(labels, usage[METRIC_MEMORY], timestamp=ts)
            storage.add_metric(labels, usage[METRIC_STORAGE], timestamp=ts)
        yield from (cpu, memory, storage)


def build_registry(world: generator.World, clock: Callable[[], dt.datetime] = _utc_now) -> CollectorRegistry:
    # A private registry: no process/platform/GC metrics, only the usage series.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(UsageCollector(world.instances, clock))
    return registry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--anchor-day", type=dt.date.fromisoformat, required=True, help="YYYY-MM-DD (UTC)")
    parser.add_argument("--history-days", type=int, default=DEFAULT_HISTORY_DAYS, help="days of history before the anchor day")
    args = parser.parse_args(argv)

    world = generator.build_world(args.seed, args.scale, args.anchor_day, args.history_days)
    try:
        server, thread = start_http_server(args.port, addr=args.host, registry=build_registry(world))
    except OSError as exc:
        print(f"usage exporter: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    alive = sum(inst.alive_at(_utc_now()) for inst in world.instances)
    print(f"usage exporter: serving {alive} instances on http://{args.host}:{args.port}/metrics", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
