"""Helpers of the warehouse integration tests: read the sources directly, checksum tables.

The tests compare every local copy with its source read *without* the warehouse: the
control plane database over the superuser socket, the Clerk emulator's HTTP API, and
Prometheus' ``query_range``. Checksums are the same SQL on both sides of a comparison.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import urllib.parse
import urllib.request
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from yoyo import read_migrations

from dwh_assets.local import control_plane, secrets
from dwh_assets.local.config import CONTROL_PLANE_DB, DEFAULT_PORTS, StackConfig, free_port
from dwh_assets.local.config import _server_user as server_user
from dwh_assets.local.postgres import Postgres
from dwh_assets.warehouse import bootstrap
from dwh_assets.warehouse import migrate as migrate_module
from dwh_assets.warehouse.sources.reader_install import install_reader

UTC = dt.timezone.utc


# The migrations deployments applied before the catalog created its tables (0001-0009, 0020),
# kept as they were: a warehouse migrated by them must migrate forward cleanly.
LEGACY_MIGRATIONS = Path(__file__).parent / "legacy_migrations"


@contextmanager
def scratch_warehouse(prefix: str) -> Iterator[StackConfig]:
    """A new cluster of its own on free ports (databases, roles; the control plane's schema
    without rows; the reader installed), nothing migrated; stopped and removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    home.chmod(0o755)  # traversable by the server's OS user
    cfg = StackConfig(home=home, ports={name: free_port() for name in DEFAULT_PORTS},
                      anchor_day=dt.datetime.now(UTC).date(), seed=42, scale=0.05, server_user=server_user())
    pg = Postgres(cfg)
    try:
        pg.start()
        pg.provision()
        with pg.connect(CONTROL_PLANE_DB) as conn:
            control_plane.apply_schema(conn)
        secrets.clerk_secret_key(cfg)
        install_reader(cfg.deployment())
        yield cfg
    finally:
        pg.stop(mode="immediate")
        shutil.rmtree(home, ignore_errors=True)


def apply_legacy_migrations(cfg: StackConfig) -> list[str]:
    """What `dwh migrate` did before the catalog created tables: the bootstrap, then 0001-0009 and 0020."""
    deployment = cfg.deployment()
    plan, trial = migrate_module._prepare(deployment, lambda _line: None)
    assert trial.refusal() is None, trial
    bootstrap.apply_bootstrap(deployment, plan, trial.already)
    backend = migrate_module._backend(deployment)
    with backend.lock():
        pending = backend.to_apply(read_migrations(str(LEGACY_MIGRATIONS)))
        backend.apply_migrations(pending)
    return [m.id for m in pending]


def utc_midnight(days_from_today: int) -> dt.datetime:
    """Midnight (UTC) of today + ``days_from_today``."""
    today = dt.datetime.now(UTC).date() + dt.timedelta(days=days_from_today)
    return dt.datetime(today.year, today.month, today.day, tzinfo=UTC)


def connect_control_plane(cfg: StackConfig) -> psycopg.Connection:
    """The control plane database as the cluster superuser (to read and to change the source)."""
    return psycopg.connect(cfg.superuser_dsn(CONTROL_PLANE_DB), autocommit=True)


def refresh(conn: psycopg.Connection, routine: str, *args) -> dict:
    """Run dwh.<routine>(args) and return its dwh.refresh_log row."""
    placeholders = sql.SQL(", ").join([sql.Placeholder()] * len(args))
    query = sql.SQL("SELECT * FROM {}({})").format(sql.Identifier("dwh", routine), placeholders)
    cur = conn.execute(query, args)
    return dict(zip([c.name for c in cur.description], cur.fetchone()))


# ----- checksums: (row count, md5 over the rows in key order), same SQL on both sides -----

# Fact tables of the control plane: warehouse table, source table, time column, row text, key.
FACTS = {
    "events": (
        "dwh.events", "pgmq.a_instance_events", "enqueued_at",
        "concat_ws('|', msg_id, read_ct, extract(epoch FROM enqueued_at), extract(epoch FROM archived_at),"
        " extract(epoch FROM vt), message::text)",
        "msg_id",
    ),
    "instance_state": (
        "dwh.instance_state", "public.instance_state_history", "changed_at",
        "concat_ws('|', id, instance_id, state, extract(epoch FROM changed_at))",
        "id",
    ),
}

INSTANCE_ROW = (
    "concat_ws('|', instance_id, organization_id, name, region, cpu, memory_gb, storage_gb,"
    " extract(epoch FROM created_at), extract(epoch FROM updated_at), extract(epoch FROM deleted_at))"
)


def _checksum(conn: psycopg.Connection, table: str, row: str, key: str, where: sql.Composable, params: tuple) -> tuple:
    query = sql.SQL("SELECT count(*), md5(coalesce(string_agg({row}, ',' ORDER BY {key}), '')) FROM {table} {where}").format(
        row=sql.SQL(row), key=sql.SQL(key), table=sql.Identifier(*table.split(".")), where=where
    )
    return conn.execute(query, params).fetchone()


def fact_checksum(conn: psycopg.Connection, name: str, start: dt.datetime, end: dt.datetime, *, source: bool) -> tuple:
    local, remote, time_col, row, key = FACTS[name]
    where = sql.SQL("WHERE {t} >= %s AND {t} < %s").format(t=sql.Identifier(time_col))
    return _checksum(conn, remote if source else local, row, key, where, (start, end))


def instances_checksum(conn: psycopg.Connection, table: str, snapshot_day: dt.date | None = None) -> tuple:
    if snapshot_day is None:
        return _checksum(conn, table, INSTANCE_ROW, "instance_id", sql.SQL(""), ())
    return _checksum(conn, table, INSTANCE_ROW, "instance_id", sql.SQL("WHERE snapshot_day = %s"), (snapshot_day,))


def table_checksum(conn: psycopg.Connection, table: str) -> tuple:
    """Checksum of every column of a local table (for "unchanged" assertions)."""
    query = sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {} t").format(
        sql.Identifier(*table.split("."))
    )
    return conn.execute(query).fetchone()


# ----- Clerk emulator -----------------------------------------------------------------------


class ClerkApi:
    """The Clerk emulator's public and admin endpoints, with the stack's bearer key."""

    def __init__(self, cfg: StackConfig):
        self.url = cfg.clerk_url
        self._key = secrets.clerk_secret_key(cfg)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)

    def list_all(self, kind: str) -> tuple[list[dict], int]:
        """Every object of ``kind`` (pages of 500) and the number of pages read."""
        objects, pages = [], 0
        while True:
            query = urllib.parse.urlencode({"limit": 500, "offset": len(objects)})
            payload = self.request("GET", f"/v1/{kind}?{query}")
            page = payload if isinstance(payload, list) else payload["data"]
            objects += page
            pages += 1
            if len(page) < 500:
                return objects, pages

    def reset(self) -> None:
        self.request("POST", "/_admin/reset")


def primary_email(user: dict) -> str | None:
    for address in user.get("email_addresses") or []:
        if address.get("id") == user.get("primary_email_address_id"):
            return address.get("email_address")
    return None


# ----- Prometheus ---------------------------------------------------------------------------


def prometheus_samples(cfg: StackConfig, metric: str, start: dt.datetime, end: dt.datetime, step: int) -> set[tuple]:
    """(metric, labels json, epoch s, value) of ``metric`` at the step grid inside [start, end)."""
    first = -(-int(start.timestamp()) // step) * step
    last = int(end.timestamp()) - 1
    query = urllib.parse.urlencode({"query": metric, "start": first, "end": last - (last - first) % step, "step": step})
    with urllib.request.urlopen(f"{cfg.prometheus_url}/api/v1/query_range?{query}", timeout=60) as resp:
        payload = json.load(resp)
    assert payload["status"] == "success", payload
    samples = set()
    for series in payload["data"]["result"]:
        labels = {k: v for k, v in series["metric"].items() if k != "__name__"}
        key = json.dumps(labels, sort_keys=True)
        samples |= {(metric, key, int(float(t)), float(v)) for t, v in series["values"]}
    return samples


def local_samples(conn: psycopg.Connection, metric: str, start: dt.datetime, end: dt.datetime) -> list[tuple]:
    """The warehouse's samples of ``metric`` in [start, end), in the shape of prometheus_samples."""
    rows = conn.execute(
        "SELECT metric_name, labels, extract(epoch FROM ts)::bigint, value FROM dwh.metric_samples"
        " WHERE metric_name = %s AND ts >= %s AND ts < %s",
        (metric, start, end),
    ).fetchall()
    return [(m, json.dumps(labels, sort_keys=True), int(t), v) for m, labels, t, v in rows]


def run_refresh_jobs_once(cfg: StackConfig) -> None:
    """Every copy's and then every mart's pg_cron command, run once as the loader: a session stack
    starts empty, and pg_cron fills it only as each schedule comes round."""
    from dwh_assets.local.config import LOADER_ROLE, WAREHOUSE_DB
    from dwh_assets.warehouse import catalog, cron_jobs

    commands = {job.name: job.command for job in cron_jobs.desired_jobs(cfg.deployment()) if job.runner == "loader"}
    with psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True) as conn:
        for entry in catalog.PRODUCT.refreshed():
            conn.execute(commands[entry.cron_job_name])
