"""A restore drill: the warehouse dumped with pg_dump, restored into a new cluster, then
`dwh migrate` and the refreshes carry on; the history the sources no longer hold survives.

The fault stack's warehouse first holds what only it has: a window of events the control
plane has since purged from its archive, and the dimensions' snapshots of past days (their
sources only know the present). ``pg_dumpall --globals-only`` and ``pg_dump -Fc`` of the
warehouse are restored into a new cluster of the same configuration (pg_cron and pg_partman
preloaded) on the same host, which then takes the warehouse's place in the deployment: the
same sources and reader, a new port. Then `dwh migrate` (its pg_cron probe proves that the
restored jobs run there), the refreshes, and every history checksum as it was before the dump.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from dwh_assets.local import secrets
from dwh_assets.local.config import DEFAULT_PORTS, LOADER_ROLE, WAREHOUSE_DB, StackConfig, free_port
from dwh_assets.local.local_stack import LocalStack
from dwh_assets.local.postgres import Postgres, pg_bin, run_as_server
from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.deployment import DeploymentConfig
from dwh_assets.warehouse.migrate import migrate
from dwh_assets_tests.deployments import deep_merge
from dwh_assets_tests.fault_helpers import refresh
from dwh_assets_tests.plain_clusters import private_file
from dwh_assets_tests.warehouse_helpers import connect_control_plane, fact_checksum, table_checksum, utc_midnight

PURGED = (utc_midnight(-30), utc_midnight(-27))  # events the control plane no longer keeps
RECENT = (utc_midnight(-1), utc_midnight(1))
SNAPSHOTS = [spec.snapshot_table for spec in catalog.CATALOG if spec.snapshot_table]


@dataclass(frozen=True)
class Restored:
    deployment: DeploymentConfig
    history: dict[str, tuple]  # checksums of what the sources no longer hold, taken before the dump
    migrate_lines: list[str]

    def connect(self, role: str) -> psycopg.Connection:
        return psycopg.connect(f"host={self.deployment.warehouse.host} port={self.deployment.warehouse.port} "
                               f"dbname={WAREHOUSE_DB} user={role} passfile={self.deployment.warehouse.passfile}",
                               autocommit=True)


def history(conn: psycopg.Connection) -> dict[str, tuple]:
    return {"events": fact_checksum(conn, "events", *PURGED, source=False),
            **{table: table_checksum(conn, table) for table in SNAPSHOTS}}


def only_the_warehouse_holds_history(local: LocalStack) -> dict[str, tuple]:
    """Copy a window and today's snapshots, then purge the window at the source; their checksums."""
    cfg = local.cfg
    with psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True) as loader:
        refresh(loader, "refresh_events", *PURGED)
        for spec in catalog.CATALOG:
            if spec.snapshot_table:
                refresh(loader, spec.routine.removeprefix("dwh."))
        with connect_control_plane(cfg) as source:
            purged = source.execute("DELETE FROM pgmq.a_instance_events WHERE enqueued_at >= %s AND enqueued_at < %s",
                                    PURGED).rowcount
        assert purged > 0
        held = history(loader)
    assert held["events"][0] == purged and all(held[t][0] > 0 for t in SNAPSHOTS)
    return held


def restored_deployment(cfg: StackConfig, target: StackConfig, passfile: Path) -> DeploymentConfig:
    """The stack's deployment with the new cluster as its warehouse: same sources, reader and logins."""
    return DeploymentConfig.from_values(deep_merge(cfg.deployment_values(), {
        "warehouse": {"port": target.pg_port, "passfile": str(passfile), "admin": {"host": str(target.socket_dir)}},
        "refresh": {"probe_cron": True},
    }))


@pytest.fixture(scope="module")
def restored(fault_stack: LocalStack) -> Iterator[Restored]:
    cfg = fault_stack.cfg
    held = only_the_warehouse_holds_history(fault_stack)
    home = Path(tempfile.mkdtemp(prefix="dwh-restore-", dir="/tmp"))
    home.chmod(0o755)
    target = StackConfig(home=home, ports={name: free_port() for name in DEFAULT_PORTS}, anchor_day=cfg.anchor_day,
                         seed=cfg.seed, scale=cfg.scale, server_user=cfg.server_user)
    new = Postgres(target)
    try:
        started = time.monotonic()
        dump_and_restore(cfg, target, new)
        restored_after = time.monotonic() - started
        passfile = private_file(home / "pgpass", "".join(
            f"{cfg.host}:{target.pg_port}:*:{role}:{password}\n" for role, password in secrets.passwords(cfg).items()))
        deployment = restored_deployment(cfg, target, passfile)
        lines: list[str] = []
        migrate(deployment, progress=lines.append)
        print(f"measured: dump and restore {restored_after:.1f}s, then migrate {time.monotonic() - started - restored_after:.1f}s")
        yield Restored(deployment, held, lines)
    finally:
        new.stop(mode="immediate")
        shutil.rmtree(home, ignore_errors=True)


def dump_and_restore(cfg: StackConfig, target: StackConfig, new: Postgres) -> None:
    """Roles, then the warehouse database with everything in it, as a DBA restores onto a new server."""
    dump = target.home / "warehouse.dump"
    roles = target.home / "globals.sql"
    for path in (dump, roles):
        path.touch()
        path.chmod(0o666)  # written by the server's OS user
    source = ["-h", str(cfg.socket_dir), "-p", str(cfg.pg_port)]
    run_as_server(cfg, [pg_bin("pg_dumpall"), *source, "--globals-only", "-f", str(roles)], check=True, capture_output=True)
    run_as_server(cfg, [pg_bin("pg_dump"), *source, "-Fc", "-f", str(dump), WAREHOUSE_DB], check=True, capture_output=True)
    new.start()
    into = ["-h", str(target.socket_dir), "-p", str(target.pg_port)]
    # The new cluster's own superuser exists already: that one statement of the roles' script fails, no other.
    restored_roles = run_as_server(target, [pg_bin("psql"), *into, "-X", "-q", "-d", "postgres", "-f", str(roles)],
                                   capture_output=True, text=True)
    assert restored_roles.stderr.count("ERROR") == 1 and 'role "postgres" already exists' in restored_roles.stderr, \
        restored_roles.stderr
    restore = run_as_server(target, [pg_bin("pg_restore"), *into, "--create", "-d", "postgres", str(dump)],
                            capture_output=True, text=True)
    assert restore.returncode == 0, restore.stderr[-3000:]


def test_migrate_carries_on_with_the_restored_warehouse(restored):
    assert restored.migrate_lines[-1].startswith("done: 0 new migration(s); tables unchanged;"), restored.migrate_lines
    assert any(line.startswith("pg_cron: ran a job as") for line in restored.migrate_lines), \
        "pg_cron runs the restored warehouse's jobs (migrate's probe)"
    # The restored jobs named the old server's socket and port (pg_cron runs a job where it was
    # scheduled); migrate scheduled them again, here.
    with restored.connect(LOADER_ROLE) as loader:
        ports = loader.execute("SELECT DISTINCT nodeport FROM cron.job WHERE jobname LIKE 'dwh:%'").fetchall()
    assert ports == [(restored.deployment.warehouse.port,)]


def test_the_history_the_sources_no_longer_hold_survives(restored):
    with restored.connect(LOADER_ROLE) as loader:
        assert history(loader) == restored.history


def test_the_refreshes_carry_on_against_the_sources(restored, fault_stack):
    with restored.connect(LOADER_ROLE) as loader, connect_control_plane(fault_stack.cfg) as source:
        refresh(loader, "refresh_events", *RECENT)
        assert fact_checksum(loader, "events", *RECENT, source=False) == fact_checksum(source, "events", *RECENT, source=True)
        with pytest.raises(psycopg.errors.RaiseException) as refused:  # a window the source has purged
            refresh(loader, "refresh_events", *PURGED)
        assert f"the warehouse holds {restored.history['events'][0]}: refusing to delete" in str(refused.value)
        assert fact_checksum(loader, "events", *PURGED, source=False) == restored.history["events"]
