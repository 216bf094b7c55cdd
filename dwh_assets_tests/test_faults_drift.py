"""Source drift: a source whose shape changes under the warehouse.

Each change is either tolerated (a column added at the control plane, a new instance state, a
Clerk field the warehouse may hold as NULL) or fails the refresh with one sentence naming the
source, the table and the column (or field), and leaves the warehouse as it was. After the
control plane changes, `dwh migrate` says what changed and imports its tables again, or, when
the change breaks the contract, refuses naming it and changes nothing.

The control plane's drift runs on a throwaway warehouse of its own (its tables are altered
for real); Clerk's on the session stack's emulator (reset afterwards).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors
from psycopg.rows import dict_row

from dwh_assets.local.config import OWNER_ROLE, StackConfig
from dwh_assets.local.control_plane import load_control_plane
from dwh_assets.local.generator import build_world
from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.defs.checks import checks_of
from dwh_assets.warehouse.deployment import DeploymentConfig, DeploymentError
from dwh_assets.warehouse.migrate import migrate
from dwh_assets_tests.fault_helpers import TableState, connect, failing_refresh, refresh
from dwh_assets_tests.tiers import integration_fixture
from dwh_assets_tests.warehouse_helpers import (
    connect_control_plane,
    fact_checksum,
    instances_checksum,
    scratch_warehouse,
    utc_midnight,
)

# A window of past days the throwaway warehouse's own pg_cron jobs never refresh.
W0, W1 = utc_midnight(-6), utc_midnight(-3)


@integration_fixture(scope="module")
def drifting() -> Iterator[StackConfig]:
    """A migrated warehouse of its own, its control plane loaded and every control-plane copy refreshed."""
    with scratch_warehouse("dwh-test-drift-") as cfg:
        with connect_control_plane(cfg) as cp:
            load_control_plane(cp, build_world(cfg.seed, cfg.scale, cfg.anchor_day, cfg.history_days))
        migrate(cfg.deployment(), progress=lambda _line: None)
        with connect(cfg) as loader:
            refresh(loader, "refresh_instances")
            refresh(loader, "refresh_instance_state", W0, W1)
            refresh(loader, "refresh_events", W0, W1)
        yield cfg


def migrate_lines(cfg: StackConfig, deployment: DeploymentConfig | None = None) -> list[str]:
    lines: list[str] = []
    migrate(deployment or cfg.deployment(), progress=lines.append)
    return lines


def assert_drift_error(error: psycopg.Error, sqlstate: str, message: str, *in_detail: str) -> None:
    assert error.sqlstate == sqlstate, f"{error.sqlstate}: {error}"
    assert error.diag.message_primary == message
    for needle in in_detail:
        assert needle in (error.diag.message_detail or ""), error.diag.message_detail
    assert "Nothing was changed" in error.diag.message_hint


# ----- the control plane ---------------------------------------------------------------------


def test_a_dropped_column_fails_the_refresh_naming_it_and_migrate_refuses(drifting):
    with connect(drifting) as loader, connect_control_plane(drifting) as cp:
        before = TableState.of(loader, "instances")
        regions = cp.execute("SELECT instance_id, region FROM public.instances").fetchall()
        cp.execute("ALTER TABLE public.instances DROP COLUMN region")
        try:
            error = failing_refresh(loader, "refresh_instances")
            assert_drift_error(error, "HV005", "dwh.refresh_instances: source control plane table public.instances "
                               "(src_control_plane.instances) changed: column region is gone (dropped or renamed)",
                               "column region (text) is gone", 'column "region" does not exist')
            before.assert_unchanged(loader, loader.info.backend_pid)
            with pytest.raises(DeploymentError, match=r"the control plane: column public\.instances\.region \(text\) "
                                                      r"is missing"):
                migrate_lines(drifting)
        finally:
            cp.execute("ALTER TABLE public.instances ADD COLUMN region text")
            with cp.cursor() as cur:
                cur.executemany("UPDATE public.instances SET region = %s WHERE instance_id = %s",
                                [(region, instance) for instance, region in regions])
            cp.execute("ALTER TABLE public.instances ALTER COLUMN region SET NOT NULL")
        assert refresh(loader, "refresh_instances")["rows_source"] == before.data[0]
        assert instances_checksum(loader, "dwh.instances") == instances_checksum(cp, "public.instances")


def test_a_renamed_column_fails_the_refresh_naming_both_names(drifting):
    with connect(drifting) as loader, connect_control_plane(drifting) as cp:
        before = TableState.of(loader, "instance_state", (W0, W1))
        cp.execute("ALTER TABLE public.instance_state_history RENAME COLUMN state TO status")
        try:
            error = failing_refresh(loader, "refresh_instance_state", W0, W1)
        finally:
            cp.execute("ALTER TABLE public.instance_state_history RENAME COLUMN status TO state")
        assert_drift_error(error, "HV005", "dwh.refresh_instance_state: source control plane table "
                           "public.instance_state_history (src_control_plane.instance_state_history) changed: "
                           "column state is gone (dropped or renamed)",
                           "column state (text) is gone; column status (text) is new")
        before.assert_unchanged(loader, loader.info.backend_pid)
        refresh(loader, "refresh_instance_state", W0, W1)
        assert fact_checksum(loader, "instance_state", W0, W1, source=False) == \
            fact_checksum(cp, "instance_state", W0, W1, source=True)


@pytest.mark.parametrize("table, column, new_type, routine, args, copy", [
    # Read through postgres_fdw: the remote text no longer converts to the warehouse's type.
    ("public.instances", "memory_gb", "numeric USING memory_gb + 0.5", "refresh_instances", (), "instances"),
    # Pushed down to the source: the window's comparison no longer has an operator there.
    ("public.instance_state_history", "changed_at", "bigint USING extract(epoch FROM changed_at)::bigint",
     "refresh_instance_state", (W0, W1), "instance_state"),
    # The events' binary COPY path: its probe reads the columns first.
    ("pgmq.a_instance_events", "read_ct", "text USING 'read ' || read_ct", "refresh_events", (W0, W1), "events"),
], ids=["converted", "pushed-down", "copy-path"])
def test_a_retyped_column_fails_the_refresh_naming_the_types(drifting, table, column, new_type, routine, args, copy):
    with connect(drifting) as loader, connect_control_plane(drifting) as cp:
        window = args or None
        before = TableState.of(loader, copy, window)
        old_type = cp.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass"
                              " AND attname = %s", (table, column)).fetchone()[0]
        cp.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {new_type}")
        try:
            error = failing_refresh(loader, routine, *args)
            with pytest.raises(DeploymentError, match=rf"column {table}\.{column} is \w+, the warehouse reads it as"):
                migrate_lines(drifting)
        finally:
            back = {"timestamp with time zone": f"{old_type} USING to_timestamp({column})",
                    "integer": f"{old_type} USING " + ("round(memory_gb - 0.5)" if column == "memory_gb"
                                                       else "substring(read_ct FROM 6)::integer")}[old_type]
            cp.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {back}")
        now = new_type.split()[0]
        assert_drift_error(error, "HV004", f"dwh.refresh_{copy}: source control plane table {table} "
                           f"(src_control_plane.{table.split('.')[1]}) changed: column {column} is {now}, "
                           f"the warehouse reads it as {old_type}", f"column {column} is {now}, it was {old_type}")
        before.assert_unchanged(loader, loader.info.backend_pid)
        assert refresh(loader, routine, *args)["rows_source"] == before.data[0]


def test_an_added_column_is_tolerated_and_migrate_imports_it(drifting):
    with connect(drifting) as loader, connect_control_plane(drifting) as cp, connect(drifting, OWNER_ROLE) as owner:
        cp.execute("ALTER TABLE public.instances ADD COLUMN notes text DEFAULT 'added by the test'")
        try:
            refresh(loader, "refresh_instances")  # postgres_fdw reads the columns it knows
            assert instances_checksum(loader, "dwh.instances") == instances_checksum(cp, "public.instances")
            lines = migrate_lines(drifting)
            assert "source changed: src_control_plane.instances: column notes (text) is new at the source" in lines
            assert "settings and source foreign tables: rebuilt (the changed source tables imported again)" in lines
            assert owner.execute("SELECT count(*) FROM src_control_plane.instances WHERE notes = 'added by the test'"
                                 ).fetchone()[0] > 0, "the foreign table has the new column"
            assert "settings and source foreign tables: unchanged" in migrate_lines(drifting), "a second run changes nothing"
        finally:
            cp.execute("ALTER TABLE public.instances DROP COLUMN notes")
        lines = migrate_lines(drifting)
        assert "source changed: src_control_plane.instances: column notes (text) is gone at the source" in lines
        refresh(loader, "refresh_instances")
        assert instances_checksum(loader, "dwh.instances") == instances_checksum(cp, "public.instances")


def test_a_new_instance_state_is_copied_and_named_by_its_check(drifting, tmp_path):
    """Copied as the source has it (a refused window would leave a gap pg_cron never refills); the
    accepted_values check names it until the deployment accepts it."""
    day = W0 + dt.timedelta(hours=7)
    check = next(c for c in checks_of(catalog.get("instance_state")) if c.name == "accepted_values")
    with connect(drifting) as loader, connect_control_plane(drifting) as cp, connect(drifting, OWNER_ROLE) as owner:
        instance = cp.execute("SELECT instance_id FROM public.instances LIMIT 1").fetchone()[0]
        cp.execute("INSERT INTO public.instance_state_history (instance_id, state, changed_at) VALUES (%s, 'hibernating', %s)",
                   (instance, day))
        log = refresh(loader, "refresh_instance_state", W0, W1)
        assert fact_checksum(loader, "instance_state", W0, W1, source=False) == \
            fact_checksum(cp, "instance_state", W0, W1, source=True)
        owner.row_factory = dict_row
        passed, metadata = check.run(owner, log)
        assert (passed, metadata["unaccepted_state"], metadata["unaccepted_state_values"]) == (False, 1, "hibernating")

        states = (*catalog.INSTANCE_STATES.values, "hibernating")
        migrate(drifting.deployment().model_copy(update={"accepted_values": {"instance_states": states}}),
                progress=lambda _line: None)
        try:
            assert check.run(owner, log)[0], "the deployment accepts it now"
        finally:
            cp.execute("DELETE FROM public.instance_state_history WHERE state = 'hibernating'")
            migrate(drifting.deployment(), progress=lambda _line: None)
        refresh(loader, "refresh_instance_state", W0, W1)


# ----- Clerk -----------------------------------------------------------------------------------


def test_a_required_clerk_field_the_api_stops_sending_fails_the_refresh(loader, clerk):
    refresh(loader, "refresh_users")
    before = TableState.of(loader, "users")
    clerk.request("POST", "/_admin/faults", {"drop_fields": ["created_at"], "path": "/v1/users"})
    error = failing_refresh(loader, "refresh_users")
    assert isinstance(error, errors.DataException), f"{error.sqlstate}: {error}"
    assert error.diag.message_primary == ("dwh.refresh_users: source Clerk users sent a payload the warehouse cannot load "
                                          "(malformed, missing or mistyped fields)")
    assert "required field 'created_at' is missing" in error.diag.message_detail
    before.assert_unchanged(loader, loader.info.backend_pid)
    clerk.request("DELETE", "/_admin/faults")
    assert refresh(loader, "refresh_users")["rows_source"] == before.data[0]


def test_an_optional_clerk_field_the_api_stops_sending_is_copied_as_null(loader, clerk):
    users, _ = clerk.list_all("users")
    assert any(u.get("username") for u in users), "the generated world has usernames to lose"
    clerk.request("POST", "/_admin/faults", {"drop_fields": ["username"], "path": "/v1/users"})
    try:
        assert refresh(loader, "refresh_users")["rows_source"] == len(users)
        assert loader.execute("SELECT count(*) FILTER (WHERE username IS NOT NULL), count(*) FROM dwh.users"
                              ).fetchone() == (0, len(users))
    finally:
        clerk.request("DELETE", "/_admin/faults")
    refresh(loader, "refresh_users")
    assert loader.execute("SELECT count(*) FROM dwh.users WHERE username IS NOT NULL").fetchone()[0] == \
        sum(1 for u in users if u.get("username"))
