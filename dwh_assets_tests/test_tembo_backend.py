"""The ``tembo`` backend (clerk_fdw + prometheus_fdw), against the extensions' documented behaviour.

The extensions can't be installed here, so nothing of this backend runs in the warehouse:

- the generated DDL is rendered and compared with the statements their READMEs document
  (tembo-io/clerk_fdw, tembo-io/prometheus_fdw);
- the owner's DDL and the catalog privileges run in a *scratch database* of the session
  cluster, against stand-in wrappers without handler (tables can be created, not read): the
  statements are valid PostgreSQL, and the api_key server option is hidden from the loader
  and the reader;
- ``dwh.tembo_metric_queries`` runs in the warehouse (it only formats queries), and its
  queries are replayed against what prometheus_fdw and Prometheus do with them.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors, sql

from dwh_assets.local.config import LOADER_ROLE, OWNER_ROLE, READER_ROLE, StackConfig
from dwh_assets.warehouse import migrate
from dwh_assets.warehouse.deployment import DeploymentConfig, DeploymentError
from dwh_assets.warehouse.sources import foreign_tables
from dwh_assets_tests.deployments import offline_deployment, offline_values

UTC = dt.timezone.utc
API_KEY = "sk_test_tembo'key"  # a quote, to see it stays one literal
INT4_MAX = 2**31 - 1
# Prometheus refuses a query_range whose (end - start) / step exceeds this (web/api/v1/api.go).
MAX_POINTS = 11_000


def render(statements: list[sql.Composable]) -> list[str]:
    return [s.as_string(None) for s in statements]


@pytest.fixture()
def offline_cfg(tmp_path, monkeypatch) -> DeploymentConfig:
    """A configuration whose ports have nothing behind them: these tests touch no server."""
    monkeypatch.setenv("DWH_CLERK__SECRET_KEY", API_KEY)
    for variable in ("DWH_CLERK__BACKEND", "DWH_PROMETHEUS__BACKEND"):
        monkeypatch.delenv(variable, raising=False)
    return offline_deployment(tmp_path)


# ----- the DDL, as documented ------------------------------------------------------------------

CLERK_SUPERUSER = [
    "CREATE EXTENSION IF NOT EXISTS clerk_fdw",
    "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_foreign_data_wrapper WHERE fdwname = 'clerk_wrapper') THEN "
    "CREATE FOREIGN DATA WRAPPER clerk_wrapper HANDLER clerk_fdw_handler VALIDATOR clerk_fdw_validator; END IF; END $$",
    'GRANT USAGE ON FOREIGN DATA WRAPPER clerk_wrapper TO "dwh_owner"',
    "REVOKE SELECT ON pg_catalog.pg_foreign_server FROM PUBLIC",
    'GRANT SELECT ("oid", "srvname", "srvowner", "srvfdw", "srvtype", "srvversion", "srvacl")'
    " ON pg_catalog.pg_foreign_server TO PUBLIC",
]
CLERK_OWNER = [
    'DROP SERVER IF EXISTS "tembo_clerk" CASCADE',
    "CREATE SERVER \"tembo_clerk\" FOREIGN DATA WRAPPER clerk_wrapper OPTIONS (api_key 'sk_test_tembo''key')",
    'CREATE FOREIGN TABLE src_clerk."users" ("user_id" text, "first_name" text, "last_name" text, "email" text,'
    ' "gender" text, "created_at" bigint, "updated_at" bigint, "last_sign_in_at" bigint, "phone_numbers" bigint,'
    ' "username" text, "attrs" jsonb) SERVER "tembo_clerk" OPTIONS (object \'users\')',
    'CREATE FOREIGN TABLE src_clerk."organizations" ("organization_id" text, "name" text, "slug" text,'
    ' "created_at" bigint, "updated_at" bigint, "created_by" text, "attrs" jsonb)'
    ' SERVER "tembo_clerk" OPTIONS (object \'organizations\')',
    # clerk_fdw fills `attrs` (the whole object) for every object, memberships included.
    'CREATE FOREIGN TABLE src_clerk."organization_memberships" ("user_id" text, "organization_id" text,'
    ' "role" text, "attrs" jsonb) SERVER "tembo_clerk" OPTIONS (object \'organization_memberships\')',
]


def test_clerk_ddl_is_the_documented_one():
    ddl = foreign_tables.tembo_clerk_ddl(API_KEY)
    assert render(ddl.superuser) == CLERK_SUPERUSER
    assert render(ddl.statements) == CLERK_OWNER


def test_prometheus_ddl_is_the_documented_one(offline_cfg):
    ddl = foreign_tables.tembo_prometheus_ddl(offline_cfg.prometheus.url, 900)
    assert render(ddl.superuser) == [
        "CREATE EXTENSION IF NOT EXISTS prometheus_fdw",
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_foreign_data_wrapper WHERE fdwname = 'prometheus_wrapper') THEN "
        "CREATE FOREIGN DATA WRAPPER prometheus_wrapper HANDLER prometheus_fdw_handler"
        " VALIDATOR prometheus_fdw_validator; END IF; END $$",
        'GRANT USAGE ON FOREIGN DATA WRAPPER prometheus_wrapper TO "dwh_owner"',
    ]
    owner = render(ddl.statements)
    assert owner[:3] == [
        'DROP SERVER IF EXISTS "tembo_prometheus" CASCADE',
        f"CREATE SERVER \"tembo_prometheus\" FOREIGN DATA WRAPPER prometheus_wrapper"
        f" OPTIONS (base_url '{offline_cfg.prometheus.url}')",
        'CREATE FOREIGN TABLE src_prometheus.metrics ("metric_name" text, "metric_labels" jsonb,'
        ' "metric_time" bigint, "metric_value" float8)'
        " SERVER \"tembo_prometheus\" OPTIONS (object 'metrics', step '900s')",
    ]
    assert len(owner) == 4 and owner[3].startswith("COMMENT ON FOREIGN TABLE src_prometheus.metrics IS ")


FOREIGN_TABLE = re.compile(r'CREATE FOREIGN TABLE (src_\w+\.\S+) \(.*\) SERVER (\S+) OPTIONS \((.*)\)$')


def created_tables(statements: list[str]) -> dict[str, tuple[str, str]]:
    """Foreign table -> (server, options) of the source tables among ``statements``."""
    tables: dict[str, tuple[str, str]] = {}
    for statement in statements:
        match = FOREIGN_TABLE.match(statement)
        if match and not match[1].startswith("src_control_plane"):
            name = match[1].replace('"', "")
            assert name not in tables, f"{name} created twice"
            tables[name] = (match[2].strip('"'), match[3])
    return tables


@pytest.mark.parametrize("clerk", ["reader", "tembo"])
@pytest.mark.parametrize("prometheus", ["reader", "tembo"])
def test_each_source_gets_the_tables_of_its_backend(tmp_path, monkeypatch, clerk, prometheus):
    monkeypatch.setenv("DWH_CLERK__SECRET_KEY", API_KEY)
    monkeypatch.setenv("DWH_CLERK__BACKEND", clerk)
    monkeypatch.setenv("DWH_PROMETHEUS__BACKEND", prometheus)
    cfg = offline_deployment(tmp_path)
    assert cfg.backends() == {"clerk": clerk, "prometheus": prometheus}
    ddl = foreign_tables.source_ddl(cfg)
    ddl.superuser += foreign_tables.tembo_superuser_ddl(cfg)
    statements = render(ddl.statements)
    tables = created_tables(statements)

    server = {"reader": "dwh_reader", "tembo": None}
    expected = {f"src_clerk.{t}": server[clerk] or "tembo_clerk" for t in foreign_tables.CLERK_COLUMNS}
    expected["src_prometheus.metrics"] = server[prometheus] or "tembo_prometheus"
    assert {name: srv for name, (srv, _) in tables.items()} == expected
    for name, (srv, options) in tables.items():
        if srv == "dwh_reader":
            assert options.startswith("program ")
        else:
            assert options.startswith("object '") and "program" not in options
    # The key is in the clerk_fdw server's options and nowhere else (never in table options).
    holding_key = [s for s in statements + render(ddl.superuser) if "sk_test_tembo" in s]
    assert holding_key == ([CLERK_OWNER[1]] if clerk == "tembo" else [])
    assert ("REVOKE SELECT ON pg_catalog.pg_foreign_server FROM PUBLIC" in render(ddl.superuser)) == (clerk == "tembo")


def test_the_default_source_layer_is_the_reader_layer(offline_cfg):
    """Nothing tembo in the default: the control plane and the reader's tables only (and no relay server)."""
    ddl = foreign_tables.source_ddl(offline_cfg)
    assert ddl.superuser == [] and foreign_tables.tembo_superuser_ddl(offline_cfg) == []
    expected = foreign_tables.control_plane_ddl(offline_cfg).statements + foreign_tables.reader_ddl(offline_cfg).statements
    expected += foreign_tables.relay_ddl(offline_cfg).statements
    assert render(ddl.statements) == render(expected)
    assert render(foreign_tables.relay_ddl(offline_cfg).statements) == ['DROP SERVER IF EXISTS "dwh_relay" CASCADE']


@pytest.mark.parametrize("section", ["clerk", "prometheus"])
def test_an_unknown_backend_is_refused_before_anything_runs(tmp_path, monkeypatch, section):
    monkeypatch.setenv(f"DWH_{section.upper()}__BACKEND", "clerk_fdw")
    with pytest.raises(DeploymentError, match=rf"{section}\.backend: Input should be 'reader', 'tembo' or 'relay'"):
        offline_deployment(tmp_path)
    path = tmp_path / "dwh.toml"
    path.write_text(f'[history]\nstart = 2026-01-01\n[{section}]\nbackend = "reader"\n')
    # The environment overrides the file, and is checked before any connection is tried.
    with pytest.raises(DeploymentError, match=rf"{section}\.backend: Input should be 'reader', 'tembo' or 'relay'"):
        DeploymentConfig.load(path)


# ----- the DDL in a scratch database, against stand-in wrappers ------------------------------------


@pytest.fixture()
def scratch_db(stack, cfg) -> Iterator[str]:
    """A throwaway database of the session cluster; the warehouse database is never touched."""
    name = f"tembo_ddl_check_{os.getpid()}"
    with stack.postgres.connect("postgres") as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with stack.postgres.connect(name) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA src_clerk AUTHORIZATION {0}; CREATE SCHEMA src_prometheus AUTHORIZATION {0}")
                         .format(sql.Identifier(OWNER_ROLE)))
            # Stand-ins for the wrappers the extensions would provide: no handler, so their
            # tables can be created but not read.
            conn.execute("CREATE FOREIGN DATA WRAPPER clerk_wrapper; CREATE FOREIGN DATA WRAPPER prometheus_wrapper")
        yield name
    finally:
        with stack.postgres.connect("postgres") as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def server_options(cfg: StackConfig, dbname: str, role: str) -> list:
    with psycopg.connect(cfg.dsn(dbname, role), autocommit=True) as conn:
        return conn.execute("SELECT srvname, srvoptions FROM pg_foreign_server ORDER BY 1").fetchall()


def test_tembo_ddl_builds_the_contract_and_hides_the_api_key(stack, cfg, scratch_db):
    ddl = foreign_tables.tembo_clerk_ddl(API_KEY)
    ddl += foreign_tables.tembo_prometheus_ddl(cfg.prometheus_url, 3600)
    with stack.postgres.connect(scratch_db) as su:
        # Control: without the revoke, any role that can connect reads server options.
        su.execute("CREATE SERVER visible FOREIGN DATA WRAPPER clerk_wrapper OPTIONS (api_key 'before')")
        assert ("visible", ["api_key=before"]) in server_options(cfg, scratch_db, READER_ROLE)
        su.execute("DROP SERVER visible")
        # Everything but CREATE EXTENSION (the wrappers exist, so the DO blocks are no-ops).
        runnable = [s for s in ddl.superuser if not s.as_string(su).startswith("CREATE EXTENSION")]
        assert len(ddl.superuser) - len(runnable) == 2
        for _ in range(2):  # the bootstrap runs on every migrate
            for statement in runnable:
                su.execute(statement)
        public_columns = su.execute(
            "SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute"
            " WHERE attrelid = 'pg_catalog.pg_foreign_server'::regclass AND attnum > 0 AND attname <> 'srvoptions'"
        ).fetchone()[0]
        assert public_columns == list(foreign_tables.FOREIGN_SERVER_PUBLIC_COLUMNS)

    # The owner runs its part (thanks to the USAGE grants), twice: a rebuild replaces it all.
    with psycopg.connect(cfg.dsn(scratch_db, OWNER_ROLE), autocommit=True) as owner:
        for _ in range(2):
            for statement in ddl.statements:
                owner.execute(statement)
        tables = owner.execute(
            "SELECT c.oid::regclass::text, s.srvname, ft.ftoptions FROM pg_foreign_table ft"
            " JOIN pg_class c ON c.oid = ft.ftrelid JOIN pg_foreign_server s ON s.oid = ft.ftserver ORDER BY 1"
        ).fetchall()
        columns = {
            table: owner.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema || '.' || table_name = %s ORDER BY ordinal_position", (table,),
            ).fetchall()
            for table, _, _ in tables
        }
        owner_sees = owner.execute(
            "SELECT option_value FROM information_schema.foreign_server_options"
            " WHERE foreign_server_name = 'tembo_clerk' AND option_name = 'api_key'"
        ).fetchall()
    assert tables == [
        ("src_clerk.organization_memberships", "tembo_clerk", ["object=organization_memberships"]),
        ("src_clerk.organizations", "tembo_clerk", ["object=organizations"]),
        ("src_clerk.users", "tembo_clerk", ["object=users"]),
        ("src_prometheus.metrics", "tembo_prometheus", ["object=metrics", "step=3600s"]),
    ]
    contracts = {f"src_clerk.{t}": c for t, c in foreign_tables.CLERK_COLUMNS.items()}
    contracts["src_prometheus.metrics"] = foreign_tables.PROMETHEUS_COLUMNS
    assert columns == {t: [(n, {"float8": "double precision"}.get(k, k)) for n, k in c] for t, c in contracts.items()}
    assert owner_sees == [(API_KEY,)]

    with stack.postgres.connect(scratch_db) as su:
        assert dict(su.execute("SELECT srvname, srvoptions FROM pg_foreign_server").fetchall()) == {
            "tembo_clerk": [f"api_key={API_KEY}"], "tembo_prometheus": [f"base_url={cfg.prometheus_url}"],
        }
    for role in (LOADER_ROLE, READER_ROLE):
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied for table pg_foreign_server"):
            server_options(cfg, scratch_db, role)
        with psycopg.connect(cfg.dsn(scratch_db, role), autocommit=True) as conn:
            assert conn.execute("SELECT srvname FROM pg_foreign_server ORDER BY 1").fetchall() == [
                ("tembo_clerk",), ("tembo_prometheus",)]
            assert conn.execute("SELECT * FROM information_schema.foreign_server_options").fetchall() == []


# ----- dwh.tembo_metric_queries ----------------------------------------------------------------

QUERY = re.compile(
    r"SELECT metric_name, metric_labels - '__name__' AS metric_labels, metric_time, metric_value"
    r" FROM src_prometheus\.metrics"
    r" WHERE metric_name = '(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)'"
    r" AND metric_time > (?P<lower>-?\d+) AND metric_time < (?P<upper>-?\d+)"
)


def chunks(conn: psycopg.Connection, start: dt.datetime, end: dt.datetime, step: int,
           metrics: list[str]) -> list[tuple[str, str, str]]:
    """(metric, lower literal, upper literal) of every generated query, in the documented shape."""
    rows = conn.execute("SELECT dwh.tembo_metric_queries(%s, %s, %s, %s)", (start, end, step, metrics)).fetchall()
    out = []
    for (query,) in rows:
        match = QUERY.fullmatch(query)
        assert match, f"not the shape prometheus_fdw pushes down (metric_name =, strict > and <): {query}"
        out.append((match["name"], match["lower"], match["upper"]))
    return out


def prometheus_fdw_times(lower: int, upper: int, step: int) -> list[int]:
    """The sample times one query yields: prometheus_fdw sends start=lower, end=upper; Prometheus
    evaluates at start, start + step, ... <= end; PostgreSQL keeps lower < t < upper."""
    assert (upper - lower) // step <= MAX_POINTS, "Prometheus would refuse this query_range"
    return [t for t in range(lower, upper + 1, step) if lower < t < upper]


def grid(start: dt.datetime, end: dt.datetime, step: int) -> list[int]:
    """The aligned sample times in [start, end) (what the reader backend returns)."""
    first = math.ceil(start.timestamp() / step) * step
    return [t for t in range(first, math.ceil(end.timestamp()) + 1, step) if start.timestamp() <= t < end.timestamp()]


def at(*args: int | float) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def epoch(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, UTC)


WINDOWS = {
    "one day, aligned": (at(2026, 3, 1), at(2026, 3, 2), 3600, 1),
    "unaligned, fractional seconds": (at(2026, 3, 1, 10, 17, 3, 500000), at(2026, 3, 2, 5, 0, 0, 250000), 3600, 1),
    "end on the grid is excluded": (at(2026, 3, 1), at(2026, 3, 1, 5), 3600, 1),
    "no grid point inside": (at(2026, 3, 1, 10, 10), at(2026, 3, 1, 10, 50), 3600, 0),
    "three years hourly": (at(2023, 1, 1), at(2026, 1, 1), 3600, 3),
    "eight days at 60 s": (at(2026, 2, 1), at(2026, 2, 9), 60, 2),
    "10,999 points at 1 s": (epoch(1_700_000_000), epoch(1_700_010_999), 1, 1),
    "11,000 points at 1 s": (epoch(1_700_000_000), epoch(1_700_011_000), 1, 2),
    "odd step, unaligned": (epoch(1_700_000_003), epoch(1_700_200_001), 7, 3),
    "across 1970": (at(1969, 12, 31, 22, 30), at(1970, 1, 1, 2), 3600, 1),
    "up to the last int4 second": (epoch(INT4_MAX - 86400), epoch(INT4_MAX), 3600, 1),
}


@pytest.mark.parametrize("window", WINDOWS.values(), ids=WINDOWS.keys())
def test_metric_queries_tile_the_window(owner, window):
    start, end, step, n_chunks = window
    metrics = ["dwh_instance_cpu_seconds_total", "dwh:storage_bytes"]
    generated = chunks(owner, start, end, step, metrics)
    assert len(generated) == n_chunks * len(metrics)
    # Every bound is an int4 literal: prometheus_fdw drops any other (bigint) constant.
    literals = sorted({int(x) for _, lower, upper in generated for x in (lower, upper)})
    if literals:
        types = owner.execute(sql.SQL("SELECT {}").format(
            sql.SQL(", ").join(sql.SQL("pg_typeof({})::text").format(sql.SQL(str(x))) for x in literals))).fetchone()
        assert set(types) == {"integer"}
    for metric in metrics:
        mine = [(int(lower), int(upper)) for name, lower, upper in generated if name == metric]
        assert all(upper - lower <= MAX_POINTS * step for lower, upper in mine)
        times = Counter(t for lower, upper in mine for t in prometheus_fdw_times(lower, upper, step))
        assert max(times.values(), default=1) == 1, "overlapping chunks"
        assert sorted(times) == grid(start, end, step), "gaps or samples off the window"


def test_metric_queries_are_valid_against_the_contract_columns(owner):
    """The planner sees int4 constants against the bigint column (no ::bigint cast to drop)."""
    (query,), = owner.execute("SELECT dwh.tembo_metric_queries(%s, %s, 3600, ARRAY['dwh_instance_up'])",
                              (at(2026, 3, 1), at(2026, 3, 2))).fetchall()
    metric, lower, upper = QUERY.fullmatch(query).group("name", "lower", "upper")
    # src_prometheus.metrics is the reader's table here: the same columns; EXPLAIN runs nothing.
    plan = "\n".join(r[0] for r in owner.execute(sql.SQL("EXPLAIN (VERBOSE, COSTS OFF) {}").format(sql.SQL(query))))
    assert f"metric_time > {lower})" in plan and f"metric_time < {upper})" in plan
    assert "::bigint" not in plan and f"metric_name = '{metric}'::text" in plan


@pytest.mark.parametrize("name", [
    "up'; DROP TABLE dwh.users; --", "cpu;usage", 'bad"name', "with space", "", "9starts_with_a_digit", None,
])
def test_metric_queries_refuse_unsafe_metric_names(owner, name):
    with pytest.raises(errors.RaiseException, match="invalid metric name"):
        chunks(owner, at(2026, 3, 1), at(2026, 3, 2), 3600, ["dwh_instance_up", name])


@pytest.mark.parametrize("start, end, step", [
    (epoch(INT4_MAX - 3600), epoch(INT4_MAX + 1), 3600),       # end past 2038-01-19 03:14:07
    (at(2040, 1, 1), at(2040, 1, 2), 3600),
    (epoch(-INT4_MAX), epoch(-INT4_MAX + 60), 1),                # lower bound would be -2^31
    (at(1900, 1, 1), at(1900, 1, 2), 3600),
])
def test_metric_queries_refuse_windows_outside_int4(owner, start, end, step):
    with pytest.raises(errors.RaiseException, match="outside what prometheus_fdw accepts"):
        chunks(owner, start, end, step, ["dwh_instance_up"])


@pytest.mark.parametrize("step", [0, -60, None])
def test_metric_queries_refuse_a_missing_step(owner, step):
    with pytest.raises(errors.RaiseException, match="a step of at least 1 second"):
        chunks(owner, at(2026, 3, 1), at(2026, 3, 2), step, ["dwh_instance_up"])
