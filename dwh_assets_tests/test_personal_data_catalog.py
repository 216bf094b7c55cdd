"""Personal data in the catalog, and what derives from the marks, read without a server.

- the inventory: which columns are personal, and a mark that follows lineage unless a
  column says otherwise;
- snapshots keep no personal column, and keep every subject id;
- the comments, Dagster's column schema, the reader's and the personal reader's grants and
  ``dwh.subject_columns`` follow the marks;
- the bootstrap creates the personal reader and pgcrypto; ``dwh forget`` refuses a bad id
  before it connects to anything, and says what it removed.
"""

from __future__ import annotations

import dataclasses

import pytest

from dwh_assets import cli
from dwh_assets.warehouse import bootstrap, catalog, catalog_ddl
from dwh_assets.warehouse.catalog import PRODUCT, Column, Erase, Subject, ViewSpec
from dwh_assets.warehouse.catalog_model import PERSONAL_MARK
from dwh_assets.warehouse.defs.metadata import catalog_schema, snapshot_lineage
from dwh_assets.warehouse.erasure import Erasure, ErasureError, check_id
from dwh_assets_tests.deployments import offline_deployment
from dwh_assets_tests.test_migrate_plan import FACTS, fake_verifier

RELATIONS = [*PRODUCT.all_tables(), *PRODUCT.all_views()]
USERS_PERSONAL = {"first_name", "last_name", "email", "gender", "last_sign_in_at", "phone_numbers", "username", "attrs"}


# ----- the inventory -------------------------------------------------------------------------------


def test_the_inventory_of_personal_columns():
    found = {(item.relation, name) for item in RELATIONS for name in PRODUCT.personal_columns(item.relation)}
    assert found == {("dwh.users", name) for name in USERS_PERSONAL} | {("dwh.organization_memberships", "attrs")}


def test_a_column_computed_from_a_personal_column_is_personal_unless_it_says_otherwise():
    everything = ViewSpec("mart.people", "Every user.", (
        Column("user_id", "text", "The user.", lineage=("dwh.users.user_id",)),
        Column("email", "text", "Their address.", lineage=("dwh.users.email",)),
        Column("has_email", "boolean", "Whether they have one.", lineage=("dwh.users.email",), personal=False),
    ), reads=("dwh.users",), sql_file="people.sql")
    # Two hops: a column computed from the view's personal column.
    contact = ViewSpec("mart.contact", "Addresses.", (
        Column("address", "text", "An address.", lineage=("mart.people.email",)),
        Column("flag", "boolean", "A flag.", lineage=("mart.people.has_email",)),
    ), reads=("mart.people",), sql_file="contact.sql")
    extended = PRODUCT.extended(views=(everything, contact))
    assert extended.personal_columns("mart.people") == {"email"}
    assert extended.personal_columns("mart.contact") == {"address"}


def test_a_marts_count_of_a_personal_column_is_declared_not_personal():
    with_email = next(c for c in catalog.DAILY_SIGNUPS.columns if c.name == "with_email")
    assert "dwh.users.email" in with_email.lineage and with_email.personal is False
    assert PRODUCT.personal_columns("mart.daily_signups") == frozenset()


@pytest.mark.parametrize("spec", [s for s in PRODUCT.tables if s.snapshot], ids=lambda s: s.name)
def test_snapshots_keep_no_personal_column_and_every_subject_id(spec):
    kept = [c.name for c in spec.snapshot.columns]
    assert kept == ["snapshot_day", *(c.name for c in spec.columns if not c.personal)]
    assert {c.name for c in spec.columns if c.subject} <= set(kept)
    assert PRODUCT.personal_columns(spec.snapshot_table) == frozenset()
    # Dagster's column lineage of the snapshot names only the columns it keeps.
    assert list(snapshot_lineage(spec).deps_by_column) == kept[1:]


def test_subject_ids_are_never_personal_and_name_where_forget_looks():
    for spec in PRODUCT.tables:
        for column in spec.columns:
            assert not (column.subject and column.personal), f"{spec.name}.{column.name}: an id is kept in snapshots"
    found = {(s.relation, s.column): (s.subject, s.erase) for s in PRODUCT.subject_columns()}
    assert found == {
        ("dwh.users", "user_id"): (Subject.USER, Erase.ROW),
        ("dwh.users_snapshot", "user_id"): (Subject.USER, Erase.ROW),
        ("dwh.organization_memberships", "user_id"): (Subject.USER, Erase.ROW),
        ("dwh.organization_memberships_snapshot", "user_id"): (Subject.USER, Erase.ROW),
        ("dwh.organizations", "created_by"): (Subject.USER, Erase.VALUE),
        ("dwh.organizations_snapshot", "created_by"): (Subject.USER, Erase.VALUE),
        ("dwh.organizations", "organization_id"): (Subject.ORGANIZATION, Erase.ROW),
        ("dwh.organizations_snapshot", "organization_id"): (Subject.ORGANIZATION, Erase.ROW),
        ("dwh.organization_memberships", "organization_id"): (Subject.ORGANIZATION, Erase.ROW),
        ("dwh.organization_memberships_snapshot", "organization_id"): (Subject.ORGANIZATION, Erase.ROW),
    }


# ----- comments, Dagster ---------------------------------------------------------------------------


def test_a_personal_columns_comment_and_dagster_description_carry_the_mark():
    comments = catalog_ddl.comments(PRODUCT)
    for item in RELATIONS:
        personal = PRODUCT.personal_columns(item.relation)
        schema = {c.name: c for c in catalog_schema(item, personal).columns}
        for column in item.columns:
            text = comments[("COLUMN", item.relation, column.name)]
            assert text.startswith(PERSONAL_MARK) == (column.name in personal), (item.relation, column.name)
            assert schema[column.name].description == text
            assert dict(schema[column.name].tags) == ({"personal_data": "true"} if column.name in personal else {})


# ----- grants ------------------------------------------------------------------------------------------


def grant_text() -> list[str]:
    return [s.as_string(None) for s in catalog_ddl.grants(PRODUCT, "dwh_loader", "dwh_reader", "dwh_personal_reader")]


def test_the_reader_gets_the_non_personal_columns_and_the_personal_reader_the_rest():
    text = grant_text()
    users = 'ON "dwh"."users"'
    reader = next(s for s in text if users in s and s.endswith('TO "dwh_reader"'))
    personal = next(s for s in text if users in s and s.endswith('TO "dwh_personal_reader"'))
    assert reader == 'GRANT SELECT ("user_id", "created_at", "updated_at") ON "dwh"."users" TO "dwh_reader"'
    assert personal.startswith("GRANT SELECT (") and {name.strip(' "') for name in
                                                       personal[len("GRANT SELECT ("):personal.index(")")].split(",")} == USERS_PERSONAL
    # Revoked first, in the same list: what was granted before (a table-level SELECT) does not linger.
    assert text.index('REVOKE SELECT ON "dwh"."users" FROM "dwh_reader", "dwh_personal_reader"') < text.index(reader)


def test_no_grant_to_the_reader_names_a_personal_column_or_a_whole_relation_that_has_one():
    text = grant_text()
    for item in RELATIONS:
        personal = PRODUCT.personal_columns(item.relation)
        schema, name = item.relation.split(".")
        to_reader = [s for s in text if f'ON "{schema}"."{name}" TO "dwh_reader"' in s]
        assert len(to_reader) == 1, item.relation
        if personal:
            assert to_reader[0].startswith("GRANT SELECT (")
            assert not any(f'"{column}"' in to_reader[0].split(" ON ")[0] for column in personal)
        else:
            assert to_reader[0] == f'GRANT SELECT ON "{schema}"."{name}" TO "dwh_reader"'


# ----- the bootstrap --------------------------------------------------------------------------------


def test_the_bootstrap_creates_the_personal_reader_as_a_member_of_the_reader_and_pgcrypto(tmp_path, monkeypatch):
    for purpose in ("loader", "reader"):
        monkeypatch.setenv(f"DWH_WAREHOUSE__{purpose.upper()}__PASSWORD", f"{purpose}-password-value")
    plan = bootstrap.plan_bootstrap(offline_deployment(tmp_path), FACTS, fake_verifier)
    text = [s.sql.as_string(None) for s in plan.warehouse]
    assert 'CREATE ROLE "dwh_personal_reader" NOLOGIN' in text and 'GRANT "dwh_reader" TO "dwh_personal_reader"' in text
    assert 'CREATE EXTENSION IF NOT EXISTS "pgcrypto" SCHEMA "public"' in text
    # No login gets it from migrate: it is granted deliberately, by hand.
    assert not any('GRANT "dwh_personal_reader"' in s for s in text)
    assert "dwh_personal_reader" in bootstrap.PRIVILEGE_ROLES


def test_an_existing_personal_reader_is_not_recreated_but_made_a_member_of_the_reader(tmp_path, monkeypatch):
    """The managed prerequisites script creates the role bare; migrate's grant, verified first, makes it a member."""
    for purpose in ("loader", "reader"):
        monkeypatch.setenv(f"DWH_WAREHOUSE__{purpose.upper()}__PASSWORD", f"{purpose}-password-value")
    facts = dataclasses.replace(FACTS, roles=FACTS.roles | {"dwh_personal_reader"})
    plan = bootstrap.plan_bootstrap(offline_deployment(tmp_path), facts, fake_verifier)
    found = [s for s in plan.warehouse if "dwh_personal_reader" in s.sql.as_string(None)]
    assert [s.sql.as_string(None) for s in found] == ['GRANT "dwh_reader" TO "dwh_personal_reader"']
    assert "pg_has_role('dwh_personal_reader', 'dwh_reader', 'MEMBER')" in found[0].verify.as_string(None)


# ----- dwh forget ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", " ", "user_1 user_2", "user_1\n", "x" * 201])
def test_forget_refuses_a_malformed_id_before_anything_is_read(bad, capsys, monkeypatch):
    # No configuration anywhere: the id is refused before one is looked for.
    monkeypatch.delenv("DWH_CONFIG", raising=False)
    monkeypatch.setenv("DWH_HOME", "/nonexistent/dwh-home")
    assert cli.main(["forget", "--user", bad]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dwh forget: --user needs the id the source knows the user by") and "Nothing was erased." in err
    with pytest.raises(ErasureError, match="--organization needs the id"):
        check_id(Subject.ORGANIZATION, bad)


def test_forget_takes_exactly_one_subject(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["forget", "--user", "user_1", "--organization", "org_1"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["forget"])
    assert "one of the arguments --user --organization is required" in capsys.readouterr().err


def test_what_forget_says_it_removed_names_no_id():
    done = Erasure(7, Subject.USER, "ab" * 32, {"dwh.users": 1, "dwh.users_snapshot": 30, "dwh.organization_memberships": 0},
                   {"dwh.organizations.created_by": 2})
    text = done.summary()
    assert text.startswith("user forgotten (dwh.erasure_log id 7, keyed hash abababababab…): deleted 1 row(s) of dwh.users")
    assert "30 row(s) of dwh.users_snapshot; cleared 2 value(s) of dwh.organizations.created_by." in text
    assert "organization_memberships" not in text
    nothing = Erasure(8, Subject.ORGANIZATION, "cd" * 32, {"dwh.organizations": 0}, {})
    assert "no row of the warehouse held it. The erasure is recorded" in nothing.summary()
