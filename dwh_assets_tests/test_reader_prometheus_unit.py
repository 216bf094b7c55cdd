"""Pure parts of the source reader: window alignment and splitting, CSV quoting, argument
validation, Retry-After; the streamed metrics copy's request plan and row encoding. The
reader as a program (a stub Prometheus, a real ``sh -c``) is test_reader_program.py, its retries test_reader_retries.py, against a real Prometheus
test_prometheus_source.py."""

from __future__ import annotations

import ast
import csv
import datetime as dt
import io
import json
import random
import struct
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


# ----- per-day sample counts (the daily reconciliation) ------------------------------------------

class CountingPrometheus:
    """Answers ``count(<metric>)`` query_range requests: ``series`` series at every evaluation time."""

    def __init__(self, series: int):
        self.series = series
        self.requests: list[dict] = []

    def get_json(self, path: str) -> dict:
        from urllib.parse import parse_qs, urlsplit
        query = {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}
        self.requests.append(query)
        start, end, step = int(query["start"]), int(query["end"]), int(query["step"])
        values = [[t, str(self.series)] for t in range(start, end + 1, step)]
        return {"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}, "values": values}]}}


def test_day_counts_sum_the_series_counted_at_every_step_per_utc_day(monkeypatch):
    fake = CountingPrometheus(series=5)
    monkeypatch.setattr(r, "HttpSource", lambda _url, _settings: fake)
    settings = dict(r.DEFAULT_SETTINGS, max_points_per_request=30)
    out = io.BytesIO()
    r.read_prometheus_days(settings, 10 * DAY, 12 * DAY, 3600, ["m_a", "m_b"]).write_to(out)
    rows = list(csv.reader(io.StringIO(out.getvalue().decode())))
    assert rows == [[m, day, "120"] for m in ("m_a", "m_b") for day in ("1970-01-11", "1970-01-12")]
    # The metric's count, in requests of at most 30 points, the last ending at the window's last step.
    assert {q["query"] for q in fake.requests} == {"count(m_a)", "count(m_b)"}
    assert [(int(q["start"]), int(q["end"])) for q in fake.requests if q["query"] == "count(m_a)"] == [
        (10 * DAY, 10 * DAY + 29 * 3600), (10 * DAY + 30 * 3600, 12 * DAY - 3600)]


@pytest.mark.parametrize("start, end, step", [(10, DAY, 3600), (0, DAY + 1, 3600), (0, DAY, 7), (DAY, 0, 3600)])
def test_day_counts_refuse_what_is_not_a_window_of_whole_days(start, end, step):
    with pytest.raises(r.ReaderError) as refused:
        r.read_prometheus_days(dict(r.DEFAULT_SETTINGS), start, end, step, ["m"])
    assert refused.value.exit_code == r.EXIT_USAGE

# ----- the metrics refresh's streamed copy ------------------------------------------------------------

HOUR = 3600


def plan_groups(start: int, end: int, step: int, series: int, budget: int, held: int | None = None) -> list[tuple[int, int]]:
    plan = r.CopyPlan({"max_samples_per_request": budget, "max_points_per_request": 11_000}, start, end, step, series)
    groups = []
    for group in plan.groups():
        groups.append(group)
        plan.held(series if held is None else held)
    return groups


@pytest.mark.parametrize("series, budget", [(1, 10**6), (100, 5_000), (1_000, 20_000), (30_000, 500_000), (10**6, 10)])
def test_copy_groups_tile_the_window_within_the_budget_and_fill_each_day_at_once(series, budget):
    start, end = 5 * DAY + 7 * HOUR, 40 * DAY + 1
    groups = plan_groups(start, end, HOUR, series, budget)
    covered = [t for lo, hi in groups for t in range(lo, hi + 1, HOUR)]
    assert covered == times(start, end, HOUR), "every evaluation time once, in order"
    margin = r.FLEET_GROWTH_MARGIN
    for (lo, hi), before in zip(groups, [None, *groups]):
        points = (hi - lo) // HOUR + 1
        assert points == 1 or points * series <= budget * margin
        assert before is None or points <= 2 * ((before[1] - before[0]) // HOUR + 1)
        if lo // DAY != hi // DAY:  # across a midnight: whole days only (the window's edges aside)
            assert (lo % DAY == 0 or lo == groups[0][0]) and ((hi + HOUR) % DAY == 0 or hi == groups[-1][1])


def test_copy_groups_follow_the_series_the_previous_group_held():
    # The first group assumes every series the window lists (12,000 / 1,000 = 12 points); the
    # groups read held 100 series, so the next ones plan for 125 (a growing fleet): 96 points,
    # yet at most twice the points of the group before, and cut at a midnight once they hold
    # whole days.
    groups = plan_groups(0, 30 * DAY, HOUR, series=1_000, budget=12_000, held=100)
    assert groups[:4] == [(0, 11 * HOUR), (12 * HOUR, 23 * HOUR), (24 * HOUR, 47 * HOUR), (48 * HOUR, 95 * HOUR)]
    assert groups[4] == (96 * HOUR, 191 * HOUR)  # 96 points: the budget, 4 whole days


def matrix(series: list[tuple[dict, list]]) -> bytes:
    """A query_range answer encoded as Prometheus writes it (compact, values as strings)."""
    result = [{"metric": labels, "values": [[t, v] for t, v in values]} for labels, values in series]
    return json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}},
                      separators=(",", ":")).encode()


def decode_rows(data: bytes) -> list[tuple[int, int, float]]:
    """(series_id, Unix seconds, value) of binary COPY rows of dwh.metrics."""
    rows, pos = [], 0
    while pos < len(data):
        fields, _, series_id, _, ts, _, value = struct.unpack_from(">hiqiqid", data, pos)
        assert fields == 3
        rows.append((series_id, ts // 1_000_000 + r.PG_EPOCH_SECONDS, value))
        pos += 38
    return rows


ODD_LABELS = {"instance_id": "i-\u00e9 \"q\" ]] },\"values\":[ ", "zone": "a"}
ANSWER = [
    ({"__name__": "m", "instance_id": "i-2", "zone": "a"}, [(0, "1.5"), (3600, "NaN"), (7200, "+Inf")]),
    ({"__name__": "m", "instance_id": "i-1", "zone": "a"}, [(3600, "-Inf"), (7200, "1e+21")]),
    ({"__name__": "m", **ODD_LABELS}, [(0, "-0.25")]),
]


def series_ids(answer) -> r.SeriesIds:
    """Ids in the reverse order of the answer, so the rows must be reordered."""
    ids = {}
    for number, (labels, _) in enumerate(reversed(answer), 1):
        rest = {k: v for k, v in labels.items() if k != "__name__"}
        ids[(labels["__name__"], r.labels_json(rest))] = number
    return r.SeriesIds(ids)


def rows_of(body: bytes, answer=ANSWER) -> list[tuple[int, int, float]]:
    micros = {t: (t - r.PG_EPOCH_SECONDS) * 1_000_000 for t in range(0, 7201, 3600)}
    columns = r.answer_columns(body, "m", "/q", 0, 7200, 3600, series_ids(answer))
    return decode_rows(r.group_rows(r.series_rows(columns, micros, "/q")))


def test_answers_become_rows_of_dwh_metrics_in_series_order_without_a_full_parse():
    body = matrix(ANSWER)
    assert r._answer_shape(body) is not None, "Prometheus' own encoding takes the fast path"
    rows = rows_of(body)
    assert [row[:2] for row in rows] == [(1, 0), (2, 3600), (2, 7200), (3, 0), (3, 3600), (3, 7200)]
    values = [row[2] for row in rows]
    assert values[0] == -0.25 and values[1] == float("-inf") and values[2] == 1e21
    assert values[3] == 1.5 and values[4] != values[4] and values[5] == float("inf")


def test_any_other_encoding_is_parsed_fully_to_the_same_rows():
    spaced = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": labels, "values": [[t, v] for t, v in values]} for labels, values in ANSWER]}}).encode()
    warned = matrix(ANSWER)[:-1] + b',"warnings":["partial"]}'
    for body in (spaced, warned):
        assert r._answer_shape(body) is None
        assert [row[:2] for row in rows_of(body)] == [row[:2] for row in rows_of(matrix(ANSWER))]


@pytest.mark.parametrize("bad", ["off_grid", "not_a_number", "unknown_series"])
def test_a_sample_the_window_cannot_hold_fails_the_read(bad):
    answer = [(dict(ANSWER[0][0]), list(ANSWER[0][1]))]
    ids = series_ids(answer)
    if bad == "off_grid":
        answer[0][1][0] = (1800, "1")
    elif bad == "not_a_number":
        answer[0][1][0] = (0, "x")
    else:
        answer[0][0]["zone"] = "b"
    micros = {t: t for t in range(0, 7201, 3600)}
    with pytest.raises(r.ReaderError) as failure:
        columns = r.answer_columns(matrix(answer), "m", "/q", 0, 7200, 3600, ids)
        r.series_rows(columns, micros, "/q")
    expected = r.EXIT_SERIES_CHANGED if bad == "unknown_series" else r.EXIT_MALFORMED
    assert failure.value.exit_code == expected, str(failure.value)


def test_a_series_map_serves_one_read(tmp_path):
    settings = {"state_dir": str(tmp_path / "state"), "errors_dir": None}
    mapping = '7,m,"{""a"":""x,y""}"\n8,m,"{""a"":""z""}"\n'.encode()
    assert r.save_series_map(settings, "123-45-1", io.BytesIO(mapping)) == 2
    assert r.take_series_map(settings, "123-45-1") == {("m", '{"a":"x,y"}'): 7, ("m", '{"a":"z"}'): 8}
    with pytest.raises(r.ReaderError, match="cannot read the series map"):
        r.take_series_map(settings, "123-45-1")
    with pytest.raises(r.ReaderError, match="refusing series map key"):
        r.save_series_map(settings, "../../etc/x", io.BytesIO(b""))
    assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"
