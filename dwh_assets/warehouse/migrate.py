"""``dwh migrate``: bring a warehouse database to the state the code declares.

Against any PostgreSQL 15+ the deployment configuration points at, over TCP:

1. **bootstrap**, as the admin role (``warehouse.bootstrap``): roles, extensions, grants.
   Tried first in transactions that are rolled back; if anything is refused, migrate
   stops there, having changed nothing, and says what the admin role would need;
2. **migrations and the catalog**, as the owner: the migrations (``sql/migrations``,
   yoyo-migrations, tracked in the database), then what ``catalog_ddl`` derives from the
   catalog: the tables a database lacks with their pg_partman partitions, the repeatable SQL
   (framework, routines, views: re-applied every time) and the comments;
3. **settings and sources**, as the owner: ``dwh.settings``, foreign servers, user mappings
   and foreign tables for the configured backends, rebuilt only when their definition changed
   or a Postgres source's tables changed since they were imported (``source_drift``, one line
   per added, dropped or retyped column: imported again);
4. **grants, retention, ``dwh.mart_inputs``, ``dwh.refresh_jobs``, ``dwh.subject_columns`` and
   ``dwh.quality_gates`` (each copy's blocking checks, ``warehouse.quality_gate``) and
   ``dwh.arrival_watermarks``**, as the owner, derived from the catalog (the reader's column
   privileges from its personal marks); as the admin, the loader and owner logins get the
   functions that read their own pg_cron history (``DEFINER_FUNCTIONS``);
5. **pg_cron jobs** (``warehouse.cron_jobs``), each scheduled by the role that runs it, then
   a one-shot probe job per role and database (``warehouse.cron_probe``) proves pg_cron runs them.

Before step 1 changes anything, a preflight reads what later steps rely on: secret files
(private, readable), the passfile the DSNs name, and, in the bootstrap's rolled-back trial,
each Postgres source through the warehouse server (reach, login, contract: ``sources.contract``)
and the installed reader. Everything it finds is reported at once; what only a superuser
may do is one SQL script (``prerequisites``, ``dwh migrate --prerequisites``).

A second run changes nothing: the bootstrap is idempotent, yoyo skips applied migrations,
existing tables and matching comments are left alone, routines and views are ``CREATE OR
REPLACE``, the source layer carries a fingerprint and the pg_cron sync compares before it
schedules. ``plan`` (``dwh migrate --dry-run``) reports what a run
would do without doing it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import psycopg
from psycopg import sql
from yoyo import read_migrations
from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend
from yoyo.connections import parse_uri

from dwh_assets.warehouse import bootstrap, catalog_ddl, cron_jobs, cron_probe, quality_gate
from dwh_assets.warehouse.catalog import (
    LOADER_GROUP,
    OWNER_GROUP,
    PENDING_MART_ROUTINE,
    PENDING_MART_ROUTINE_ARGUMENTS,
    PERSONAL_READER_GROUP,
    PRODUCT,
    READER_GROUP,
    Catalog,
)
from dwh_assets.warehouse.connect import check_passfile, connect, login_password
from dwh_assets.warehouse.deployment import DeploymentConfig, DeploymentError
from dwh_assets.warehouse.sources import contract, foreign_tables, reader_install
from dwh_assets.warehouse.sql_files import MIGRATIONS_DIR

Progress = Callable[[str], None]


def _owner_connect(cfg: DeploymentConfig, autocommit: bool = True) -> psycopg.Connection:
    """The owner's login acting as the owner's privilege role, so every object belongs to it."""
    conn = connect(cfg, "owner", autocommit=autocommit)
    if cfg.warehouse.owner.user != OWNER_GROUP:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(OWNER_GROUP)))
        if not autocommit:
            conn.commit()
    return conn


class _OwnerBackend(PostgresqlPsycopgBackend):
    """yoyo's psycopg 3 backend on a connection we make: no password in any URI."""

    def __init__(self, cfg: DeploymentConfig):
        self._cfg = cfg
        super().__init__(parse_uri("postgresql+psycopg://owner@localhost/warehouse"), "_yoyo_migration")

    def connect(self, dburi):  # noqa: ANN001, ANN201 (yoyo's signature)
        return _owner_connect(self._cfg)

    def copy(self) -> _OwnerBackend:
        return _OwnerBackend(self._cfg)


def _backend(cfg: DeploymentConfig) -> _OwnerBackend:
    backend = _OwnerBackend(cfg)
    backend.init_database()  # yoyo's lock table, as yoyo.get_backend does
    return backend


def pending_migrations(cfg: DeploymentConfig) -> list[str]:
    backend = _backend(cfg)
    return [m.id for m in backend.to_apply(read_migrations(str(MIGRATIONS_DIR)))]


def apply_migrations(cfg: DeploymentConfig, catalog: Catalog = PRODUCT) -> catalog_ddl.TableSync:
    """Versioned migrations (once each), then the catalog's tables, repeatable SQL and comments."""
    if not MIGRATIONS_DIR.is_dir():
        raise DeploymentError(f"no SQL migrations at {MIGRATIONS_DIR}: the dwh_assets package is incomplete; reinstall it")
    backend = _backend(cfg)
    migrations = read_migrations(str(MIGRATIONS_DIR))
    with backend.lock():
        backend.apply_migrations(backend.to_apply(migrations))
        with _owner_connect(cfg) as conn:
            # The framework first (it registers partitions), the tables, then what reads them.
            catalog_ddl.apply_sql_files(conn, catalog_ddl.framework_files(catalog))
            tables = catalog_ddl.sync_tables(conn, catalog)
            catalog_ddl.apply_sql_files(conn, catalog_ddl.entry_files(catalog))
            tables.comments = catalog_ddl.sync_comments(conn, catalog)
    return tables


def source_layer(cfg: DeploymentConfig, cron_database: str) -> foreign_tables.SourceDDL:
    """Every foreign server and table of the warehouse: the sources, and pg_cron's tables where it lives elsewhere."""
    ddl = foreign_tables.source_ddl(cfg)
    passwords = {}
    if cron_database != cfg.warehouse.database:
        passwords = {cfg.logins()[p].user: login_password(cfg, p, cron_database) for p in ("owner", "loader")}
    ddl += foreign_tables.cron_history_ddl(cfg, cron_database, passwords)
    return ddl


def settings(cfg: DeploymentConfig, cron_database: str, catalog: Catalog = PRODUCT) -> dict[str, str]:
    """dwh.settings: what the routines and Dagster read from the database. No secrets."""
    metrics = cfg.prometheus.metrics.as_dict()
    values = {
        "refresh.max_drop_fraction": repr(cfg.refresh.max_drop_fraction),
        "backend.prometheus": cfg.prometheus.backend,
        "backend.clerk": cfg.clerk.backend,
        "reader.command": reader_install.reader_program(cfg),
        # dwh.refresh_events: fdw or copy (psql on the server, with the passfile of `dwh reader install`).
        "control_plane.transfer": cfg.control_plane_transfer(),
        "control_plane.psql": cfg.reader.psql,
        "control_plane.passfile": str(reader_install.control_plane_passfile(cfg)),
        "metrics.step_seconds": str(cfg.prometheus.step_seconds),
        "metrics.names": ",".join(metrics.values()),
        "history.start": cfg.history.start.isoformat(),
        "cron.database": cron_database,
    }
    values.update({f"metrics.{purpose}": name for purpose, name in metrics.items()})
    # The checks read the deployment's accepted values here (it may know more instance states).
    values.update({accepted.setting: ",".join(cfg.accepted(accepted)) for accepted in catalog.accepted_values()})
    # A failed read names the source tables of its refresh (sql/routines/00_source_drift.sql).
    values.update({f"refresh.sources.{spec.name}": ",".join(spec.sources) for spec in catalog.tables})
    return values


def _source_fingerprint(conn: psycopg.Connection, ddl: foreign_tables.SourceDDL) -> str:
    rendered = "\n".join(s.as_string(conn) for s in ddl.statements)
    return hashlib.sha256(rendered.encode()).hexdigest()


def sources_changed(conn: psycopg.Connection, cfg: DeploymentConfig, cron_database: str,
                    catalog: Catalog = PRODUCT) -> tuple[bool, bool]:
    """(settings differ, source DDL differs) from what the database holds."""
    wanted = settings(cfg, cron_database, catalog) | {"sources.fingerprint": _source_fingerprint(conn, source_layer(cfg, cron_database))}
    exists = conn.execute("SELECT to_regclass('dwh.settings') IS NOT NULL").fetchone()[0]
    current = dict(conn.execute("SELECT key, value FROM dwh.settings").fetchall()) if exists else {}
    return current != wanted, current.get("sources.fingerprint") != wanted["sources.fingerprint"]


# Where the source layer's postgres_fdw tables live (the control plane's, the relay's).
SOURCE_SCHEMAS = tuple(dict.fromkeys(foreign_tables.RELAY_SCHEMAS.values()))


def source_drift(conn: psycopg.Connection) -> list[str]:
    """How the Postgres sources' tables now differ from the warehouse's import of them, a line each.

    Read through the warehouse server (``dwh.source_drift``): a column the source added, dropped
    or retyped since the last import. Empty before the first import, and when nothing changed.
    """
    if conn.execute("SELECT to_regprocedure('dwh.source_drift(regclass)') IS NULL").fetchone()[0]:
        return []
    rows = conn.execute(
        "SELECT ft.ftrelid::regclass::text, d.column_name, d.change, d.was, d.now FROM pg_foreign_table ft "
        "JOIN pg_class c ON c.oid = ft.ftrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "CROSS JOIN LATERAL dwh.source_drift(ft.ftrelid) d WHERE n.nspname = ANY(%s) ORDER BY 1, 3, 2",
        (list(SOURCE_SCHEMAS),)).fetchall()
    return [drift_line(*row) for row in rows]


def drift_line(table: str, column: str | None, change: str, was: str | None, now: str | None) -> str:
    return {"table gone": f"{table}: the source table is gone (or no longer readable)",
            "gone": f"{table}: column {column} ({was}) is gone at the source",
            "retyped": f"{table}: column {column} is {now} at the source, it was {was}",
            "new": f"{table}: column {column} ({now}) is new at the source"}[change]


def sync_sources(conn: psycopg.Connection, cfg: DeploymentConfig, cron_database: str,
                 catalog: Catalog = PRODUCT, drift: list[str] | None = None) -> bool:
    """Write settings and (re)build the source layer when its definition changed, or a source's tables did
    (``drift``, from ``source_drift``: the tables are imported again)."""
    ddl = source_layer(cfg, cron_database)
    fingerprint = _source_fingerprint(conn, ddl)
    wanted = settings(cfg, cron_database, catalog) | {"sources.fingerprint": fingerprint}
    current = dict(conn.execute("SELECT key, value FROM dwh.settings").fetchall())
    if current == wanted and not drift:
        return False
    with conn.transaction():
        conn.execute("DELETE FROM dwh.settings")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO dwh.settings (key, value) VALUES (%s, %s)", list(wanted.items()))
        if current.get("sources.fingerprint") != fingerprint or drift:
            # A source switched back to the reader would keep its tembo tables otherwise.
            for source, server in foreign_tables.TEMBO_SERVERS.items():
                if cfg.backends()[source] != "tembo":
                    conn.execute(sql.SQL("DROP SERVER IF EXISTS {} CASCADE").format(sql.Identifier(server)))
            for statement in ddl.statements:
                conn.execute(statement)
    return True


def grant_catalog(conn: psycopg.Connection, catalog: Catalog = PRODUCT) -> None:
    """The loader runs the catalog's routines; the loader and the readers read its relations (the
    reader all but the personal columns), and no reader a partition directly."""
    loader = sql.Identifier(LOADER_GROUP)
    with conn.transaction():
        for statement in catalog_ddl.grants(catalog, LOADER_GROUP, READER_GROUP, PERSONAL_READER_GROUP):
            conn.execute(statement)
        catalog_ddl.revoke_partitions(conn, READER_GROUP, PERSONAL_READER_GROUP)
        # The checks excuse the ids of forgotten subjects that non-personal copies still hold.
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION dwh.is_forgotten(text, text) TO {}").format(loader))
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {}({}) TO {}").format(
            catalog_ddl.ident(PENDING_MART_ROUTINE), sql.SQL(PENDING_MART_ROUTINE_ARGUMENTS), loader))
        # Dagster's checks read settings (the metrics step, the cron database); settings hold no secrets.
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION dwh.setting(text, text) TO {}").format(loader))


# SECURITY DEFINER functions that must run as a login: pg_cron's history is row-level-secured
# by username, and each role's jobs are its own (the loader's refreshes: migration 0002; the
# owner's maintenance: 0008), so each reads them as that login.
DEFINER_FUNCTIONS: dict[str, Literal["owner", "loader"]] = {
    "dwh.cron_job_runs()": "loader",
    "dwh.cron_owner_job_runs()": "owner",
}


def hand_definer_functions(cfg: DeploymentConfig) -> list[str]:
    """As the admin: make each of DEFINER_FUNCTIONS owned by its login; returns what it could not.

    A new owner needs CREATE on the function's schema, which the loader never has: it is
    granted and revoked around the ALTER in one transaction, so no superuser is needed (the
    admin is a member of the owner's role and of both logins, from the bootstrap).
    """
    refused = []
    with connect(cfg, "admin") as admin:
        for function, purpose in DEFINER_FUNCTIONS.items():
            login = cfg.logins()[purpose].user
            owner = admin.execute("SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE oid = to_regprocedure(%s)",
                                  (function,)).fetchone()
            if owner is None or owner[0] == login:
                continue
            schema, new_owner = sql.Identifier(function.split(".")[0]), sql.Identifier(login)
            try:
                with admin.transaction():
                    admin.execute(sql.SQL("GRANT CREATE ON SCHEMA {} TO {}").format(schema, new_owner))
                    admin.execute(sql.SQL("ALTER FUNCTION {} OWNER TO {}").format(sql.SQL(function), new_owner))
                    admin.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(schema, new_owner))
            except psycopg.Error as e:
                refused.append(f"{function} stays owned by {owner[0]}, so the health dashboard shows no pg_cron runs of "
                               f"the {purpose}'s jobs (the admin role cannot hand it to {login}: "
                               f"{e.diag.message_primary})")
    return refused


def _sync_rows(conn: psycopg.Connection, table: str, columns: tuple[str, ...], wanted: set[tuple[str, ...]]) -> None:
    """Make a table of the catalog's facts hold exactly ``wanted``."""
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    select = sql.SQL("SELECT {} FROM {}").format(names, catalog_ddl.ident(table))
    if set(conn.execute(select).fetchall()) == wanted:
        return
    with conn.transaction():
        conn.execute(sql.SQL("DELETE FROM {}").format(catalog_ddl.ident(table)))
        with conn.cursor() as cur:
            cur.executemany(sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                catalog_ddl.ident(table), names, sql.SQL(", ").join([sql.Placeholder()] * len(columns))), sorted(wanted))


def sync_mart_inputs(conn: psycopg.Connection, catalog: Catalog = PRODUCT) -> None:
    """dwh.mart_inputs: which copies' refreshes queue days of which marts."""
    _sync_rows(conn, "dwh.mart_inputs", ("mart", "copy"),
               {(mart.name, copy) for mart in catalog.marts for copy in mart.stale_when})


def sync_refresh_jobs(conn: psycopg.Connection, catalog: Catalog = PRODUCT) -> None:
    """dwh.refresh_jobs: the table each refresh job refreshes, as dwh.refresh_log names it, and how long it takes."""
    _sync_rows(conn, "dwh.refresh_jobs", ("jobname", "table_name", "typical_duration"),
               {(entry.cron_job_name, entry.log_table, entry.typical_duration) for entry in catalog.refreshed()})


def sync_quality_gates(conn: psycopg.Connection, catalog: Catalog = PRODUCT) -> None:
    """dwh.quality_gates: each copy's blocking checks, the SQL its refreshes run (``quality_gate``)."""
    _sync_rows(conn, "dwh.quality_gates", ("copy", "check_name", "description", "query"),
               quality_gate.gate_rows(catalog.tables))


def sync_subject_columns(conn: psycopg.Connection, catalog: Catalog = PRODUCT) -> None:
    """dwh.subject_columns: where each subject's id is held, which dwh forget and the refreshes read."""
    _sync_rows(conn, "dwh.subject_columns", ("copy", "relation", "column_name", "subject", "erase"),
               {(s.copy, s.relation, s.column, s.subject.value, s.erase.value) for s in catalog.subject_columns()})


def sync_retention(conn: psycopg.Connection, cfg: DeploymentConfig, catalog: Catalog = PRODUCT) -> None:
    with conn.transaction():
        for entry in catalog.refreshed():
            retention = cfg.retention_days.get(entry.name) or entry.retention_days
            days = f"{retention} days" if retention else None
            conn.execute(
                "UPDATE partman.part_config SET retention = %s, retention_keep_table = false "
                "WHERE parent_table = %s AND retention IS DISTINCT FROM %s",
                (days, entry.partitioned_table, days),
            )


@dataclass
class MigrateReport:
    bootstrap: list[str] = field(default_factory=list)
    migrations: list[str] = field(default_factory=list)
    tables: catalog_ddl.TableSync = field(default_factory=catalog_ddl.TableSync)
    sources: str = "unchanged"
    # What changed at the Postgres sources since their tables were imported (then imported again).
    source_drift: list[str] = field(default_factory=list)
    cron: cron_jobs.SyncResult = field(default_factory=cron_jobs.SyncResult)

    def summary(self) -> str:
        return (f"{len(self.migrations)} new migration(s); {self.tables.summary()}; sources {self.sources}; "
                f"pg_cron: {self.cron.summary()}")


def preflight(cfg: DeploymentConfig, cron_database: str) -> list[str]:
    """What later steps read on this host, checked before anything changes: secrets, the passfile."""
    problems = check_passfile(cfg)
    secrets = [login.secret for login in cfg.logins().values()]
    if not cfg.control_plane.via_relay:
        secrets.append(cfg.control_plane.secret)
    if cfg.uses_relay():
        secrets.append(cfg.relay.secret)
    if "tembo" in cfg.backends().values() and cfg.clerk.backend == "tembo":
        secrets.append(cfg.clerk.secret)
    if cron_database != cfg.warehouse.database:
        # The warehouse reads pg_cron's history there as the owner and loader logins (foreign_tables.cron_history_ddl).
        secrets += [lambda p=p: login_password(cfg, p, cron_database) for p in ("owner", "loader")]
    for secret in secrets:
        try:
            secret()
        except DeploymentError as e:
            problems.append(str(e))
    return list(dict.fromkeys(problems))


def _owner_checks(cfg: DeploymentConfig) -> list[bootstrap.OwnerCheck]:
    """What the trial checks as the owner, through the warehouse server: the reader, each Postgres source."""
    checks: list[bootstrap.OwnerCheck] = []
    if cfg.uses_reader():
        checks.append(lambda conn: bootstrap.check_reader(conn, reader_install.check_command(cfg), cfg))
    checks.append(lambda conn: contract.check_all(conn, cfg))
    return checks


def _prepare(cfg: DeploymentConfig, progress: Progress) -> tuple[bootstrap.BootstrapPlan, bootstrap.Trial]:
    with connect(cfg, "admin") as admin:
        plan = bootstrap.plan_bootstrap(cfg, bootstrap.inspect(admin), bootstrap.password_verifier(admin))
    progress(f"checking what {plan.facts.admin} may do on {cfg.warehouse.host}:{cfg.warehouse.port} "
             f"(cron.database_name = {plan.cron_db}) ...")
    problems = preflight(cfg, plan.cron_db)
    trial = bootstrap.try_bootstrap(cfg, plan, _owner_checks(cfg))
    trial.problems = list(dict.fromkeys(problems + trial.problems))
    return plan, trial


def prerequisites(cfg: DeploymentConfig, progress: Progress = print) -> bootstrap.Prerequisites:
    """What a superuser must do before `dwh migrate` can run as the admin role (``--prerequisites``)."""
    _plan, trial = _prepare(cfg, progress)
    return trial.prerequisites


def migrate(cfg: DeploymentConfig, progress: Progress = print, catalog: Catalog = PRODUCT) -> MigrateReport:
    """Bootstrap, migrate, sync sources, grants, retention and pg_cron; refuses early, changing nothing."""
    plan, trial = _prepare(cfg, progress)
    refusal = trial.refusal()
    if refusal is not None:
        raise refusal
    report = MigrateReport()
    report.bootstrap = bootstrap.apply_bootstrap(cfg, plan, trial.already)
    progress(f"bootstrap: {len(report.bootstrap)} statement(s) as {plan.facts.admin} (roles, extensions, grants)")
    report.migrations = pending_migrations(cfg)
    report.tables = apply_migrations(cfg, catalog)
    progress(f"migrations: {len(report.migrations)} new ({', '.join(report.migrations) or 'none'}); "
             f"catalog: {report.tables.summary()}; routines and views re-applied")
    with _owner_connect(cfg) as conn:
        report.source_drift = source_drift(conn)
        for line in report.source_drift:
            progress(f"source changed: {line}")
        rebuilt = sync_sources(conn, cfg, plan.cron_db, catalog, report.source_drift)
        report.sources = "rebuilt" if rebuilt else "unchanged"
        progress(f"settings and source foreign tables: {report.sources}"
                 + (" (the changed source tables imported again)" if report.source_drift else ""))
        grant_catalog(conn, catalog)
        sync_mart_inputs(conn, catalog)
        sync_refresh_jobs(conn, catalog)
        sync_quality_gates(conn, catalog)
        sync_subject_columns(conn, catalog)
        catalog_ddl.sync_arrival_watermarks(conn, catalog)
        sync_retention(conn, cfg, catalog)
    for warning in hand_definer_functions(cfg):
        progress(f"warning: {warning}")
    jobs = cron_jobs.desired_jobs(cfg, catalog)
    report.cron = cron_jobs.sync(cfg, plan.cron_db, jobs)
    for line in report.cron.lines():
        progress(f"pg_cron: {line}")
    if cfg.refresh.probe_cron:
        probe_cron(cfg, plan.cron_db, progress, jobs)
    progress(f"done: {report.summary()}")
    return report


def probe_cron(cfg: DeploymentConfig, cron_database: str, progress: Progress,
               jobs: list[cron_jobs.CronJob] | None = None) -> None:
    """Run a one-shot job as each role whose jobs changed (or whose last probe failed); a sentence if one fails."""
    with _owner_connect(cfg) as conn:
        todo = cron_probe.due(conn, cron_probe.probes(cfg, cron_database, jobs))
    if not todo:
        progress("pg_cron: jobs run as probed before (no probe needed)")
        return
    progress(f"pg_cron: probing {', '.join(f'{p.role} in {p.database}' for p in todo)} with a one-shot job "
             "(pg_cron starts it on the next minute) ...")
    outcomes = cron_probe.run(cfg, cron_database, todo)
    with _owner_connect(cfg) as conn:
        cron_probe.record(conn, outcomes)
    for o in outcomes:
        if o.succeeded:
            progress(f"pg_cron: ran a job as {o.probe.role} in {o.probe.database}")
    failed = [cron_probe.explain(o) for o in outcomes if not o.succeeded]
    if failed:
        raise DeploymentError("everything else is in place, but " + "\n".join(failed))


def plan(cfg: DeploymentConfig, progress: Progress = print, catalog: Catalog = PRODUCT) -> list[str]:
    """What ``migrate`` would do (``dwh migrate --dry-run``); changes nothing."""
    bootstrap_plan, trial = _prepare(cfg, progress)
    lines = [f"bootstrap: {line}" for line in bootstrap_plan.describe()]
    refused = trial.problems + (trial.prerequisites.reasons() if trial.prerequisites else [])
    if refused:
        lines += [f"REFUSED: {p}" for p in refused]
        return lines
    owner_exists = cfg.warehouse.owner.user in bootstrap_plan.facts.roles
    if not owner_exists:
        lines.append(f"migrations: all of {MIGRATIONS_DIR} (the owner role does not exist yet)")
        lines.append("settings and source foreign tables: created")
    else:
        pending = pending_migrations(cfg)
        lines.append(f"migrations: {len(pending)} to apply ({', '.join(pending) or 'none'}); routines re-applied")
        with _owner_connect(cfg) as conn:
            settings_differ, ddl_differs = sources_changed(conn, cfg, bootstrap_plan.cron_db, catalog)
            drift = source_drift(conn)
            absent = [t.relation for t in catalog.all_tables() if not catalog_ddl.database_columns(conn, t.relation)]
            drifted = [d for t in catalog.all_tables() if t.relation not in absent
                       and (d := catalog_ddl.drift(conn, t)) is not None]
        lines.append(f"catalog: {len(absent)} table(s) to create ({', '.join(absent) or 'none'})")
        lines += [f"REFUSED: {d} (a migration must change it)" for d in drifted]
        lines += [f"source changed: {line}" for line in drift]
        lines.append("settings: " + ("rewritten" if settings_differ else "unchanged")
                     + "; source foreign tables: " + ("rebuilt" if ddl_differs or drift else "unchanged"))
    lines += [f"pg_cron: {line}" for line in cron_jobs.plan(cfg, bootstrap_plan.cron_db, bootstrap_plan.facts.roles,
                                                            cron_jobs.desired_jobs(cfg, catalog)).lines()]
    return lines
