"""Two wings, imports one way: the warehouse never imports the local demo stack.

- The Dagster code location loads with nothing but its documented environment and pulls
  in none of the local stack, the emulators, the generator, yoyo or the migrate code
  (in a Python of its own: the integration tier).
- No module of ``dwh_assets/warehouse`` imports ``dwh_assets.local`` (read from the source: fast).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dwh_assets.local.config import REPO_ROOT

PACKAGE = REPO_ROOT / "dwh_assets"
# What a code location has no business loading: the demo stack and the migration machinery.
FORBIDDEN = ("dwh_assets.local", "yoyo", "dwh_assets.warehouse.migrate", "dwh_assets.warehouse.bootstrap",
             "prometheus_client")

PROBE = """
import json, sys
import dwh_assets.definitions as d
keys = sorted("/".join(k.path) for k in d.defs().resolve_asset_graph().get_all_asset_keys())
print(json.dumps({"modules": sorted(sys.modules), "keys": keys}))
"""


def load_code_location(env: dict[str, str]) -> subprocess.CompletedProcess:
    # Only the documented environment (and what Python needs to run at all).
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run([sys.executable, "-c", PROBE], env=base | env, cwd="/", capture_output=True, text=True,
                          timeout=300)


@pytest.mark.integration  # loads the code location in a Python of its own
def test_the_code_location_needs_only_its_environment_and_imports_nothing_local():
    done = load_code_location({"DWH_WAREHOUSE_DSN": "host=db.example port=5432 dbname=warehouse user=dwh_loader",
                               "DWH_HISTORY_START": "2026-01-01"})
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.splitlines()[-1])
    leaked = [m for m in loaded["modules"] if m.startswith(FORBIDDEN)]
    assert leaked == []
    assert {"dwh/users", "dwh/metrics", "clerk.users", "mart/org_daily_usage"} <= set(loaded["keys"])


@pytest.mark.integration  # loads the code location in a Python of its own
def test_without_the_history_start_the_code_location_says_what_to_set():
    done = load_code_location({"DWH_WAREHOUSE_DSN": "host=db.example"})
    assert done.returncode != 0
    assert "set DWH_HISTORY_START=YYYY-MM-DD" in done.stderr


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_no_warehouse_module_imports_the_local_stack():
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(m for m in imported_modules(path) if m.startswith("dwh_assets.local"))
        for path in (PACKAGE / "warehouse").rglob("*.py")
    }
    assert {path: mods for path, mods in offenders.items() if mods} == {}
    # The probe above is not vacuous: the local wing does import the warehouse.
    assert any(m.startswith("dwh_assets.warehouse") for p in (PACKAGE / "local").rglob("*.py") for m in imported_modules(p))


def test_the_source_reader_imports_only_the_standard_library():
    """file_fdw runs it with the system Python on the database host: nothing else is there."""
    reader = PACKAGE / "warehouse" / "sources" / "reader.py"
    modules = {m.split(".")[0] for m in imported_modules(reader)}
    assert modules <= set(sys.stdlib_module_names) | {"__future__"}
