#!/usr/bin/env python3
"""The warehouse's source reader: Clerk and Prometheus HTTP APIs -> CSV for file_fdw.

STDLIB ONLY, single file, Python >= 3.9. ``dwh reader install`` copies it to the
database host as ``<reader.directory>/dwh_source_reader.py`` (see ``reader_install.py``);
``file_fdw``'s ``program`` option runs it as the *database server's OS user* with the
system ``/usr/bin/python3``, so it must not import the project or third-party packages.

Usage::

    dwh_source_reader.py --config reader.json clerk users|organizations|organization_memberships
    dwh_source_reader.py --config reader.json prometheus --start EPOCH_S --end EPOCH_S --step S [--metric NAME ...]
    dwh_source_reader.py --config reader.json prometheus --last SECONDS --step S [--metric NAME ...]
    dwh_source_reader.py --config reader.json prometheus-days --start EPOCH_S --end EPOCH_S --step S --metric NAME ...
    dwh_source_reader.py --config reader.json prometheus-series --start EPOCH_S --end EPOCH_S --step S --metric NAME ...
    dwh_source_reader.py --config reader.json series-map --key KEY < series_id,metric_name,labels CSV
    dwh_source_reader.py --config reader.json prometheus-copy --start EPOCH_S --end EPOCH_S --step S --metric NAME ... --series-map KEY
    dwh_source_reader.py --config reader.json last-error --since EPOCH_S --exit-code N
    dwh_source_reader.py --config reader.json check [--clerk-key]

``reader.json`` holds non-secret settings (see ``DEFAULT_SETTINGS``); the Clerk key is read
from ``secrets_file`` (JSON ``{"clerk_secret_key": "..."}``, mode 0600) and never taken
from the command line, never printed.

Output is CSV without header on stdout (``format 'csv'``, UTF-8). Text values are always
quoted, so an unquoted empty field is NULL and ``""`` is the empty string. Columns (the
clerk_fdw / prometheus_fdw contracts):

- users: user_id, first_name, last_name, email, gender, created_at, updated_at,
  last_sign_in_at, phone_numbers, username, attrs. ``email`` is the address whose id is
  ``primary_email_address_id`` (NULL when there is none); ``phone_numbers`` is the
  *number* of phone numbers, as clerk_fdw reports it (the numbers are in ``attrs``);
  times are epoch milliseconds; ``attrs`` is the raw user object as compact JSON.
  NUL characters, which PostgreSQL text and jsonb cannot hold, are dropped everywhere.
- organizations: organization_id, name, slug, created_at, updated_at, created_by, attrs.
- organization_memberships: user_id, organization_id, role, attrs (from the
  instance-wide ``GET /v1/organization_memberships``).
- prometheus: metric_name, metric_labels (JSON, without ``__name__``), metric_time
  (epoch seconds), metric_value. The window is ``[start, end)`` evaluated at multiples of
  ``step`` (so adjacent windows share no timestamp and overlapping ones agree), split so
  that no request asks for more than ``max_points_per_request`` points per series.
  NaN and +/-Inf are kept and written as ``NaN`` / ``Infinity`` / ``-Infinity``, which
  float8 accepts: they are real sample values, and dropping them would hide them.
- prometheus-days: metric_name, day (ISO date), samples: for each metric and UTC day of a
  window of whole days, how many samples ``prometheus`` would write at ``step`` (the
  metric's ``count()`` at every step, summed per day), for the daily reconciliation.

The metrics refresh reads its window through the last three commands above (see "the metrics refresh's
streamed copy" below): ``prometheus-series`` writes ``metric_name, labels`` CSV rows,
``prometheus-copy`` writes PostgreSQL's binary COPY format of dwh.metrics (series_id, ts,
value) as it reads, instead of buffering.

Failure is loud: any non-2xx after retries, malformed JSON, a missing required field or a
wrong type exits non-zero with one line on stderr, and nothing on stdout. The exit code is
the failure class (``EXIT_CODES``: unreachable, timeout, HTTP 5xx, 429, auth, malformed
payload, ...); PostgreSQL only reports "program ... failed: child process exited with exit
code N", so the refresh routines map N to a sentence (``dwh.raise_source_failure``). The
one-line reason also goes to ``errors_dir/<backend pid>.json`` (the PostgreSQL backend that
ran this reader), from where ``last-error`` hands it back to that backend's error handler.
All CSV rows are buffered and written only after the whole read succeeded, because file_fdw
consumes stdout while the program runs; ``prometheus-copy`` streams (its COPY fails, and with
it the refresh's transaction, when the reader exits non-zero after any row). 429 and 5xx /
connection errors / timeouts are retried ``max_retries`` times (429 and 503 wait for
``Retry-After``, capped at ``max_retry_after_seconds``; others back off exponentially). Every
request is bounded by ``timeout_seconds`` and the whole read by ``total_timeout_seconds`` (for
``prometheus-copy``, each group of requests), so a hanging source fails in bounded time. Clerk is paged with ``limit``/``offset`` and
``order_by=+created_at`` (new rows land on later pages); rows whose id still repeats across
pages (the source changed while paging) are kept once (the last copy) with a warning on
stderr. stderr goes to the PostgreSQL server log.
"""

from __future__ import annotations

import argparse
import email.utils
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from itertools import islice, repeat
from operator import itemgetter

DEFAULT_SETTINGS = {
    "clerk_url": "https://api.clerk.com",
    "prometheus_url": "http://127.0.0.1:9090",
    "secrets_file": None,
    # Where failure reasons are left for the SQL error handler (None: nowhere).
    "errors_dir": None,
    # Where a metrics refresh's series map waits between two calls of the reader (None: errors_dir).
    "state_dir": None,
    # Each request (connect, every wait for bytes, the whole body) ...
    "timeout_seconds": 30.0,
    # ... and the whole read, retries and Retry-After waits included.
    "total_timeout_seconds": 600.0,
    "max_retries": 3,
    "backoff_seconds": 0.5,
    "max_retry_after_seconds": 60.0,
    "page_size": 500,
    "max_points_per_request": 11000,
    # Samples one query_range answer may hold (points x series), which bounds the memory
    # of Prometheus and of this reader per request whatever the fleet's size: the points
    # per request shrink as the series the previous answer held grow.
    "max_samples_per_request": 250_000,
    # Refuse windows that would take thousands of requests (a typo in --start, usually).
    "max_points_per_series": 5_000_000,
    # The events refresh's bulk copy (control_plane.transfer = copy): psql, and the 0600
    # passfile with the control plane's password that `dwh reader install` writes.
    "psql": "/usr/bin/psql",
    "control_plane_passfile": None,
}
# Prometheus' metric name syntax (catalog.METRIC_NAME_PATTERN: this file may not import it).
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
CLERK_MAX_PAGE_SIZE = 500
USER_AGENT = "dwh-source-reader/1"
# Exit codes, one per failure class: PostgreSQL reports only the code of a failed
# `program`, so the code is how the warehouse tells the user what went wrong
# (dwh.raise_source_failure in sql/routines/00_source_failure.sql maps them).
EXIT_INTERNAL = 1      # a bug in this reader
EXIT_USAGE = 2         # bad arguments or settings
EXIT_UNREACHABLE = 3   # connection refused / reset, unknown host
EXIT_TIMEOUT = 4       # no complete answer within timeout_seconds, or total_timeout_seconds spent
EXIT_SERVER_ERROR = 5  # HTTP 5xx on every attempt
EXIT_RATE_LIMITED = 6  # HTTP 429 on every attempt
EXIT_AUTH = 7          # HTTP 401 / 403: the key is wrong or lacks rights
EXIT_MALFORMED = 8     # not JSON, unexpected shape, missing fields, wrong types, paging stuck
EXIT_REJECTED = 9      # any other HTTP 4xx (wrong URL or parameter)
EXIT_SERIES_CHANGED = 10  # a series appeared that the window's listing did not have: read again
EXIT_CODES = {
    "internal": EXIT_INTERNAL, "usage": EXIT_USAGE, "unreachable": EXIT_UNREACHABLE, "timeout": EXIT_TIMEOUT,
    "server_error": EXIT_SERVER_ERROR, "rate_limited": EXIT_RATE_LIMITED, "auth": EXIT_AUTH,
    "malformed": EXIT_MALFORMED, "rejected": EXIT_REJECTED, "series_changed": EXIT_SERIES_CHANGED,
}


class ReaderError(Exception):
    """A failure reported as one stderr line; ``exit_code`` is its class (``EXIT_CODES``)."""

    def __init__(self, message: str, exit_code: int = EXIT_MALFORMED):
        super().__init__(message)
        self.exit_code = exit_code


def usage_error(message: str) -> ReaderError:
    return ReaderError(message, EXIT_USAGE)


def http_status_class(status: int) -> int:
    if status in (401, 403):
        return EXIT_AUTH
    if status == 429:
        return EXIT_RATE_LIMITED
    return EXIT_SERVER_ERROR if status >= 500 else EXIT_REJECTED


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----- settings and secrets ---------------------------------------------------------------

def load_settings(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            loaded = json.load(f)
    except (OSError, ValueError) as e:
        raise usage_error(f"cannot read settings {path}: {e}") from None
    return validate_settings(loaded, path)


def validate_settings(loaded: object, path: str) -> dict:
    """``DEFAULT_SETTINGS`` overridden by ``loaded``, each value checked; ``path`` names them in errors."""
    if not isinstance(loaded, dict):
        raise usage_error(f"settings {path} must be a JSON object")
    unknown = sorted(set(loaded) - set(DEFAULT_SETTINGS))
    if unknown:
        raise usage_error(f"unknown setting(s) {unknown} in {path}; known: {sorted(DEFAULT_SETTINGS)}")
    settings = dict(DEFAULT_SETTINGS, **loaded)
    for key in ("timeout_seconds", "total_timeout_seconds", "backoff_seconds", "max_retry_after_seconds"):
        if not _is_number(settings[key]) or settings[key] < 0:
            raise usage_error(f"setting {key} in {path} must be a number >= 0")
    for key in ("max_retries", "page_size", "max_points_per_request", "max_points_per_series", "max_samples_per_request"):
        if not isinstance(settings[key], int) or isinstance(settings[key], bool) or settings[key] < (0 if key == "max_retries" else 1):
            raise usage_error(f"setting {key} in {path} must be a positive integer")
    if settings["page_size"] > CLERK_MAX_PAGE_SIZE:
        raise usage_error(f"setting page_size in {path} must be at most {CLERK_MAX_PAGE_SIZE} (Clerk's limit)")
    for key in ("clerk_url", "prometheus_url"):
        if urllib.parse.urlsplit(str(settings[key])).scheme not in ("http", "https"):
            raise usage_error(f"setting {key} in {path} must be an http(s) URL")
    for key in ("psql", "control_plane_passfile", "state_dir"):
        if settings[key] is not None and not (isinstance(settings[key], str) and os.path.isabs(settings[key])):
            raise usage_error(f"setting {key} in {path} must be an absolute path")
    return settings


def load_clerk_key(settings: dict) -> str:
    path = settings.get("secrets_file")
    if not path:
        raise usage_error("no secrets_file in the settings; it must name a JSON file with clerk_secret_key")
    try:
        with open(path, encoding="utf-8") as f:
            key = json.load(f).get("clerk_secret_key")
    except (OSError, ValueError, AttributeError) as e:
        raise usage_error(f"cannot read the Clerk key from {path}: {type(e).__name__}") from None
    if not isinstance(key, str) or not key.strip():
        raise usage_error(f"{path} holds no clerk_secret_key")
    if os.stat(path).st_mode & 0o077:
        warn(f"{path} is readable by other users; chmod 600 it")
    return key.strip()


def warn(message: str) -> None:
    sys.stderr.write(f"dwh reader: warning: {one_line(message)}\n")


# ----- HTTP with bounded retries -----------------------------------------------------------

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the bearer key to another URL: treat it as an error."""

    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HttpSource:
    def __init__(self, base_url: str, settings: dict, headers: dict | None = None, secret: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.settings = settings
        self.headers = dict(headers or {}, **{"Accept": "application/json", "User-Agent": USER_AGENT})
        self.secret = secret
        # One source per read: the whole read, retries included, ends by this time.
        self.total = float(settings["total_timeout_seconds"])
        self.deadline = time.monotonic() + self.total

    def _redact(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text

    def _out_of_time(self, path: str, problem: str = "") -> ReaderError:
        before = f" (last problem: {problem})" if problem else ""
        return ReaderError(self._redact(f"the read did not finish within total_timeout_seconds={self.total:g}s, "
                                        f"stopped before {path}{before}"), EXIT_TIMEOUT)

    def get_json(self, path: str) -> object:
        """GET base_url + path and decode JSON; retries, then raises ReaderError of the last problem's class."""
        body = self.get_body(path)
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ReaderError(f"malformed JSON from {path}: {e}", EXIT_MALFORMED) from None

    def get_body(self, path: str) -> bytes:
        """GET base_url + path: the body of a 2xx answer; retries, then raises ReaderError of the last problem's class."""
        attempts = int(self.settings["max_retries"]) + 1
        for attempt in range(1, attempts + 1):
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise self._out_of_time(path)
            timeout = min(float(self.settings["timeout_seconds"]), remaining)
            wait, detail = None, ""
            try:
                _status, body = self._get(path, timeout)
            except urllib.error.HTTPError as e:
                detail = self._error_detail(e)
                kind = http_status_class(e.code)
                problem = f"HTTP {e.code} from {path}"
                if kind not in (EXIT_SERVER_ERROR, EXIT_RATE_LIMITED):
                    raise ReaderError(self._redact(problem + detail), kind) from None
                wait = parse_retry_after(e.headers.get("Retry-After")) if e.code in (429, 503) else None
            except (socket.timeout, TimeoutError):
                kind, problem = EXIT_TIMEOUT, f"no answer within {timeout:g}s from {path}"
            except http.client.HTTPException as e:
                kind, problem = EXIT_SERVER_ERROR, f"broken HTTP answer from {path}: {type(e).__name__}"
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", None) or e
                if isinstance(reason, (socket.timeout, TimeoutError)):
                    kind, problem = EXIT_TIMEOUT, f"no answer within {timeout:g}s from {path}"
                else:
                    kind, problem = EXIT_UNREACHABLE, f"cannot reach {self.base_url}{path}: {reason}"
            else:
                return body
            if attempt == attempts:
                plural = "s" if attempts > 1 else ""
                raise ReaderError(self._redact(f"{problem} after {attempts} attempt{plural}{detail}"), kind)
            backoff = float(self.settings["backoff_seconds"]) * 2 ** (attempt - 1)
            pause = min(float(self.settings["max_retry_after_seconds"]), wait if wait is not None else backoff)
            if time.monotonic() + pause >= self.deadline:
                if kind == EXIT_TIMEOUT:
                    raise self._out_of_time(path, problem)
                # The source's own problem says more than "ran out of time" (e.g. a 429 storm).
                raise ReaderError(self._redact(f"{problem} after {attempt} attempt(s), no time left to retry "
                                               f"within total_timeout_seconds={self.total:g}s{detail}"), kind)
            time.sleep(pause)
        raise AssertionError("unreachable")

    def _get(self, path: str, timeout: float) -> tuple[int, bytes]:
        request = urllib.request.Request(self.base_url + path, headers=self.headers)
        # The socket timeout bounds each wait; the deadline bounds a slowly trickling body.
        deadline = time.monotonic() + timeout
        with _OPENER.open(request, timeout=timeout) as response:
            chunks = []
            while True:
                chunk = response.read(1 << 16)
                if not chunk:
                    return response.status, b"".join(chunks)
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise socket.timeout("body not complete within the timeout")

    @staticmethod
    def _error_detail(e: urllib.error.HTTPError) -> str:
        try:
            payload = json.loads(e.read(1 << 16).decode("utf-8", "replace"))
        except (OSError, ValueError, http.client.HTTPException):
            return ""
        # Clerk: {"errors": [{"message", "long_message"}]}; Prometheus: {"error": "..."}.
        if isinstance(payload, dict):
            errors = payload.get("errors")
            if isinstance(errors, list) and errors and isinstance(errors[0], dict):
                first = errors[0]
                return ": " + one_line(str(first.get("long_message") or first.get("message") or ""), 200)
            if payload.get("error"):
                return ": " + one_line(str(payload["error"]), 200)
        return ""


# ----- CSV for file_fdw ----------------------------------------------------------------------

def format_float(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def csv_field(value: object) -> str:
    """One field in PostgreSQL's CSV: unquoted empty = NULL, text always quoted."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    # PostgreSQL text cannot hold NUL; everything else is safe inside quotes.
    text = str(value).replace("\x00", "")
    return '"' + text.replace('"', '""') + '"'


def csv_line(values: list) -> bytes:
    return (",".join(csv_field(v) for v in values) + "\n").encode("utf-8", "replace")


class RowBuffer:
    """Rows spooled to memory/disk until the read succeeded; de-duplicated by id (last wins).

    Only rows with an id are indexed (Clerk objects, to drop an id that came twice): a
    Prometheus window of a year of a large fleet is hundreds of millions of id-less rows,
    which cost nothing here but their bytes in the spool file.
    """

    def __init__(self):
        self.file = tempfile.SpooledTemporaryFile(max_size=64 << 20, mode="w+b")
        self.count = 0
        # (offset, length, row_id) of rows with an id, in the order they were added
        self.spans: list[tuple[int, int, object]] = []
        self.latest: dict[object, int] = {}
        self.superseded: set[int] = set()

    def add(self, row_id: object, values: list) -> bool:
        """Buffer a row; returns False when ``row_id`` was seen before."""
        line = csv_line(values)
        start = self.file.tell()
        self.file.write(line)
        self.count += 1
        if row_id is None:
            return True
        self.spans.append((start, len(line), row_id))
        previous = self.latest.get(row_id)
        self.latest[row_id] = len(self.spans) - 1
        if previous is not None:
            self.superseded.add(previous)
        return previous is None

    def add_lines(self, data: bytes, n: int) -> None:
        """Buffer ``n`` id-less rows already formatted as CSV lines."""
        self.file.write(data)
        self.count += n

    def __len__(self) -> int:
        return self.count - len(self.superseded)

    def write_to(self, out) -> None:  # noqa: ANN001 (a binary file)
        self.file.seek(0)
        if not self.superseded:
            shutil.copyfileobj(self.file, out, 1 << 20)
            return
        # Copy everything but the superseded rows' byte ranges (id-less rows are kept).
        position = 0
        for index in sorted(self.superseded):
            start, length, _ = self.spans[index]
            self.file.seek(position)
            _copy_bytes(self.file, out, start - position)
            position = start + length
        self.file.seek(position)
        shutil.copyfileobj(self.file, out, 1 << 20)


def _copy_bytes(src, out, n: int) -> None:  # noqa: ANN001 (binary files)
    while n > 0:
        chunk = src.read(min(n, 1 << 20))
        if not chunk:
            break
        out.write(chunk)
        n -= len(chunk)


# ----- Clerk ---------------------------------------------------------------------------------

def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Fields:
    """Typed access to one source object; wrong types raise ReaderError naming the field."""

    def __init__(self, obj: object, what: str):
        if not isinstance(obj, dict):
            raise ReaderError(f"{what} is a {type(obj).__name__}, expected a JSON object")
        self.obj, self.what = obj, what

    def _bad(self, key: str, value: object, expected: str) -> ReaderError:
        return ReaderError(f"{self.what}: field {key!r} is {type(value).__name__}, expected {expected}")

    def text(self, key: str, required: bool = False, obj: dict | None = None) -> str | None:
        value = (self.obj if obj is None else obj).get(key)
        if value is None and required:
            raise ReaderError(f"{self.what}: required field {key!r} is missing")
        if value is not None and not isinstance(value, str):
            raise self._bad(key, value, "a string")
        if required and value == "":
            raise ReaderError(f"{self.what}: required field {key!r} is empty")
        return value

    def bigint(self, key: str, required: bool = False) -> int | None:
        value = self.obj.get(key)
        if value is None and required:
            raise ReaderError(f"{self.what}: required field {key!r} is missing")
        if value is None:
            return None
        if _is_number(value) and float(value).is_integer():
            return int(value)
        raise self._bad(key, value, "an integer")

    def items(self, key: str) -> list | None:
        value = self.obj.get(key)
        if value is not None and not isinstance(value, list):
            raise self._bad(key, value, "a list")
        return value

    def nested(self, key: str) -> dict:
        value = self.obj.get(key)
        if not isinstance(value, dict):
            raise ReaderError(f"{self.what}: required object {key!r} is missing")
        return value


def without_nul(value: object) -> object:
    """``value`` with NUL characters removed from every string (jsonb, like text, cannot hold them)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


def attrs_json(obj: dict) -> str:
    return json.dumps(without_nul(obj), ensure_ascii=False, separators=(",", ":"))


def user_row(obj: object) -> tuple[str, list]:
    f = Fields(obj, "user")
    user_id = f.text("id", required=True)
    f.what = f"user {user_id}"
    primary_id = f.text("primary_email_address_id")
    email = None
    for index, address in enumerate(f.items("email_addresses") or []):
        entry = Fields(address, f"user {user_id} email_addresses[{index}]")
        if primary_id is not None and entry.text("id") == primary_id:
            email = entry.text("email_address")
    phones = f.items("phone_numbers")
    # Required: what the warehouse cannot store as NULL (a field the API stopped sending is
    # refused, not copied as NULL); the others may be absent (gender, which Clerk no longer sends).
    return user_id, [
        user_id, f.text("first_name"), f.text("last_name"), email, f.text("gender"),
        f.bigint("created_at", required=True), f.bigint("updated_at", required=True), f.bigint("last_sign_in_at"),
        None if phones is None else len(phones), f.text("username"), attrs_json(f.obj),
    ]


def organization_row(obj: object) -> tuple[str, list]:
    f = Fields(obj, "organization")
    org_id = f.text("id", required=True)
    f.what = f"organization {org_id}"
    return org_id, [
        org_id, f.text("name", required=True), f.text("slug"), f.bigint("created_at", required=True),
        f.bigint("updated_at", required=True), f.text("created_by"), attrs_json(f.obj),
    ]


def membership_row(obj: object) -> tuple[str, list]:
    f = Fields(obj, "organization membership")
    membership_id = f.text("id", required=True)
    f.what = f"organization membership {membership_id}"
    user_id = f.text("user_id", required=True, obj=f.nested("public_user_data"))
    org_id = f.text("id", required=True, obj=f.nested("organization"))
    return membership_id, [user_id, org_id, f.text("role", required=True), attrs_json(f.obj)]


CLERK_TABLES = {
    "users": user_row,
    "organizations": organization_row,
    "organization_memberships": membership_row,
}


def read_clerk(settings: dict, table: str) -> RowBuffer:
    key = load_clerk_key(settings)
    source = HttpSource(settings["clerk_url"], settings, {"Authorization": f"Bearer {key}"}, secret=key)
    to_row = CLERK_TABLES[table]
    rows = RowBuffer()
    page_size, offset, duplicates = settings["page_size"], 0, 0
    while True:
        # Oldest first: rows created while paging land on later pages instead of shifting earlier ones.
        query = {"limit": page_size, "offset": offset, "order_by": "+created_at"}
        path = f"/v1/{table}?" + urllib.parse.urlencode(query)
        payload = source.get_json(path)
        # /v1/users answers a bare array, the others {"data": [...], "total_count": N}.
        items = payload.get("data") if isinstance(payload, dict) else payload
        if not isinstance(items, list):
            raise ReaderError(f"unexpected payload from {path}: expected a JSON array or an object with a 'data' array")
        new = 0
        for item in items:
            row_id, values = to_row(item)
            if rows.add(row_id, values):
                new += 1
            else:
                duplicates += 1
        if len(items) < page_size:
            break
        if new == 0:
            raise ReaderError(f"paging does not advance: {path} returned only ids already read")
        offset += len(items)
    if duplicates:
        warn(f"clerk {table}: {duplicates} id(s) came twice (the source changed while paging); kept the last copy")
    return rows


# ----- Prometheus ------------------------------------------------------------------------------

def validate_metric_name(name: str) -> str:
    if not METRIC_NAME.fullmatch(name):
        raise usage_error(f"refusing metric name {name!r}: it must match ^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    return name


def aligned_times(start: int, end: int, step: int) -> tuple[int, int]:
    """(first, count) of the evaluation times k*step inside the closed-open ``[start, end)``."""
    first = -(-start // step) * step
    if first >= end:
        return first, 0
    return first, (end - 1 - first) // step + 1


def split_window(start: int, end: int, step: int, max_points: int) -> list[tuple[int, int]]:
    """Inclusive (start, end) bounds of query_range requests of at most ``max_points`` points."""
    first, count = aligned_times(start, end, step)
    chunks = []
    for offset in range(0, count, max_points):
        points = min(max_points, count - offset)
        chunk_start = first + offset * step
        chunks.append((chunk_start, chunk_start + (points - 1) * step))
    return chunks


# Series a metric is assumed to have until the first answer says how many it has.
ASSUMED_SERIES = 10_000


def points_per_request(settings: dict, series: int) -> int:
    """Points per series of the next request, given the most series an answer held so far."""
    budget = settings["max_samples_per_request"] // max(series, 1)
    return max(1, min(settings["max_points_per_request"], budget))


def read_prometheus(settings: dict, start: int, end: int, step: int, metrics: list,
                    series_rows: bool = False) -> RowBuffer:
    """Every sample of ``metrics`` at the step grid of ``[start, end)``, as CSV rows.

    Rows are ``metric_name, labels, time, value`` (the foreign table's columns), or with
    ``series_rows`` the compact shape the metrics refresh stages (``kind, series_no,
    metric_name, labels, time, value``): one ``s`` row per series the first time it is
    seen (number, name, labels), then ``v`` rows of (number, time, value) only, so the
    label set travels once per window instead of once per sample.
    """
    if step < 1:
        raise usage_error(f"--step must be at least 1 second, got {step}")
    if end < start or start < 0:
        raise usage_error(f"window [{start}, {end}) is not a window: need 0 <= start <= end")
    first, count = aligned_times(start, end, step)
    if count > settings["max_points_per_series"]:
        raise usage_error(
            f"window [{start}, {end}) at step {step}s has {count} points per series, more than "
            f"max_points_per_series={settings['max_points_per_series']}; read it in smaller windows"
        )
    source = HttpSource(settings["prometheus_url"], settings)
    rows = RowBuffer()
    numbers: dict[tuple[str, str], int] = {}
    series_seen: int | None = None  # the most series one answer held so far
    for metric in metrics:
        done = 0
        while done < count:
            points = min(points_per_request(settings, series_seen or ASSUMED_SERIES), count - done)
            chunk_start = first + done * step
            chunk_end = chunk_start + (points - 1) * step
            done += points
            query = urllib.parse.urlencode({"query": metric, "start": chunk_start, "end": chunk_end, "step": step})
            path = f"/api/v1/query_range?{query}"
            answer = _matrix_series(source.get_json(path), metric, path)
            for name, labels, values in answer:
                if series_rows:
                    number = numbers.get((name, labels))
                    if number is None:
                        number = numbers[(name, labels)] = len(numbers) + 1
                        rows.add(None, ["s", number, name, labels, None, None])
                    prefix = f"v,{number},,,"
                    lines = []
                    for sample in values:
                        t, value = _sample(sample, path, chunk_start, chunk_end, step)
                        lines.append(f"{prefix}{t},{format_float(value)}\n")
                    rows.add_lines("".join(lines).encode("utf-8"), len(lines))
                else:
                    for sample in values:
                        t, value = _sample(sample, path, chunk_start, chunk_end, step)
                        rows.add(None, [name, labels, t, value])
            # The next request is sized by the largest answer so far (a fleet grows or
            # shrinks slowly along a window: the budget bounds a request, it is no target).
            series_seen = max(len(answer), series_seen or 0)
            del answer
    return rows


def read_prometheus_days(settings: dict, start: int, end: int, step: int, metrics: list) -> RowBuffer:
    """Per metric and UTC day of ``[start, end)`` (whole days), the samples ``read_prometheus`` would
    return at ``step``: Prometheus evaluates ``count(<metric>)`` at the same times with the same
    lookback, so one series per request travels instead of every series' samples."""
    if step < 1 or 86400 % step:
        raise usage_error(f"--step must divide a day (86400 seconds), got {step}")
    if start % 86400 or end % 86400 or end < start or start < 0:
        raise usage_error(f"window [{start}, {end}) is not a window of whole UTC days")
    source = HttpSource(settings["prometheus_url"], settings)
    rows = RowBuffer()
    for metric in metrics:
        per_day: dict[int, int] = {}
        for chunk_start, chunk_end in split_window(start, end, step, settings["max_points_per_request"]):
            query = urllib.parse.urlencode({"query": f"count({metric})", "start": chunk_start, "end": chunk_end,
                                            "step": step})
            path = f"/api/v1/query_range?{query}"
            for _name, _labels, values in _matrix_series(source.get_json(path), metric, path):
                for sample in values:
                    t, count = _sample(sample, path, chunk_start, chunk_end, step)
                    if not count.is_integer() or count < 0:
                        raise ReaderError(f"{path} returned a count of {count} at {t}")
                    per_day[t // 86400] = per_day.get(t // 86400, 0) + int(count)
        for day, samples in sorted(per_day.items()):
            rows.add(None, [metric, time.strftime("%Y-%m-%d", time.gmtime(day * 86400)), samples])
    return rows


def _matrix_series(payload: object, metric: str, path: str) -> list[tuple[str, str, list]]:
    """(name, labels as canonical JSON, values) of each series of a query_range answer."""
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(payload, dict) or payload.get("status") != "success" or not isinstance(data, dict):
        raise ReaderError(f"unexpected payload from {path}: no status 'success' with data")
    if data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
        raise ReaderError(f"unexpected payload from {path}: expected a matrix result")
    for warning in payload.get("warnings") or []:
        warn(f"prometheus {metric}: {warning}")
    out = []
    for series in data["result"]:
        if not isinstance(series, dict) or not isinstance(series.get("metric"), dict):
            raise ReaderError(f"malformed series from {path}: no 'metric' labels")
        labels = dict(series["metric"])
        name = labels.pop("__name__", metric)
        if not all(isinstance(v, str) for v in labels.values()) or not isinstance(name, str):
            raise ReaderError(f"malformed series from {path}: label values must be strings")
        if series.get("histograms"):
            raise ReaderError(f"{path} returned native histograms, which the metrics table cannot hold")
        labels_json = json.dumps(without_nul(labels), ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        values = series.get("values") or []
        if not isinstance(values, list):
            raise ReaderError(f"malformed series from {path}: 'values' is not a list")
        out.append((name, labels_json, values))
    return out


def _sample(sample: object, path: str, chunk_start: int, chunk_end: int, step: int) -> tuple[int, float]:
    """One ``[time, "value"]`` pair of an answer, checked to lie on the request's grid."""
    try:
        t, value = sample
        t, value = float(t), float(value)
    except (TypeError, ValueError):
        raise ReaderError(f"malformed sample {one_line(repr(sample), 80)} from {path}") from None
    if not t.is_integer():
        raise ReaderError(f"{path} returned a sample at non-integer time {t}")
    t = int(t)
    if not (chunk_start <= t <= chunk_end and (t - chunk_start) % step == 0):
        raise ReaderError(f"{path} returned a sample at {t}, outside its evaluation grid")
    return t, value


# ----- Prometheus: the metrics refresh's streamed copy ----------------------------------------
#
# The metrics refresh of the reader backend copies a window straight into dwh.metrics, in three
# calls: ``prometheus-series`` lists the window's series (the refresh adds the new ones to
# dwh.metric_series), ``series-map`` keeps the ids the refresh hands back, and ``prometheus-copy``
# streams the samples as rows of dwh.metrics in PostgreSQL's binary COPY format (series_id, ts,
# value), one group of requests at a time, so the server inserts one group while Prometheus
# answers the next. Samples are turned into rows without a Python object per sample where the
# answer has the exact shape Prometheus writes (a full JSON parse otherwise): a year of a large
# fleet is tens of millions of samples.

# query_range looks back (5 minutes by default) from each evaluation time for a sample: a series
# whose samples end shortly before the window still has points in it, so the listing starts earlier.
SERIES_LOOKBACK_SECONDS = 3600
# timestamptz counts microseconds from 2000-01-01 UTC.
PG_EPOCH_SECONDS = 946_684_800
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
# A row: 3 fields, each its length (8) and value: series_id, ts, value.
_ROW = struct.Struct(">hiqiqid")
# A group's requests are sized for this many more series than the previous group held (a fleet grows).
FLEET_GROWTH_MARGIN = 1.25
SERIES_MAP_KEY = re.compile(r"[A-Za-z0-9_-]{1,100}")
DAY_SECONDS = 86_400


def labels_json(labels: dict) -> str:
    """A label set (without ``__name__``) as the warehouse stores it: canonical, compact JSON."""
    return json.dumps(without_nul(labels), ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def series_path(metric: str, first: int, last: int) -> str:
    """The listing of ``metric``'s series that may have a point at the grid times ``first``..``last``."""
    query = urllib.parse.urlencode([("match[]", metric), ("start", max(0, first - SERIES_LOOKBACK_SECONDS)), ("end", last)])
    return f"/api/v1/series?{query}"


def range_path(metric: str, first: int, last: int, step: int) -> str:
    return "/api/v1/query_range?" + urllib.parse.urlencode({"query": metric, "start": first, "end": last, "step": step})


def list_series(settings: dict, start: int, end: int, step: int, metrics: list) -> RowBuffer:
    """``metric_name, labels`` of every series of ``metrics`` that may have a point in ``[start, end)``, sorted."""
    first, count = aligned_times(start, end, step)
    rows = RowBuffer()
    if not count:
        return rows
    source = HttpSource(settings["prometheus_url"], settings)
    found: set[tuple[str, str]] = set()
    for metric in metrics:
        path = series_path(metric, first, first + (count - 1) * step)
        payload = source.get_json(path)
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(payload, dict) or payload.get("status") != "success" or not isinstance(data, list):
            raise ReaderError(f"unexpected payload from {path}: no status 'success' with a list of series")
        for labels in data:
            if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
                raise ReaderError(f"malformed series from {path}: label values must be strings")
            labels = dict(labels)
            found.add((labels.pop("__name__", metric), labels_json(labels)))
    for name, labels in sorted(found):
        rows.add(None, [name, labels])
    return rows


def _state_path(settings: dict, key: str) -> str:
    directory = settings.get("state_dir") or settings.get("errors_dir")
    if not directory:
        raise usage_error("no state_dir in the settings: rerun `dwh reader install`")
    if not SERIES_MAP_KEY.fullmatch(key):
        raise usage_error(f"refusing series map key {key!r}: only letters, digits, _ and - are allowed")
    return os.path.join(directory, f"series-map-{key}.json")


def save_series_map(settings: dict, key: str, source) -> int:  # noqa: ANN001 (a binary file)
    """Keep the refresh's ``series_id, metric_name, labels`` CSV rows (from ``source``) for ``prometheus-copy``."""
    import csv
    import io

    entries = []
    for row in csv.reader(io.TextIOWrapper(source, encoding="utf-8", newline="")):
        if len(row) != 3 or not row[0].isdigit():
            raise usage_error(f"series map row {one_line(repr(row), 120)} is not series_id, metric_name, labels")
        entries.append([row[1], row[2], int(row[0])])
    path = _state_path(settings, key)
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # Maps of refreshes that failed before their copy do not pile up.
    for name in os.listdir(directory):
        other = os.path.join(directory, name)
        if name.startswith("series-map-") and time.time() - os.stat(other).st_mtime > DAY_SECONDS:
            os.unlink(other)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
        json.dump(entries, f, ensure_ascii=False)
    os.replace(tmp, path)
    return len(entries)


def take_series_map(settings: dict, key: str) -> dict[tuple[str, str], int]:
    """The series map ``series-map`` kept under ``key`` (removed: each map serves one read)."""
    path = _state_path(settings, key)
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
        os.unlink(path)
    except (OSError, ValueError) as e:
        raise usage_error(f"cannot read the series map {path}: {type(e).__name__}") from None
    return {(name, labels): series_id for name, labels, series_id in entries}


class CopyPlan:
    """The groups of a streamed copy: inclusive (first, last) evaluation times, oldest first.

    A group asks every metric for the same times (one request each, the reader holds the
    group's answers at once) and sizes them so that no answer holds more than
    ``max_samples_per_request`` samples: by the most series one metric's answer held in the
    previous group (counted in the answer's bytes), plus a margin for a growing fleet (the first group: the most series one metric lists
    for the whole window). A fleet that starts near empty would let the next group reach across
    the rest of the window, so a group spans at most twice the points of the one before. A
    group never crosses a UTC midnight unless it holds whole days, so each daily partition is
    filled by one group, in key order. The benchmark that measures Prometheus' own rate
    replays the same plan.
    """

    def __init__(self, settings: dict, start: int, end: int, step: int, series: int):
        self.first, self.count = aligned_times(start, end, step)
        self.step = step
        self.budget = settings["max_samples_per_request"]
        self.max_points = settings["max_points_per_request"]
        self.expected_series = max(1, series)
        self.previous_points: int | None = None

    def groups(self):  # noqa: ANN201 (a generator of (first, last))
        last = self.first + (self.count - 1) * self.step
        lo = self.first
        while self.count and lo <= last:
            points = max(1, min(self.max_points, self.budget // self.expected_series))
            if self.previous_points is not None:
                points = min(points, 2 * self.previous_points)
            end = lo + points * self.step
            next_midnight = (lo // DAY_SECONDS + 1) * DAY_SECONDS
            if end > next_midnight:
                end = end // DAY_SECONDS * DAY_SECONDS
            hi = min(last, (end - 1) // self.step * self.step)
            self.previous_points = (hi - lo) // self.step + 1
            yield lo, hi
            lo = hi + self.step

    def held(self, series: int) -> None:
        """The group just read held at most ``series`` series in one metric's answer."""
        self.expected_series = max(1, math.ceil(series * FLEET_GROWTH_MARGIN))


def _answer_shape(body: bytes) -> tuple[list[bytes], list[int], list] | None:
    """(raw metric objects, samples per series, [t, v, t, v, ...]) of a query_range answer in the
    exact shape Prometheus writes; None for anything else (the caller then parses it fully)."""
    prefix = b'{"status":"success","data":{"resultType":"matrix","result":['
    if not body.startswith(prefix):
        return None
    raws, counts, segments = [], [], []
    pos = len(prefix)
    while body[pos:pos + 1] != b"]":
        if raws:
            if body[pos:pos + 1] != b",":
                return None
            pos += 1
        if not body.startswith(b'{"metric":', pos):
            return None
        # `},"values":[` cannot occur inside a JSON string (its quotes would be escaped).
        values_at = body.find(b'},"values":[', pos)
        end = body.find(b"]]", values_at)
        if values_at < 0 or end < 0 or body[end + 2:end + 3] != b"}":
            return None  # no samples, native histograms, other keys
        raws.append(body[pos + 10:values_at + 1])
        segment = body[values_at + 12:end + 1]
        segments.append(segment)
        counts.append(segment.count(b"],[") + 1)
        pos = end + 3
    if body[pos:] != b"]}}":
        return None  # warnings, or more than the shape
    numbers = b",".join(segments).replace(b'"+Inf"', b"Infinity").replace(b'"-Inf"', b"-Infinity")
    try:
        flat = json.loads(b"[" + numbers.translate(None, b'[]"') + b"]")
    except ValueError:
        return None
    return (raws, counts, flat) if len(flat) == 2 * sum(counts) else None


class SeriesIds:
    """series_id of each label set of a read (the map the refresh made); unknown ones fail the read."""

    def __init__(self, ids: dict[tuple[str, str], int]):
        self.ids = ids
        self.by_raw: dict[bytes, int] = {}

    def of(self, name: str, labels: str, path: str) -> int:
        series_id = self.ids.get((name, labels))
        if series_id is None:
            raise ReaderError(f"{path} returned series {name}{one_line(labels, 200)}, which Prometheus did not list "
                              f"for the window: its series changed during the read", EXIT_SERIES_CHANGED)
        return series_id

    def of_raw(self, raw: bytes, metric: str, path: str) -> int:
        series_id = self.by_raw.get(raw)
        if series_id is None:
            labels = json.loads(raw)
            if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
                raise ReaderError(f"malformed series from {path}: label values must be strings")
            name = labels.pop("__name__", metric)
            series_id = self.by_raw[raw] = self.of(name, labels_json(labels), path)
        return series_id


def answer_columns(body: bytes, metric: str, path: str, lo: int, hi: int, step: int,
                   ids: SeriesIds) -> tuple[list[tuple[int, int]], list, list]:
    """One answer as (series_id, samples) per series, and every sample's times and values in that order."""
    shape = _answer_shape(body)
    if shape is not None:
        raws, counts, flat = shape
        series = [(ids.of_raw(raw, metric, path), n) for raw, n in zip(raws, counts)]
        return series, flat[0::2], flat[1::2]
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ReaderError(f"malformed JSON from {path}: {e}") from None
    series, times, values = [], [], []
    for name, labels, samples in _matrix_series(payload, metric, path):
        for sample in samples:
            t, value = _sample(sample, path, lo, hi, step)
            times.append(t)
            values.append(value)
        series.append((ids.of(name, labels, path), len(samples)))
    return series, times, values


def series_rows(answer: tuple[list[tuple[int, int]], list, list], micros: dict, path: str) -> list[tuple[int, bytes]]:
    """(series_id, its binary COPY rows (series_id, ts, value)) of each series of one answer;
    ``micros`` maps each evaluation time of the group to timestamptz's microseconds."""
    series, times, values = answer
    stamps, values = map(micros.__getitem__, times), iter(values)
    out = []
    try:
        for series_id, n in series:
            # One struct.pack per row, fed by iterators: no Python loop per sample, no copies.
            # The stamps come before the values, so a series' map stops without taking its successor's value.
            out.append((series_id, b"".join(map(_ROW.pack, repeat(3), repeat(8), repeat(series_id), repeat(8),
                                                 islice(stamps, n), repeat(8), islice(values, n)))))
    except (KeyError, TypeError):
        raise ReaderError(f"{path} returned a sample off its evaluation grid") from None
    except struct.error:
        raise ReaderError(f"{path} returned a value that is not a number") from None
    return out


def group_rows(rows: list[tuple[int, bytes]]) -> bytes:
    """A group's rows, series by series in id order."""
    rows.sort(key=itemgetter(0))
    return b"".join(chunk for _, chunk in rows)


def fetch_groups(plan: CopyPlan, settings: dict, metrics: list, step: int):  # noqa: ANN201 (a generator)
    """(first, last, [(metric, path, answer body)]) of each group of ``plan``, fetched by a thread
    one group ahead of the caller, so Prometheus answers while the reader turns the previous
    group into rows. The plan learns each group's series from the bodies themselves."""
    import queue
    import threading

    ready: queue.Queue = queue.Queue(maxsize=1)

    def fetch() -> None:
        try:
            for lo, hi in plan.groups():
                # The whole read may take long; each group's requests, retries included, are bounded.
                source = HttpSource(settings["prometheus_url"], settings)
                bodies = [(m, range_path(m, lo, hi, step)) for m in metrics]
                bodies = [(m, path, source.get_body(path)) for m, path in bodies]
                plan.held(max(body.count(b'{"metric":') for _, _, body in bodies))
                ready.put((lo, hi, bodies))
            ready.put(None)
        except BaseException as e:  # noqa: BLE001 (raised again in the caller's thread)
            ready.put(e)

    threading.Thread(target=fetch, name="requests to Prometheus", daemon=True).start()
    while True:
        group = ready.get()
        if isinstance(group, BaseException):
            raise group
        if group is None:
            return
        yield group


class GroupWriter:
    """Writes one group's rows while the reader reads the next. The pipe to PostgreSQL holds
    64 kB: a reader that wrote between two reads would leave the server idle while it read,
    and wait itself while the server inserted. At most one group waits here."""

    def __init__(self, out):  # noqa: ANN001 (a binary file)
        import queue
        import threading

        self.out = out
        self.pending: queue.Queue = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._write, name="rows to PostgreSQL", daemon=True)
        self.thread.start()

    def _write(self) -> None:
        # A server that stops reading ends this process by SIGPIPE (main() leaves it fatal).
        while True:
            data = self.pending.get()
            if data is None:
                return
            self.out.write(data)
            self.out.flush()

    def write(self, data: bytes) -> None:
        self.pending.put(data)

    def close(self) -> None:
        """Wait until everything queued is written."""
        self.pending.put(None)
        self.thread.join()


def copy_prometheus(settings: dict, start: int, end: int, step: int, metrics: list, key: str, out) -> int:  # noqa: ANN001
    """Stream ``[start, end)`` of ``metrics`` to ``out`` as binary COPY rows of dwh.metrics; the samples."""
    if step < 1:
        raise usage_error(f"--step must be at least 1 second, got {step}")
    if end < start or start < 0:
        raise usage_error(f"window [{start}, {end}) is not a window: need 0 <= start <= end")
    ids = SeriesIds(take_series_map(settings, key))
    listed = [sum(1 for name, _ in ids.ids if name == metric) for metric in metrics]
    plan = CopyPlan(settings, start, end, step, max(listed, default=1))
    if plan.count > settings["max_points_per_series"]:
        raise usage_error(f"window [{start}, {end}) at step {step}s has {plan.count} points per series, more than "
                          f"max_points_per_series={settings['max_points_per_series']}; read it in smaller windows")
    writer = GroupWriter(out)
    writer.write(COPY_HEADER)
    samples = 0
    for lo, hi, bodies in fetch_groups(plan, settings, metrics, step):
        micros = {t: (t - PG_EPOCH_SECONDS) * 1_000_000 for t in range(lo, hi + 1, step)}
        # One answer parsed at a time, each dropped once packed: a group's Python objects (~100 bytes
        # a sample) never exist for all of its metrics at once, only its packed rows (38 bytes) do.
        rows: list[tuple[int, bytes]] = []
        while bodies:
            metric, path, body = bodies.pop()
            answer = answer_columns(body, metric, path, lo, hi, step, ids)
            del body
            samples += len(answer[1])
            rows += series_rows(answer, micros, path)
            del answer
        writer.write(group_rows(rows))
        del rows
    # Only a read that ended well gets COPY's trailer and waits for its rows to be written; a
    # failure exits at once and fails the COPY.
    writer.write(COPY_TRAILER)
    writer.close()
    return samples


# ----- failure reasons for the warehouse's error handler ------------------------------------

def backend_pid() -> int | None:
    """The PostgreSQL backend this reader runs for (file_fdw: backend -> /bin/sh -> reader)."""
    pid = os.getppid()
    for _ in range(8):
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
                if f.read().strip() == "postgres":
                    return pid
            with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        if pid <= 1:
            return None
    return None


def record_failure(settings: dict, exit_code: int, message: str) -> None:
    """Leave the reason where ``last-error``, run by the same backend, finds it."""
    errors_dir, pid = settings.get("errors_dir"), backend_pid()
    if not errors_dir or pid is None:
        return
    try:
        os.makedirs(errors_dir, mode=0o700, exist_ok=True)
        path = os.path.join(errors_dir, f"{pid}.json")
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"time": time.time(), "exit_code": exit_code, "message": message}, f)
        os.replace(tmp, path)
        # Reasons nobody asked for (a failed ad-hoc SELECT) do not pile up.
        for name in os.listdir(errors_dir):
            other = os.path.join(errors_dir, name)
            if time.time() - os.stat(other).st_mtime > 86400:
                os.unlink(other)
    except OSError:
        pass  # the exit code still tells the class


def take_last_error(settings: dict, since: float, exit_code: int) -> RowBuffer:
    """This backend's failure reason if it is newer than ``since`` and had ``exit_code`` (then removed)."""
    rows, errors_dir, pid = RowBuffer(), settings.get("errors_dir"), backend_pid()
    if not errors_dir or pid is None:
        return rows
    path = os.path.join(errors_dir, f"{pid}.json")
    try:
        with open(path, encoding="utf-8") as f:
            failure = json.load(f)
        os.unlink(path)
    except (OSError, ValueError):
        return rows
    if isinstance(failure, dict) and failure.get("exit_code") == exit_code and failure.get("time", 0) >= since:
        rows.add(None, [str(failure.get("message"))])
    return rows


# ----- command line ----------------------------------------------------------------------------

def check_control_plane_copy(settings: dict) -> None:
    """The events refresh's bulk copy can run: psql is executable, the passfile readable and private."""
    psql, passfile = settings["psql"], settings["control_plane_passfile"]
    if not (psql and os.access(psql, os.X_OK)):
        raise usage_error(f"psql {psql} (reader.psql) is not executable on the database host")
    if not passfile:
        raise usage_error("no control_plane_passfile in the settings: rerun `dwh reader install`")
    try:
        mode = os.stat(passfile).st_mode
        with open(passfile, "rb"):
            pass
    except OSError as e:
        raise usage_error(f"cannot read the control plane passfile {passfile}: {e.strerror}; rerun `dwh reader install`") from None
    if mode & 0o077:
        raise usage_error(f"the control plane passfile {passfile} must be readable by its owner only (0600)")


def self_check(args: argparse.Namespace) -> int:
    """For `dwh migrate`: one CSV line through COPY FROM PROGRAM, 'ok' or the problem (exit 0 either way)."""
    try:
        settings = load_settings(args.config)
        if args.clerk_key:
            load_clerk_key(settings)
        if args.control_plane_copy:
            check_control_plane_copy(settings)
        for key in ("errors_dir", "state_dir"):
            directory = settings.get(key)
            if directory and not os.access(directory, os.W_OK | os.X_OK):
                raise usage_error(f"{key} {directory} is not writable by this user")
        line = "ok"
    except ReaderError as e:
        line = one_line(str(e))
    sys.stdout.write(csv_line([line]).decode())
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: ANN201 (NoReturn)
        raise usage_error(message)


def parse_args(argv: list) -> argparse.Namespace:
    p = _Parser(prog="dwh_source_reader.py", description="Read a source API and write CSV for file_fdw.")
    p.add_argument("--config", required=True, help="reader.json (non-secret settings)")
    sources = p.add_subparsers(dest="source", required=True)
    clerk = sources.add_parser("clerk", help="Clerk Backend API v1")
    clerk.add_argument("table", choices=sorted(CLERK_TABLES))
    prom = sources.add_parser("prometheus", help="Prometheus /api/v1/query_range, window [start, end)")
    prom.add_argument("--start", type=int, help="epoch seconds, inclusive")
    prom.add_argument("--end", type=int, help="epoch seconds, exclusive")
    # A relative window for a static foreign table (src_prometheus.metrics): [now - last, now).
    prom.add_argument("--last", type=int, help="seconds before now (instead of --start/--end)")
    prom.add_argument("--step", type=int, required=True, help="seconds between evaluation times")
    prom.add_argument("--metric", action="append", required=True, help="metric name (repeatable)")
    prom.add_argument("--series-rows", action="store_true",
                      help="compact rows for the metrics refresh: each label set once (kind s), then samples (kind v)")
    days = sources.add_parser("prometheus-days", help="samples per metric and UTC day of [start, end) at --step")
    days.add_argument("--start", type=int, required=True, help="epoch seconds of a UTC midnight, inclusive")
    days.add_argument("--end", type=int, required=True, help="epoch seconds of a UTC midnight, exclusive")
    days.add_argument("--step", type=int, required=True, help="seconds between evaluation times")
    days.add_argument("--metric", action="append", required=True, help="metric name (repeatable)")
    listing = sources.add_parser("prometheus-series", help="the series of a window, as metric_name, labels CSV rows")
    keep = sources.add_parser("series-map", help="keep the series_id, metric_name, labels CSV rows on stdin for prometheus-copy")
    keep.add_argument("--key", required=True, help="names the map (letters, digits, _ and -)")
    copy = sources.add_parser("prometheus-copy", help="a window as binary COPY rows of dwh.metrics (series_id, ts, value)")
    copy.add_argument("--series-map", required=True, help="the key series-map kept the window's series ids under")
    for sub in (listing, copy):
        sub.add_argument("--start", type=int, required=True, help="epoch seconds, inclusive")
        sub.add_argument("--end", type=int, required=True, help="epoch seconds, exclusive")
        sub.add_argument("--step", type=int, required=True, help="seconds between evaluation times")
        sub.add_argument("--metric", action="append", required=True, help="metric name (repeatable)")
    last = sources.add_parser("last-error", help="the reason of this backend's last failed read, as one CSV field")
    last.add_argument("--since", type=float, required=True, help="epoch seconds: ignore older failures")
    last.add_argument("--exit-code", type=int, required=True, help="the exit code PostgreSQL reported")
    check = sources.add_parser("check", help="print 'ok' if the settings (and the Clerk key) can be read, else the problem")
    check.add_argument("--clerk-key", action="store_true", help="also read the Clerk key from secrets_file")
    check.add_argument("--control-plane-copy", action="store_true",
                       help="also check psql and the control plane passfile (control_plane.transfer = copy)")
    args = p.parse_args(argv)
    if args.source == "prometheus":
        if args.last is not None:
            if args.start is not None or args.end is not None:
                raise usage_error("give either --last or --start and --end, not both")
            if args.last < 1:
                raise usage_error(f"--last must be at least 1 second, got {args.last}")
            args.end = int(time.time())
            args.start = args.end - args.last
        elif args.start is None or args.end is None:
            raise usage_error("the window needs --start and --end (or --last)")
    return args


def main(argv: list | None = None) -> int:
    # Die quietly by SIGPIPE when the reader of stdout stops early (a LIMIT query):
    # PostgreSQL treats that, and only that, as a normal end of COPY FROM PROGRAM.
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    where, settings = "dwh reader", {}
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        if args.source == "check":
            return self_check(args)
        settings = load_settings(args.config)
        if args.source == "clerk":
            where = f"dwh reader: clerk {args.table}"
            rows = read_clerk(settings, args.table)
        elif args.source == "prometheus":
            where = "dwh reader: prometheus"
            metrics = [validate_metric_name(m) for m in args.metric]
            rows = read_prometheus(settings, args.start, args.end, args.step, metrics, args.series_rows)
        elif args.source == "prometheus-days":
            where = "dwh reader: prometheus-days"
            metrics = [validate_metric_name(m) for m in args.metric]
            rows = read_prometheus_days(settings, args.start, args.end, args.step, metrics)
        elif args.source == "prometheus-series":
            where = "dwh reader: prometheus series"
            rows = list_series(settings, args.start, args.end, args.step, [validate_metric_name(m) for m in args.metric])
        elif args.source == "series-map":
            where = "dwh reader: series map"
            save_series_map(settings, args.key, sys.stdin.buffer)
            return 0
        elif args.source == "prometheus-copy":
            where = "dwh reader: prometheus copy"
            metrics = [validate_metric_name(m) for m in args.metric]
            # Streamed: rows leave as each group of requests is read; a failure later exits
            # non-zero, which fails the COPY and its transaction.
            copy_prometheus(settings, args.start, args.end, args.step, metrics, args.series_map, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return 0
        else:
            rows = take_last_error(settings, args.since, args.exit_code)
    except ReaderError as e:
        code, message = e.exit_code, one_line(str(e))
    except Exception as e:  # noqa: BLE001 (a bug must still fail with one line, not a traceback)
        code, message = EXIT_INTERNAL, f"internal error {type(e).__name__}: {one_line(str(e))}"
    else:
        rows.write_to(sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return 0
    sys.stderr.write(f"{where}: {message}\n")
    record_failure(settings, code, message)
    return code


if __name__ == "__main__":
    sys.exit(main())
