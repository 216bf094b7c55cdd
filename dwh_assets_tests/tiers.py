"""Test tiers by what a test uses (a pytest plugin, registered by conftest.py).

A fixture that starts a server or a program is declared with ``integration_fixture``
instead of ``pytest.fixture``. Every test whose fixture closure uses such a fixture — as
pytest resolves it, so a local fixture of the same name replaces it, and a fixture built
on it passes it on — gets the ``integration`` marker at collection. A test that starts a
server or a program in its own body is marked ``@pytest.mark.integration`` (its module,
when every test of it does). Everything else is the fast tier: ``pytest -m "not integration"``.

Both directions are enforced while the tests run, by one audit hook (PEP 578) that sees
every socket and child process the interpreter creates:

- a fast test that opens a socket or starts a process (in its body or its fixtures'
  set-up) fails at that call, and fails even if the code swallowed the error;
- a test marked ``integration`` by hand alone that opens no socket and starts no process
  fails too: it needs no server, so it belongs in the fast tier.

pytest-socket would cover only the socket half of the first direction, and only by
refusing; the hook refuses in the fast tier and notices in the integration tier.
Connections libpq makes in C (psycopg) are invisible to it, which is why the fast tier is
also checked with the network unplugged (README, "Tests").
"""

from __future__ import annotations

import enum
import shlex
import socket
import sys
from collections.abc import Callable, Generator
from typing import Any

import pytest

MARKER = "integration"
# Set on the fixture's function, which pytest keeps as FixtureDef.func.
_DECLARED = "_dwh_integration_fixture"


def integration_fixture(function: Callable[..., Any] | None = None, **options: Any) -> Any:
    """``pytest.fixture`` for a fixture that starts a server or a program: the tests using it are integration."""

    def declare(fixture_function: Callable[..., Any]) -> Any:
        setattr(fixture_function, _DECLARED, True)
        return pytest.fixture(fixture_function, **options)

    return declare(function) if function is not None else declare


class Tier(enum.Enum):
    FAST = "fast"
    FIXTURE = "integration, from its fixtures"
    MARKED = "integration, marked by hand"


TIER = pytest.StashKey[Tier]()


def integration_fixtures_used(item: pytest.Item) -> list[str]:
    """The integration fixtures in the item's closure, following pytest's override chains."""
    # pytest's FuncFixtureInfo (only Function items have one): each name's definitions, the closest last.
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    found: list[str] = []
    visited: set[tuple[str, int]] = set()

    def visit(name: str, index: int) -> None:
        definitions = info.name2fixturedefs.get(name, ())
        if -index > len(definitions) or (name, index) in visited:
            return
        visited.add((name, index))
        definition = definitions[index]
        if getattr(definition.func, _DECLARED, False):
            found.append(name)
        for dependency in definition.argnames:
            # A fixture requesting its own name gets the definition it overrides.
            visit(dependency, index - 1 if dependency == name else -1)

    for name in info.initialnames:
        visit(name, -1)
    return found


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if integration_fixtures_used(item):
            item.stash[TIER] = Tier.FIXTURE
            item.add_marker(MARKER)
        else:
            item.stash[TIER] = Tier.MARKED if item.get_closest_marker(MARKER) else Tier.FAST


# ----- enforcement ---------------------------------------------------------------------------


class FastTierError(Exception):
    """A fast test opened a socket or started a process (not an OSError: nobody retries it)."""


class _Watch:
    """What one test did in its set-up and call: refused in the fast tier, noticed otherwise."""

    def __init__(self, item: pytest.Item, refuse: bool):
        self.nodeid = item.nodeid
        self.refuse = refuse
        self.seen: list[str] = []


_WATCH: _Watch | None = None
WATCH = pytest.StashKey[_Watch]()


def _command(argv: object) -> str:
    words = [argv] if isinstance(argv, (str, bytes)) else list(argv or ())  # type: ignore[call-overload]
    return " ".join(shlex.join(str(w) for w in words).split())[:200]


def _describe(event: str, args: tuple) -> str | None:
    """What an audit event did, in words; None for events that are neither a socket nor a process."""
    if event == "socket.__new__":
        family = args[1]
        try:
            family = socket.AddressFamily(family).name
        except ValueError:
            pass
        return f"opened a socket ({family})"
    if event == "subprocess.Popen":
        return f"started a process: {_command(args[1])}"
    if event in ("os.posix_spawn", "os.exec"):
        return f"started a process: {_command(args[1])}"
    if event == "os.spawn":
        return f"started a process: {_command(args[2])}"
    if event == "os.system":
        return f"started a process: {_command(args[0])}"
    if event in ("os.fork", "os.forkpty"):
        return "forked the test process"
    return None


def fast_tier_message(nodeid: str, what: str) -> str:
    return (f"{nodeid} is a fast-tier test and {what}. The fast tier opens no socket and starts no process: "
            "take the server or program from a fixture declared with integration_fixture "
            "(dwh_assets_tests/tiers.py), or mark the test pytest.mark.integration if it starts one itself.")


def needless_marker_message(nodeid: str) -> str:
    return (f"{nodeid} is marked integration but opened no socket and started no process: it needs no server, "
            "so it belongs in the fast tier (drop the marker, or move it out of a marked module). If it uses a "
            "server that a fixture started, declare that fixture with integration_fixture (dwh_assets_tests/tiers.py).")


def _audit(event: str, args: tuple) -> None:
    watch = _WATCH
    if watch is None:
        return
    what = _describe(event, args)
    if what is None:
        return
    watch.seen.append(what)
    if watch.refuse:
        raise FastTierError(fast_tier_message(watch.nodeid, what))


def pytest_configure(config: pytest.Config) -> None:
    # An audit hook cannot be removed: it is added once and does nothing outside a watched test.
    if not getattr(sys, "_dwh_tier_audit", False):
        sys.addaudithook(_audit)
        sys._dwh_tier_audit = True  # type: ignore[attr-defined]


def _watching(item: pytest.Item) -> Generator[None, Any, Any]:
    """Watch a set-up or call phase. Teardown is not watched: the last test of a module or
    session tears down its higher-scoped fixtures, whoever started them."""
    global _WATCH
    tier = item.stash.get(TIER, Tier.FAST)
    if tier is Tier.FIXTURE:
        return (yield)
    previous, _WATCH = _WATCH, item.stash.setdefault(WATCH, _Watch(item, refuse=tier is Tier.FAST))
    try:
        return (yield)
    finally:
        _WATCH = previous  # a test session run inside a test (pytester) hands the watch back


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _watching(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _watching(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, Any, pytest.TestReport]:
    report = yield
    watch = item.stash.get(WATCH, None)
    if watch is None or not report.passed or report.when == "teardown":
        return report
    if watch.refuse and watch.seen:  # the code caught the refusal and carried on
        report.outcome, report.longrepr = "failed", fast_tier_message(watch.nodeid, watch.seen[0])
    elif not watch.refuse and report.when == "call" and not watch.seen:
        report.outcome, report.longrepr = "failed", needless_marker_message(watch.nodeid)
    return report

