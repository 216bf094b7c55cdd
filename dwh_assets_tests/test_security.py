"""Secrets stay secret and the stack stays on loopback.

- The Clerk key, every role password and Superset's SECRET_KEY and admin password appear in no file of the stack home outside the
  places meant for them, in no catalog option the loader or the reader can read, and in
  no process command line (checked while the source reader runs).
- Every socket the stack's processes listen on is bound to the loopback interface.

Who may read and run what is in test_roles.py.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from pathlib import Path

import psycopg
import pytest

from dwh_assets.local.config import LOADER_ROLE, OWNER_ROLE, READER_ROLE, StackConfig
from dwh_assets.local import secrets
from dwh_assets_tests.fault_helpers import FAST_READER_ENV, children, connect, failing_refresh, reader_env, wait_for


def all_secrets(cfg: StackConfig) -> dict[str, str]:
    found = {f"password of {role}": pw for role, pw in secrets.passwords(cfg).items()}
    found["Clerk secret key"] = secrets.clerk_secret_key(cfg)
    found["Superset SECRET_KEY"] = secrets.superset_secret_key(cfg)
    found["Superset admin password"] = secrets.superset_admin_password(cfg)
    assert all(len(value) >= 16 for value in found.values()), "secrets too short to search for"
    return found


def leaks(text: bytes | str, cfg: StackConfig) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [name for name, value in all_secrets(cfg).items() if value.encode() in data]


# ----- Dagster's storage ------------------------------------------------------------------------


def test_no_secret_in_dagster_runs_or_event_metadata(stack, cfg, clerk):
    """A successful and a failing Clerk refresh through Dagster, then every stored run and event is searched."""
    import datetime as dt
    import subprocess

    from dwh_assets.local.config import DAGSTER_DB, REPO_ROOT
    from dwh_assets.local.dagster import venv_bin

    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    argv = [venv_bin("dg"), "launch", "-m", "dwh_assets.definitions", "--assets", "dwh/users"]
    ok = subprocess.run(argv, cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=600, check=False)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    clerk.request("POST", "/_admin/faults", {"status": 503, "path": "/v1/users"})
    with reader_env(cfg, **FAST_READER_ENV):
        bad = subprocess.run(argv, cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=600, check=False)
    assert bad.returncode != 0 and "source Clerk users" in bad.stdout + bad.stderr
    assert leaks(ok.stdout + ok.stderr + bad.stdout + bad.stderr, cfg) == []
    with stack.postgres.connect(DAGSTER_DB) as dagster_db:
        events = dagster_db.execute("SELECT count(*), coalesce(string_agg(event, E'\\n'), '') FROM event_logs").fetchone()
        runs = dagster_db.execute("SELECT coalesce(string_agg(run_body, E'\\n'), '') FROM runs").fetchone()[0]
    assert events[0] > 0
    assert leaks(events[1], cfg) == [] and leaks(runs, cfg) == []


# ----- files --------------------------------------------------------------------------------------

# Where secrets live on purpose (0600/0700, see stack/secrets.py and stack/reader_install.py:
# the Clerk key, and the control plane's passfile for the events refresh's psql), and the
# database files (a user mapping's password is catalog data).
SECRET_PLACES = ("secrets", "reader/secrets.json", "reader/control_plane.pgpass", "pgdata", "prometheus/data")


def stack_files(home: Path) -> list[Path]:
    skipped = [home / place for place in SECRET_PLACES]
    files = []
    for root, dirs, names in os.walk(home):
        dirs[:] = [d for d in dirs if Path(root, d) not in skipped]
        files += [Path(root, n) for n in names if Path(root, n) not in skipped and Path(root, n).is_file()]
    return files


def test_no_secret_in_any_log_or_file_of_the_stack_home(cfg, superset, loader, clerk):
    # Exercise the paths that could log a key or a password: failed reads, a failed fdw connection.
    with reader_env(cfg, **FAST_READER_ENV):
        for fault in ({"status": 401}, {"status": 500}, {"malformed_json": True}):
            clerk.request("POST", "/_admin/faults", fault)
            failing_refresh(loader, "refresh_users")
    with connect(cfg, OWNER_ROLE, autocommit=False) as owner:
        owner.execute("ALTER SERVER control_plane OPTIONS (SET port '1')")
        failing_refresh(owner, "refresh_instances")
        owner.rollback()

    files = stack_files(cfg.home)
    scanned = {str(p.relative_to(cfg.home)) for p in files}
    assert {"logs/postgres.log", "logs/clerk-emulator.log", "logs/prometheus.log", "reader/reader.json",
            "logs/superset.log"} <= scanned
    found = {str(p.relative_to(cfg.home)): names for p in files if (names := leaks(p.read_bytes(), cfg))}
    assert found == {}


# ----- catalog options ----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [LOADER_ROLE, READER_ROLE])
def test_no_secret_in_catalog_options_a_non_owner_can_read(cfg, role):
    """pg_foreign_table / pg_foreign_server are world-readable; user mapping options are not meant to be."""
    with connect(cfg, role) as conn:
        options = conn.execute(
            "SELECT 'table ' || ftrelid::regclass, ftoptions::text FROM pg_foreign_table"
            " UNION ALL SELECT 'server ' || srvname, srvoptions::text FROM pg_foreign_server"
            " UNION ALL SELECT 'user mapping ' || srvname || ' ' || usename, umoptions::text FROM pg_user_mappings"
        ).fetchall()
    text = "\n".join(f"{what}: {opts}" for what, opts in options)
    assert "program=" in text and "host=" in text and "user mapping control_plane" in text, text
    assert leaks(text, cfg) == []


# ----- process command lines ------------------------------------------------------------------------------


def cmdlines() -> dict[int, bytes]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
    return found


def test_no_secret_on_any_process_command_line(stack, cfg, superset, loader, clerk):
    """Scanned while the source reader runs (a hanging Clerk keeps it alive), with every component up."""
    clerk.request("POST", "/_admin/faults", {"delay_seconds": 300})
    errors: list[psycopg.Error] = []
    with reader_env(cfg, **FAST_READER_ENV):
        def refresh_users() -> None:
            with connect(cfg) as conn:
                errors.append(failing_refresh(conn, "refresh_users"))

        worker = threading.Thread(target=refresh_users)
        worker.start()
        try:
            reader_running = wait_for(
                lambda: {pid: c for pid, c in cmdlines().items() if b"dwh_source_reader.py" in c}, 60,
                "the source reader to run")
            lines = cmdlines()
        finally:
            worker.join(120)
    assert errors and errors[0].sqlstate == "08006", errors
    components = {c.name: c.pid() for c in stack.components}
    assert all(components.values()) and set(components.values()) <= set(lines), components
    assert set(reader_running) <= set(lines)
    found = {pid: names for pid, line in lines.items() if (names := leaks(line, cfg))}
    assert found == {}, {pid: (lines[pid][:200], names) for pid, names in found.items()}


# ----- listening sockets ---------------------------------------------------------------------------------

TCP_LISTEN = "0A"


def parse_address(hex_address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """/proc/net/{tcp,udp}[6] ``ADDR:PORT``: the address in host (little-endian) 32-bit words."""
    address, port = hex_address.split(":")
    raw = bytes.fromhex(address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    return ip, int(port, 16)


def bound_sockets() -> dict[int, tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """inode -> (protocol, address, port) of TCP listening and UDP bound sockets."""
    found = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if proto.startswith("tcp") and state != TCP_LISTEN:
                continue
            ip, port = parse_address(local)
            found[inode] = (proto, ip, port)
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:["):-1]))
    except OSError:
        pass
    return inodes


def is_loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def test_every_listening_socket_of_the_stack_is_on_loopback(stack, cfg, superset):
    pids = children({c.pid() for c in stack.components if c.pid()})
    sockets = bound_sockets()
    mine = {(pid, *sockets[inode]) for pid in pids for inode in socket_inodes(pid) if inode in sockets}
    listening_ports = {port for _, proto, _, port in mine if proto.startswith("tcp")}
    assert set(cfg.ports.values()) <= listening_ports, "every component's port should be found listening"
    exposed = sorted((pid, proto, str(ip), port) for pid, proto, ip, port in mine if not is_loopback(ip))
    assert exposed == [], "sockets bound beyond loopback"
