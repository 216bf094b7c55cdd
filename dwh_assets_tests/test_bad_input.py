"""Bad input: broken source payloads, an emptied source, bad windows, and values that try
to escape into the shell of file_fdw's `program` or into SQL.

Payloads come from the real Clerk emulator (its admin endpoints change objects as given,
invalid ones too) and, for label values, from a throwaway real Prometheus whose TSDB is
built by promtool. Every failure must name the source and the object, and change nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest
from psycopg import errors, sql

from dwh_assets.local.config import OWNER_ROLE, StackConfig, free_port
from dwh_assets.local.process import ManagedProcess
from dwh_assets.warehouse import catalog
from dwh_assets.warehouse.sources.reader_install import install_settings, reader_program
from dwh_assets_tests.fault_helpers import TableState, connect, failing_refresh, refresh
from dwh_assets_tests.tiers import integration_fixture
from dwh_assets_tests.warehouse_helpers import ClerkApi, primary_email, utc_midnight

D0, D1 = utc_midnight(-5), utc_midnight(-4)


@pytest.fixture()
def clerk(clerk: ClerkApi):
    clerk.reset()  # these tests start from the generated world too
    return clerk


@pytest.fixture()
def owner_tx(cfg: StackConfig):
    """The owner in a transaction that is always rolled back: changes no other session sees."""
    with connect(cfg, OWNER_ROLE, autocommit=False) as conn:
        yield conn
        conn.rollback()


@pytest.fixture()
def marker():
    """A file an injected command would create: in a directory the server's OS user may write."""
    directory = Path(tempfile.mkdtemp(prefix="dwh-escape-", dir="/tmp"))
    directory.chmod(0o777)
    yield directory / "pwned"
    shutil.rmtree(directory, ignore_errors=True)


def on_second_page(clerk: ClerkApi, kind: str) -> dict:
    objects, pages = clerk.list_all(kind)
    assert pages > 1 or kind == "organizations", f"the test needs more than one page of {kind}"
    return objects[-1]


# ----- payloads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, change, problem", [
    ("users", {"id": None}, "user: required field 'id' is missing"),
    ("users", {"created_at": "yesterday"}, "user {id}: field 'created_at' is str, expected an integer"),
    ("users", {"email_addresses": "a@example.com"}, "user {id}: field 'email_addresses' is str, expected a list"),
    ("organizations", {"name": 42}, "organization {id}: field 'name' is int, expected a string"),
    ("organization_memberships", {"public_user_data": None},
     "organization membership {id}: required object 'public_user_data' is missing"),
], ids=["users-no-id", "users-created_at-str", "users-emails-str", "organizations-name-int", "memberships-no-user"])
def test_missing_or_mistyped_fields_fail_naming_the_object(loader, clerk, kind, change, problem):
    refresh(loader, f"refresh_{kind}")
    before = TableState.of(loader, kind)
    victim = on_second_page(clerk, kind)
    clerk.request("PATCH", f"/_admin/{kind}/{victim['id']}", change)

    error = failing_refresh(loader, f"refresh_{kind}")
    assert isinstance(error, errors.DataException), f"{error.sqlstate}: {error}"
    assert error.diag.message_primary == (
        f"dwh.refresh_{kind}: source Clerk {kind} sent a payload the warehouse cannot load "
        "(malformed, missing or mistyped fields)")
    assert error.diag.message_detail.startswith(problem.format(id=victim["id"])), error.diag.message_detail
    before.assert_unchanged(loader, loader.info.backend_pid)


def test_unexpected_new_fields_are_kept_in_attrs(loader, clerk):
    users, _ = clerk.list_all("users")
    user = users[42]
    new_fields = {"brand_new_field": {"nested": [1, "two", None]}, "plan_v2": "gold"}
    clerk.request("PATCH", f"/_admin/users/{user['id']}", {**new_fields, "updated_at": user["updated_at"]})
    org = clerk.list_all("organizations")[0][7]
    clerk.request("PATCH", f"/_admin/organizations/{org['id']}", {"tier": "enterprise", "updated_at": org["updated_at"]})

    assert refresh(loader, "refresh_users")["rows_source"] == len(users)
    refresh(loader, "refresh_organizations")
    attrs, first_name, email = loader.execute(
        "SELECT attrs, first_name, email FROM dwh.users WHERE user_id = %s", (user["id"],)).fetchone()
    assert {k: attrs[k] for k in new_fields} == new_fields
    assert (first_name, email) == (user["first_name"], primary_email(user)), "known columns are unaffected"
    assert loader.execute("SELECT attrs->>'tier', name FROM dwh.organizations WHERE organization_id = %s",
                          (org["id"],)).fetchone() == ("enterprise", org["name"])


def test_unicode_and_very_long_strings_arrive_intact(loader, clerk):
    user = clerk.list_all("users")[0][3]
    values = {
        "first_name": "Zoë 🚀 日本語 \u202eevil\u202c ẞ",
        "last_name": "é" * 100_000 + "end",
        "username": 'quote" comma, newline\n\\.\nbackslash \\ tab\t',
        "gender": "nul\x00byte",  # PostgreSQL text cannot hold NUL: dropped, as the reader documents
    }
    clerk.request("PATCH", f"/_admin/users/{user['id']}", values)
    refresh(loader, "refresh_users")
    row = loader.execute(
        "SELECT first_name, last_name, username, gender, attrs->>'first_name', attrs->>'gender', length(attrs::text)"
        " FROM dwh.users WHERE user_id = %s", (user["id"],)).fetchone()
    assert row[:4] == (values["first_name"], values["last_name"], values["username"], "nulbyte")
    assert row[4:6] == (values["first_name"], "nulbyte")
    assert row[6] > 100_000


def test_duplicate_ids_across_pages_are_kept_once(cfg, loader, clerk):
    users, _ = clerk.list_all("users")
    # The second page starts 5 rows early, as if 5 users had been inserted before it while paging.
    clerk.request("POST", "/_admin/faults", {"fail_after_page": 1, "offset_shift": 5, "once": True, "path": "/v1/users"})
    log_size = cfg.log_file("postgres").stat().st_size

    log = refresh(loader, "refresh_users")
    assert clerk.request("GET", "/_admin/faults")["faults"] == {}, "the shifted page was served"
    assert log["rows_source"] == len(users)
    local = dict(loader.execute("SELECT user_id, updated_at FROM dwh.users").fetchall())
    assert sorted(local) == sorted(u["id"] for u in users)
    with open(cfg.log_file("postgres"), errors="replace") as f:
        f.seek(log_size)
        assert "dwh reader: warning: clerk users: 5 id(s) came twice" in f.read()


def test_an_emptied_source_is_refused_beyond_the_drop_threshold(loader, clerk, owner_tx):
    current = refresh(loader, "refresh_users")["rows_source"]
    before = TableState.of(loader, "users")
    assert clerk.request("DELETE", "/_admin/users")["deleted"] == current

    error = failing_refresh(loader, "refresh_users")
    assert isinstance(error, errors.RaiseException), f"{error.sqlstate}: {error}"
    assert error.diag.message_primary == (
        f"dwh.refresh_users: the source returned 0 rows, the warehouse has {current}: "
        "refusing to delete more than 50% of the table")
    assert "refresh.max_drop_fraction" in error.diag.message_hint
    before.assert_unchanged(loader, loader.info.backend_pid)

    # The threshold is a setting: raised for one run, the drop goes through.
    owner_tx.execute("INSERT INTO dwh.settings (key, value) VALUES ('refresh.max_drop_fraction', '1')"
                     " ON CONFLICT (key) DO UPDATE SET value = excluded.value")
    log = refresh(owner_tx, "refresh_users")
    assert (log["rows_source"], log["rows_deleted"]) == (0, current)
    assert owner_tx.execute("SELECT count(*) FROM dwh.users").fetchone()[0] == 0


# ----- windows -------------------------------------------------------------------------------------


@pytest.mark.parametrize("start, end, error_class, problem", [
    ("2024-01-01'; DROP TABLE dwh.events; --", D1, errors.InvalidDatetimeFormat, "invalid input syntax for type timestamp"),
    ("$(touch /tmp/dwh-window)", D1, errors.InvalidDatetimeFormat, "invalid input syntax for type timestamp"),
    (D1, D0, errors.RaiseException, "is empty or reversed"),
    (D0, utc_midnight(3), errors.RaiseException, "reaches into the future"),
    (utc_midnight(-4000), D0, errors.RaiseException, "starts before the retention"),
], ids=["sql-in-window", "shell-in-window", "reversed", "future", "before-retention"])
def test_bad_windows_fail_in_one_line_and_change_nothing(loader, start, end, error_class, problem):
    before = TableState.of(loader, "events", (utc_midnight(-30), utc_midnight(-2)))
    error = failing_refresh(loader, "refresh_events", start, end)
    assert isinstance(error, error_class), f"{error.sqlstate}: {error}"
    assert problem in error.diag.message_primary and "\n" not in error.diag.message_primary
    before.assert_unchanged(loader, loader.info.backend_pid)
    assert not os.path.exists("/tmp/dwh-window")


# ----- values that try to escape ---------------------------------------------------------------------

PAYLOADS = [
    "it's", 'say "hi"', "a; touch {m}", "$(touch {m})", "`touch {m}`", "x' ; touch {m}; '", "x\ntouch {m}",
    "x && touch {m} || true", "x | tee {m}", "'\\''; touch {m}; echo '", "${{IFS}}touch${{IFS}}{m}", "\\", "é 🚀",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_shell_quote_hands_the_value_to_the_program_unchanged(owner_tx, marker, payload):
    """Through file_fdw's own shell: the program receives exactly the value, nothing runs."""
    value = payload.format(m=marker)
    program = owner_tx.execute("SELECT 'printf %%s ' || dwh.shell_quote(%s) || ' | base64 -w0'", (value,)).fetchone()[0]
    owner_tx.execute(sql.SQL("CREATE FOREIGN TABLE pg_temp.echo (b64 text) SERVER dwh_reader OPTIONS (program {}, format 'csv')")
                     .format(sql.Literal(program)))
    received = owner_tx.execute("SELECT convert_from(decode(b64, 'base64'), 'UTF8') FROM pg_temp.echo").fetchone()[0]
    assert received == value
    assert not marker.exists()


@pytest.mark.parametrize("payload", [*PAYLOADS, "--config=/etc/passwd x", None])
def test_reader_command_refuses_arguments_that_are_not_plain_words(owner_tx, marker, payload):
    value = None if payload is None else payload.format(m=marker)
    with pytest.raises(errors.RaiseException) as refused:
        owner_tx.execute("SELECT dwh.reader_command(ARRAY['prometheus', '--metric', %s])", (value,))
    expected = "NULL" if value is None else json.dumps(value, ensure_ascii=False)
    assert refused.value.diag.message_primary == (
        f"refusing reader argument {expected}: only letters, digits and _:.+- are allowed")


@pytest.mark.parametrize("payload", ["x; touch {m}", "$(touch {m})", "x\ntouch {m}", "up{{job='x'}}"])
def test_metric_names_from_the_settings_never_reach_the_shell(owner_tx, marker, payload):
    owner_tx.execute("UPDATE dwh.settings SET value = value || ',' || %s WHERE key = 'metrics.names'",
                     (payload.format(m=marker),))
    with pytest.raises(errors.RaiseException, match="refusing reader argument"):
        refresh(owner_tx, "refresh_metrics", D0, D1)
    assert not marker.exists()


NASTY_LABELS = {
    "instance_id": "i-$(touch {m})",
    "organization_id": "org'; DROP TABLE dwh.metrics; --",
    "note": 'line1\nline2 "quoted" `touch {m}` back\\slash é 🚀 ,;',
}


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def openmetrics_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@integration_fixture()
def nasty_prometheus(tmp_path, marker):
    """A real Prometheus serving one series of each copied metric, with hostile label values, over
    [D0, D1) (every metric: a day on which a copied metric is absent is refused as renamed)."""
    labels = {k: v.format(m=marker) for k, v in NASTY_LABELS.items()}
    label_text = ",".join(f'{k}="{openmetrics_escape(v)}"' for k, v in labels.items())
    samples = [(int(D0.timestamp()) + 3600 * k, float(k)) for k in range(24)]
    om = tmp_path / "nasty.om"
    om.write_text("".join(f"# TYPE {name} gauge\n" + "".join(f"{name}{{{label_text}}} {v} {t}\n" for t, v in samples)
                          for name in sorted(catalog.DEFAULT_METRICS.values())) + "# EOF\n")
    data = tmp_path / "data"
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)],
                   check=True, capture_output=True, timeout=120)
    (tmp_path / "prometheus.yml").write_text("scrape_configs: []\n")
    port = free_port()
    server = ManagedProcess(
        name="nasty-prometheus",
        argv=[shutil.which("prometheus") or "/usr/bin/prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
              f"--storage.tsdb.path={data}", "--storage.tsdb.retention.time=3650d",
              f"--web.listen-address=127.0.0.1:{port}"],
        port=port, pid_file=tmp_path / "prometheus.pid", log_file=tmp_path / "prometheus.log", cwd=tmp_path,
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/-/ready"),
    )
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", labels, samples
    finally:
        server.stop()


def test_label_values_with_shell_and_sql_syntax_are_stored_verbatim(cfg, owner_tx, marker, nasty_prometheus):
    url, labels, samples = nasty_prometheus
    variant = install_settings(cfg.deployment(), {"prometheus_url": url}, name="reader.nasty-labels.json")
    try:
        owner_tx.execute("UPDATE dwh.settings SET value = %s WHERE key = 'reader.command'",
                         (reader_program(cfg.deployment(), config=variant),))
        log = refresh(owner_tx, "refresh_metrics", D0, D1)
        stored = owner_tx.execute(
            "SELECT s.labels, extract(epoch FROM m.ts)::bigint, m.value FROM dwh.metrics m"
            " JOIN dwh.metric_series s USING (series_id) WHERE m.ts >= %s AND m.ts < %s"
            " AND s.metric_name = %s ORDER BY m.ts", (D0, D1, catalog.DEFAULT_METRICS["memory"])).fetchall()
    finally:
        variant.unlink()
    assert log["rows_inserted"] == len(catalog.DEFAULT_METRICS) * len(samples) == 72
    assert {json.dumps(row[0], sort_keys=True) for row in stored} == {json.dumps(labels, sort_keys=True)}
    assert [(t, v) for _, t, v in stored] == samples
    assert owner_tx.execute("SELECT to_regclass('dwh.metrics') IS NOT NULL").fetchone()[0]
    assert not marker.exists()

