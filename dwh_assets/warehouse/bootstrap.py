"""What only the admin role can do: roles, extensions, grants. The first part of ``dwh migrate``.

The bootstrap is planned from what the server says about itself (``inspect``), then
*tried*: every statement runs inside a transaction that is rolled back, each behind a
savepoint, so every refused statement is found and explained at once. A statement that
already holds (its ``verify`` query says so) is skipped; one that runs but grants nothing
(PostgreSQL only warns then) counts as refused; one that needs an extension whose creation
was refused is refused with it, untried. Only when nothing was refused does ``apply`` run
the same statements for real (one transaction per database). So a missing privilege
changes nothing, and everything refused is one list: ``Prerequisites``, one SQL script a
superuser (or the provider's administrator role) runs once (``dwh migrate --prerequisites``).

The admin role may be a superuser or, on a managed service, a role that can CREATE ROLE
and owns the warehouse database (rds_superuser, azure_pg_admin, cloudsqlsuperuser, or less).
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
# The project's roles that no login is configured as: the grants name them all.
PRIVILEGE_ROLES = (*GROUPS.values(), catalog.PERSONAL_READER_GROUP)


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
    nologin_roles: frozenset[str] = frozenset()  # existing roles that cannot log in


@dataclass(frozen=True)
class Statement:
    what: str  # "create role dwh_loader": what a person reads in the plan
    sql: sql.Composable
    needs: str  # what the admin role would need, if this is refused
    role: bool = False  # creates or grants a role (cluster-wide)
    # A query returning true when what the statement does already holds (skipped then), and
    # false after a GRANT that only warned "no privileges were granted".
    verify: sql.Composable | None = None
    # The extension this statement needs: refused, untried, when creating it was refused.
    after: str | None = None
    provides: str | None = None  # the extension this statement creates
    # What a superuser runs instead, when it differs from ``sql`` (no password verifier in a script).
    script: sql.Composable | None = None


@dataclass
class Prerequisites:
    """What the admin role was refused: one SQL script for a superuser, statements grouped by database."""

    warehouse_db: str
    server: str = ""
    admin: str = ""
    missing_groups: tuple[str, ...] = ()  # privilege roles the script creates first (its grants name them)
    steps: list[tuple[str, str, str]] = field(default_factory=list)  # (database, why, SQL)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def reasons(self) -> list[str]:
        return list(dict.fromkeys(why for _, why, _ in self.steps))

    def script(self) -> str:
        lines = [
            f"-- Prerequisites of the warehouse {self.warehouse_db} on {self.server}: what the admin role {self.admin}",
            "-- may not do itself. Run once as a superuser (on a managed service: the provider's administrator",
            "-- role), connected to any database:  psql -v ON_ERROR_STOP=1 -f this-file.sql",
            "-- then `dwh migrate` again. Every statement is idempotent.",
        ]
        if not self.steps:
            return "\n".join(lines + ["-- nothing: the admin role may do everything the warehouse needs."]) + "\n"
        current = None
        for database, why, text in self._ordered():
            if database != current:
                lines += ["", f"\\connect {quote_psql(database)}"]
                current = database
                if database == self.warehouse_db and self.missing_groups:
                    lines += ["-- the project's privilege roles, which the grants below name (logins are created by dwh migrate)",
                              create_groups_sql(self.missing_groups)]
            lines += [f"-- {why}", text.rstrip().rstrip(";") + ";"]
        return "\n".join(lines) + "\n"

    def _ordered(self) -> list[tuple[str, str, str]]:
        # The warehouse database first: the roles are created there.
        return sorted(self.steps, key=lambda step: step[0] != self.warehouse_db)


def quote_psql(database: str) -> str:
    """A database name as psql's \\connect takes it (single-quoted, quotes doubled)."""
    return "'" + database.replace("'", "''") + "'"


def create_groups_sql(groups: tuple[str, ...]) -> str:
    creates = " ".join(
        f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{g}') THEN CREATE ROLE {g} NOLOGIN; END IF;" for g in groups)
    # Names are the catalog's constants (dwh_owner, ...): plain identifiers.
    return f"DO $$ BEGIN {creates} END $$;"


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
    roles = dict(conn.execute("SELECT rolname, rolcanlogin FROM pg_roles").fetchall())
    return ServerFacts(
        version=row[0], admin=row[1], superuser=row[2], createrole=row[3], cron_loaded=cron_loaded,
        cron_database=cron_db, available=frozenset(available), roles=frozenset(roles),
        nologin_roles=frozenset(r for r, can_login in roles.items() if not can_login),
    )


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _extension(plan: BootstrapPlan, target: list[Statement], name: str, database: str, schema: str | None = None,
               schema_owner: str | None = None) -> None:
    if name not in plan.facts.available:
        package = EXTENSION_PACKAGES.get(name)
        how = f"install the package {package} on the database host" if package else "install it on the database host"
        plan.problems.append(
            f"extension {name} is not available on the server: {how}, or ask your provider to enable it."
        )
        return
    in_schema = sql.SQL(" SCHEMA {}").format(_ident(schema)) if schema else sql.SQL("")
    create = sql.SQL("CREATE EXTENSION IF NOT EXISTS {}{}").format(_ident(name), in_schema)
    if schema_owner:
        # The extension's own schema, owned by the warehouse: created with it, in the same step.
        create = sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}; {}").format(
            _ident(schema), _ident(schema_owner), create)
    where = sql.SQL(" AND extnamespace = {}::regnamespace").format(sql.Literal(schema)) if schema else sql.SQL("")
    verify = sql.SQL("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = {}{})").format(sql.Literal(name), where)
    if name == "pg_cron":
        needs = (f"the admin role cannot create extension pg_cron: ask for it in shared_preload_libraries "
                 f"and run CREATE EXTENSION pg_cron as a superuser in database {database}")
    else:
        needs = (f"the admin role cannot create extension {name}: a superuser runs CREATE EXTENSION {name}"
                 f"{' SCHEMA ' + schema if schema else ''} in database {database} "
                 "(on a managed service, the provider's administrator role, or its extension settings)")
    target.append(Statement(f"create extension {name} (if missing)", create, needs, verify=verify, provides=name))


Verifier = Callable[[str, str], str]


def password_verifier(conn: psycopg.Connection) -> Verifier:
    """(user, password) -> libpq's SCRAM verifier: a logged CREATE ROLE then leaks no password."""
    return lambda user, password: conn.pgconn.encrypt_password(password.encode(), user.encode(), b"scram-sha-256").decode()


def _roles(plan: BootstrapPlan, cfg: DeploymentConfig, verifier: Verifier) -> None:
    need_role = f"the admin role {plan.facts.admin} cannot create roles: it needs CREATEROLE, or create the roles yourself"
    for purpose, group in GROUPS.items():
        login = cfg.logins()[purpose]
        for role, can_login in ((group, login.user == group), (login.user, True)):
            if any(s.what in (f"create role {role}", f"let {role} log in") for s in plan.warehouse):
                continue
            if role in plan.facts.roles and not (can_login and role in plan.facts.nologin_roles):
                continue
            if can_login:
                password = login.secret()
                if password is None:
                    plan.problems.append(
                        f"role {role} does not exist and no password is configured for it: set "
                        f"warehouse.{purpose}.password_file or DWH_WAREHOUSE__{purpose.upper()}__PASSWORD"
                    )
                    continue
                verb, what = ("ALTER", f"let {role} log in") if role in plan.facts.roles else ("CREATE", f"create role {role}")
                statement = sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(_ident(role), sql.Literal(verifier(role, password)))
                # A script never carries even a verifier: the superuser sets the password interactively.
                script = sql.SQL(verb + " ROLE {} LOGIN; -- then: \\password {}").format(_ident(role), _ident(role))
            else:
                what, statement, script = f"create role {role}", sql.SQL("CREATE ROLE {} NOLOGIN").format(_ident(role)), None
            plan.warehouse.append(Statement(what, statement, need_role, role=True, script=script))
        if login.user != group:
            plan.warehouse.append(Statement(
                f"grant {group} to {login.user}",
                sql.SQL("GRANT {} TO {}").format(_ident(group), _ident(login.user)),
                f"the admin role cannot grant {group}: it needs CREATEROLE (or ADMIN OPTION on {group})", role=True,
                verify=_member(login.user, group)))
    _personal_reader(plan, need_role)
    if not plan.facts.superuser:
        # PG 15: creating a schema for another role, and handing functions to a login, need membership in it.
        for member_of in dict.fromkeys((catalog.OWNER_GROUP, cfg.logins()["loader"].user, cfg.logins()["owner"].user)):
            plan.warehouse.append(Statement(
                f"grant {member_of} to {plan.facts.admin}",
                sql.SQL("GRANT {} TO {}").format(_ident(member_of), _ident(plan.facts.admin)),
                f"the admin role cannot grant itself {member_of}: it needs CREATEROLE", role=True,
                verify=_member(plan.facts.admin, member_of)))


def _personal_reader(plan: BootstrapPlan, need_role: str) -> None:
    """The role that reads personal columns too: a member of the reader, granted to no login by migrate."""
    personal, reader = catalog.PERSONAL_READER_GROUP, catalog.READER_GROUP
    if personal not in plan.facts.roles:
        plan.warehouse.append(Statement(f"create role {personal}", sql.SQL("CREATE ROLE {} NOLOGIN").format(
            _ident(personal)), need_role, role=True))
    # Also when the role exists: the managed prerequisites script creates it bare.
    plan.warehouse.append(Statement(
        f"grant {reader} to {personal}", sql.SQL("GRANT {} TO {}").format(_ident(reader), _ident(personal)),
        f"the admin role cannot grant {reader}: it needs CREATEROLE (or ADMIN OPTION on {reader})", role=True,
        verify=_member(personal, reader)))


def _member(member: str, role: str) -> sql.Composable:
    return sql.SQL("SELECT pg_has_role({}, {}, 'MEMBER')").format(sql.Literal(member), sql.Literal(role))


def _grant(plan: BootstrapPlan, target: list[Statement], what: str, template: str, *args: sql.Composable,
           needs: str | None = None, verify: sql.Composable | None = None, after: str | None = None) -> None:
    target.append(Statement(what, sql.SQL(template).format(*args),
                            needs or f"the admin role cannot {what}: a superuser must", verify=verify, after=after))


def _holds(template: str, *args: str) -> sql.Composable:
    return sql.SQL(template).format(*map(sql.Literal, args))


def _owner_may_maintain_partman() -> sql.Composable:
    return _holds(
        "SELECT has_schema_privilege({0}, 'partman', 'USAGE, CREATE') AND NOT EXISTS ("
        "SELECT FROM pg_class WHERE relnamespace = 'partman'::regnamespace AND relkind IN ('r', 'p', 'S') "
        "AND NOT has_table_privilege({0}, oid, 'SELECT, INSERT, UPDATE, DELETE')) AND NOT EXISTS ("
        "SELECT FROM pg_proc WHERE pronamespace = 'partman'::regnamespace AND NOT has_function_privilege({0}, oid, 'EXECUTE'))",
        catalog.OWNER_GROUP)


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
    groups = GROUPS.values()
    _roles(plan, cfg, verifier)
    w = plan.warehouse
    _grant(plan, w, f"grant connect and temporary on database {db} to the warehouse roles",
           "GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}, {}, {}", _ident(db), owner, loader, reader,
           verify=sql.SQL("SELECT ") + sql.SQL(" AND ").join(
               _holds("has_database_privilege({}, {}, 'CONNECT, TEMPORARY')", g, db) for g in groups))
    _grant(plan, w, f"grant create on database {db} to {catalog.OWNER_GROUP}",
           "GRANT CREATE ON DATABASE {} TO {}", _ident(db), owner,
           verify=_holds("SELECT has_database_privilege({}, {}, 'CREATE')", catalog.OWNER_GROUP, db))
    # yoyo-migrations keeps its tables in public; nobody else creates anything there.
    _grant(plan, w, "revoke create on schema public from PUBLIC", "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
           verify=_holds("SELECT NOT has_schema_privilege('public', 'public', 'CREATE')"))
    _grant(plan, w, f"grant create on schema public to {catalog.OWNER_GROUP}", "GRANT CREATE ON SCHEMA public TO {}", owner,
           verify=_holds("SELECT has_schema_privilege({}, 'public', 'CREATE')", catalog.OWNER_GROUP))
    _extension(plan, w, "pg_partman", db, schema="partman", schema_owner=catalog.OWNER_GROUP)
    # `dwh forget` logs a keyed hash (HMAC) of an erased id; pgcrypto is trusted: the database's owner may create it.
    _extension(plan, w, "pgcrypto", db, schema="public")
    _grant(plan, w, f"let {catalog.OWNER_GROUP} maintain pg_partman's configuration",
           "GRANT ALL ON SCHEMA partman TO {0}; GRANT ALL ON ALL TABLES IN SCHEMA partman TO {0}; "
           "GRANT ALL ON ALL SEQUENCES IN SCHEMA partman TO {0}; "
           "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA partman TO {0}; GRANT EXECUTE ON ALL PROCEDURES IN SCHEMA partman TO {0}",
           owner, verify=_owner_may_maintain_partman(), after="pg_partman")
    _fdw(plan, "postgres_fdw")
    if "prometheus" in cfg.relay_sources():
        # Prometheus windows reach the relay as a function call: postgres_fdw cannot pass arguments.
        _extension(plan, w, "dblink", db, schema="public")
    if cfg.uses_reader():
        _fdw(plan, "file_fdw")
        _grant(plan, w, f"grant pg_execute_server_program to {catalog.OWNER_GROUP} (the reader backend)",
               "GRANT pg_execute_server_program TO {}", owner, needs=reader_backend_refused(cfg),
               verify=_member(catalog.OWNER_GROUP, "pg_execute_server_program"))
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
        # The warehouse's queries are many short ones over partitioned tables: their estimated cost
        # counts every partition, so JIT would compile for seconds what then runs in milliseconds.
        _grant(plan, w, f"turn JIT compilation off for {role} in {db}",
               "ALTER ROLE {} IN DATABASE {} SET jit = off", _ident(role), _ident(db),
               needs=f"the admin role cannot set role defaults of {role}: it needs CREATEROLE")
    _plan_cron(plan, cfg)
    return plan


def _fdw(plan: BootstrapPlan, name: str) -> None:
    _extension(plan, plan.warehouse, name, plan.warehouse_db)
    _grant(plan, plan.warehouse, f"grant usage on {name} to {catalog.OWNER_GROUP}",
           "GRANT USAGE ON FOREIGN DATA WRAPPER {} TO {}", _ident(name), _ident(catalog.OWNER_GROUP),
           verify=_holds("SELECT has_foreign_data_wrapper_privilege({}, {}, 'USAGE')", catalog.OWNER_GROUP, name),
           after=name)


def reader_backend_refused(cfg: DeploymentConfig) -> str:
    sources = ", ".join(f"{s}.backend" for s, b in cfg.backends().items() if b == "reader")
    return (
        "the reader backend needs a server that lets the owner run programs (pg_execute_server_program, "
        "self-hosted): the admin role cannot grant it. On a managed service without it, set "
        f"{sources} = \"relay\" (the reader on a small self-hosted Postgres next to Dagster, README: "
        "\"The relay\"), or \"tembo\" where clerk_fdw / prometheus_fdw are available."
    )


def _plan_cron(plan: BootstrapPlan, cfg: DeploymentConfig) -> None:
    owner, loader = _ident(catalog.OWNER_GROUP), _ident(catalog.LOADER_GROUP)
    runners = (catalog.OWNER_GROUP, catalog.LOADER_GROUP)
    c = plan.cron
    _extension(plan, c, "pg_cron", plan.cron_db)
    # Jobs are scheduled by the roles that run them; cron.job(_run_details) are row-level-secured by username.
    _grant(plan, c, "grant usage on schema cron to the owner and loader", "GRANT USAGE ON SCHEMA cron TO {}, {}", owner, loader,
           verify=_holds("SELECT has_schema_privilege({}, 'cron', 'USAGE') AND has_schema_privilege({}, 'cron', 'USAGE')",
                         *runners), after="pg_cron")
    if plan.cron_db != plan.warehouse_db:
        _grant(plan, c, f"grant connect on database {plan.cron_db} to the owner and loader",
               "GRANT CONNECT ON DATABASE {} TO {}, {}", _ident(plan.cron_db), owner, loader,
               verify=_holds("SELECT has_database_privilege({0}, {2}, 'CONNECT') AND has_database_privilege({1}, {2}, 'CONNECT')",
                             *runners, plan.cron_db))
        signature = "cron.schedule_in_database(text, text, text, text, text, boolean)"
        _grant(plan, c, "grant execute on cron.schedule_in_database to the owner and loader",
               "GRANT EXECUTE ON FUNCTION " + signature + " TO {}, {}", owner, loader,
               verify=_holds("SELECT has_function_privilege({0}, {2}, 'EXECUTE') AND has_function_privilege({1}, {2}, 'EXECUTE')",
                             *runners, signature), after="pg_cron")


def _verified(conn: psycopg.Connection, query: sql.Composable) -> bool:
    """Whether ``query`` says true; false when it cannot tell (a role or schema that does not exist yet)."""
    try:
        with conn.transaction():
            return bool(conn.execute(query).fetchone()[0])
    except psycopg.Error:
        return False


@dataclass
class Trial:
    """What the trial found: problems no script fixes, what a superuser must run, what already holds."""

    problems: list[str] = field(default_factory=list)
    prerequisites: Prerequisites | None = None
    already: set[str] = field(default_factory=set)  # Statement.what of statements skipped on apply

    def refusal(self) -> DeploymentError | None:
        if not self.problems and not self.prerequisites:
            return None
        return refuse(self.problems, self.prerequisites)


def _run_all(conn: psycopg.Connection, database: str, statements: list[Statement], trial: Trial) -> None:
    """Try each statement behind a savepoint, recording what is refused and what already holds."""
    refused_extensions: set[str] = set()
    for s in statements:
        if s.after in refused_extensions:
            _refused(conn, database, s, trial, None)
            continue
        if s.verify is not None and _verified(conn, s.verify):
            trial.already.add(s.what)
            continue
        try:
            with conn.transaction():
                conn.execute(s.sql)
        except psycopg.Error as e:
            if isinstance(e, errors.UndefinedObject) and any(step[0] == database for step in trial.prerequisites.steps):
                # follows from an earlier refusal (a role that was not created): still the superuser's, untried
                _refused(conn, database, s, trial, None)
                continue
            _refused(conn, database, s, trial, e.diag.message_primary)
            refused_extensions.add(s.provides or "")
            continue
        if s.verify is not None and not _verified(conn, s.verify):
            _refused(conn, database, s, trial, "no privileges were granted")
            refused_extensions.add(s.provides or "")


def _refused(conn: psycopg.Connection, database: str, s: Statement, trial: Trial, reason: str | None) -> None:
    why = f"{s.needs} ({reason})" if reason else s.needs
    trial.prerequisites.steps.append((database, why, (s.script or s.sql).as_string(conn)))


OwnerCheck = Callable[[psycopg.Connection], list[str]]


def try_bootstrap(cfg: DeploymentConfig, plan: BootstrapPlan, owner_checks: list[OwnerCheck] = ()) -> Trial:
    """Run the plan in transactions that are always rolled back; returns what was found.

    ``owner_checks`` run last in the warehouse database's trial, as the owner's privilege role,
    when nothing was refused: what later steps rely on (the installed reader, the sources).
    """
    trial = Trial(problems=list(plan.problems), prerequisites=Prerequisites(
        warehouse_db=plan.warehouse_db, server=f"{cfg.warehouse.host}:{cfg.warehouse.port}", admin=plan.facts.admin,
        missing_groups=tuple(g for g in PRIVILEGE_ROLES if g not in plan.facts.roles)))
    if trial.problems and not plan.facts.cron_loaded:
        return trial
    roles = [s for s in plan.warehouse if s.role]
    for database, statements in _by_database(plan):
        with connect(cfg, "admin", database) as conn, conn.transaction(force_rollback=True):
            # Roles are cluster-wide: a trial in another database needs them too.
            if database != plan.warehouse_db:
                # (their refusals were recorded with the warehouse database's trial)
                _run_all(conn, database, roles, Trial(prerequisites=Prerequisites(warehouse_db=plan.warehouse_db)))
            _run_all(conn, database, statements, trial)
            if database == plan.warehouse_db and not trial.problems and not trial.prerequisites:
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(_ident(catalog.OWNER_GROUP)))
                for check in owner_checks:
                    trial.problems += check(conn)
    trial.problems = list(dict.fromkeys(trial.problems))
    return trial


def _by_database(plan: BootstrapPlan) -> list[tuple[str, list[Statement]]]:
    if plan.cron_db == plan.warehouse_db:
        return [(plan.warehouse_db, plan.warehouse + plan.cron)]
    return [(plan.warehouse_db, plan.warehouse), (plan.cron_db, plan.cron)]


def check_reader(conn: psycopg.Connection, command: sql.Composable, cfg: DeploymentConfig) -> list[str]:
    """Run the installed reader's self-check as the owner would (inside the trial transaction)."""
    try:
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE dwh_reader_check (line text) ON COMMIT DROP")
            conn.execute(command)
            lines = [r[0] for r in conn.execute("SELECT line FROM dwh_reader_check").fetchall()]
    except psycopg.Error as e:
        return [reader_install.not_installed(cfg, e.diag.message_primary or str(e))]
    if lines != ["ok"]:
        return [reader_install.not_installed(cfg, "; ".join(lines) or "it printed nothing")]
    return []


def apply_bootstrap(cfg: DeploymentConfig, plan: BootstrapPlan, already: set[str] = frozenset()) -> list[str]:
    """Run the plan for real (what does not already hold), one transaction per database; returns what was done."""
    done = []
    for database, statements in _by_database(plan):
        with connect(cfg, "admin", database) as conn, conn.transaction():
            for s in statements:
                if s.what in already:
                    continue
                conn.execute(s.sql)
                done.append(s.what)
    return done


def refuse(problems: list[str], prerequisites: Prerequisites | None = None) -> DeploymentError:
    needs = list(problems) + (prerequisites.reasons() if prerequisites else [])
    listed = "\n".join(f"  - {p}" for p in needs)
    text = f"nothing was changed; the warehouse needs:\n{listed}"
    if prerequisites:
        text += ("\n`dwh migrate --prerequisites` prints all of this as one SQL script for a superuser "
                 "(psql -v ON_ERROR_STOP=1 -f FILE); run it once, then `dwh migrate` again.")
    return DeploymentError(text)
