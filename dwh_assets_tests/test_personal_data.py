"""Personal data on the session stack: what each reader may read, and erasure end to end.

As the reader login (dashboards, SQL Lab): every personal column is refused, every other
column of every catalog relation reads, no partition reads directly, and a table the owner
creates later is not readable either. A login granted ``dwh_personal_reader`` reads the
personal columns. Snapshots hold none.

Erasure, in order, against the stack's Clerk emulator: a user deleted in Clerk leaves the
copies on the next refresh; ``dwh forget --user`` removes another, still in Clerk, from every
table and snapshot in one transaction (a failure half-way changes nothing) and logs a keyed
hash; refreshes and a Dagster backfill then leave them out; ``dwh forget --organization``
removes an organization while its instances keep its id and the checks pass. The phases'
timings are printed and written to test-artifacts/erasure-timings.json. The module puts the
stack back as it found it (log rows removed, Clerk reset, dimensions and marts refreshed).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import hmac
import json
import secrets
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.rows import dict_row

from dwh_assets import cli
from dwh_assets.local.config import LOADER_ROLE, OWNER_ROLE, REPO_ROOT, WAREHOUSE_DB, StackConfig
from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.catalog import PRODUCT, Subject
from dwh_assets.warehouse.defs.checks import mart_checks, refresh_checks
from dwh_assets_tests.test_dagster_ui import graphql
from dwh_assets_tests.warehouse_helpers import ClerkApi, refresh

READER = catalog.READER_GROUP
PERSONAL = [(item.relation, name) for item in (*PRODUCT.all_tables(), *PRODUCT.all_views())
            for name in sorted(PRODUCT.personal_columns(item.relation))]
RELATIONS = [*PRODUCT.all_tables(), *PRODUCT.all_views()]
DIMENSIONS = [spec for spec in PRODUCT.tables if spec.kind is catalog.Kind.DIMENSION]
ARTIFACTS = REPO_ROOT / "test-artifacts"
TIMINGS: dict[str, float] = {}


def ident(relation: str) -> sql.Identifier:
    return sql.Identifier(*relation.split("."))


def utc_today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


@pytest.fixture(scope="module", autouse=True)
def filled(cfg: StackConfig) -> None:
    """Every copy and mart holds rows: each copy's pg_cron job runs once, then each mart's (as pg_cron would)."""
    with psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True) as conn:
        for entry in PRODUCT.refreshed():
            conn.execute(entry.cron_command())


@pytest.fixture()
def checker(cfg: StackConfig) -> Iterator[psycopg.Connection]:
    """The loader as Dagster's checks use it (rows as dicts)."""
    with psycopg.connect(cfg.dsn(WAREHOUSE_DB, LOADER_ROLE), autocommit=True, row_factory=dict_row) as conn:
        yield conn


def latest_log(conn: psycopg.Connection, table: str) -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM dwh.refresh_log WHERE table_name = %s ORDER BY id DESC LIMIT 1", (table,)).fetchone()


# ----- what the reader may read -------------------------------------------------------------------


@pytest.mark.parametrize("relation, column", PERSONAL, ids=[f"{r}.{c}" for r, c in PERSONAL])
def test_the_reader_is_refused_every_personal_column(reader_role, relation, column):
    with pytest.raises(errors.InsufficientPrivilege, match=f"permission denied for table {relation.split('.')[1]}"):
        reader_role.execute(sql.SQL("SELECT {} FROM {} LIMIT 1").format(sql.Identifier(column), ident(relation)))


def test_the_reader_is_refused_select_star_on_a_table_with_personal_columns(reader_role):
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied for table users"):
        reader_role.execute("SELECT * FROM dwh.users LIMIT 1")


@pytest.mark.parametrize("item", RELATIONS, ids=lambda i: i.relation)
def test_the_reader_reads_every_other_column_of_every_catalog_relation(reader_role, superuser, item):
    personal = PRODUCT.personal_columns(item.relation)
    public = [c.name for c in item.columns if c.name not in personal]
    reader_role.execute(sql.SQL("SELECT {} FROM {} LIMIT 1").format(
        sql.SQL(", ").join(map(sql.Identifier, public)), ident(item.relation)))
    readable = {row[0] for row in superuser.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
        " AND has_column_privilege(%s, attrelid, attnum, 'SELECT')", (item.relation, READER)).fetchall()}
    assert readable == set(public), "the reader's columns are exactly the non-personal ones"


@pytest.mark.parametrize("spec", DIMENSIONS, ids=lambda s: s.name)
def test_snapshots_hold_no_personal_column(superuser, spec):
    columns = {row[0] for row in superuser.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (spec.snapshot_table,)).fetchall()}
    assert columns == {c.name for c in spec.snapshot.columns}
    assert columns & {c.name for c in spec.columns if c.personal} == set()


def test_no_reader_may_read_a_partition_directly(superuser, reader_role):
    readable = superuser.execute(
        "SELECT c.oid::regclass::text, r.rolname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " CROSS JOIN (VALUES (%s), (%s)) AS r(rolname)"
        " WHERE c.relispartition AND n.nspname IN ('dwh', 'mart') AND has_any_column_privilege(r.rolname, c.oid, 'SELECT')",
        (READER, catalog.PERSONAL_READER_GROUP)).fetchall()
    assert readable == []
    partition = superuser.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'dwh.users_snapshot'::regclass ORDER BY 1 DESC LIMIT 1").fetchone()[0]
    with pytest.raises(errors.InsufficientPrivilege, match=f"permission denied for table {partition}"):
        reader_role.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("dwh", partition)))


@pytest.mark.parametrize("schema", ["dwh", "mart"])
def test_a_table_the_owner_creates_later_is_not_the_readers(owner, schema):
    with owner.transaction(force_rollback=True):
        owner.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(catalog.OWNER_GROUP)))
        owner.execute(sql.SQL("CREATE TABLE {} (a int)").format(sql.Identifier(schema, "later_table")))
        assert not owner.execute("SELECT has_any_column_privilege(%s, %s, 'SELECT')",
                                 (READER, f"{schema}.later_table")).fetchone()[0]


@pytest.fixture()
def personal_reader(cfg: StackConfig, superuser) -> Iterator[psycopg.Connection]:
    """A login granted dwh_personal_reader by hand, as a deployment would grant it (dropped afterwards)."""
    login, password = f"privacy_{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    superuser.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(login), sql.Literal(password)))
    superuser.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(catalog.PERSONAL_READER_GROUP), sql.Identifier(login)))
    try:
        with psycopg.connect(host=cfg.host, port=cfg.pg_port, dbname=WAREHOUSE_DB, user=login, password=password,
                             autocommit=True) as conn:
            yield conn
    finally:
        superuser.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(login)))


def test_a_login_granted_the_personal_reader_reads_the_personal_columns(personal_reader, superuser):
    for relation, names in {r: [c for rr, c in PERSONAL if rr == r] for r, _ in PERSONAL}.items():
        count = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
            ident(relation), sql.SQL(" OR ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(n)) for n in names))
        assert personal_reader.execute(count).fetchone()[0] == superuser.execute(count).fetchone()[0] > 0, relation
    # Everything the reader reads, too: it is a member of the reader.
    assert personal_reader.execute("SELECT count(*) FROM mart.daily_signups").fetchone()[0] > 0
    with pytest.raises(errors.InsufficientPrivilege):
        personal_reader.execute("SELECT * FROM dwh.settings")


# What a view's rewrite rule reads, column by column.
VIEW_COLUMNS = """
SELECT DISTINCT d.refobjid::regclass::text, a.attname
FROM pg_rewrite r JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
JOIN pg_attribute a ON d.refclassid = 'pg_class'::regclass AND a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE r.ev_class = %s::regclass AND d.refobjid <> r.ev_class
"""


@pytest.mark.parametrize("view", PRODUCT.all_views(), ids=lambda v: v.relation)
def test_a_view_reads_a_personal_column_only_through_its_declared_lineage(superuser, view):
    """So the catalog sees it: a view column computed from a personal column is personal unless it says not."""
    read = {f"{relation}.{column}" for relation, column in superuser.execute(VIEW_COLUMNS, (view.relation,)).fetchall()}
    personal_read = {ref for ref in read if ref.rsplit(".", 1)[1] in PRODUCT.personal_columns(ref.rsplit(".", 1)[0])}
    declared = {ref for column in view.columns for ref in column.lineage}
    assert personal_read <= declared


# ----- erasure ----------------------------------------------------------------------------------------


def subject_rows(conn: psycopg.Connection, subject: Subject, subject_id: str) -> dict[str, int]:
    """Rows holding the id, in every relation the catalog says holds a subject's id."""
    found = {}
    for place in PRODUCT.subject_columns():
        if place.subject is subject:
            found[f"{place.relation}.{place.column}"] = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
                ident(place.relation), sql.Identifier(place.column)), (subject_id,)).fetchone()[0]
    return found


def run_dimension_jobs(loader: psycopg.Connection, names: tuple[str, ...]) -> list[str]:
    """What pg_cron runs for these copies, as the loader; returns the NOTICEs."""
    notices: list[str] = []
    loader.add_notice_handler(lambda diag: notices.append(diag.message_primary))
    for name in names:
        loader.execute(PRODUCT.get(name).cron_command())
    return notices


def forget(subject: Subject, subject_id: str) -> tuple[int, str, str]:
    """``dwh forget`` as a user runs it (the session stack's configuration); exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["forget", f"--{subject.value}", subject_id])
    TIMINGS[f"dwh forget --{subject.value}"] = round(time.monotonic() - started, 2)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def scenario(cfg: StackConfig, stack) -> Iterator[dict[str, str]]:
    """Who is deleted in Clerk, who is forgotten (a creator of an organization, still in Clerk), which
    organization is forgotten (one with instances); the stack put back afterwards."""
    owner_dsn, api = cfg.dsn(WAREHOUSE_DB, OWNER_ROLE), ClerkApi(cfg)
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(catalog.OWNER_GROUP)))
        forgotten, creation = conn.execute(
            "SELECT u.user_id, u.created_at FROM dwh.users u WHERE u.email IS NOT NULL"
            " AND EXISTS (SELECT FROM dwh.organizations o WHERE o.created_by = u.user_id)"
            " AND EXISTS (SELECT FROM dwh.organization_memberships m WHERE m.user_id = u.user_id)"
            " ORDER BY u.user_id LIMIT 1").fetchone()
        deleted = conn.execute(
            "SELECT u.user_id FROM dwh.users u JOIN dwh.organization_memberships m USING (user_id)"
            " WHERE u.user_id <> %s AND NOT EXISTS (SELECT FROM dwh.organizations o WHERE o.created_by = u.user_id)"
            " ORDER BY 1 LIMIT 1", (forgotten,)).fetchone()[0]
        organization = conn.execute(
            "SELECT i.organization_id FROM dwh.instances i JOIN dwh.organization_memberships m USING (organization_id)"
            " JOIN dwh.organizations o USING (organization_id) WHERE o.created_by IS DISTINCT FROM %s"
            " GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1", (forgotten,)).fetchone()[0]
        log_id = conn.execute("SELECT coalesce(max(id), 0) FROM dwh.erasure_log").fetchone()[0]
    yield {"forgotten": forgotten, "creation_day": creation.astimezone(dt.timezone.utc).date().isoformat(),
           "deleted": deleted, "organization": organization}
    # Put the stack back: the later tests compare the copies with Clerk.
    api.reset()
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(catalog.OWNER_GROUP)))
        conn.execute("DELETE FROM dwh.erasure_log WHERE id > %s", (log_id,))
        for spec in DIMENSIONS:
            conn.execute(spec.cron_command())
        for mart in PRODUCT.marts:
            conn.execute(mart.cron_command())
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "erasure-timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")
    print(f"\nerasure timings (s): {TIMINGS}")


def test_a_user_deleted_in_clerk_leaves_the_copies_on_the_next_refresh(scenario, loader, clerk):
    deleted = scenario["deleted"]
    assert sum(subject_rows(loader, Subject.USER, deleted).values()) > 0
    clerk.request("DELETE", f"/_admin/users/{deleted}")  # and their memberships, as Clerk does
    started = time.monotonic()
    run_dimension_jobs(loader, ("users", "organization_memberships"))
    TIMINGS["refresh after a Clerk deletion"] = round(time.monotonic() - started, 2)
    today = utc_today()
    assert loader.execute("SELECT count(*) FROM dwh.users WHERE user_id = %s", (deleted,)).fetchone()[0] == 0
    assert loader.execute("SELECT count(*) FROM dwh.organization_memberships WHERE user_id = %s", (deleted,)).fetchone()[0] == 0
    for snapshot in ("dwh.users_snapshot", "dwh.organization_memberships_snapshot"):
        assert loader.execute(sql.SQL("SELECT count(*) FROM {} WHERE user_id = %s AND snapshot_day = %s").format(
            ident(snapshot)), (deleted, today)).fetchone()[0] == 0, snapshot


@pytest.fixture()
def failing_update_of_organizations(superuser) -> Iterator[None]:
    """A trigger that fails any update of dwh.organizations: dwh forget's step that clears created_by."""
    superuser.execute("CREATE FUNCTION public.refuse_update() RETURNS trigger LANGUAGE plpgsql AS "
                      "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$")
    superuser.execute("CREATE TRIGGER refuse_update BEFORE UPDATE ON dwh.organizations "
                      "FOR EACH ROW EXECUTE FUNCTION public.refuse_update()")
    try:
        yield
    finally:
        superuser.execute("DROP TRIGGER refuse_update ON dwh.organizations")
        superuser.execute("DROP FUNCTION public.refuse_update()")


def test_a_forget_that_fails_half_way_changes_nothing(scenario, superuser, failing_update_of_organizations):
    user = scenario["forgotten"]
    before = subject_rows(superuser, Subject.USER, user)
    # Memberships go before created_by is cleared (the update the trigger refuses): there is something to put back.
    assert before["dwh.organization_memberships.user_id"] > 0 and before["dwh.organizations.created_by"] > 0
    logged = superuser.execute("SELECT count(*) FROM dwh.erasure_log").fetchone()[0]
    code, out, err = forget(Subject.USER, user)
    assert (code, out) == (1, "") and err.startswith("dwh forget: refused by the test") and err.rstrip().endswith(
        "Nothing was erased."), err
    assert "Traceback" not in err and user not in err
    assert subject_rows(superuser, Subject.USER, user) == before, "the rows deleted before the failure came back"
    assert superuser.execute("SELECT count(*) FROM dwh.erasure_log").fetchone()[0] == logged


@pytest.fixture(scope="module")
def forgotten_user(scenario: dict[str, str], cfg: StackConfig) -> dict:
    """``dwh forget --user`` of the scenario's user, with earlier days' snapshots as a stack that ran for a while
    has them; what the relations held before, and what the command printed."""
    user = scenario["forgotten"]
    with psycopg.connect(cfg.superuser_dsn(WAREHOUSE_DB), autocommit=True) as conn:
        conn.execute("INSERT INTO dwh.users_snapshot (snapshot_day, user_id, created_at, updated_at) "
                     "SELECT snapshot_day - k, user_id, created_at, updated_at FROM dwh.users_snapshot "
                     "CROSS JOIN generate_series(1, 3) k WHERE user_id = %(user)s AND snapshot_day = "
                     "(SELECT max(snapshot_day) FROM dwh.users_snapshot WHERE user_id = %(user)s)", {"user": user})
        before = subject_rows(conn, Subject.USER, user)
    code, out, err = forget(Subject.USER, user)
    return {"user": user, "before": before, "code": code, "out": out, "err": err}


def test_forget_removes_a_user_from_every_table_and_snapshot(forgotten_user, superuser):
    user, before = forgotten_user["user"], forgotten_user["before"]
    snapshots = before["dwh.users_snapshot.user_id"]
    assert snapshots >= 4 and before["dwh.organizations.created_by"] > 0 and before["dwh.users.user_id"] == 1
    assert (forgotten_user["code"], forgotten_user["err"]) == (0, ""), forgotten_user["err"]
    out = forgotten_user["out"]
    assert out.startswith("user forgotten (dwh.erasure_log id ") and f"{snapshots} row(s) of dwh.users_snapshot" in out
    assert user not in out
    assert set(subject_rows(superuser, Subject.USER, user).values()) == {0}
    assert superuser.execute("SELECT count(*) FROM dwh.organizations WHERE attrs ->> 'created_by' = %s",
                             (user,)).fetchone()[0] == 0, "the id stays in no Clerk object either"


def test_the_erasure_is_logged_as_a_keyed_hash_never_the_id(forgotten_user, superuser, loader):
    user = forgotten_user["user"]
    key = bytes(superuser.execute("SELECT key FROM dwh.erasure_key").fetchone()[0])
    text, digest = superuser.execute("SELECT row_to_json(l)::text, subject_hash FROM dwh.erasure_log l "
                                     "WHERE subject = 'user' ORDER BY id DESC LIMIT 1").fetchone()
    assert digest == hmac.new(key, f"user:{user}".encode(), hashlib.sha256).hexdigest()
    assert digest != hashlib.sha256(f"user:{user}".encode()).hexdigest(), "keyed: not a hash anyone can recompute"
    assert user not in text and user.split("_", 1)[1] not in text
    # The log and its key are the owner's; so is erasing.
    for statement in ("SELECT * FROM dwh.erasure_log", "SELECT * FROM dwh.erasure_key"):
        with pytest.raises(errors.InsufficientPrivilege):
            loader.execute(statement)
    with pytest.raises(errors.InsufficientPrivilege):
        loader.execute("SELECT dwh.forget('user', %s)", (user,))


def test_the_marts_days_that_counted_a_forgotten_user_are_queued(forgotten_user, scenario, superuser):
    erased_at = superuser.execute("SELECT max(erased_at) FROM dwh.erasure_log WHERE subject = 'user'").fetchone()[0]
    # Still queued, or already refreshed by the mart's pg_cron job since.
    assert superuser.execute(
        "SELECT EXISTS (SELECT FROM dwh.mart_pending WHERE mart = 'daily_signups' AND day = %(day)s)"
        " OR EXISTS (SELECT FROM dwh.refresh_log WHERE table_name = 'mart.daily_signups' AND started_at > %(at)s"
        "            AND window_start <= %(day)s::timestamptz AND window_end > %(day)s::timestamptz)",
        {"day": scenario["creation_day"], "at": erased_at}).fetchone()[0]


def test_refreshes_leave_a_forgotten_user_out_while_clerk_still_holds_them(forgotten_user, loader, checker, clerk):
    user = forgotten_user["user"]
    assert user in {u["id"] for u in clerk.list_all("users")[0]}, "Clerk still holds them"
    started = time.monotonic()
    notices = run_dimension_jobs(loader, ("users", "organizations", "organization_memberships"))
    TIMINGS["refresh of the Clerk copies with a forgotten user"] = round(time.monotonic() - started, 2)
    assert set(subject_rows(loader, Subject.USER, user).values()) == {0}
    assert any(n.startswith("dwh.refresh_users: left out 1 row(s)") for n in notices), notices
    # Their checks hold: rows_source counts the rows kept, and every membership's user is a user.
    for spec in (PRODUCT.get("users"), PRODUCT.get("organization_memberships")):
        results = {c.name: c.run(checker, latest_log(checker, spec.name)) for c in refresh_checks(spec)}
        assert all(passed for passed, _ in results.values()), (spec.name, results)


BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } ... on InvalidSubsetError { message }
  }
}
"""
BACKFILL_STATE = """
query Backfill($id: String!, $tags: [ExecutionTag!]) {
  partitionBackfillOrError(backfillId: $id) { __typename ... on PartitionBackfill { status } }
  runsOrError(filter: {tags: $tags}) { __typename ... on Runs { results { runId status } } }
}
"""


def backfill(url: str, assets: list[str], days: list[str], timeout: float = 900) -> tuple[str, list[dict]]:
    """What the UI launches: a backfill through the webserver, run by the daemon; waits for its runs."""
    launched = graphql(url, BACKFILL, {"params": {"assetSelection": [{"path": a.split("/")} for a in assets],
                                                  "partitionNames": days, "fromFailure": False}})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    variables = {"id": launched["backfillId"], "tags": [{"key": "dagster/backfill", "value": launched["backfillId"]}]}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = graphql(url, BACKFILL_STATE, variables)
        status, runs = state["partitionBackfillOrError"]["status"], state["runsOrError"]["results"]
        if status not in ("REQUESTED", "CANCELING") and runs and all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs):
            return status, runs
        time.sleep(3)
    raise AssertionError(f"backfill {launched['backfillId']} did not finish in {timeout:.0f}s")


def test_a_dagster_backfill_after_the_erasure_brings_no_one_back(forgotten_user, scenario, cfg, loader):
    user, first = forgotten_user["user"], dt.date.fromisoformat(scenario["creation_day"])
    today = utc_today()
    days = [(first + dt.timedelta(days=n)).isoformat() for n in range((today - first).days + 1)]
    started = time.monotonic()
    status, runs = backfill(cfg.dagster_url, ["dwh/users", "dwh/organizations", "dwh/organization_memberships",
                                              "mart/daily_signups", "mart/org_daily_usage"], days)
    TIMINGS[f"Dagster backfill of the Clerk copies and 2 marts over {len(days)} day(s)"] = round(time.monotonic() - started, 2)
    assert status in ("COMPLETED", "COMPLETED_SUCCESS") and {r["status"] for r in runs} == {"SUCCESS"}, (status, runs)
    assert set(subject_rows(loader, Subject.USER, user).values()) == {0}
    signups, users = loader.execute(
        "SELECT (SELECT signups FROM mart.daily_signups WHERE day = %(day)s),"
        " (SELECT count(*) FROM dwh.users WHERE (created_at AT TIME ZONE 'UTC')::date = %(day)s)",
        {"day": first}).fetchone()
    assert (signups or 0) == users, "the sign-ups of their day no longer count them"
    members = loader.execute(
        "SELECT count(*) FILTER (WHERE u.members IS DISTINCT FROM m.n) FROM mart.org_daily_usage u"
        " JOIN (SELECT organization_id, count(*) AS n FROM dwh.organization_memberships GROUP BY 1) m USING (organization_id)"
        " WHERE u.day = %s", (today,)).fetchone()[0]
    assert members == 0, "today's members are the memberships the warehouse holds"


def test_forget_an_organization_keeps_its_instances_and_the_checks_pass(scenario, superuser, loader, checker):
    organization = scenario["organization"]
    instances = loader.execute("SELECT count(*) FROM dwh.instances WHERE organization_id = %s",
                               (organization,)).fetchone()[0]
    assert instances > 0 and sum(subject_rows(loader, Subject.ORGANIZATION, organization).values()) > 0
    code, out, err = forget(Subject.ORGANIZATION, organization)
    assert (code, err) == (0, "") and out.startswith("organization forgotten"), err
    run_dimension_jobs(loader, ("organizations", "organization_memberships", "instances"))
    assert set(subject_rows(loader, Subject.ORGANIZATION, organization).values()) == {0}
    assert loader.execute("SELECT count(*) FROM dwh.instances WHERE organization_id = %s",
                          (organization,)).fetchone()[0] == instances, "the control plane's copy holds no personal data"
    # The checks excuse its id where copies without personal data keep it.
    references = next(c for c in refresh_checks(PRODUCT.get("instances")) if c.name == "references_resolve")
    log = latest_log(checker, "instances")
    assert references.run(checker, log) == (True, {"dangling_organization_id": 0})
    usage = next(c for c in mart_checks(catalog.ORG_DAILY_USAGE) if c.name == "references_resolve")
    midnight = dt.datetime.combine(utc_today(), dt.time(), dt.timezone.utc)
    window = {"window_start": midnight - dt.timedelta(days=7), "window_end": midnight + dt.timedelta(days=1)}
    assert checker.execute("SELECT count(*) AS n FROM mart.org_daily_usage_days WHERE organization_id = %s AND day >= %s",
                           (organization, window["window_start"].date())).fetchone()["n"] > 0
    assert usage.run(checker, window)[0], "its usage rows keep its id, excused"
    # A dangling id nobody forgot still fails the check.
    superuser.row_factory = dict_row
    with superuser.transaction(force_rollback=True):
        superuser.execute("UPDATE dwh.instances SET organization_id = 'org_nobody_forgot' WHERE instance_id = "
                          "(SELECT instance_id FROM dwh.instances WHERE organization_id <> %s LIMIT 1)", (organization,))
        assert references.run(superuser, log) == (False, {"dangling_organization_id": 1})
