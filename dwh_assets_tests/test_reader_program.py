"""The source reader as file_fdw runs it: a program string for ``/bin/sh -c``, the system
Python, and HTTP requests to its source.

- The program string quotes every argument: split as the shell would (fast), and run
  through a real ``sh -c`` with payloads in every position, which the reader then refuses.
- Against a stub Prometheus on loopback, the reader splits a window into requests within
  its point and sample budgets and writes each sample once, in either row shape.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from dwh_assets.warehouse.deployment import DeploymentConfig
from dwh_assets.warehouse.sources import reader as r
from dwh_assets.warehouse.sources.reader_install import install_reader, reader_argv, reader_program
from dwh_assets_tests.deployments import offline_deployment
from dwh_assets_tests.tiers import integration_fixture

READER_SOURCE = Path(r.__file__)
SYSTEM_PYTHON = "/usr/bin/python3"
PAYLOADS = ["$(touch {m})", "`touch {m}`", "x; touch {m}", "x' ; touch {m}; '", 'x" ; touch {m}; "', "x\ntouch {m}",
            "x && touch {m}", "x | touch {m}"]
POSITIONS = {
    "metric": lambda v: ["prometheus", "--start", "0", "--end", "60", "--step", "15", "--metric", v],
    "start": lambda v: ["prometheus", "--start", v, "--end", "60", "--step", "15"],
    "table": lambda v: ["clerk", v],
}


# ----- shell safety of the file_fdw program ----------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("position", POSITIONS)
def test_program_string_splits_back_into_the_readers_arguments(tmp_path, payload, position):
    """What the shell will see, without a shell: every value stays one literal argument."""
    cfg = offline_deployment(tmp_path)
    args = POSITIONS[position](payload.format(m=tmp_path / "pwned"))
    assert shlex.split(reader_program(cfg, *args)) == reader_argv(cfg, *args)


@pytest.fixture()
def installed(tmp_path, monkeypatch) -> Iterator[DeploymentConfig]:
    monkeypatch.delenv("CLERK_SECRET_KEY", raising=False)
    home = Path(tempfile.mkdtemp(prefix="dwh-reader-unit-", dir="/tmp"))
    home.chmod(0o755)
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    cfg = offline_deployment(home, reader={"directory": str(home / "reader"), "os_user": user})
    install_reader(cfg)
    yield cfg
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.integration  # runs the program through /bin/sh
@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("position", POSITIONS)
def test_program_string_cannot_run_a_payload(installed, tmp_path, payload, position):
    marker = tmp_path / "pwned"
    program = reader_program(installed, *POSITIONS[position](payload.format(m=marker)))
    result = subprocess.run(["/bin/sh", "-c", program], capture_output=True, text=True, timeout=60)
    assert not marker.exists(), program
    assert result.returncode == 2, result.stderr  # the reader itself refuses the value
    assert result.stdout == "" and result.stderr.count("\n") == 1 and result.stderr.startswith("dwh reader")


@pytest.mark.integration  # runs the program through /bin/sh
def test_program_string_runs_the_installed_reader(installed):
    program = reader_program(installed, "prometheus", "--start", "0", "--end", "0", "--step", "15",
                             "--metric", "up")
    assert program.startswith("/usr/bin/python3 -I ") and str(installed.reader.directory) in program
    result = subprocess.run(["/bin/sh", "-c", program], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")  # an empty window reads nothing


def run_reader(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SYSTEM_PYTHON, str(READER_SOURCE), "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.integration  # runs the reader
def test_bad_windows_and_settings_are_usage_errors(installed, tmp_path):
    config = installed.reader.directory / "reader.json"
    for args in (["--start", "100", "--end", "50", "--step", "15"], ["--start", "0", "--end", "60", "--step", "0"],
                 ["--start", "0", "--end", str(10**12), "--step", "1"]):
        result = run_reader(config, "prometheus", *args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"page_size": 501}))
    assert "page_size" in run_reader(bad, "clerk", "users").stderr
    bad.write_text(json.dumps({"clerk_secret_key": "sk_on_the_wrong_file"}))
    result = run_reader(bad, "clerk", "users")
    assert result.returncode == 2 and "unknown setting" in result.stderr and "sk_on_the_wrong_file" not in result.stderr


# ----- against a stub query_range ---------------------------------------------------------------------


class StubPrometheus:
    """query_range on loopback, answering ``series`` series (instance i-1, i-2, ...) valued
    t/10 + k at every evaluation time (NaN at 0); ``requests`` are the queries it was asked."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.series = 1
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def answer(self, q: dict) -> bytes:
        start, end, step = int(q["start"]), int(q["end"]), int(q["step"])
        result = [
            {"metric": {"__name__": q["query"], "instance_id": f"i-{k}", "zone": "a"},
             "values": [[t, "NaN" if t == 0 else str(t / 10 + k - 1)] for t in range(start, end + 1, step)]}
            for k in range(1, self.series + 1)]
        return json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}}).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                stub.requests.append(q)
                body = stub.answer(q)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler

    def read(self, tmp_path: Path, settings: dict, *args: str) -> subprocess.CompletedProcess:
        config = tmp_path / "reader.json"
        config.write_text(json.dumps({"prometheus_url": self.url, **settings}))
        return run_reader(config, "prometheus", *args)


@integration_fixture()
def stub_prometheus() -> Iterator[StubPrometheus]:
    stub = StubPrometheus()
    threading.Thread(target=stub.server.serve_forever, daemon=True).start()
    try:
        yield stub
    finally:
        stub.server.shutdown()
        stub.server.server_close()


def test_reader_splits_requests_and_returns_each_sample_once(stub_prometheus, tmp_path):
    result = stub_prometheus.read(tmp_path, {"max_points_per_request": 4}, "--start", "0", "--end", "151",
                                  "--step", "15", "--metric", "m_a", "--metric", "m_b")
    assert result.returncode == 0, result.stderr
    expected_times = list(range(0, 151, 15))  # 11 points: 4 + 4 + 3
    assert [(q["query"], int(q["start"]), int(q["end"])) for q in stub_prometheus.requests] == [
        (m, s, e) for m in ("m_a", "m_b") for s, e in ((0, 45), (60, 105), (120, 150))
    ]
    lines = result.stdout.splitlines()
    assert lines[0] == '"m_a","{""instance_id"":""i-1"",""zone"":""a""}",0,NaN'
    assert lines[1] == '"m_a","{""instance_id"":""i-1"",""zone"":""a""}",15,1.5'
    assert [int(line.split(",")[-2]) for line in lines] == expected_times * 2


def test_requests_shrink_to_the_sample_budget_once_the_series_are_known(stub_prometheus, tmp_path):
    """The first request assumes ASSUMED_SERIES; later ones hold at most the budget (points x series)."""
    budget = r.ASSUMED_SERIES * 3  # first request: 3 points
    stub_prometheus.series = 2000
    result = stub_prometheus.read(tmp_path, {"max_samples_per_request": budget}, "--start", "0", "--end", "3600",
                                  "--step", "60", "--metric", "m")
    assert result.returncode == 0, result.stderr
    spans = [(int(q["start"]), int(q["end"])) for q in stub_prometheus.requests]
    points = [(end - start) // 60 + 1 for start, end in spans]
    assert points[0] == 3 and set(points[1:-1]) == {budget // 2000} and points[-1] <= budget // 2000
    assert [start for start, _ in spans] == [0] + [end + 60 for _, end in spans[:-1]], "gaps or overlaps"
    assert spans[-1][1] == 3540 and sum(points) == 60
    assert len(result.stdout.splitlines()) == 60 * 2000


def test_series_rows_send_each_label_set_once_then_numbered_samples(stub_prometheus, tmp_path):
    args = ("--start", "0", "--end", "151", "--step", "15", "--metric", "m_a", "--metric", "m_b")
    stub_prometheus.series = 2
    compact = stub_prometheus.read(tmp_path, {"max_points_per_request": 4}, *args, "--series-rows")
    full = stub_prometheus.read(tmp_path, {"max_points_per_request": 4}, *args)
    assert compact.returncode == 0 and full.returncode == 0, compact.stderr + full.stderr
    lines = compact.stdout.splitlines()
    heads = [line for line in lines if line.startswith('"s",')]
    assert heads == [
        '"s",1,"m_a","{""instance_id"":""i-1"",""zone"":""a""}",,',
        '"s",2,"m_a","{""instance_id"":""i-2"",""zone"":""a""}",,',
        '"s",3,"m_b","{""instance_id"":""i-1"",""zone"":""a""}",,',
        '"s",4,"m_b","{""instance_id"":""i-2"",""zone"":""a""}",,',
    ]
    # Every sample once, numbered by its series; together the same rows as the full shape.
    labels = {line.split(",", 2)[1]: line.split(",", 2)[2].rsplit(",,", 1)[0] for line in heads}
    rebuilt = sorted(f"{labels[n]},{t},{v}" for n, t, v in
                     (line[2:].replace(",,,", ",", 1).split(",") for line in lines if line.startswith("v,")))
    assert rebuilt == sorted(full.stdout.splitlines())
    assert lines.index(heads[2]) > lines.index(heads[1]), "a series is announced before its samples"
