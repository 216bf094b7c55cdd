"""The SQL files agree with the catalog, read without a server.

``sql/`` is parsed: each entry's file defines its routine with the catalog's signature (and a
mart's file its view), the relations each view and routine reads are the ones the catalog
declares, no file registers partitions or writes comments the catalog derives, no
migration creates a relation the catalog declares, and no file is left that no entry or the
framework owns. The SQL convention this relies on: every relation is schema-qualified.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dwh_assets.warehouse import catalog, catalog_ddl
from dwh_assets.warehouse.catalog import PRODUCT
from dwh_assets.warehouse.sql_files import MIGRATIONS_DIR, SQL_DIR

# Routines of the shared framework whose names look like an entry's.
FRAMEWORK_ROUTINES = {"dwh.refresh_pending_mart", "dwh.refresh_dimension", catalog.ARRIVALS_ROUTINE, "dwh.refresh_days"}
FUNCTION = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(\w+\.\w+)\s*\(", re.I)
VIEW = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+(\w+\.\w+)\s+AS\b", re.I)
# What a statement reads: FROM / JOIN followed by a schema-qualified relation or function.
READS = re.compile(r"(?<!DELETE )\b(?:FROM|JOIN)\s+(\w+\.\w+)", re.I)
SOURCE = re.compile(r"\bsrc_\w+\.\w+")


def code(path: Path) -> str:
    """The file without its comments (a comment naming a relation reads nothing)."""
    return re.sub(r"--[^\n]*", "", path.read_text())


def argument_types(arguments: str) -> str:
    """``p_start timestamptz, p_day date DEFAULT ...`` -> ``timestamptz, date``."""
    types = [re.split(r"\s+DEFAULT\s+", a.strip(), flags=re.I)[0].split()[-1] for a in arguments.split(",") if a.strip()]
    return ", ".join(types)


def functions(text: str) -> dict[str, tuple[str, str]]:
    """name -> (argument types, return type) of each function the text creates."""
    found = {}
    for m in FUNCTION.finditer(text):
        depth, i = 1, m.end()
        while depth:  # the argument list ends at its matching parenthesis (defaults have their own)
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        returns = re.match(r"\s*RETURNS\s+([\w.]+)", text[i:], re.I)
        found[m[1]] = (argument_types(text[m.end():i - 1]), returns[1] if returns else "")
    return found


def view_bodies(text: str) -> dict[str, str]:
    """Each view's defining query: from its CREATE to the statement's end."""
    found = {}
    for m in VIEW.finditer(text):
        found[m[1]] = text[m.end():text.index(";", m.end())]
    return found


def lineage(relations: set[str]) -> set[str]:
    """Relations as the lineage names them: a function through what it reads, configuration left out."""
    return {catalog.READ_THROUGH.get(r, r) for r in relations} - set(catalog.CONFIGURATION)


def all_sql() -> dict[Path, str]:
    return {p: code(p) for p in sorted(SQL_DIR.rglob("*.sql"))}


# ----- routines ------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", PRODUCT.refreshed(), ids=lambda e: e.name)
def test_each_entrys_file_defines_its_routine_with_the_catalogs_signature(entry):
    defined = functions(code(PRODUCT.sql_path(entry.routine_file)))
    assert defined.get(entry.routine) == (entry.routine_arguments, "dwh.refresh_log"), \
        f"{entry.routine_file} must define {entry.routine}({entry.routine_arguments}) RETURNS dwh.refresh_log"


def test_the_late_data_routines_have_the_signatures_the_jobs_and_grants_use():
    defined = {name: args for text in all_sql().values() for name, (args, _returns) in functions(text).items()}
    assert defined[catalog.ARRIVALS_ROUTINE] == catalog.ARRIVALS_ROUTINE_ARGUMENTS
    for routine, arguments in catalog_ddl.late_data_routines(PRODUCT):
        assert defined[routine] == arguments, routine


def test_no_file_defines_a_refresh_routine_the_catalog_does_not_declare():
    declared = {entry.routine for entry in PRODUCT.refreshed()} | FRAMEWORK_ROUTINES
    defined = {name for text in all_sql().values() for name in functions(text) if name.startswith("dwh.refresh_")}
    assert defined - declared == set(), "a routine without a catalog entry: declare it, or delete the file"


def test_every_sql_file_belongs_to_an_entry_the_framework_or_a_migration():
    owned = {PRODUCT.sql_path(e.routine_file) for e in PRODUCT.refreshed()} | {
        PRODUCT.sql_path(v.sql_file) for v in PRODUCT.views} | {PRODUCT.sql_path(PRODUCT.reconciliation.routine_file)}
    framework = set(catalog_ddl.framework_files(PRODUCT))
    for path, text in all_sql().items():
        if path.parent == MIGRATIONS_DIR or path in owned:
            continue
        assert path in framework, path
        # Framework files hold shared routines only: an entry's view or routine there would hide it.
        assert not VIEW.search(text), f"{path.name} defines a view: give it a catalog entry and its own file"


@pytest.mark.parametrize("spec", PRODUCT.tables, ids=lambda s: s.name)
def test_a_copys_routine_reads_only_the_sources_the_catalog_names(spec):
    read = set(SOURCE.findall(code(PRODUCT.sql_path(spec.routine_file))))
    assert read <= set(spec.sources), f"{spec.routine_file} reads {read - set(spec.sources)}, which {spec.name} does not name"
    everywhere = {s for text in all_sql().values() for s in SOURCE.findall(text)}
    assert set(spec.sources) <= everywhere, "a declared source no routine reads"


@pytest.mark.parametrize("spec", [s for s in PRODUCT.tables if s.kind is catalog.Kind.DIMENSION], ids=lambda s: s.name)
def test_dimension_routines_share_the_framework_skeleton(spec):
    text = code(PRODUCT.sql_path(spec.routine_file))
    assert f"dwh.refresh_dimension('{spec.name}'" in text
    for part in ("check_snapshot_day", "lock_refresh", "merge_dimension", "write_snapshot", "EXCEPTION"):
        assert part not in text, f"{spec.routine_file} repeats the skeleton ({part}) that dwh.refresh_dimension holds"


# ----- views -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("view", PRODUCT.all_views(), ids=lambda v: v.relation)
def test_each_view_reads_what_the_catalog_says(view):
    bodies = view_bodies(code(PRODUCT.sql_path(view.sql_file)))
    assert view.relation in bodies, f"{view.sql_file} must define the view {view.relation}"
    ctes = set(re.findall(r"\b(\w+)\s+AS\s+(?:MATERIALIZED\s+)?\(", bodies[view.relation], re.I))
    read = lineage(set(READS.findall(bodies[view.relation]))) - ctes
    assert read == set(view.reads), f"{view.relation} reads {sorted(read)}; the catalog says {sorted(view.reads)}"


@pytest.mark.parametrize("mart", PRODUCT.marts, ids=lambda m: m.name)
def test_a_marts_file_reads_what_the_catalog_says(mart):
    read = lineage(set(READS.findall(code(PRODUCT.sql_path(mart.routine_file)))))
    assert read - {mart.table} == set(mart.reads), f"{mart.routine_file} reads {sorted(read)}; the catalog says {mart.reads}"


# ----- what the catalog derives is written nowhere else ----------------------------------------------


def test_no_sql_file_registers_partitions_or_comments_a_catalog_relation():
    relations = {item.relation for item in (*PRODUCT.all_tables(), *PRODUCT.all_views())}
    for path, text in all_sql().items():
        calls = re.findall(r"(?:partman\.create_parent|dwh\.partman_create_daily)\s*\(\s*'([\w.]+)'", text)
        assert calls == [], f"{path.name} registers {calls} with pg_partman: the catalog's partition_by does"
        commented = set(re.findall(r"COMMENT\s+ON\s+(?:TABLE|VIEW|COLUMN)\s+(\w+\.\w+)", text, re.I))
        assert commented & relations == set(), f"{path.name} comments {commented & relations}: the catalog does"


def test_no_migration_creates_a_relation_the_catalog_declares():
    relations = {item.relation for item in (*PRODUCT.all_tables(), *PRODUCT.all_views())}
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        created = set(re.findall(r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:TABLE|VIEW)\s+(\w+\.\w+)", code(path), re.I))
        assert created & relations == set(), f"{path.name} creates {created & relations}, which the catalog creates"


def test_migrations_are_numbered_without_gaps():
    numbers = [int(p.name.split(".")[0]) for p in sorted(MIGRATIONS_DIR.glob("*.sql"))]
    assert numbers == list(range(1, len(numbers) + 1))


def test_the_dashboard_health_views_do_not_parse_job_names():
    """Which table a job refreshes comes from dwh.refresh_jobs (the catalog), not from its name."""
    for path, text in all_sql().items():
        assert "LIKE 'dwh:refresh_" not in text, path.name
