"""The stdlib source reader against a real Clerk emulator process, run as a subprocess
with the system Python (as file_fdw runs it), and once through file_fdw itself.

How long the reader waits between attempts is asserted with a fake clock in
test_reader_retries.py; here, what the emulator saw and what the reader answered."""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from psycopg import sql

from dwh_assets.local.config import StackConfig, free_port
from dwh_assets.warehouse.sources import reader as reader_module
from dwh_assets.local.generator import build_world, to_ms
from dwh_assets.local import postgres, secrets
from dwh_assets.local.clerk import ClerkEmulator
from dwh_assets.warehouse.sources.reader_install import install_reader, reader_argv, reader_program
from dwh_assets_tests.tiers import integration_fixture

ANCHOR = dt.date(2024, 6, 1)
SEED = 11
SCALE = 0.6  # 720 users: more than one 500-row page
SYSTEM_PYTHON = "/usr/bin/python3"
READER_SOURCE = Path(reader_module.__file__)
IS_ROOT = os.geteuid() == 0


def parse_pg_csv(text: str) -> list[list[str | None]]:
    """PostgreSQL's CSV rules: an unquoted empty field is NULL, a quoted one is ''."""
    rows, row, i, n = [], [], 0, len(text)
    while i < n:
        if text[i] == '"':
            parts, j = [], i + 1
            while True:
                k = text.index('"', j)
                parts.append(text[j:k])
                if text[k + 1 : k + 2] == '"':
                    parts.append('"')
                    j = k + 2
                else:
                    i = k + 1
                    break
            row.append("".join(parts))
        else:
            k = i
            while k < n and text[k] not in ",\n":
                k += 1
            row.append(text[i:k] or None)
            i = k
        if i < n and text[i] == ",":
            i += 1
            if i == n or text[i] == "\n":
                row.append(None)
        if i >= n or text[i] == "\n":
            rows.append(row)
            row, i = [], i + 1
    return rows


def make_cfg(home: Path) -> StackConfig:
    names = ("pg", "clerk", "prometheus", "exporter", "dagster")
    user = "postgres" if IS_ROOT else pwd.getpwuid(os.geteuid()).pw_name
    return StackConfig(home=home, ports={n: free_port() for n in names}, anchor_day=ANCHOR, seed=SEED,
                       scale=SCALE, server_user=user)


@integration_fixture(scope="module")
def clerk_stack():
    """A stack home the server user can reach, with a running emulator."""
    os.environ.pop("CLERK_SECRET_KEY", None)
    home = Path(tempfile.mkdtemp(prefix="dwh-reader-test-", dir="/tmp"))
    home.chmod(0o755)
    cfg = make_cfg(home)
    emulator = ClerkEmulator(cfg)
    emulator.start()
    try:
        yield cfg
    finally:
        emulator.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def world():
    return build_world(SEED, SCALE, ANCHOR)


@pytest.fixture()
def admin(clerk_stack):
    """POST/PATCH/DELETE on the emulator's admin endpoints; resets the emulator first."""
    import urllib.request

    key = secrets.clerk_secret_key(clerk_stack)

    def call(method: str, path: str, body: object = None) -> int:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(clerk_stack.clerk_url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status

    call("POST", "/_admin/reset")
    return call


@pytest.fixture()
def settings(clerk_stack, tmp_path):
    """Write a reader.json for the source copy of the reader; returns (writer, path)."""
    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_text(json.dumps({"clerk_secret_key": secrets.clerk_secret_key(clerk_stack)}))
    secrets_file.chmod(0o600)
    path = tmp_path / "reader.json"

    def write(**overrides) -> Path:
        values = {"clerk_url": clerk_stack.clerk_url, "secrets_file": str(secrets_file), "max_retries": 2,
                  "backoff_seconds": 0.05, "timeout_seconds": 5}
        path.write_text(json.dumps({**values, **overrides}))
        return path

    write()
    return write


def run_reader(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([SYSTEM_PYTHON, str(READER_SOURCE), "--config", str(config), *args],
                          capture_output=True, timeout=timeout, cwd="/")


def expected_user(u) -> list:
    email = dict(u.email_addresses).get(u.primary_email_address_id) if u.primary_email_address_id else None
    return [u.id, u.first_name, u.last_name, email, u.gender, str(to_ms(u.created_at)), str(to_ms(u.updated_at)),
            str(to_ms(u.last_sign_in_at)) if u.last_sign_in_at else None, str(len(u.phone_numbers)), u.username]


def assert_one_line_failure(result: subprocess.CompletedProcess, exit_code: int, *needles: str) -> str:
    """One stderr line, no rows, and the exit code of the failure class (reader.EXIT_*)."""
    assert result.returncode == exit_code, result.stderr
    assert result.stdout == b"", "a failed read must not feed partial rows"
    err = result.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("dwh reader: clerk "), err
    for needle in needles:
        assert needle in err, err
    return err


# ----- correct reads -----------------------------------------------------------------------

def test_users_are_exactly_the_emulators_with_primary_email(admin, settings, world):
    result = run_reader(settings(), "clerk", "users")
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    rows = parse_pg_csv(result.stdout.decode())
    assert len(rows) == len(world.users) == 720
    got = {r[0]: r for r in rows}
    for u in world.users:
        row = got[u.id]
        assert row[:10] == expected_user(u), u.id
        attrs = json.loads(row[10])
        assert attrs["id"] == u.id and attrs["object"] == "user" and len(attrs["phone_numbers"]) == len(u.phone_numbers)
    # The cases that make the test meaningful exist in the data:
    assert any(u.email_addresses and u.primary_email_address_id != u.email_addresses[0][0] for u in world.users)
    assert any(r[4] == "" for r in rows) and any(r[9] is None for r in rows) and any(r[7] is None for r in rows)
    assert any(r[3] is None for r in rows) and any(r[1] is None for r in rows)


def test_organizations_and_memberships(admin, settings, world):
    orgs = run_reader(settings(), "clerk", "organizations")
    assert orgs.returncode == 0, orgs.stderr
    rows = parse_pg_csv(orgs.stdout.decode())
    assert sorted(r[:6] for r in rows) == sorted(
        [o.id, o.name, o.slug, str(to_ms(o.created_at)), str(to_ms(o.updated_at)), o.created_by]
        for o in world.organizations
    )
    mems = run_reader(settings(), "clerk", "organization_memberships")
    assert mems.returncode == 0, mems.stderr
    rows = parse_pg_csv(mems.stdout.decode())
    assert len(rows) == len(world.memberships) > 1000  # three pages
    assert sorted(r[:3] for r in rows) == sorted([m.user_id, m.organization_id, m.role] for m in world.memberships)
    assert {json.loads(r[3])["id"] for r in rows} == {m.id for m in world.memberships}


def test_a_refresh_sees_source_changes(admin, settings, world):
    gone, renamed = world.users[3].id, world.users[4].id
    admin("DELETE", f"/_admin/users/{gone}")
    admin("PATCH", f"/_admin/users/{renamed}", {"first_name": 'Zoë "Z", the 2nd', "last_name": None})
    admin("POST", "/_admin/users", {"id": "user_added", "first_name": "", "email_addresses": []})
    rows = {r[0]: r for r in parse_pg_csv(run_reader(settings(), "clerk", "users").stdout.decode())}
    assert gone not in rows and len(rows) == len(world.users)
    assert rows[renamed][1:3] == ['Zoë "Z", the 2nd', None]
    assert rows["user_added"][1] == "" and rows["user_added"][3] is None


def test_duplicates_from_shifted_paging_are_kept_once(admin, settings, world):
    admin("POST", "/_admin/faults", {"fail_after_page": 1, "offset_shift": 3, "once": True})
    result = run_reader(settings(), "clerk", "users")
    assert result.returncode == 0, result.stderr
    rows = parse_pg_csv(result.stdout.decode())
    assert sorted(r[0] for r in rows) == sorted(u.id for u in world.users)
    assert b"3 id(s) came twice" in result.stderr


# ----- retries and failures ------------------------------------------------------------------

def emulator_answers(clerk_stack: StackConfig, since: int, path: str) -> list[str]:
    """The statuses the emulator logged for GET ``path`` after its first ``since`` log lines."""
    lines = clerk_stack.log_file("clerk-emulator").read_text().splitlines()[since:]
    return [line.rsplit(" ", 1)[1] for line in lines if f" GET {path}?" in line]


def log_length(clerk_stack: StackConfig) -> int:
    return len(clerk_stack.log_file("clerk-emulator").read_text().splitlines())


def test_429_is_retried_until_the_read_succeeds(admin, settings, clerk_stack, world):
    admin("POST", "/_admin/faults", {"status": 429, "retry_after": 2, "once": True})
    before = log_length(clerk_stack)
    result = run_reader(settings(), "clerk", "users")
    assert result.returncode == 0, result.stderr
    assert len(parse_pg_csv(result.stdout.decode())) == len(world.users)
    answers = emulator_answers(clerk_stack, before, "/v1/users")
    assert answers[:2] == ["429", "200"] and set(answers[1:]) == {"200"}, answers


def test_retry_after_wait_is_capped(admin, settings, world):
    """Uncapped, a 3600 s wait would not fit in total_timeout_seconds (600): the reader would give up at once."""
    admin("POST", "/_admin/faults", {"status": 429, "retry_after": 3600, "once": True})
    result = run_reader(settings(max_retry_after_seconds=0.5), "clerk", "organizations")
    assert result.returncode == 0, result.stderr
    assert sorted(r[0] for r in parse_pg_csv(result.stdout.decode())) == sorted(o.id for o in world.organizations)


def test_real_rate_limit_is_ridden_out(admin, settings, clerk_stack, world):
    admin("POST", "/_admin/faults", {"rate_limit": 1})
    before = log_length(clerk_stack)
    result = run_reader(settings(page_size=250, max_retries=4), "clerk", "users")
    assert result.returncode == 0, result.stderr
    assert len(parse_pg_csv(result.stdout.decode())) == len(world.users)
    assert "429" in emulator_answers(clerk_stack, before, "/v1/users")


def test_500_mid_pagination_fails_without_output(admin, settings, clerk_stack):
    admin("POST", "/_admin/faults", {"fail_after_page": 1, "status": 500})
    err = assert_one_line_failure(run_reader(settings(), "clerk", "users"), reader_module.EXIT_SERVER_ERROR,
                                  "HTTP 500 from /v1/users?limit=500&offset=500&", "after 3 attempts")
    assert secrets.clerk_secret_key(clerk_stack) not in err


def test_malformed_json_fails(admin, settings):
    admin("POST", "/_admin/faults", {"fail_after_page": 1, "malformed_json": True})
    assert_one_line_failure(run_reader(settings(), "clerk", "organization_memberships"), reader_module.EXIT_MALFORMED,
                            "malformed JSON")


def test_slow_source_times_out_in_bounded_time(admin, settings):
    """Answered after 4 s, each attempt gives up at 0.5 s: a reader without its timeout would succeed."""
    admin("POST", "/_admin/faults", {"delay_seconds": 4})
    result = run_reader(settings(timeout_seconds=0.5, max_retries=1), "clerk", "organizations")
    assert_one_line_failure(result, reader_module.EXIT_TIMEOUT, "no answer within 0.5s", "after 2 attempts")


def test_unreachable_source_fails(settings):
    result = run_reader(settings(clerk_url=f"http://127.0.0.1:{free_port()}"), "clerk", "users")
    assert_one_line_failure(result, reader_module.EXIT_UNREACHABLE, "cannot reach", "after 3 attempts")


def test_wrong_key_is_not_retried_and_never_printed(clerk_stack, settings, tmp_path):
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"clerk_secret_key": "sk_test_not_the_key"}))
    wrong.chmod(0o600)
    err = assert_one_line_failure(run_reader(settings(secrets_file=str(wrong)), "clerk", "users"),
                                  reader_module.EXIT_AUTH, "HTTP 401")
    assert "sk_test_not_the_key" not in err and "attempts" not in err


@pytest.mark.parametrize(
    ("change", "needle"),
    [({"id": None}, "required field 'id' is missing"),
     ({"created_at": "yesterday"}, "field 'created_at' is str, expected an integer"),
     ({"email_addresses": "a@b.c"}, "field 'email_addresses' is str, expected a list")],
)
def test_missing_fields_or_wrong_types_fail(admin, settings, world, change, needle):
    admin("PATCH", f"/_admin/users/{world.users[600].id}", change)
    assert_one_line_failure(run_reader(settings(), "clerk", "users"), reader_module.EXIT_MALFORMED, needle)


def test_reader_dies_by_sigpipe_when_stdout_closes_early(admin, settings):
    """A LIMIT query stops reading; PostgreSQL accepts SIGPIPE (only) as a normal end."""
    proc = subprocess.Popen([SYSTEM_PYTHON, str(READER_SOURCE), "--config", str(settings()), "clerk", "users"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(proc.stdout.read(100)) == 100
    proc.stdout.close()
    proc.wait(60)
    assert proc.returncode == -signal.SIGPIPE
    assert proc.stderr.read() == b""


# ----- installed copy, as the server's OS user ---------------------------------------------------

def test_install_reader_is_private_to_the_server_user_and_idempotent(clerk_stack):
    cp_password = secrets.passwords(clerk_stack)["cp_reader"]
    path = install_reader(clerk_stack.deployment())
    assert install_reader(clerk_stack.deployment()) == path == clerk_stack.reader_dir / "dwh_source_reader.py"
    assert path.read_bytes() == READER_SOURCE.read_bytes()
    uid = pwd.getpwnam(clerk_stack.server_user).pw_uid
    passfile = clerk_stack.reader_dir / "control_plane.pgpass"
    for p, mode in ((clerk_stack.reader_dir, 0o700), (clerk_stack.reader_dir / "secrets.json", 0o600),
                    (clerk_stack.reader_dir / "reader.json", 0o600), (passfile, 0o600)):
        st = p.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (uid, mode), p
    settings = json.loads((clerk_stack.reader_dir / "reader.json").read_text())
    assert settings["clerk_url"] == clerk_stack.clerk_url and settings["prometheus_url"] == clerk_stack.prometheus_url
    assert "sk_" not in json.dumps(settings) and cp_password not in json.dumps(settings)
    assert settings["control_plane_passfile"] == str(passfile)
    assert json.loads((clerk_stack.reader_dir / "secrets.json").read_text()) == {
        "clerk_secret_key": secrets.clerk_secret_key(clerk_stack)
    }
    # The events refresh's psql finds the control plane's password here (and only here).
    assert passfile.read_text() == f"127.0.0.1:{clerk_stack.pg_port}:control_plane:cp_reader:{cp_password}\n"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DWH_CONTROL_PLANE__TRANSFER", "fdw")
        install_reader(clerk_stack.deployment())
    assert not passfile.exists(), "the passfile outlives the copy transfer"
    assert json.loads((clerk_stack.reader_dir / "reader.json").read_text())["control_plane_passfile"] is None


def test_installed_reader_runs_as_the_server_user(admin, clerk_stack, world):
    install_reader(clerk_stack.deployment())
    result = postgres.run_as_server(clerk_stack, reader_argv(clerk_stack.deployment(), "clerk", "users"), capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(r[:10] for r in parse_pg_csv(result.stdout.decode())) == sorted(expected_user(u) for u in world.users)


def test_file_fdw_reads_the_installed_reader(admin, clerk_stack, world):
    """The real consumer: file_fdw runs reader_program() as the server user, parses NULLs."""
    tricky = world.users[5].id
    admin("PATCH", f"/_admin/users/{tricky}",
          {"first_name": "line1\n\\.\nline3", "last_name": "", "username": None, "gender": 'a,"b"'})
    install_reader(clerk_stack.deployment())
    pg = postgres.Postgres(clerk_stack)
    pg.start()
    try:
        with pg.connect() as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS file_fdw")
            conn.execute("CREATE SERVER IF NOT EXISTS clerk_reader FOREIGN DATA WRAPPER file_fdw")
            conn.execute(sql.SQL(
                "CREATE FOREIGN TABLE users (user_id text, first_name text, last_name text, email text, "
                "gender text, created_at bigint, updated_at bigint, last_sign_in_at bigint, phone_numbers bigint, "
                "username text, attrs jsonb) SERVER clerk_reader OPTIONS (program {}, format 'csv', encoding 'UTF8')"
            ).format(sql.Literal(reader_program(clerk_stack.deployment(), "clerk", "users"))))
            counts = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE email IS NULL), count(*) FILTER (WHERE gender = ''),"
                " count(*) FILTER (WHERE username IS NULL), count(*) FILTER (WHERE last_sign_in_at IS NULL),"
                " count(*) FILTER (WHERE attrs->>'id' = user_id), sum(phone_numbers) FROM users"
            ).fetchone()
            row = conn.execute("SELECT first_name, last_name, username, gender FROM users WHERE user_id = %s",
                               (tricky,)).fetchone()
            emails = dict(conn.execute("SELECT user_id, email FROM users").fetchall())
            # A failing read fails the statement; the reader's reason lands in the server log.
            install_reader(clerk_stack.deployment(), settings={"max_retries": 0})
            admin("POST", "/_admin/faults", {"fail_after_page": 1, "status": 503})
            with pytest.raises(psycopg.errors.ExternalRoutineException, match="exit code 5"):
                conn.execute("SELECT count(*) FROM users")
            assert "dwh reader: clerk users: HTTP 503 from /v1/users" in pg.log_file.read_text()
    finally:
        install_reader(clerk_stack.deployment())
        pg.stop()
    others = [u for u in world.users if u.id != tricky]
    assert counts == (
        len(world.users),
        sum(u.primary_email_address_id is None for u in world.users),
        sum(u.gender == "" for u in others),
        sum(u.username is None for u in others) + 1,
        sum(u.last_sign_in_at is None for u in world.users),
        len(world.users),
        sum(len(u.phone_numbers) for u in world.users),
    )
    assert row == ("line1\n\\.\nline3", "", None, 'a,"b"')
    assert emails == {u.id: expected_user(u)[3] for u in world.users}
