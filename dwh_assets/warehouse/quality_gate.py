"""The quality gate: a copy's blocking checks, written once as SQL that both paths run.

A copy's blocking checks are derived from its catalog entry: ``rows_match_source`` (facts),
``key_is_unique`` (facts whose key is not their primary key), ``row_count_matches_source``
(dimensions), and every ``WindowCheck`` it declares with ``blocking=True``. Each is a query
counting offending rows (``bad``) with the parameters of ``WindowCheck`` plus ``%(log_id)s``,
the refresh's ``dwh.refresh_log`` row. The same text is

- evaluated by Dagster after a run's refresh and by the pg_cron sensor after pg_cron's
  (``defs.checks``): the check users see;
- written by ``dwh migrate`` into ``dwh.quality_gates`` (``as_plpgsql``), which
  ``dwh.apply_quality_gate`` runs at the end of every refresh of the copy, in its own
  transaction (``dwh.log_refresh``). A failure holds the queued days of every mart that
  reads the copy (``dwh.mart_pending.held_reason``); the next passing refresh releases them,
  and the marts' pg_cron jobs refresh them. No Dagster is needed for any of it.

Each mart has the check ``no_days_held`` (``held_days_check``), failed while any of its
queued days is held; its metadata lists the days and the reason.
"""

from __future__ import annotations

import re

from psycopg import sql

from dwh_assets.warehouse.catalog_model import Kind, MartSpec, TableSpec, WindowCheck

# The order of the parameters as dwh.apply_quality_gate passes them (EXECUTE ... USING $1..$5).
GATE_PARAMETERS = ("start", "end", "first_day", "end_day", "log_id")
HELD_CHECK = "no_days_held"
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _ident(relation: str) -> str:
    return sql.Identifier(*relation.split(".")).as_string(None)


def rows_match_source(spec: TableSpec) -> WindowCheck:
    return WindowCheck(
        "rows_match_source", f"The refresh inserted every row it read from {spec.sources[0]} for its window.",
        "SELECT (l.rows_inserted IS DISTINCT FROM l.rows_source)::int AS bad, l.rows_inserted, "
        "coalesce(l.rows_source, 0) AS rows_source FROM dwh.refresh_log l WHERE l.id = %(log_id)s",
        blocking=True)


def key_is_unique(spec: TableSpec) -> WindowCheck:
    """No key twice in the window and the days before it a moved row could still occupy (the
    lookback): a row whose time changed at the source across the window's edge is copied again
    while its old copy stays, until that day is refreshed too."""
    keys = ", ".join(sql.Identifier(k).as_string(None) for k in spec.key)
    column = sql.Identifier(spec.time_column).as_string(None)
    reach = f"interval '{max(1, spec.lookback_days)} days'"
    return WindowCheck(
        "key_is_unique", f"No two rows of the refreshed window and its lookback share ({', '.join(spec.key)}).",
        f"SELECT count(*)::int AS bad, count(*)::int AS duplicated_keys, "
        f"(%(start)s::timestamptz - {reach})::text AS checked_from "
        f"FROM (SELECT {keys} FROM {_ident(spec.local_table)} WHERE {column} >= %(start)s::timestamptz - {reach} "
        f"AND {column} < %(end)s::timestamptz GROUP BY {keys} HAVING count(*) > 1) d",
        blocking=True)


def row_count_matches_source(spec: TableSpec) -> WindowCheck:
    return WindowCheck(
        "row_count_matches_source", f"{spec.local_table} has as many rows as the refresh read from {spec.sources[0]}.",
        f"SELECT (t.n IS DISTINCT FROM l.rows_source)::int AS bad, t.n AS local_rows, "
        f"coalesce(l.rows_source, 0) AS source_rows FROM dwh.refresh_log l, "
        f"(SELECT count(*) AS n FROM {_ident(spec.local_table)}) t WHERE l.id = %(log_id)s",
        blocking=True)


def gate_checks(spec: TableSpec) -> tuple[WindowCheck, ...]:
    """The copy's blocking checks: a failure holds its marts' days."""
    if spec.kind is Kind.FACT:
        derived = (rows_match_source(spec), *((key_is_unique(spec),) if spec.key_needs_check else ()))
    else:
        derived = (row_count_matches_source(spec),)
    return (*derived, *(c for c in spec.checks if c.blocking))


def held_days_check(mart: MartSpec) -> WindowCheck:
    name = sql.Literal(mart.name).as_string(None)
    return WindowCheck(
        HELD_CHECK, f"No queued day of {mart.relation} is held back by a failed blocking check of a copy it reads "
                    f"({', '.join('dwh.' + c for c in mart.stale_when)}).",
        "SELECT count(*)::int AS bad, coalesce(string_agg(day::text, ', ' ORDER BY day), 'none') AS held_days, "
        "coalesce(min(held_reason), 'none') AS reason, coalesce(min(held_since)::text, 'never') AS held_since "
        f"FROM dwh.mart_pending WHERE mart = {name} AND held_reason IS NOT NULL")


def as_plpgsql(check: WindowCheck) -> str:
    """The check's query for EXECUTE ... USING (start, end, first_day, end_day, log_id)."""
    def positional(match: re.Match) -> str:
        if match[1] not in GATE_PARAMETERS:
            raise ValueError(f"check {check.name} uses %({match[1]})s; a gate check may use only "
                             f"{', '.join(GATE_PARAMETERS)}")
        return f"${GATE_PARAMETERS.index(match[1]) + 1}"

    return _PLACEHOLDER.sub(positional, check.query).replace("%%", "%")


def gate_rows(tables: tuple[TableSpec, ...]) -> set[tuple[str, str, str, str]]:
    """dwh.quality_gates: (copy, check, description, query) for every copy's blocking checks."""
    return {(spec.log_table, check.name, check.description, as_plpgsql(check))
            for spec in tables for check in gate_checks(spec)}
