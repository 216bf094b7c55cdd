"""The source reader's retries, decided from each answer: Retry-After, back-off, caps, time limits.

The reader's HTTP client runs against a scripted transport and a fake clock (no socket, no
sleeping): every wait it would make is recorded, so what it waited for, and for how long in
all, is asserted exactly. The same reader against a real Clerk emulator is test_reader_clerk.py.
"""

from __future__ import annotations

import email.utils
import io
import socket
import urllib.error
import urllib.request

import pytest

from dwh_assets.warehouse.sources import reader as r

SETTINGS = {**r.DEFAULT_SETTINGS, "timeout_seconds": 5.0, "max_retries": 2, "backoff_seconds": 0.05,
            "max_retry_after_seconds": 60.0, "total_timeout_seconds": 600.0}
PATH = "/v1/users?limit=500"
HANG = "hang"


class FakeClock:
    """Stands in for the reader's ``time`` module: sleeping only moves the clock on."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_767_225_600 + self.now  # wall time, for Retry-After as an HTTP date

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Answer(io.BytesIO):
    def __init__(self, status: int, body: bytes):
        super().__init__(body)
        self.status = status


class ScriptedSource:
    """Answers each request with the next outcome: (status, headers) or HANG (no answer within the timeout)."""

    def __init__(self, clock: FakeClock, outcomes: list):
        self.clock, self.outcomes = clock, list(outcomes)
        self.timeouts: list[float] = []

    def open(self, request: urllib.request.Request, timeout: float) -> Answer:
        self.timeouts.append(timeout)
        outcome = self.outcomes.pop(0)
        if outcome == HANG:
            self.clock.now += timeout
            raise socket.timeout("timed out")
        status, headers = outcome
        if status >= 400:
            body = io.BytesIO(b'{"errors": [{"message": "scripted"}]}')
            raise urllib.error.HTTPError(request.full_url, status, "scripted", headers, body)
        return Answer(status, b'[{"id": "user_1"}]')


@pytest.fixture()
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(r, "time", fake)
    return fake


def source(monkeypatch, clock: FakeClock, *outcomes, **settings) -> tuple[r.HttpSource, ScriptedSource]:
    scripted = ScriptedSource(clock, outcomes)
    monkeypatch.setattr(r, "_OPENER", scripted)
    return r.HttpSource("http://clerk.invalid", {**SETTINGS, **settings}), scripted


def test_429_waits_for_retry_after_not_the_back_off(monkeypatch, clock):
    http, _ = source(monkeypatch, clock, (429, {"Retry-After": "2"}), (200, {}))
    assert http.get_json(PATH) == [{"id": "user_1"}]
    assert clock.sleeps == [2.0]


def test_503_waits_for_retry_after_given_as_an_http_date(monkeypatch, clock):
    when = email.utils.formatdate(clock.time() + 30, usegmt=True)
    http, _ = source(monkeypatch, clock, (503, {"Retry-After": when}), (200, {}))
    http.get_json(PATH)
    assert clock.sleeps == [30.0]


def test_retry_after_is_capped_by_max_retry_after_seconds(monkeypatch, clock):
    http, _ = source(monkeypatch, clock, (429, {"Retry-After": "3600"}), (200, {}), max_retry_after_seconds=0.5)
    http.get_json(PATH)
    assert clock.sleeps == [0.5]


def test_a_wait_beyond_the_total_time_fails_at_once_with_the_sources_problem(monkeypatch, clock):
    http, _ = source(monkeypatch, clock, (429, {"Retry-After": "120"}), (200, {}), total_timeout_seconds=100,
                     max_retry_after_seconds=600)
    with pytest.raises(r.ReaderError, match=r"HTTP 429 from /v1/users\?limit=500 after 1 attempt\(s\), no time left "
                                            r"to retry within total_timeout_seconds=100s: scripted") as failure:
        http.get_json(PATH)
    assert failure.value.exit_code == r.EXIT_RATE_LIMITED and clock.sleeps == []


def test_server_errors_back_off_exponentially_then_fail(monkeypatch, clock):
    http, scripted = source(monkeypatch, clock, (500, {}), (502, {}), (500, {}))
    with pytest.raises(r.ReaderError, match=r"^HTTP 500 from /v1/users\?limit=500 after 3 attempts: scripted$") as failure:
        http.get_json(PATH)
    assert failure.value.exit_code == r.EXIT_SERVER_ERROR
    assert clock.sleeps == [0.05, 0.1] and scripted.outcomes == []


def test_refused_credentials_are_not_retried(monkeypatch, clock):
    http, scripted = source(monkeypatch, clock, (401, {}), (200, {}))
    with pytest.raises(r.ReaderError, match="HTTP 401") as failure:
        http.get_json(PATH)
    assert failure.value.exit_code == r.EXIT_AUTH and clock.sleeps == [] and len(scripted.outcomes) == 1


def test_a_hanging_source_fails_after_each_attempts_timeout(monkeypatch, clock):
    http, scripted = source(monkeypatch, clock, HANG, HANG, timeout_seconds=0.5, max_retries=1)
    start = clock.now
    with pytest.raises(r.ReaderError, match=r"no answer within 0.5s from /v1/users\?limit=500 after 2 attempts") as failure:
        http.get_json(PATH)
    assert failure.value.exit_code == r.EXIT_TIMEOUT
    assert scripted.timeouts == [0.5, 0.5] and clock.now - start == pytest.approx(0.5 + 0.05 + 0.5)


def test_many_retries_of_a_hanging_source_end_at_the_total_timeout(monkeypatch, clock):
    http, scripted = source(monkeypatch, clock, *[HANG] * 10, timeout_seconds=2, max_retries=9,
                            total_timeout_seconds=5)
    start = clock.now
    with pytest.raises(r.ReaderError, match="the read did not finish within total_timeout_seconds=5s") as failure:
        http.get_json(PATH)
    assert failure.value.exit_code == r.EXIT_TIMEOUT
    assert clock.now - start <= 5
    assert scripted.timeouts[:2] == [2, 2] and scripted.timeouts[-1] < 2, "the last attempt gets only the time left"
