"""The Clerk Backend API emulator, over real HTTP against a real emulator process (integration tier)."""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dwh_assets.local.config import StackConfig, free_port
from dwh_assets.local.generator import build_world, to_ms
from dwh_assets.local import secrets
from dwh_assets.local.clerk import ClerkEmulator
from dwh_assets.local.process import port_open, wait_until
from dwh_assets_tests.tiers import integration_fixture

ANCHOR = dt.date(2024, 6, 1)
SCALE = 0.05  # 60 users, 10 organizations


def make_cfg(home: Path, scale: float = SCALE) -> StackConfig:
    names = ("pg", "clerk", "prometheus", "exporter", "dagster")
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    return StackConfig(home=home, ports={n: free_port() for n in names}, anchor_day=ANCHOR, seed=7,
                       scale=scale, server_user=user)


def call(method: str, url: str, key: str | None = None, body: object = None,
         timeout: float = 10) -> tuple[int, dict, object]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            status, hdrs, raw = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, dict(e.headers), e.read()
    try:
        return status, hdrs, json.loads(raw)
    except ValueError:
        return status, hdrs, raw


@integration_fixture(scope="module")
def emulator():
    os.environ.pop("CLERK_SECRET_KEY", None)  # the emulator must check the generated key file
    home = Path(tempfile.mkdtemp(prefix="dwh-clerk-emu-"))
    cfg = make_cfg(home)
    proc = ClerkEmulator(cfg)
    proc.start()
    try:
        yield cfg, secrets.clerk_secret_key(cfg)
    finally:
        proc.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture()
def api(emulator):
    """(get/post/... helper, world); the emulator is reset to the generated world first."""
    cfg, key = emulator
    assert call("POST", cfg.clerk_url + "/_admin/reset", key)[0] == 200

    def request(method: str, path: str, body: object = None, key: str | None = key, timeout: float = 10):
        return call(method, cfg.clerk_url + path, key, body, timeout)

    return request


@pytest.fixture(scope="module")
def world():
    return build_world(7, SCALE, ANCHOR)


def test_users_page_through_in_a_stable_order(api, world):
    status, _, first = api("GET", "/v1/users")
    assert status == 200 and isinstance(first, list) and len(first) == 10  # Clerk's default limit
    pages = [api("GET", f"/v1/users?limit=7&offset={o}")[2] for o in range(0, 70, 7)]
    got = [u["id"] for page in pages for u in page]
    expected = [u.id for u in sorted(world.users, key=lambda u: (to_ms(u.created_at), u.id))]
    assert got == expected and len(got) == len(world.users) == 60
    assert api("GET", "/v1/users?limit=5&offset=1000")[2] == []
    newest = api("GET", "/v1/users?limit=3&order_by=-created_at")[2]
    assert [u["id"] for u in newest] == expected[::-1][:3]
    assert api("GET", "/v1/users?limit=60&order_by=%2Bcreated_at")[2] == [u for p in pages for u in p]
    assert api("GET", "/v1/users/count")[2] == {"object": "total_count", "total_count": 60}


def test_organizations_and_memberships_carry_total_count(api, world):
    status, _, body = api("GET", "/v1/organizations?limit=4&offset=8")
    assert status == 200 and body["total_count"] == len(world.organizations) == 10
    assert len(body["data"]) == 2
    ids = []
    for offset in range(0, len(world.memberships), 500):
        body = api("GET", f"/v1/organization_memberships?limit=500&offset={offset}")[2]
        assert body["total_count"] == len(world.memberships)
        ids += [m["id"] for m in body["data"]]
    assert sorted(ids) == sorted(m.id for m in world.memberships)


def test_payloads_follow_clerks_shapes(api, world):
    users = {u["id"]: u for u in api("GET", "/v1/users?limit=500")[2]}
    for w in world.users:
        u = users[w.id]
        assert u["object"] == "user" and u["first_name"] == w.first_name and u["gender"] == w.gender
        assert [e["email_address"] for e in u["email_addresses"]] == [a for _, a in w.email_addresses]
        assert all(e["object"] == "email_address" and "verification" in e for e in u["email_addresses"])
        assert u["primary_email_address_id"] == w.primary_email_address_id
        assert [p["phone_number"] for p in u["phone_numbers"]] == [n for _, n in w.phone_numbers]
        assert u["created_at"] == to_ms(w.created_at) and isinstance(u["updated_at"], int)
        assert u["last_sign_in_at"] == (to_ms(w.last_sign_in_at) if w.last_sign_in_at else None)
        assert u["private_metadata"] == {} and u["unsafe_metadata"] == {}
    assert any(u["last_sign_in_at"] is None for u in users.values())

    orgs = api("GET", "/v1/organizations?limit=500")[2]["data"]
    members = {o.id: sum(m.organization_id == o.id for m in world.memberships) for o in world.organizations}
    for o in orgs:
        assert o["object"] == "organization" and o["members_count"] == members[o["id"]]
        assert {"name", "slug", "created_by", "created_at", "updated_at", "max_allowed_memberships"} <= set(o)

    m = api("GET", "/v1/organization_memberships?limit=1")[2]["data"][0]
    w = next(x for x in world.memberships if x.id == m["id"])
    assert m["object"] == "organization_membership" and m["role"] == w.role
    assert m["organization"]["id"] == w.organization_id and m["organization"]["name"]
    assert m["public_user_data"]["user_id"] == w.user_id


@pytest.mark.parametrize("key", [None, "sk_test_wrong"])
def test_requests_without_the_right_bearer_get_401(api, key):
    for path in ("/v1/users", "/_admin/faults"):
        status, _, body = api("GET", path, key=key)
        assert status == 401
        assert body["errors"][0]["code"] == "authentication_invalid" and body["errors"][0]["message"]


@pytest.mark.parametrize("query", ["limit=501", "limit=0", "limit=abc", "offset=-1", "order_by=name"])
def test_bad_paging_parameters_get_422(api, query):
    status, _, body = api("GET", f"/v1/organizations?{query}")
    assert status == 422 and body["errors"][0]["code"] == "form_param_value_invalid"


def test_unknown_endpoint_is_404(api):
    assert api("GET", "/v1/nothing")[0] == 404


def test_admin_mutations_change_what_is_served(api, world):
    victim, changed = world.users[0], world.users[1]
    status, _, added = api("POST", "/_admin/users", {"first_name": "New", "email_addresses": []})
    assert status == 201 and added["id"].startswith("user_") and added["object"] == "user"
    status, _, patched = api("PATCH", f"/_admin/users/{changed.id}", {"first_name": "Renamed"})
    assert status == 200 and patched["first_name"] == "Renamed" and patched["updated_at"] > to_ms(changed.updated_at)
    assert api("DELETE", f"/_admin/users/{victim.id}")[2] == {"object": "user", "id": victim.id, "deleted": True}
    assert api("DELETE", f"/_admin/users/{victim.id}")[0] == 404

    users = {u["id"]: u for u in api("GET", "/v1/users?limit=500")[2]}
    assert victim.id not in users and added["id"] in users and users[changed.id]["first_name"] == "Renamed"
    mems = api("GET", "/v1/organization_memberships?limit=500")[2]["data"]
    assert not [m for m in mems if m["public_user_data"]["user_id"] == victim.id]  # cascaded
    renamed = [m for m in mems if m["public_user_data"]["user_id"] == changed.id]
    assert renamed and all(m["public_user_data"]["first_name"] == "Renamed" for m in renamed)

    org = world.organizations[0]
    status, _, mem = api("POST", "/_admin/organization_memberships",
                         {"organization_id": org.id, "user_id": added["id"], "role": "org:admin"})
    assert status == 201 and mem["organization"]["name"] == org.name and mem["public_user_data"]["user_id"] == added["id"]
    assert api("PATCH", f"/_admin/organizations/{org.id}", {"name": "Renamed Org"})[0] == 200
    assert api("GET", "/v1/organizations?limit=500")[2]["total_count"] == len(world.organizations)

    assert api("POST", "/_admin/reset")[0] == 200
    assert len(api("GET", "/v1/users?limit=500")[2]) == len(world.users)


def test_fault_fail_after_page_then_once(api):
    assert api("POST", "/_admin/faults", {"fail_after_page": 1, "status": 500, "once": True})[0] == 200
    assert api("GET", "/v1/users?limit=5")[0] == 200
    status, _, body = api("GET", "/v1/users?limit=5&offset=5")
    assert status == 500 and body["errors"][0]["code"] == "injected_fault"
    assert api("GET", "/v1/users?limit=5&offset=5")[0] == 200  # once: cleared
    assert api("GET", "/_admin/faults")[2]["faults"] == {}


def test_fault_status_429_carries_retry_after(api):
    api("POST", "/_admin/faults", {"status": 429, "retry_after": 3})
    status, headers, _ = api("GET", "/v1/organizations")
    assert status == 429 and headers["Retry-After"] == "3"
    assert api("DELETE", "/_admin/faults")[0] == 200
    assert api("GET", "/v1/organizations")[0] == 200


def test_fault_malformed_json_delay_and_path(api):
    api("POST", "/_admin/faults", {"malformed_json": True, "path": "/v1/organizations"})
    assert isinstance(api("GET", "/v1/users")[2], list)  # other endpoints unaffected
    status, _, body = api("GET", "/v1/organizations")
    assert status == 200 and isinstance(body, bytes)  # not JSON
    api("POST", "/_admin/faults", {"delay_seconds": 300, "once": True})
    with pytest.raises(TimeoutError):  # the answer is held back: the client gives up first
        api("GET", "/v1/users", timeout=1)
    assert api("GET", "/v1/users")[0] == 200  # once: the next request is answered


def test_fault_offset_shift_repeats_rows(api):
    api("POST", "/_admin/faults", {"fail_after_page": 1, "offset_shift": 2, "once": True})
    first = api("GET", "/v1/users?limit=10")[2]
    second = api("GET", "/v1/users?limit=10&offset=10")[2]
    assert [u["id"] for u in second[:2]] == [u["id"] for u in first[-2:]]


def test_unknown_or_mistyped_faults_are_rejected(api):
    assert api("POST", "/_admin/faults", {"explode": True})[0] == 400
    assert api("POST", "/_admin/faults", {"status": "500"})[0] == 400


@pytest.mark.integration  # starts an emulator of its own
def test_rate_limit_flag_answers_429_with_retry_after(tmp_path):
    """--rate-limit on the command line; admin endpoints are never limited."""
    key_file = tmp_path / "key"
    key_file.write_text("sk_test_rate\n")
    port = free_port()
    log = open(tmp_path / "emulator.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dwh_assets.local.clerk_emulator", "--port", str(port), "--scale", "0.01",
         "--anchor-day", ANCHOR.isoformat(), "--secret-file", str(key_file), "--rate-limit", "3"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        assert wait_until(lambda: port_open(port), 30)
        url = f"http://127.0.0.1:{port}"
        answers = [call("GET", url + "/v1/users", "sk_test_rate") for _ in range(12)]
        limited = [a for a in answers if a[0] == 429]
        assert limited and len(limited) <= 9  # at most 3 pass per second
        assert all(int(h["Retry-After"]) >= 1 for _, h, _ in limited)
        assert limited[0][2]["errors"][0]["code"] == "too_many_requests"
        assert all(call("GET", url + "/_admin/faults", "sk_test_rate")[0] == 200 for _ in range(6))
        time.sleep(int(limited[-1][1]["Retry-After"]))
        assert call("GET", url + "/v1/users", "sk_test_rate")[0] == 200
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    lines = (tmp_path / "emulator.log").read_text().splitlines()
    assert any(line.endswith("GET /v1/users 429") for line in lines)
    assert any(line.endswith("GET /v1/users 200") for line in lines)
    assert not any("sk_test_rate" in line for line in lines)


@pytest.mark.integration  # runs the emulator's command
def test_emulator_refuses_to_start_without_a_key(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dwh_assets.local.clerk_emulator", "--port", str(free_port()),
         "--secret-file", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0 and "--secret-file" in result.stderr
