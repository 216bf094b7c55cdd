"""Pure parts of the source reader: window alignment and splitting, CSV quoting, argument
validation, Retry-After. The reader as a program (a stub Prometheus, a real ``sh -c``) is
test_reader_program.py, its retries test_reader_retries.py, against a real Prometheus
test_prometheus_source.py."""

from __future__ import annotations

import ast
import datetime as dt
import random
import sys
from pathlib import Path

import pytest

from dwh_assets.warehouse.sources import reader as r

READER_SOURCE = Path(r.__file__)
DAY = 86_400


def times(start: int, end: int, step: int) -> list[int]:
    first, count = r.aligned_times(start, end, step)
    return [first + k * step for k in range(count)]


# ----- alignment and splitting -------------------------------------------------------------------

def test_window_is_closed_open_on_the_step_grid():
    assert times(0, 60, 15) == [0, 15, 30, 45]  # end excluded
    assert times(1, 61, 15) == [15, 30, 45, 60]  # first = ceil(start/step)*step
    assert times(16, 30, 15) == []
    assert times(30, 31, 15) == [30]
    assert times(100, 100, 15) == []


def test_adjacent_windows_partition_and_overlapping_windows_agree():
    rng = random.Random(5)
    for _ in range(2000):
        step = rng.choice([1, 7, 15, 60, 300, 3600])
        a = rng.randrange(0, 10**6)
        b = a + rng.randrange(0, 10**4)
        c = b + rng.randrange(0, 10**4)
        left, right, whole = times(a, b, step), times(b, c, step), times(a, c, step)
        assert left + right == whole  # no gap, no duplicate at the seam
        inner = times(a + (b - a) // 3, c, step)
        assert set(inner) <= set(whole) and inner == [t for t in whole if t >= a + (b - a) // 3]


def test_split_respects_the_point_limit_and_covers_each_time_once():
    rng = random.Random(9)
    for _ in range(500):
        step, limit = rng.choice([1, 15, 60]), rng.choice([1, 2, 5, 11_000])
        start = rng.randrange(0, 10**6)
        end = start + rng.randrange(0, 200 * step)
        chunks = r.split_window(start, end, step, limit)
        covered = [t for s, e in chunks for t in range(s, e + 1, step)]
        assert covered == times(start, end, step)
        assert all((e - s) // step + 1 <= limit for s, e in chunks)


def test_a_month_at_15s_takes_16_requests_of_at_most_11000_points():
    start = int(dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc).timestamp())
    chunks = r.split_window(start, start + 30 * DAY, 15, 11_000)
    assert len(chunks) == 16  # 172,800 points
    assert chunks[0] == (start, start + 10_999 * 15) and chunks[1][0] == start + 11_000 * 15
    assert chunks[-1][1] == start + 30 * DAY - 15


# ----- CSV for file_fdw ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "field"),
    [(None, ""), ("", '""'), ("a", '"a"'), ('say "hi", ok', '"say ""hi"", ok"'), ("two\nlines", '"two\nlines"'),
     ("nul\x00byte", '"nulbyte"'), (0, "0"), (-12, "-12"), (1.5, "1.5"), (1e300, "1e+300"),
     (float("nan"), "NaN"), (float("inf"), "Infinity"), (float("-inf"), "-Infinity")],
)
def test_csv_fields_keep_null_and_empty_apart(value, field):
    assert r.csv_field(value) == field


def test_csv_line_is_one_utf8_row():
    assert r.csv_line(["Zoë", None, 3, ""]) == '"Zoë",,3,""\n'.encode()


# ----- arguments -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["up", "dwh_instance_memory_bytes", "job:rate5m:sum", "_x9"])
def test_valid_metric_names_pass(name):
    assert r.validate_metric_name(name) == name


@pytest.mark.parametrize("name", ["", "9up", "up{job='x'}", "up;rm -rf /", "$(touch /tmp/x)", "a b", "up\n", "a'b", 'a"b', "ü"])
def test_other_metric_names_are_refused(name):
    with pytest.raises(r.ReaderError) as e:
        r.validate_metric_name(name)
    assert e.value.exit_code == 2


def test_metric_names_are_always_given_by_the_warehouse():
    """The reader has no metric names of its own: the deployment's come with every call."""
    with pytest.raises(r.ReaderError, match="--metric") as e:
        r.parse_args(["--config", "unused.json", "prometheus", "--start", "0", "--end", "60", "--step", "15"])
    assert e.value.exit_code == r.EXIT_USAGE


@pytest.mark.parametrize(("header", "seconds"), [("3", 3.0), ("0", 0.0), (None, None), ("soon", None)])
def test_retry_after_seconds(header, seconds):
    assert r.parse_retry_after(header) == seconds


def test_retry_after_http_date():
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30)
    header = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 25 <= r.parse_retry_after(header) <= 31


def test_reader_is_stdlib_only_and_python_39_syntax():
    tree = ast.parse(READER_SOURCE.read_text(), feature_version=(3, 9))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported - {"__future__"} <= sys.stdlib_module_names
