"""A Clerk Backend API (v1) emulator serving the seeded ``World``.

Clerk is a SaaS, so locally this stands in for ``https://api.clerk.com``. It serves
the three list endpoints the warehouse reads, in Clerk's public payload shapes:

- ``GET /v1/users``: a bare JSON array (as Clerk does); ``GET /v1/users/count``;
- ``GET /v1/organizations`` and ``GET /v1/organization_memberships``:
  ``{"data": [...], "total_count": N}``.

Paging is ``limit`` (default 10, 1..500, else 422) and ``offset``, over a stable order:
``created_at`` then ``id``, ascending unless ``order_by=-created_at`` (Clerk's default is
newest first; the reader asks for ``+created_at`` explicitly, so both agree). Every request needs ``Authorization: Bearer <key>`` with the
key from ``--secret-file`` (else 401). Above ``--rate-limit`` requests per second
(0 = off) data requests get 429 with ``Retry-After``. Errors carry Clerk's body shape
``{"errors": [{"message", "long_message", "code"}]}``.

Test hooks (bearer-protected as well, never rate limited):

- ``POST /_admin/faults`` with any of ``fail_after_page`` (serve N data pages normally
  first, default 0), ``status`` (answer that HTTP status), ``malformed_json`` (answer 200
  with truncated JSON), ``delay_seconds`` (sleep before answering), ``offset_shift``
  (serve from ``offset - k``, as if rows were inserted before the page), ``drop_fields``
  (leave these top-level fields out of every object, as a changed API would), ``rate_limit``
  and ``retry_after`` (override the rate limit and its Retry-After), ``path`` (only for
  that endpoint), ``once`` (clear all faults after the first one fired);
  ``GET``/``DELETE /_admin/faults`` show / clear them.
- ``POST /_admin/{users|organizations|organization_memberships}`` adds an object (id and
  timestamps generated when missing; memberships accept ``organization_id`` and
  ``user_id``); ``PATCH .../{id}`` merges top-level fields as given, invalid ones too (a
  null ``id``, a string ``created_at``: that is how reader validation is tested;
  ``updated_at`` bumped unless given); ``DELETE .../{id}`` removes it (deleting a user or an organization deletes its
  memberships too, as Clerk does); ``DELETE /_admin/{kind}`` removes every object of that
  kind (an emptied source, with the same cascade).
- ``POST /_admin/reset``: back to the generated world, faults cleared.
- ``GET /_health``: unauthenticated liveness probe (no data).

Run: ``python -m dwh_assets.local.clerk_emulator --port P --seed S --scale X
--anchor-day YYYY-MM-DD [--history-days N] --secret-file PATH [--rate-limit N]``. One log line per request
(method, path, status) on stderr; headers are never logged.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hmac
import json
import random
import re
import signal
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from dwh_assets.local.config import DEFAULT_HISTORY_DAYS
from dwh_assets.local.generator import Membership, Organization, User, World, build_world, clerk_id, to_ms

MAX_LIMIT = 500
DEFAULT_LIMIT = 10
DEFAULT_RATE_LIMIT = 100
KINDS = ("users", "organizations", "organization_memberships")
ID_PREFIX = {"users": "user", "organizations": "org", "organization_memberships": "orgmem"}
OBJECT_NAME = {"users": "user", "organizations": "organization", "organization_memberships": "organization_membership"}
FAULT_KEYS = {
    "fail_after_page": int, "status": int, "malformed_json": bool, "delay_seconds": (int, float),
    "offset_shift": int, "rate_limit": int, "retry_after": int, "path": str, "once": bool, "drop_fields": list,
}
ROLE_PERMISSIONS = {
    "org:admin": ["org:sys_profile:manage", "org:sys_profile:delete", "org:sys_memberships:read",
                  "org:sys_memberships:manage", "org:sys_domains:read", "org:sys_domains:manage"],
    "org:member": ["org:sys_memberships:read"],
}


class ApiError(Exception):
    """An error answer in Clerk's shape."""

    def __init__(self, status: int, code: str, message: str, long_message: str = "", headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.long_message = long_message or message
        self.headers = headers or {}

    def body(self) -> dict:
        return {"errors": [{"message": self.message, "long_message": self.long_message, "code": self.code}],
                "clerk_trace_id": f"emulator-{random.getrandbits(48):012x}"}


# ----- payloads in Clerk's public shapes ------------------------------------------------

def _image_url(object_id: str) -> str:
    return f"https://img.clerk.com/emulator/{object_id}"


def user_payload(u: User) -> dict:
    verification = {"status": "verified", "strategy": "email_code", "attempts": 1, "expire_at": None}
    created, updated = to_ms(u.created_at), to_ms(u.updated_at)
    return {
        "object": "user",
        "id": u.id,
        "external_id": None,
        "username": u.username,
        "first_name": u.first_name,
        "last_name": u.last_name,
        "gender": u.gender,
        "birthday": "",
        "image_url": _image_url(u.id),
        "has_image": False,
        "primary_email_address_id": u.primary_email_address_id,
        "primary_phone_number_id": u.phone_numbers[0][0] if u.phone_numbers else None,
        "primary_web3_wallet_id": None,
        "password_enabled": True,
        "two_factor_enabled": False,
        "totp_enabled": False,
        "backup_code_enabled": False,
        "email_addresses": [
            {"id": eid, "object": "email_address", "email_address": address, "reserved": False,
             "verification": dict(verification), "linked_to": [], "created_at": created, "updated_at": created}
            for eid, address in u.email_addresses
        ],
        "phone_numbers": [
            {"id": pid, "object": "phone_number", "phone_number": number, "reserved_for_second_factor": False,
             "default_second_factor": False, "reserved": False,
             "verification": dict(verification, strategy="phone_code"), "linked_to": [], "backup_codes": None,
             "created_at": created, "updated_at": created}
            for pid, number in u.phone_numbers
        ],
        "web3_wallets": [],
        "passkeys": [],
        "external_accounts": [],
        "saml_accounts": [],
        "public_metadata": dict(u.public_metadata),
        "private_metadata": {},
        "unsafe_metadata": {},
        "banned": False,
        "locked": False,
        "lockout_expires_in_seconds": None,
        "verification_attempts_remaining": 100,
        "delete_self_enabled": True,
        "create_organization_enabled": True,
        "last_sign_in_at": to_ms(u.last_sign_in_at) if u.last_sign_in_at else None,
        "last_active_at": to_ms(u.last_sign_in_at) if u.last_sign_in_at else None,
        "legal_accepted_at": None,
        "created_at": created,
        "updated_at": updated,
    }


def organization_payload(o: Organization) -> dict:
    return {
        "object": "organization",
        "id": o.id,
        "name": o.name,
        "slug": o.slug,
        "image_url": _image_url(o.id),
        "has_image": False,
        "max_allowed_memberships": o.max_allowed_memberships,
        "admin_delete_enabled": True,
        "public_metadata": dict(o.public_metadata),
        "private_metadata": {"plan": o.plan},
        "created_by": o.created_by,
        "created_at": to_ms(o.created_at),
        "updated_at": to_ms(o.updated_at),
    }


def membership_payload(m: Membership) -> dict:
    # organization / public_user_data are filled from the current objects when served.
    return {
        "object": "organization_membership",
        "id": m.id,
        "role": m.role,
        "role_name": "Admin" if m.role == "org:admin" else "Member",
        "permissions": list(ROLE_PERMISSIONS.get(m.role, [])),
        "public_metadata": {},
        "private_metadata": {},
        "organization": {"id": m.organization_id},
        "public_user_data": {"user_id": m.user_id},
        "created_at": to_ms(m.created_at),
        "updated_at": to_ms(m.updated_at),
    }


def _org_summary(org: dict, members_count: int) -> dict:
    keep = ("object", "id", "name", "slug", "image_url", "has_image", "max_allowed_memberships",
            "admin_delete_enabled", "public_metadata", "created_by", "created_at", "updated_at")
    return {**{k: org.get(k) for k in keep}, "members_count": members_count}


def _public_user_data(user: dict) -> dict:
    primary = next((e.get("email_address") for e in user.get("email_addresses") or []
                    if isinstance(e, dict) and e.get("id") == user.get("primary_email_address_id")), None)
    return {
        "user_id": user.get("id"),
        "first_name": user.get("first_name"),
        "last_name": user.get("last_name"),
        "image_url": user.get("image_url"),
        "has_image": user.get("has_image", False),
        "identifier": primary or user.get("username") or "",
        "profile_image_url": user.get("image_url"),
    }


def _sort_key(obj: dict) -> tuple:
    created = obj.get("created_at")
    return (created if isinstance(created, int) else 0, str(obj.get("id")))


# ----- state: the objects, faults and rate limit ------------------------------------------

class State:
    """Everything the handlers share; one lock guards it."""

    def __init__(self, world: World, secret_key: str, rate_limit: int):
        self.world = world
        self.secret_key = secret_key
        self.rate_limit = rate_limit
        self.lock = threading.Lock()
        self.rng = random.Random()
        self.reset()

    def reset(self) -> None:
        self.objects: dict[str, dict[str, dict]] = {
            "users": {u.id: user_payload(u) for u in self.world.users},
            "organizations": {o.id: organization_payload(o) for o in self.world.organizations},
            "organization_memberships": {m.id: membership_payload(m) for m in self.world.memberships},
        }
        self.faults: dict[str, Any] = {}
        self.pages_served = 0
        self._window, self._window_count = 0, 0
        self.changed()

    def changed(self) -> None:
        """Drop what is derived from the objects (sort orders, member counts)."""
        self._sorted: dict[str, list[dict]] = {}
        self._members_count: dict[str, int] | None = None

    def ordered(self, kind: str) -> list[dict]:
        if kind not in self._sorted:
            self._sorted[kind] = sorted(self.objects[kind].values(), key=_sort_key)
        return self._sorted[kind]

    def members_count(self, org_id: str) -> int:
        if self._members_count is None:
            counts: dict[str, int] = {}
            for m in self.objects["organization_memberships"].values():
                oid = (m.get("organization") or {}).get("id")
                counts[oid] = counts.get(oid, 0) + 1
            self._members_count = counts
        return self._members_count.get(org_id, 0)

    def render(self, kind: str, obj: dict) -> dict:
        if kind == "organizations":
            return {**obj, "members_count": self.members_count(obj.get("id"))}
        if kind == "organization_memberships":
            org_id = (obj.get("organization") or {}).get("id")
            user_id = (obj.get("public_user_data") or {}).get("user_id")
            out = dict(obj)
            if org_id in self.objects["organizations"]:
                out["organization"] = _org_summary(self.objects["organizations"][org_id], self.members_count(org_id))
            if user_id in self.objects["users"]:
                out["public_user_data"] = _public_user_data(self.objects["users"][user_id])
            return out
        return obj

    def check_rate(self) -> None:
        limit = self.faults.get("rate_limit", self.rate_limit)
        if not limit:
            return
        now = time.monotonic()
        window = int(now)
        if window != self._window:
            self._window, self._window_count = window, 0
        if self._window_count >= limit:
            retry_after = self.faults.get("retry_after", max(1, int(window + 1 - now + 0.999)))
            raise ApiError(429, "too_many_requests", "Too many requests",
                           f"Rate limit of {limit} requests per second exceeded; retry later.",
                           headers={"Retry-After": str(retry_after)})
        self._window_count += 1

    def active_fault(self, path: str) -> dict:
        """The fault to apply to this data request (empty when none applies)."""
        f = self.faults
        if not f or ("path" in f and f["path"] != path):
            return {}
        if self.pages_served < f.get("fail_after_page", 0):
            return {}
        actions = {k: f[k] for k in ("status", "malformed_json", "delay_seconds", "offset_shift", "drop_fields") if k in f}
        if actions and f.get("once"):
            self.faults = {}
        return {**actions, "retry_after": f.get("retry_after", 1)} if actions else {}


# ----- HTTP -----------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    server_version = "ClerkEmulator/1.0"
    protocol_version = "HTTP/1.1"
    state: State  # set on the subclass made by make_server

    # --- plumbing
    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        status = code.value if isinstance(code, HTTPStatus) else code
        sys.stderr.write(f"{self.log_date_time_string()} {self.command} {self.path} {status}\n")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        sys.stderr.write(f"{self.log_date_time_string()} {format % args}\n")

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode(), headers)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            raise ApiError(400, "malformed_request", "Request body is not valid JSON") from None

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.state.secret_key.encode())

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        try:
            if self.command == "GET" and url.path == "/_health":
                return self._json(200, {"status": "ok"})
            if not self._authorized():
                raise ApiError(401, "authentication_invalid", "Invalid authentication",
                               "Unable to authenticate the request, you need to supply an active API key")
            if url.path.startswith("/_admin/"):
                return self._admin(url.path)
            if self.command == "GET" and url.path.startswith("/v1/"):
                return self._list(url.path, dict(parse_qsl(url.query)))
            raise ApiError(404, "resource_not_found", "not found", f"No endpoint {self.command} {url.path}")
        except ApiError as e:
            self.close_connection = True  # an unread request body must not poison the next request
            self._json(e.status, e.body(), e.headers)

    do_GET = do_POST = do_PATCH = do_DELETE = _dispatch

    # --- the public API
    def _list(self, path: str, query: dict) -> None:
        kind = path[len("/v1/"):].rstrip("/")
        if kind == "users/count":
            with self.state.lock:
                return self._json(200, {"object": "total_count", "total_count": len(self.state.objects["users"])})
        if kind not in KINDS:
            raise ApiError(404, "resource_not_found", "not found", f"No endpoint GET {path}")
        limit = _int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = _int_param(query, "offset", 0, 0, None)
        order_by = query.get("order_by", "+created_at")
        if order_by not in ("created_at", "+created_at", "-created_at"):
            raise ApiError(422, "form_param_value_invalid", "is invalid",
                           "order_by must be created_at with an optional + or - (the emulator sorts by nothing else)")
        with self.state.lock:
            self.state.check_rate()
            fault = self.state.active_fault(path)
        if fault.get("delay_seconds"):
            time.sleep(float(fault["delay_seconds"]))
        if fault.get("status"):
            status = int(fault["status"])
            headers = {"Retry-After": str(fault.get("retry_after", 1))} if status == 429 else {}
            raise ApiError(status, "injected_fault", f"Injected fault: HTTP {status}", headers=headers)
        offset = max(0, offset - int(fault.get("offset_shift", 0)))
        with self.state.lock:
            ordered = self.state.ordered(kind)
            if order_by == "-created_at":
                ordered = ordered[::-1]
            rows = [self.state.render(kind, o) for o in ordered[offset:offset + limit]]
            total = len(self.state.objects[kind])
            self.state.pages_served += 1
        if fault.get("drop_fields"):  # an API version that no longer sends these fields
            rows = [{k: v for k, v in row.items() if k not in fault["drop_fields"]} for row in rows]
        payload: Any = rows if kind == "users" else {"data": rows, "total_count": total}
        body = json.dumps(payload, ensure_ascii=False).encode()
        if fault.get("malformed_json"):
            body = body[: max(1, len(body) // 2)]
        self._send(200, body)

    # --- test hooks
    def _admin(self, path: str) -> None:
        parts = path.strip("/").split("/")[1:]
        state = self.state
        if parts == ["faults"]:
            if self.command == "GET":
                with state.lock:
                    return self._json(200, {"faults": state.faults, "pages_served": state.pages_served})
            if self.command == "DELETE":
                with state.lock:
                    state.faults, state.pages_served = {}, 0
                return self._json(200, {"faults": {}})
            if self.command == "POST":
                faults = _validate_faults(self._body())
                with state.lock:
                    state.faults, state.pages_served = faults, 0
                return self._json(200, {"faults": faults})
        if parts == ["reset"] and self.command == "POST":
            with state.lock:
                state.reset()
            return self._json(200, {"reset": True})
        if parts and parts[0] in KINDS and len(parts) <= 2:
            return self._mutate(parts[0], parts[1] if len(parts) == 2 else None)
        raise ApiError(404, "resource_not_found", "not found", f"No admin endpoint {self.command} {path}")

    def _mutate(self, kind: str, object_id: str | None) -> None:
        state = self.state
        now = int(time.time() * 1000)
        if object_id is None and self.command == "POST":
            obj = self._body()
            if not isinstance(obj, dict):
                raise ApiError(400, "malformed_request", "Body must be a JSON object")
            obj = _new_object(kind, obj, now, state.rng)
            with state.lock:
                state.objects[kind][obj["id"]] = obj
                state.changed()
                return self._json(201, state.render(kind, obj))
        if object_id is None and self.command == "DELETE":
            with state.lock:
                deleted = [self._delete(kind, oid) for oid in list(state.objects[kind])]
                state.changed()
            return self._json(200, {"object": OBJECT_NAME[kind], "deleted": len(deleted)})
        if object_id is None:
            raise ApiError(405, "method_not_allowed", f"{self.command} needs an object id")
        with state.lock:
            if object_id not in state.objects[kind]:
                raise ApiError(404, "resource_not_found", "not found", f"No {OBJECT_NAME[kind]} {object_id}")
        if self.command == "PATCH":
            changes = self._body()
            if not isinstance(changes, dict):
                raise ApiError(400, "malformed_request", "Body must be a JSON object")
            with state.lock:
                obj = state.objects[kind][object_id]
                obj.update(copy.deepcopy(changes))
                if "updated_at" not in changes:
                    obj["updated_at"] = now
                state.changed()
                return self._json(200, state.render(kind, obj))
        if self.command == "DELETE":
            with state.lock:
                self._delete(kind, object_id)
                state.changed()
            return self._json(200, {"object": OBJECT_NAME[kind], "id": object_id, "deleted": True})
        raise ApiError(405, "method_not_allowed", f"{self.command} is not supported here")

    def _delete(self, kind: str, object_id: str) -> str:
        """Remove one object (the caller holds the lock and calls ``changed``)."""
        objects = self.state.objects
        del objects[kind][object_id]
        ref = {"users": ("public_user_data", "user_id"), "organizations": ("organization", "id")}.get(kind)
        if ref:  # Clerk deletes the memberships of a deleted user or organization
            mems = objects["organization_memberships"]
            for mid in [mid for mid, m in mems.items() if (m.get(ref[0]) or {}).get(ref[1]) == object_id]:
                del mems[mid]
        return object_id


def _int_param(query: dict, name: str, default: int, low: int, high: int | None) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ApiError(422, "form_param_value_invalid", "is invalid", f"{name} must be an integer {bounds}")
    return value


def _validate_faults(body: Any) -> dict:
    if not isinstance(body, dict):
        raise ApiError(400, "malformed_request", "Faults must be a JSON object")
    for key, value in body.items():
        expected = FAULT_KEYS.get(key)
        if expected is None:
            raise ApiError(400, "form_param_unknown", f"Unknown fault {key!r}; known: {sorted(FAULT_KEYS)}")
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise ApiError(400, "form_param_value_invalid", f"Fault {key!r} has the wrong type")
    return dict(body)


def _new_object(kind: str, obj: dict, now: int, rng: random.Random) -> dict:
    obj = copy.deepcopy(obj)
    obj.setdefault("id", clerk_id(ID_PREFIX[kind], rng))
    obj.setdefault("object", OBJECT_NAME[kind])
    obj.setdefault("created_at", now)
    obj.setdefault("updated_at", obj["created_at"])
    if kind == "organization_memberships":
        obj.setdefault("organization", {"id": obj.pop("organization_id", None)})
        obj.setdefault("public_user_data", {"user_id": obj.pop("user_id", None)})
        obj.setdefault("role", "org:member")
    return obj


def make_server(port: int, state: State, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Clerk Backend API emulator (serves the seeded world).")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--anchor-day", type=dt.date.fromisoformat, default=dt.datetime.now(dt.timezone.utc).date())
    p.add_argument("--history-days", type=int, default=DEFAULT_HISTORY_DAYS, help="days of history before the anchor day")
    p.add_argument("--secret-file", required=True, help="file holding the accepted bearer key")
    p.add_argument("--rate-limit", type=int, default=DEFAULT_RATE_LIMIT, help="requests per second; 0 = off")
    args = p.parse_args(argv)
    try:
        with open(args.secret_file) as f:
            key = f.read().strip()
    except OSError as e:
        raise SystemExit(f"clerk emulator: cannot read --secret-file: {e}") from None
    if not key or not re.fullmatch(r"\S+", key):
        raise SystemExit(f"clerk emulator: {args.secret_file} holds no usable key (one token, no spaces)")
    # Build the world before binding: an open port then means "ready".
    state = State(build_world(args.seed, args.scale, args.anchor_day, args.history_days), key, args.rate_limit)
    server = make_server(args.port, state)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    sys.stderr.write(
        f"clerk emulator: {len(state.objects['users'])} users, {len(state.objects['organizations'])} organizations "
        f"on http://127.0.0.1:{args.port} (rate limit {args.rate_limit or 'off'}/s)\n"
    )
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
