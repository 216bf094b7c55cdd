"""``docs/catalog.md``: the catalog as a reader of the warehouse wants it, generated.

``python -m dwh_assets.warehouse.catalog_docs > docs/catalog.md`` rewrites it; a fast test
fails when the file and the catalog disagree, so the page never drifts.
"""

from __future__ import annotations

from dwh_assets.warehouse import quality_gate
from dwh_assets.warehouse.catalog import MAINTENANCE_SCHEDULES, PRODUCT, Catalog
from dwh_assets.warehouse.catalog_model import Column, Erase, Kind, MartSpec, Table, TableSpec, ViewSpec, marked

HEADER = """# The catalog

Generated from `dwh_assets/warehouse/catalog.py` by `python -m dwh_assets.warehouse.catalog_docs >
docs/catalog.md` (a test fails when they disagree): edit the catalog, then regenerate. How to
add an entry: [adding-a-table.md](adding-a-table.md).
"""


PERSONAL_INTRO = """Columns marked personal in the catalog, or computed from one (their `COMMENT` begins with
`[personal data]`; Dagster tags them `personal_data`). `dwh_reader` may not select them; a login
granted `dwh_personal_reader` may. Snapshots keep none of them. Why, for how long, and how to erase:
[personal-data.md](personal-data.md)."""

SUBJECTS_INTRO = """Where the id of a subject of `dwh forget --user` / `--organization` is held: its rows go where
the id is part of the entry's key, else the value is cleared (in `attrs` too)."""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _columns(item: Table | ViewSpec, catalog: Catalog) -> list[str]:
    rows = ["| column | type | what it holds | rules |", "| --- | --- | --- | --- |"]
    personal = catalog.personal_columns(item.relation)
    for column in item.columns:
        rows.append(f"| `{column.name}` | {column.type} | {_cell(marked(column.comment, column.name in personal))} | "
                    f"{_rules(item, column)} |")
    return rows


def _rules(item: Table | ViewSpec, column: Column) -> str:
    rules = []
    if column.subject:
        rules.append(f"{column.subject.value} id (`dwh forget --{column.subject.value}`)")
    if isinstance(item, Table) and column.name in item.primary_key:
        rules.append("key")
    if isinstance(item, Table) and column.name == item.partition_by:
        rules.append("partitioned by day")
    if column.references:
        rules.append(f"references `{column.references}`")
    if column.accepted:
        rules.append(f"one of `{column.accepted.setting}` (default: {', '.join(column.accepted.values)})")
    if not column.stored:
        rules.append("computed by the view")
    if column.lineage:
        rules.append("from " + ", ".join(f"`{ref}`" for ref in column.lineage))
    return "; ".join(rules)


def _entry(entry: TableSpec | MartSpec, catalog: Catalog) -> list[str]:
    if isinstance(entry, TableSpec):
        title = f"`{entry.local_table}` ({entry.kind.value})"
        facts = [f"sources: {', '.join(f'`{s}`' for s in entry.sources)}",
                 f"key: ({', '.join(entry.key)})" + (f"; partitioned by day of `{entry.time_column}`, pg_cron "
                                                     f"re-reads {entry.lookback_days} day(s) back"
                                                     if entry.kind is Kind.FACT else
                                                     f"; daily snapshots in `{entry.snapshot_table}`"
                                                     + (" (without the personal columns)"
                                                        if len(entry.snapshot.columns) <= len(entry.columns) else ""))]
        tables = [entry.table, *entry.also_writes]
    else:
        title = f"`{entry.relation}` (mart)"
        facts = [f"reads: {', '.join(f'`{r}`' for r in entry.reads)}; stored per day in `{entry.table}`",
                 f"refreshed when these copies change: {', '.join(entry.stale_when)}"]
        tables = [entry.view]
    retention = f"{entry.retention_days} days" if entry.retention_days else "all"
    facts += [f"routine `{entry.routine}({entry.routine_arguments})` in `{entry.routine_file}`; pg_cron job "
              f"`{entry.cron_job_name}` on `{entry.schedule}` (GMT), a run cancelled after {entry.timeout}; "
              f"overdue after {entry.freshness} (two schedule intervals + its typical duration, {entry.typical_duration}); "
              f"partitions kept: {retention}"]
    if isinstance(entry, TableSpec) and entry.arrival is not None:
        facts.append(_arrival(entry))
    checks = [c.name for c in entry.checks]
    if checks:
        facts.append(f"its own checks: {', '.join(checks)}")
    if isinstance(entry, TableSpec):
        facts.append("quality gate (a failure holds the queued days of the marts reading it): "
                     + ", ".join(c.name for c in quality_gate.gate_checks(entry)))
    else:
        facts.append(f"its days are held while a refresh of {', '.join(entry.stale_when)} fails its quality gate")
    lines = [f"### {title}", "", entry.description, "", *[f"- {f}" for f in facts], ""]
    for table in tables:
        if len(tables) > 1:
            lines += [f"`{table.relation}`:", ""]
        lines += [*_columns(table, catalog), ""]
    return lines


def _view_reads(view: ViewSpec) -> str:
    """Its lineage, when it reads assets (a view of configuration tables reads none)."""
    return f"reads: {', '.join(f'`{r}`' for r in view.reads)}; " if view.reads else ""


def _arrival(spec: TableSpec) -> str:
    arrival = spec.arrival
    if arrival.column is None:
        how = f"late data: no arrival column; the scheduled window re-reads {spec.lookback_days} day(s) back. "
    else:
        how = (f"late data: arrival watermark `{arrival.column}` (source index {arrival.source_index}; each lookup "
               f"re-reads the last {arrival.overlap.total_seconds() / 60:g} minutes of arrivals). ")
    return how + _cell(arrival.reason) + " Reconciled with the source daily."


def _reconciliation(catalog: Catalog) -> list[str]:
    rec = catalog.reconciliation
    if rec is None or not catalog.reconciled():
        return []
    return [f"## The daily reconciliation: `{rec.relation}`", "", rec.description, "",
            f"- routine `{rec.routine}()` in `{rec.routine_file}`; pg_cron job `{rec.cron_job_name}` on "
            f"`{rec.schedule}` (GMT); reconciles {', '.join(f'`{s.local_table}`' for s in catalog.reconciled())}",
            "", *_columns(rec.table, catalog), ""]


def _personal_data(catalog: Catalog) -> list[str]:
    """The inventory of personal data and of where dwh forget finds each subject (docs/personal-data.md)."""
    lines = ["## Personal data", "", PERSONAL_INTRO, "", "| relation | column | what it holds |", "| --- | --- | --- |"]
    for item in (*catalog.all_tables(), *catalog.all_views()):
        personal = catalog.personal_columns(item.relation)
        lines += [f"| `{item.relation}` | `{c.name}` | {_cell(c.comment)} |" for c in item.columns if c.name in personal]
    lines += ["", SUBJECTS_INTRO, "", "| subject | relation | column | dwh forget |", "| --- | --- | --- | --- |"]
    for found in sorted(catalog.subject_columns(), key=lambda f: (f.subject.value, f.relation, f.column)):
        what = "deletes the row" if found.erase is Erase.ROW else "clears the value"
        lines.append(f"| {found.subject.value} | `{found.relation}` | `{found.column}` | {what} |")
    return lines + [""]


def render(catalog: Catalog = PRODUCT) -> str:
    lines = [HEADER, "## Copies of the sources", ""]
    for spec in catalog.tables:
        lines += _entry(spec, catalog)
    lines += ["## Marts", ""]
    for mart in catalog.marts:
        lines += _entry(mart, catalog)
    lines += _reconciliation(catalog)
    lines += ["## Views", ""]
    for view in catalog.views:
        lines += [f"### `{view.relation}`", "", view.description, "",
                  f"- {_view_reads(view)}defined in `{view.sql_file}`", "",
                  *_columns(view, catalog), ""]
    lines += _personal_data(catalog)
    lines += ["## Accepted values", "", "| set | default | dwh.settings key |", "| --- | --- | --- |"]
    lines += [f"| `{a.name}` | {', '.join(a.values)} | `{a.setting}` |" for a in catalog.accepted_values()]
    lines += ["", "## Maintenance jobs", "", "| job | default schedule (GMT) |", "| --- | --- |"]
    lines += [f"| `{job}` | `{schedule}` |" for job, schedule in MAINTENANCE_SCHEDULES.items()]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
