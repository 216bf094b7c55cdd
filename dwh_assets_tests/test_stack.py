"""The local stack: every component answers, `up` is idempotent, `down` stops
all, servers listen on loopback only. Real processes throughout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import psycopg
import pytest

from dwh_assets.local.config import CONTROL_PLANE_DB, DAGSTER_DB, DAGSTER_ROLE, LOADER_ROLE, WAREHOUSE_DB
from dwh_assets.local import secrets
from dwh_assets_tests.conftest import make_home, stack_env


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.read()


def test_every_component_answers(stack, cfg, superset):
    assert all(s.state == "running" for s in stack.status()), stack.status()
    with stack.postgres.connect(WAREHOUSE_DB) as conn:
        assert conn.execute("SELECT current_setting('cron.database_name')").fetchone() == (WAREHOUSE_DB,)
        assert conn.execute("SELECT current_setting('listen_addresses')").fetchone() == ("127.0.0.1",)
    with psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (LOADER_ROLE,)
    with psycopg.connect(cfg.dsn(DAGSTER_DB, DAGSTER_ROLE)) as conn:
        # Dagster created its run/event storage in its own database.
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"runs", "event_logs"} <= tables
    key = secrets.clerk_secret_key(cfg)
    status, body = http_get(f"{cfg.clerk_url}/v1/organizations?limit=1", {"Authorization": f"Bearer {key}"})
    assert status == 200 and json.loads(body)["total_count"] > 0
    assert http_get(f"{cfg.prometheus_url}/-/ready")[0] == 200
    assert b"dwh_instance_memory_bytes" in http_get(f"{cfg.exporter_url}/metrics")[1]
    assert http_get(f"{cfg.dagster_url}/server_info")[0] == 200


def test_prometheus_scrapes_the_exporter(cfg):
    url = f"{cfg.prometheus_url}/api/v1/targets"
    targets = json.loads(http_get(url)[1])["data"]["activeTargets"]
    assert [t["labels"]["job"] for t in targets] == ["dwh_usage"]


def test_control_plane_organizations_are_clerk_organizations(stack, cfg):
    key = secrets.clerk_secret_key(cfg)
    _, body = http_get(f"{cfg.clerk_url}/v1/organizations?limit=500", {"Authorization": f"Bearer {key}"})
    clerk_ids = {o["id"] for o in json.loads(body)["data"]}
    with stack.postgres.connect(CONTROL_PLANE_DB) as conn:
        cp_ids = {r[0] for r in conn.execute("SELECT organization_id FROM public.organizations")}
    assert clerk_ids == cp_ids and len(cp_ids) > 0


def _listening_addresses(ports: set[int]) -> dict[int, set[str]]:
    """Local addresses of LISTEN sockets on the given ports, from /proc/net/tcp{,6}."""
    found: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state != "0A":  # LISTEN
                continue
            addr_hex, port_hex = local.rsplit(":", 1)
            port = int(port_hex, 16)
            if port in ports:
                found.setdefault(port, set()).add(addr_hex)
    return found


def test_servers_listen_on_loopback_only(stack, cfg, superset):
    ports = {p for p in cfg.ports.values()}
    found = _listening_addresses(ports)
    assert set(found) == ports, f"not listening: {ports - set(found)}"
    loopback_v4 = "0100007F"  # 127.0.0.1, little-endian hex
    for port, addrs in found.items():
        assert addrs == {loopback_v4}, f"port {port} listens on {addrs}"


def test_no_secret_on_any_command_line(stack, cfg, superset):
    secret_values = list(secrets.passwords(cfg).values()) + [secrets.clerk_secret_key(cfg)]
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        for value in secret_values:
            assert value not in cmdline, f"a secret appears in the command line of pid {pid_dir.name}"


def _dwh(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dwh_assets.cli", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
    )


def _rows(status_stdout: str) -> list[list[str]]:
    """The component table of `dwh status` (after its two header lines, until the blank line)."""
    lines = status_stdout.splitlines()[3:]
    return [line.split() for line in lines[:lines.index("")] if line.strip()] if "" in lines else \
        [line.split() for line in lines if line.strip()]


@pytest.mark.integration  # runs `dwh up` on a stack of its own
def test_up_is_idempotent_and_down_stops_everything():
    """The README's first command, minus materialisation, on a stack of its own."""
    home = make_home("dwh-lifecycle-")
    env = stack_env(home, scale="0.05")
    try:
        first = _dwh(env, "up", "--no-materialize")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "[1/" in first.stdout  # progress per step
        status = _dwh(env, "status")
        assert status.returncode == 0, status.stdout
        pids_before = [row[2] for row in _rows(status.stdout)]
        assert any(row[0] == "superset" for row in _rows(status.stdout))

        again = _dwh(env, "up", "--no-materialize")
        assert again.returncode == 0, again.stderr
        assert "started" not in again.stdout.replace("already running", "")
        status_again = _dwh(env, "status")
        assert [row[2] for row in _rows(status_again.stdout)] == pids_before

        down = _dwh(env, "down")
        assert down.returncode == 0, down.stderr
        after = _dwh(env, "status")
        assert after.returncode == 3
        states = [row[3] for row in _rows(after.stdout)]
        assert states and set(states) == {"stopped"}
        assert "logs/postgres.log" in after.stdout  # status says where the logs are
    finally:
        _dwh(env, "down")
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.integration  # runs `dwh status`
def test_status_without_a_stack_says_what_to_do(tmp_path):
    result = _dwh({"DWH_HOME": str(tmp_path / "nothing")}, "status")
    assert result.returncode != 0
    assert "dwh up" in result.stderr
