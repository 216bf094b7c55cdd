"""What the wheel carries, checked from pyproject.toml and the source tree (no build, no server).

The package lists its sub-packages explicitly (setuptools' discovery cannot see ``sql/``,
which is mapped into the package), so a new sub-package or data file that the list or the
package-data globs miss would be absent from an installed wheel while every test of a
checkout still passed. ``test_package_install.py`` builds and installs the real wheel.
The demo stack's commands, which need the checkout's dev-only files, say so from an installed package.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from importlib.resources import files
from pathlib import Path

import pytest

from dwh_assets.local import local_stack, superset
from dwh_assets.local.config import DEFAULT_PORTS, REPO_ROOT, StackConfig
from dwh_assets.local.process import StackError
from dwh_assets.warehouse import sql_files, superset_export

SETUPTOOLS = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def source_dir(package: str) -> Path:
    """Where setuptools takes ``package`` from: its package-dir mapping, else the dotted path."""
    mapped = SETUPTOOLS.get("package-dir", {})
    return REPO_ROOT / (mapped[package] if package in mapped else package.replace(".", "/"))


def test_every_python_package_of_the_tree_is_in_the_wheel_list():
    found = {".".join(p.parent.relative_to(REPO_ROOT).parts) for p in (REPO_ROOT / "dwh_assets").rglob("__init__.py")}
    assert set(SETUPTOOLS["packages"]) == found | {"dwh_assets.sql"}
    assert SETUPTOOLS["package-dir"] == {"dwh_assets.sql": "sql"}, "sql/ stays at the top of the repository"


def installed_path(package: str, file: Path) -> Path:
    """Where a file of ``package``'s source directory lands in the wheel."""
    return Path(*package.split(".")) / file.relative_to(source_dir(package))


def data_files() -> set[Path]:
    """Every non-Python file of the packages' trees, where the wheel would put it."""
    found = set()
    for package in SETUPTOOLS["packages"]:
        root = source_dir(package)
        found |= {installed_path(package, p) for p in root.rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    return found


def test_every_data_file_matches_a_package_data_glob():
    """The SQL, the dashboards and the demo's control-plane SQL: nothing the globs leave out."""
    globbed = {installed_path(package, p) for package, patterns in SETUPTOOLS["package-data"].items()
               for pattern in patterns for p in source_dir(package).glob(pattern) if p.is_file()}
    assert data_files() - globbed == set()
    sql = {p for p in globbed if p.parts[:2] == ("dwh_assets", "sql")}
    assert len(sql) == len(list((REPO_ROOT / "sql").rglob("*.sql"))) > 0


def test_the_sql_and_the_dashboards_are_found_through_the_package():
    """importlib.resources resolves them (to the checkout's files in an editable install)."""
    assert sql_files.SQL_DIR == Path(str(files("dwh_assets.sql"))) == REPO_ROOT / "sql"
    assert {p.name for p in sql_files.MIGRATIONS_DIR.glob("*.sql")} == {p.name for p in (REPO_ROOT / "sql/migrations").glob("*.sql")}
    assert (sql_files.ROUTINES_DIR / "refresh_events.sql").read_text().strip() and sql_files.VIEWS_DIR.is_dir()
    assert superset_export.PACKAGED_DASHBOARDS == REPO_ROOT / "dwh_assets/warehouse/dashboards"
    assert superset_export.load_bundle(superset_export.PACKAGED_DASHBOARDS).dashboards


def test_the_demo_stack_and_the_dashboards_export_need_a_checkout(monkeypatch, tmp_path):
    """From an installed package (no checkout), `dwh up` and `dwh dashboards export` say so and touch nothing."""
    monkeypatch.setattr(local_stack, "checkout_root", lambda: None)
    monkeypatch.setattr(superset, "checkout_root", lambda: None)
    cfg = StackConfig(home=tmp_path / "stack", ports=dict(DEFAULT_PORTS), anchor_day=dt.date(2026, 1, 1), seed=1,
                      scale=0.1, server_user="nobody")
    with pytest.raises(StackError, match=r"the demo stack runs from a checkout .* run `dwh migrate --config FILE`"):
        local_stack.LocalStack(cfg).up()
    with pytest.raises(StackError, match=r"belong to an installed package, not to a checkout; give --directory DIR"):
        superset.export_dashboards(cfg)
    assert not (tmp_path / "stack").exists()
