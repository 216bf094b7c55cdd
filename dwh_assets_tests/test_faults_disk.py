"""A disk that fills up mid-refresh.

One day's partition of dwh.events is moved into a tablespace on a small tmpfs of its own,
which is then filled but for two pages: the refresh of that day deletes its rows, re-inserts
them into new pages (the deleted ones stay until the transaction ends) and runs out of space
part way through. PostgreSQL fails the statement (``53100 disk_full``, the file it could not
extend, "No space left on device"); the refresh's transaction rolls back, so the day is as
it was. Once space is back, the next refresh succeeds and the day equals the source.

On the session stack, a past day its pg_cron jobs never touch; the partition goes back to
the default tablespace afterwards. Mounting the tmpfs needs root, as CI runs the suite.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from psycopg import errors, sql

from dwh_assets_tests.fault_helpers import TableState, connect, failing_refresh, refresh
from dwh_assets_tests.tiers import integration_fixture
from dwh_assets_tests.warehouse_helpers import connect_control_plane, fact_checksum, utc_midnight

D0, D1 = utc_midnight(-8), utc_midnight(-7)
TABLESPACE = "dwh_test_small_disk"
FREE_BYTES = 2 * 8192  # room for two pages, no more


@dataclass
class SmallDisk:
    mount: Path
    partition: str

    def fill(self) -> None:
        """Leave FREE_BYTES on the filesystem (a file that takes the rest)."""
        stat = os.statvfs(self.mount)
        with open(self.mount / "filler", "wb") as f:
            f.write(b"\0" * (stat.f_bavail * stat.f_frsize - FREE_BYTES))

    def free(self) -> None:
        (self.mount / "filler").unlink(missing_ok=True)


@integration_fixture()
def small_disk(cfg, superuser) -> Iterator[SmallDisk]:
    """The day's events partition in a tablespace on a tmpfs sized for it (it moves back afterwards)."""
    with connect(cfg) as loader:
        refresh(loader, "refresh_events", D0, D1)  # the day holds its rows before it moves
    partition = superuser.execute(
        "SELECT partition_schema || '.' || partition_table FROM partman.show_partition_name('dwh.events', %s)",
        (D0.isoformat(),)).fetchone()[0]
    size = superuser.execute("SELECT pg_relation_size(%s::regclass, 'main') + pg_relation_size(%s::regclass, 'fsm')"
                             " + pg_relation_size(%s::regclass, 'vm')", (partition,) * 3).fetchone()[0]
    assert size > 8 * FREE_BYTES, f"{partition} is too small ({size} bytes) to run out of room part way"
    server = pwd.getpwnam(cfg.server_user)
    mount = Path(tempfile.mkdtemp(prefix="dwh-small-disk-", dir="/tmp"))
    # Room for the day twice: a refresh writes the new rows before its commit frees the old ones.
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={2 * size + 256 * 1024},mode=0700,uid={server.pw_uid},"
                    f"gid={server.pw_gid}", "tmpfs", str(mount)], check=True, capture_output=True, text=True)
    location = mount / "tablespace"
    location.mkdir()
    os.chown(location, server.pw_uid, server.pw_gid)
    moved = False
    try:
        superuser.execute(sql.SQL("CREATE TABLESPACE {} LOCATION {}").format(sql.Identifier(TABLESPACE),
                                                                             sql.Literal(str(location))))
        superuser.execute(sql.SQL("ALTER TABLE {} SET TABLESPACE {}").format(
            sql.Identifier(*partition.split(".")), sql.Identifier(TABLESPACE)))
        moved = True
        yield SmallDisk(mount, partition)
    finally:
        (mount / "filler").unlink(missing_ok=True)
        if moved:
            superuser.execute(sql.SQL("ALTER TABLE {} SET TABLESPACE pg_default").format(sql.Identifier(*partition.split("."))))
        superuser.execute(sql.SQL("DROP TABLESPACE IF EXISTS {}").format(sql.Identifier(TABLESPACE)))
        subprocess.run(["umount", str(mount)], check=True, capture_output=True)
        shutil.rmtree(mount, ignore_errors=True)


def test_a_full_disk_mid_refresh_leaves_the_window_and_the_next_refresh_succeeds(cfg, small_disk):
    with connect(cfg) as loader, connect_control_plane(cfg) as source:
        before = TableState.of(loader, "events", (D0, D1))
        assert before.data[0] > 0

        small_disk.fill()
        error = failing_refresh(loader, "refresh_events", D0, D1)
        assert isinstance(error, errors.DiskFull), f"{error.sqlstate}: {error}"
        assert error.diag.message_primary.startswith('could not extend file "pg_tblspc/')
        assert error.diag.message_primary.endswith("No space left on device"), error.diag.message_primary
        assert error.diag.message_hint == "Check free disk space."
        before.assert_unchanged(loader, loader.info.backend_pid)

        small_disk.free()
        started = time.monotonic()
        log = refresh(loader, "refresh_events", D0, D1)
        print(f"measured: the refresh after the space came back took {time.monotonic() - started:.2f}s")
        assert log["rows_inserted"] == log["rows_source"] == before.data[0]
        assert fact_checksum(loader, "events", D0, D1, source=False) == fact_checksum(source, "events", D0, D1, source=True)
        assert loader.execute("SELECT t.spcname FROM pg_class c JOIN pg_tablespace t ON t.oid = c.reltablespace"
                              " WHERE c.oid = %s::regclass", (small_disk.partition,)).fetchone() == (TABLESPACE,), \
            "the day was written where the disk had been full"
