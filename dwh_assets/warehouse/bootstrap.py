"""What only the admin role can do: roles, extensions, grants. The first part of ``dwh migrate``.

The bootstrap is planned from what the server says about itself (``inspect``), then
*tried*: every statement runs inside a transaction that is rolled back, each behind a
savepoint, so every refused statement is found and explained at once. Only when nothing
was refused does ``apply`` run the same statements for real (one transaction per database).
So a missing privilege changes nothing, and the error says what to ask for.

The admin role may be a superuser or, on a managed service, a role that can CREATE ROLE
and CREATE EXTENSION (rds_superuser, azure_pg_admin, cloudsqlsuperuser, ...).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg import errors, sql

from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.connect import GROUPS, connect
from dwh_assets.warehouse.deployment import DeploymentConfig, DeploymentError
from dwh_assets.warehouse.sources import foreign_tables, reader_install

MIN_SERVER_VERSION = 150000
EXTENSION_PACKAGES = {"pg_partman": "postgresql-15-partman", "pg_cron": "postgresql-15-cron"}
# The loader's search_path, so `\dE` and ad-hoc queries find the warehouse's relations.
LOADER_SEARCH_PATH = ("dwh", "mart", "src_control_plane", "src_clerk", "src_prometheus", "public")
READER_SEARCH_PATH = ("mart", "dwh", "public")


@dataclass(frozen=True)
class ServerFacts:
    version: int
    admin: str
    superuser: bool
    createrole: bool
    cron_loaded: bool
    cron_database: str | None
    available: frozenset[str]  # extensions the server has files for
    roles: frozenset[str]


@dataclass(frozen=True)
class Statement:
    what: str  # "create role dwh_loader": what a person reads in the plan
    sql: sql.Composable
    needs: str  # what the admin role would need, if this is refused
    role: bool = False  # creates or grants a role (cluster-wide)


@dataclass
class BootstrapPlan:
    facts: ServerFacts
    warehouse_db: str
    warehouse: list[Statement] = field(default_factory=list)
    cron: list[Statement] = field(default_factory=list)  # run in cron.database_name
    problems: list[str] = field(default_factory=list)  # known to fail before trying

    @property
    def cron_db(self) -> str:
        return self.facts.cron_database or self.warehouse_db

    def describe(self) -> list[str]:
        lines = [f"as {self.facts.admin} in {self.warehouse_db}: {s.what}" for s in self.warehouse]
        if self.cron_db != self.warehouse_db:
            lines += [f"as {self.facts.admin} in {self.cron_db} (cron.database_name): {s.what}" for s in self.cron]
        else:
            lines += [f"as {self.facts.admin} in {self.warehouse_db}: {s.what}" for s in self.cron]
        return lines


def _cron_database(conn: psycopg.Connection, superuser: bool) -> tuple[bool, str | None]:
    """(pg_cron loaded, cron.database_name), read without changing anything."""
    if superuser:
        preload = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()[0]
        loaded = "pg_cron" in [lib.strip() for lib in preload.split(",")]
        name = conn.execute("SELECT current_setting('cron.database_name', true)").fetchone()[0]
        return loaded, (name or "postgres") if loaded else None
    # Both settings are superuser-only. To other roles pg_stat_activity still shows pg_cron's
    # launcher (application_name 'pg_cron scheduler') and its database; it restarts within
    # seconds when it lost its database, hence a few tries.
    for _ in range(10):
        row = conn.execute("SELECT datname FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher' "
                           "OR application_name = 'pg_cron scheduler'").fetchone()
        if row is not None:
            return True, row[0]
        time.sleep(0.5)
    return False, None


def inspect(conn: psycopg.Connection) -> ServerFacts:
    """What the server and the admin role can do, read without changing anything."""
    row = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_user, r.rolsuper, r.rolcreaterole "
        "FROM pg_roles r WHERE r.rolname = current_user"
    ).fetchone()
    cron_loaded, cron_db = _cron_database(conn, row[2])
    available = {r[0] for r in conn.execute("SELECT name FROM pg_available_extensions").fetchall()}
    roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
    return ServerFacts(
        version=row[0], admin=row[1], superuser=row[2], createrole=row[3], cron_loaded=cron_loaded,
        cron_database=cron_db, available=frozenset(available), roles=frozenset(roles),
    )


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _extension(plan: BootstrapPlan, target: list[Statement], name: str, database: str, schema: str | None = None) -> None:
    if name not in plan.facts.available:
        package = EXTENSION_PACKAGES.get(name)
        how = f"install the package {package} on the database host" if package else "install it on the database host"
        plan.problems.append(
            f"extension {name} is not available on the server: {how}, or ask your provider to enable it."
        )
        return
    in_schema = sql.SQL(" SCHEMA {}").format(_ident(schema)) if schema else sql.SQL("")
    if name == "pg_cron":
        needs = (f"the admin role cannot create extension pg_cron: ask for it in shared_preload_libraries "
                 f"and run CREATE EXTENSION pg_cron as a superuser in database {database}")
    else:
        needs = (f"the admin role cannot create extension {name}: run CREATE EXTENSION {name} as a superuser "
                 f"in database {database} (on a managed service, enable it in the provider's extension settings)")
    target.append(Statement(f"create extension {name} (if missing)",
                            sql.SQL("CREATE EXTENSION IF NOT EXISTS {}{}").format(_ident(name), in_schema), needs))


Verifier = Callable[[str, str], str]


def password_verifier(conn: psycopg.Connection) -> Verifier:
    """(user, password) -> libpq's SCRAM verifier: a logged CREATE ROLE then leaks no password."""
    return lambda user, password: conn.pgconn.encrypt_password(password.encode(), user.encode(), b"scram-sha-256").decode()


def _roles(plan: BootstrapPlan, cfg: DeploymentConfig, verifier: Verifier) -> None:
    need_role = f"the admin role {plan.facts.admin} cannot create roles: it needs CREATEROLE, or create the roles yourself"
    for purpose, group in GROUPS.items():
        login = cfg.logins()[purpose]
        for role, can_login in ((group, login.user == group), (login.user, True)):
            if role in plan.facts.roles or any(s.what == f"create role {role}" for s in plan.warehouse):
                continue
            if can_login:
                password = login.secret()
                if password is None:
                    plan.problems.append(
                        f"role {role} does not exist and no password is configured for it: set "
                        f"warehouse.{purpose}.password_file or DWH_WAREHOUSE__{purpose.upper()}__PASSWORD"
                    )
                    continue
                statement = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    _ident(role), sql.Literal(verifier(role, password)))
            else:
                statement = sql.SQL("CREATE ROLE {} NOLOGIN").format(_ident(role))
            plan.warehouse.append(Statement(f"create role {role}", statement, need_role, role=True))
        if login.user != group:
            plan.warehouse.append(Statement(
                f"grant {group} to {login.user}",
                sql.SQL("GRANT {} TO {}").format(_ident(group), _ident(login.user)),
                f"the admin role cannot grant {group}: it needs CREATEROLE (or ADMIN OPTION on {group})", role=True))
    if not plan.facts.superuser:
        # PG 15: creating a schema for another role needs membership in it.
        plan.warehouse.append(Statement(
            f"grant {catalog.OWNER_GROUP} to {plan.facts.admin}",
            sql.SQL("GRANT {} TO {}").format(_ident(catalog.OWNER_GROUP), _ident(plan.facts.admin)),
            f"the admin role cannot grant itself {catalog.OWNER_GROUP}: it needs CREATEROLE", role=True))


def _grant(plan: BootstrapPlan, target: list[Statement], what: str, template: str, *args: sql.Composable,
           needs: str | None = None) -> None:
    target.append(Statement(what, sql.SQL(template).format(*args),
                            needs or f"the admin role cannot {what}: run it as a superuser"))


def plan_bootstrap(cfg: DeploymentConfig, facts: ServerFacts, verifier: Verifier) -> BootstrapPlan:
    """The admin's statements for this deployment, given what the server said about itself."""
    db = cfg.warehouse.database
    plan = BootstrapPlan(facts=facts, warehouse_db=db)
    if facts.version < MIN_SERVER_VERSION:
        plan.problems.append(f"the server runs PostgreSQL {facts.version // 10000}; the warehouse needs 15 or newer")
    if not facts.cron_loaded:
        plan.problems.append(
            "pg_cron is not loaded by the server: add pg_cron to shared_preload_libraries, set cron.database_name, "
            "restart the server, then rerun (on a managed service: enable pg_cron in the parameter group)"
        )
    owner, loader, reader = (_ident(g) for g in GROUPS.values())
    _roles(plan, cfg, verifier)
    w = plan.warehouse
    _grant(plan, w, f"grant connect and temporary on database {db} to the warehouse roles",
           "GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}, {}, {}", _ident(db), owner, loader, reader)
    _grant(plan, w, f"grant create on database {db} to {catalog.OWNER_GROUP}",
           "GRANT CREATE ON DATABASE {} TO {}", _ident(db), owner)
    # yoyo-migrations keeps its tables in public; nobody else creates anything there.
    _grant(plan, w, "revoke create on schema public from PUBLIC", "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    _grant(plan, w, f"grant create on schema public to {catalog.OWNER_GROUP}", "GRANT CREATE ON SCHEMA public TO {}", owner)
    _grant(plan, w, "create schema partman (if missing)", "CREATE SCHEMA IF NOT EXISTS partman AUTHORIZATION {}", owner)
    _extension(plan, w, "pg_partman", db, schema="partman")
    _grant(plan, w, f"let {catalog.OWNER_GROUP} maintain pg_partman's configuration",
           "GRANT ALL ON SCHEMA partman TO {0}; GRANT ALL ON ALL TABLES IN SCHEMA partman TO {0}; "
           "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA partman TO {0}; GRANT EXECUTE ON ALL PROCEDURES IN SCHEMA partman TO {0}",
           owner)
    _extension(plan, w, "postgres_fdw", db)
    _grant(plan, w, f"grant usage on postgres_fdw to {catalog.OWNER_GROUP}",
           "GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO {}", owner)
    if cfg.uses_reader():
        _extension(plan, w, "file_fdw", db)
        _grant(plan, w, f"grant usage on file_fdw to {catalog.OWNER_GROUP}",
               "GRANT USAGE ON FOREIGN DATA WRAPPER file_fdw TO {}", owner)
        _grant(plan, w, f"grant pg_execute_server_program to {catalog.OWNER_GROUP} (the reader backend)",
               "GRANT pg_execute_server_program TO {}", owner, needs=reader_backend_refused(cfg))
    for statement in foreign_tables.tembo_superuser_ddl(cfg):
        text = statement.as_string(None)
        w.append(Statement(f"tembo backend: {text[:80]}", statement,
                           f"the tembo backend needs this run by a superuser: {text[:200]}"))
    for purpose, search_path in (("loader", LOADER_SEARCH_PATH), ("reader", READER_SEARCH_PATH)):
        role = cfg.logins()[purpose].user
        _grant(plan, w, f"set the search_path of {role} in {db}",
               "ALTER ROLE {} IN DATABASE {} SET search_path = {}", _ident(role), _ident(db),
               sql.SQL(", ").join(map(_ident, search_path)),
               needs=f"the admin role cannot set role defaults of {role}: it needs CREATEROLE")
    _plan_cron(plan, cfg)
    return plan


def reader_backend_refused(cfg: DeploymentConfig) -> str:
    sources = ", ".join(f"{s}.backend" for s, b in cfg.backends().items() if b == "reader")
    return (
        "the reader backend needs a server that lets the owner run programs (pg_execute_server_program, "
        "self-hosted): the admin role cannot grant it. On a managed service without it, set "
        f"{sources} = \"tembo\" where clerk_fdw / prometheus_fdw are available; otherwise Clerk and "
        "Prometheus cannot be read by this server."
    )


def _plan_cron(plan: BootstrapPlan, cfg: DeploymentConfig) -> None:
    owner, loader = _ident(catalog.OWNER_GROUP), _ident(catalog.LOADER_GROUP)
    c = plan.cron
    _extension(plan, c, "pg_cron", plan.cron_db)
    # Jobs are scheduled by the roles that run them; cron.job(_run_details) are row-level-secured by username.
    _grant(plan, c, "grant usage on schema cron to the owner and loader", "GRANT USAGE ON SCHEMA cron TO {}, {}", owner, loader)
    if plan.cron_db != plan.warehouse_db:
        _grant(plan, c, f"grant connect on database {plan.cron_db} to the owner and loader",
               "GRANT CONNECT ON DATABASE {} TO {}, {}", _ident(plan.cron_db), owner, loader)
        _grant(plan, c, "grant execute on cron.schedule_in_database to the owner and loader",
               "GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text, text, text, text, text, boolean) TO {}, {}",
               owner, loader)


def _run_all(conn: psycopg.Connection, statements: list[Statement]) -> list[str]:
    """Run each statement behind a savepoint; returns what each refused one needs."""
    refused: list[str] = []
    for s in statements:
        try:
            with conn.transaction():
                conn.execute(s.sql)
        except psycopg.Error as e:
            if refused and isinstance(e, errors.UndefinedObject):
                continue  # follows from an earlier refusal (a role that was not created)
            refused.append(f"{s.needs} ({e.diag.message_primary})")
    return refused


def try_bootstrap(cfg: DeploymentConfig, plan: BootstrapPlan, reader_check: sql.Composable | None = None) -> list[str]:
    """Run the plan in transactions that are always rolled back; returns every problem found."""
    problems = list(plan.problems)
    if problems and not plan.facts.cron_loaded:
        return problems
    roles = [s for s in plan.warehouse if s.role]
    for database, statements in _by_database(plan):
        with connect(cfg, "admin", database) as conn, conn.transaction(force_rollback=True):
            # Roles are cluster-wide: a trial in another database needs them too.
            prefix = roles if database != plan.warehouse_db else []
            problems += _run_all(conn, prefix + statements)
            if database == plan.warehouse_db and reader_check is not None and not problems:
                problems += _check_reader(conn, reader_check, cfg)
    return list(dict.fromkeys(problems))


def _by_database(plan: BootstrapPlan) -> list[tuple[str, list[Statement]]]:
    if plan.cron_db == plan.warehouse_db:
        return [(plan.warehouse_db, plan.warehouse + plan.cron)]
    return [(plan.warehouse_db, plan.warehouse), (plan.cron_db, plan.cron)]


def _check_reader(conn: psycopg.Connection, command: sql.Composable, cfg: DeploymentConfig) -> list[str]:
    """Run the installed reader's self-check as the owner would (inside the trial transaction)."""
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(_ident(catalog.OWNER_GROUP)))
            conn.execute("CREATE TEMP TABLE dwh_reader_check (line text) ON COMMIT DROP")
            conn.execute(command)
            lines = [r[0] for r in conn.execute("SELECT line FROM dwh_reader_check").fetchall()]
    except psycopg.Error as e:
        return [reader_install.not_installed(cfg, e.diag.message_primary or str(e))]
    if lines != ["ok"]:
        return [reader_install.not_installed(cfg, "; ".join(lines) or "it printed nothing")]
    return []


def apply_bootstrap(cfg: DeploymentConfig, plan: BootstrapPlan) -> list[str]:
    """Run the plan for real, one transaction per database; returns what was done."""
    done = []
    for database, statements in _by_database(plan):
        with connect(cfg, "admin", database) as conn, conn.transaction():
            for s in statements:
                conn.execute(s.sql)
                done.append(s.what)
    return done


def refuse(problems: list[str]) -> DeploymentError:
    listed = "\n".join(f"  - {p}" for p in problems)
    return DeploymentError(f"nothing was changed; the warehouse needs:\n{listed}")
