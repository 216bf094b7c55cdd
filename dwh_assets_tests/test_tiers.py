"""The tiers plugin: a test's tier follows the fixtures it uses, and the fast tier stays offline.

Each case is a small test module run by pytest itself, in this process (pytester), with the
plugin: what it collects as integration, and how a test that breaks its tier fails.
"""

from __future__ import annotations

import pytest

pytest_plugins = ("pytester",)

SERVER = """
import pytest
from dwh_assets_tests.tiers import integration_fixture

@integration_fixture(scope="module")
def server():
    return "a server"

@pytest.fixture()
def client(server):
    return server
"""


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_case=SERVER + source)
    return pytester.runpytest_inprocess("-p", "dwh_assets_tests.tiers", "-p", "no:cacheprovider", *args)


def collected(pytester: pytest.Pytester, source: str, marker: str) -> list[str]:
    result = run(pytester, source, "--collect-only", "-q", "-m", marker)
    return sorted(line.split("::", 1)[1] for line in result.outlines if "::" in line)


def test_a_test_using_a_server_fixture_directly_or_through_another_is_integration(pytester):
    source = """
def test_direct(server): pass
def test_through_a_fixture(client): pass
def test_nothing(tmp_path): pass
"""
    assert collected(pytester, source, "integration") == ["test_direct", "test_through_a_fixture"]
    assert collected(pytester, source, "not integration") == ["test_nothing"]


def test_names_decide_nothing_the_resolved_fixture_does(pytester):
    source = """
class TestShadowed:
    @pytest.fixture()
    def server(self):
        return "no server: a local fixture of the same name"

    def test_local(self, server): pass

class TestExtended:
    @pytest.fixture()
    def server(self, server):
        return server + ", extended"

    def test_extended(self, server): pass

@pytest.mark.parametrize("server", ["a parameter"])
def test_parameter(server): pass
"""
    assert collected(pytester, source, "integration") == ["TestExtended::test_extended"]
    assert collected(pytester, source, "not integration") == ["TestShadowed::test_local", "test_parameter[a parameter]"]


def test_a_fast_test_that_opens_a_socket_fails_even_if_it_catches_the_error(pytester):
    result = run(pytester, """
import socket

def test_opens(): socket.socket()

def test_swallows():
    try:
        socket.socket()
    except Exception:
        pass
""")
    result.assert_outcomes(failed=2)
    assert result.stdout.str().count("is a fast-tier test and opened a socket (AF_INET)") >= 2
    result.stdout.fnmatch_lines(["*take the server or program from a fixture declared with integration_fixture*"])


def test_a_fast_test_that_starts_a_process_fails_before_it_starts(pytester, tmp_path):
    started = tmp_path / "started"
    result = run(pytester, f"""
import subprocess

def test_starts(): subprocess.run(["touch", {str(started)!r}])
""")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*is a fast-tier test and started a process: touch {started}*"])
    assert not started.exists()


def test_a_test_marked_integration_that_touches_no_server_fails(pytester):
    result = run(pytester, """
pytestmark = pytest.mark.integration

def test_pure(): assert 1 + 1 == 2
""")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*is marked integration but opened no socket and started no process*"])
