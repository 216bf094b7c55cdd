"""Source drift, the parts that need no server: what the reader refuses when Clerk's API stops
sending a field, and what the refreshes are told about their sources.

The reader runs on the database host without this package, so it states its required
fields itself; these tests hold them to the catalog: a field the warehouse stores NOT NULL
is required (a changed API fails the refresh naming the field), any other may be absent
(copied as NULL). The drift against real servers is test_faults_drift.py.
"""

from __future__ import annotations

import pytest

from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.migrate import settings
from dwh_assets.warehouse.sources import reader as r
from dwh_assets_tests.deployments import offline_deployment

USER = {"id": "user_1", "first_name": "Ada", "last_name": "L", "gender": None, "username": None,
        "primary_email_address_id": "idn_1", "email_addresses": [{"id": "idn_1", "email_address": "a@example.com"}],
        "phone_numbers": [], "created_at": 1_700_000_000_000, "updated_at": 1_700_000_000_000, "last_sign_in_at": None}
ORGANIZATION = {"id": "org_1", "name": "Acme", "slug": "acme", "created_by": None,
                "created_at": 1_700_000_000_000, "updated_at": 1_700_000_000_000}
MEMBERSHIP = {"id": "orgmem_1", "role": "org:admin", "public_user_data": {"user_id": "user_1"},
              "organization": {"id": "org_1"}}
# The reader's parser of each Clerk table, a valid object, and the JSON fields it reads 1:1 into a column.
CLERK = {
    "users": (r.user_row, USER, ("first_name", "last_name", "gender", "created_at", "updated_at", "last_sign_in_at",
                                 "username")),
    "organizations": (r.organization_row, ORGANIZATION, ("name", "slug", "created_at", "updated_at", "created_by")),
    "organization_memberships": (r.membership_row, MEMBERSHIP, ("role",)),
}


def fields(table: str, not_null: bool) -> list[tuple[str, str]]:
    spec = catalog.get(table)
    _parse, _obj, plain = CLERK[table]
    return [(table, c.name) for c in spec.columns if c.name in plain and spec.table.not_null(c) == not_null]


@pytest.mark.parametrize("table, field", [f for t in CLERK for f in fields(t, not_null=True)])
def test_a_field_the_warehouse_stores_not_null_is_required(table, field):
    parse, obj, _plain = CLERK[table]
    parse(obj)  # the object as it is parses
    with pytest.raises(r.ReaderError, match=f"required field '{field}' is missing") as error:
        parse({k: v for k, v in obj.items() if k != field})
    assert error.value.exit_code == r.EXIT_MALFORMED  # the refresh says: a payload it cannot load (22000)


@pytest.mark.parametrize("table, field", [f for t in CLERK for f in fields(t, not_null=False)])
def test_a_nullable_field_may_be_absent(table, field):
    parse, obj, _plain = CLERK[table]
    _id, complete = parse(obj)
    _id, without = parse({k: v for k, v in obj.items() if k != field})
    changed = [i for i, (a, b) in enumerate(zip(complete, without)) if a != b]
    # Only its own value (NULL now) and the whole object in attrs differ.
    assert all(without[i] is None for i in changed[:-1]) and len(changed) <= 2


def test_every_copy_tells_its_refresh_its_sources(tmp_path):
    """A failed read names the source tables of its refresh: dwh.settings carries the catalog's."""
    values = settings(offline_deployment(tmp_path), "warehouse")
    for spec in catalog.CATALOG:
        assert values[f"refresh.sources.{spec.name}"].split(",") == list(spec.sources)
