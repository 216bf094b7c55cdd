"""Back-fill Prometheus with the usage history of the world, once per data directory.

Writes every instance's three usage series while it was alive, at multiples of a fixed
step in ``[start, end)``, as OpenMetrics text, and turns it into TSDB blocks with
``promtool tsdb create-blocks-from openmetrics``. Values come from
``generator.usage_at`` like the live exporter's, and the series carry the same
``job``/``instance`` labels as live scrapes, so history and live data form one series.

promtool (2.42) reads its whole input into memory and re-parses it once per block it
writes, so the history is written as one file per block window (epoch-aligned, like
Prometheus' own blocks) and promtool runs once per file, while Python writes the next.
Block length adapts to the number of series so that no file grows past a bounded size.
Blocks are built in a staging directory and moved into the data directory only when all
of them succeeded; a marker file then records that the data directory is back-filled.

Memory is flat in the history's length and the fleet's size: one window's file is written
at a time (at most ``MAX_SAMPLES_PER_FILE`` samples, spilled to disk), promtool reads at
most that one file, and values are computed per sample (``generator.UsageCurve``), never
held. Only the instances' per-series constants are kept (a few hundred bytes each).

CLI: ``python -m dwh_assets.local.prometheus_backfill --data-dir D --seed S --scale X
--anchor-day YYYY-MM-DD [--history-days N] [--step 3600] [--end EPOCH]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from dwh_assets.local import generator
from dwh_assets.local.config import DEFAULT_HISTORY_DAYS
from dwh_assets.local.generator import METRIC_CPU, METRIC_MEMORY, METRIC_STORAGE, Instance, UsageCurve, World
from dwh_assets.local.process import StackError

# Labels Prometheus attaches to the live scrape (see stack/prometheus.py): the back-filled
# series carry the same ones so a series continues across the back-fill boundary.
SCRAPE_JOB = "dwh_usage"
SCRAPE_INSTANCE = "usage_exporter"

DEFAULT_STEP = 3600
MARKER_NAME = "dwh_backfill.json"
PROMTOOL = "promtool"

# Prometheus' block ranges (2h x 3^k); promtool snaps --max-block-duration down to one.
BLOCK_RANGES_S = [2 * 3600 * 3**k for k in range(5)]  # 2h, 6h, 18h, 54h, 162h
# Upper bound of samples per OpenMetrics file (~170 bytes each): bounds promtool's memory.
MAX_SAMPLES_PER_FILE = 1_500_000

FAMILIES = (
    # (OpenMetrics family name, TYPE, sample name): a counter's samples end in `_total`.
    (METRIC_CPU.removesuffix("_total"), "counter", METRIC_CPU),
    (METRIC_MEMORY, "gauge", METRIC_MEMORY),
    (METRIC_STORAGE, "gauge", METRIC_STORAGE),
)

Progress = Callable[[str], None]


@dataclass
class BackfillReport:
    start: int
    end: int
    step: int
    block_seconds: int
    series: int
    samples: int
    blocks: int
    seconds: float
    seed: int
    scale: float
    anchor_day: str
    # Markers written before history length was a setting: the 60-day default.
    history_days: int = DEFAULT_HISTORY_DAYS


def _epoch(t: dt.datetime | int | float) -> float:
    return t.timestamp() if isinstance(t, dt.datetime) else float(t)


def sample_times(inst: Instance, start: float, end: float, step: int) -> range:
    """Multiples of ``step`` in ``[start, end)`` at which ``inst`` is alive."""
    lo = max(start, inst.created_at.timestamp())
    hi = end if inst.deleted_at is None else min(end, inst.deleted_at.timestamp())
    first = math.ceil(lo / step) * step
    return range(first, max(first, math.ceil(hi)), step)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def series_labels(inst: Instance) -> str:
    """The label set of ``inst``'s series as stored by Prometheus (sorted names)."""
    labels = {
        "instance": SCRAPE_INSTANCE,
        "instance_id": inst.id,
        "job": SCRAPE_JOB,
        "organization_id": inst.organization_id,
    }
    return ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))


def choose_block_seconds(n_instances: int, step: int, span: float) -> int:
    """The longest block range whose file stays under ``MAX_SAMPLES_PER_FILE`` samples."""
    chosen = BLOCK_RANGES_S[0]
    for block in BLOCK_RANGES_S:
        if n_instances * len(FAMILIES) * (block // step or 1) > MAX_SAMPLES_PER_FILE:
            break
        chosen = block
        if block >= span:
            break
    return chosen


class _Series:
    """One instance's three series in a back-fill: its label prefixes, lifetime and curve."""

    __slots__ = ("inst", "prefixes", "alive_from", "alive_until", "curve")

    def __init__(self, inst: Instance):
        labels = "{" + series_labels(inst) + "}"
        self.inst = inst
        self.prefixes = [sample + labels + " " for _, _, sample in FAMILIES]
        self.alive_from = inst.created_at.timestamp()
        self.alive_until = None if inst.deleted_at is None else inst.deleted_at.timestamp()
        self.curve = UsageCurve(inst)

    def times(self, start: float, end: float, step: int) -> range:
        """``sample_times`` of the instance, from the precomputed lifetime."""
        lo = max(start, self.alive_from)
        hi = end if self.alive_until is None else min(end, self.alive_until)
        first = math.ceil(lo / step) * step
        return range(first, max(first, math.ceil(hi)), step)


def write_window(out: TextIO, parts_dir: Path, instances: list[Instance], lo: float, hi: float, step: int) -> int:
    """Write one OpenMetrics document for ``[lo, hi)``; returns the number of samples."""
    return _write_window(out, parts_dir, [_Series(i) for i in instances], lo, hi, step)


def _write_window(out: TextIO, parts_dir: Path, series: list[_Series], lo: float, hi: float, step: int) -> int:
    """``write_window`` for prepared series.

    The values come from ``UsageCurve`` (bit for bit ``usage_at``), all three at once, but
    OpenMetrics wants each family in one piece: the memory and storage lines are spilled
    to side files and appended after.
    """
    spill = [open(parts_dir / f"{name}.part", "w+", encoding="utf-8") for name, _, _ in FAMILIES[1:]]
    family, kind, _ = FAMILIES[0]
    out.write(f"# TYPE {family} {kind}\n")
    samples = 0
    try:
        for s in series:
            times = s.times(lo, hi, step)
            if not times:
                continue
            at = s.curve.at
            p_cpu, p_mem, p_sto = s.prefixes
            cpu_lines, mem_lines, sto_lines = [], [], []
            for t in times:
                cpu, mem, sto = at(t)
                cpu_lines.append(f"{p_cpu}{cpu!r} {t}\n")
                mem_lines.append(f"{p_mem}{float(mem)!r} {t}\n")
                sto_lines.append(f"{p_sto}{float(sto)!r} {t}\n")
            out.write("".join(cpu_lines))
            spill[0].write("".join(mem_lines))
            spill[1].write("".join(sto_lines))
            samples += len(times) * len(FAMILIES)
        for part, (family, kind, _) in zip(spill, FAMILIES[1:]):
            out.write(f"# TYPE {family} {kind}\n")
            part.seek(0)
            shutil.copyfileobj(part, out)
        out.write("# EOF\n")
    finally:
        for part in spill:
            part.close()
            Path(part.name).unlink(missing_ok=True)
    return samples


def windows(start: float, end: float, block: int) -> Iterator[tuple[float, float]]:
    t = math.floor(start / block) * block
    while t < end:
        yield max(t, start), min(t + block, end)
        t += block


def _promtool(om_file: Path, out_dir: Path, block: int) -> subprocess.Popen:
    exe = shutil.which(PROMTOOL)
    if exe is None:
        raise StackError("promtool not found; install Prometheus with `apt-get install prometheus`.")
    # --max-block-duration is hidden in promtool 2.42's help but supported.
    argv = [exe, "tsdb", "create-blocks-from", "openmetrics", "--quiet",
            f"--max-block-duration={block}s", str(om_file), str(out_dir)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen, om_file: Path) -> None:
    _, err = proc.communicate()
    if proc.returncode != 0:
        last = (err or "").strip().splitlines()[-1:] or ["no output"]
        raise StackError(f"promtool could not create blocks from {om_file}: {last[0]}")
    om_file.unlink(missing_ok=True)


def marker_path(data_dir: Path) -> Path:
    return data_dir / MARKER_NAME


def read_marker(data_dir: Path) -> BackfillReport | None:
    try:
        return BackfillReport(**json.loads(marker_path(data_dir).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def backfill(
    world: World,
    data_dir: Path,
    *,
    step: int = DEFAULT_STEP,
    start: dt.datetime | float | None = None,
    end: dt.datetime | float | None = None,
    progress: Progress | None = None,
) -> BackfillReport | None:
    """Back-fill ``data_dir`` unless its marker says it was; returns the report or None."""
    if read_marker(data_dir) is not None:
        return None
    if step <= 0 or step > BLOCK_RANGES_S[0] or BLOCK_RANGES_S[0] % step:
        raise StackError(f"back-fill step {step}s must divide 2h (7200s), e.g. 60, 300 or 3600.")
    t0 = time.monotonic()
    # Samples sit at whole seconds: ceil keeps the same samples and makes [lo, hi) exact.
    lo = math.ceil(_epoch(start if start is not None else world.history_start))
    hi = math.ceil(_epoch(end if end is not None else world.history_end))
    series = [prepared for prepared in map(_Series, world.instances) if prepared.times(lo, hi, step)]
    block = choose_block_seconds(len(series), step, hi - lo)

    staging = data_dir.parent / f"{data_dir.name}.backfill-staging"
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of an interrupted back-fill
    (staging / "blocks").mkdir(parents=True)
    samples, pending = 0, None
    spans = list(windows(lo, hi, block))
    try:
        for k, (w_lo, w_hi) in enumerate(spans):
            om_file = staging / f"window-{k:05d}.om"
            with open(om_file, "w", encoding="utf-8") as out:
                samples += _write_window(out, staging, series, w_lo, w_hi, step)
            # One promtool at a time, running while Python writes the next window.
            if pending is not None:
                _wait(*pending)
            pending = (_promtool(om_file, staging / "blocks", block), om_file)
            if progress and (k + 1) % 10 == 0:
                progress(f"back-fill: {k + 1}/{len(spans)} windows written")
        if pending is not None:
            _wait(*pending)
            pending = None
        data_dir.mkdir(parents=True, exist_ok=True)
        blocks = sorted(p for p in (staging / "blocks").iterdir() if p.is_dir())
        for b in blocks:
            b.rename(data_dir / b.name)
    finally:
        if pending is not None:
            pending[0].kill()
            pending[0].wait()
        shutil.rmtree(staging, ignore_errors=True)
    report = BackfillReport(
        start=lo, end=hi, step=step, block_seconds=block, series=len(series) * len(FAMILIES),
        samples=samples, blocks=len(blocks), seconds=round(time.monotonic() - t0, 1),
        seed=world.seed, scale=world.scale, anchor_day=world.anchor_day.isoformat(),
        history_days=world.history_days,
    )
    marker_path(data_dir).write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report


def add_samples(data_dir: Path, samples: list[tuple[str, dict[str, str], float, int]]) -> int:
    """Samples written late into a running Prometheus, as a scrape gap filled afterwards is.

    ``samples`` are (metric name, labels, value, epoch seconds) of the gauges this stack exports;
    promtool turns them into a block that is moved into ``data_dir``, which Prometheus loads at
    its next block reload (about a minute). Returns how many blocks were added.
    """
    families = {name: kind for name, kind, _sample in FAMILIES}
    staging = data_dir.parent / f"{data_dir.name}.late-{time.time_ns()}"
    (staging / "blocks").mkdir(parents=True)
    try:
        om_file = staging / "late.om"
        with open(om_file, "w", encoding="utf-8") as out:
            for name in sorted({s[0] for s in samples}):
                if families.get(name) != "gauge":
                    raise StackError(f"{name} is not a gauge this stack exports: only gauges can be back-filled here")
                out.write(f"# TYPE {name} gauge\n")
                for _, labels, value, t in sorted((s for s in samples if s[0] == name), key=lambda s: s[3]):
                    label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
                    out.write(f"{name}{{{label_text}}} {float(value)!r} {int(t)}\n")
            out.write("# EOF\n")
        _wait(_promtool(om_file, staging / "blocks", BLOCK_RANGES_S[0]), om_file)
        blocks = sorted(p for p in (staging / "blocks").iterdir() if p.is_dir())
        for block in blocks:
            block.rename(data_dir / block.name)
        return len(blocks)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="Prometheus --storage.tsdb.path")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--anchor-day", type=dt.date.fromisoformat, required=True, help="YYYY-MM-DD (UTC)")
    parser.add_argument("--history-days", type=int, default=DEFAULT_HISTORY_DAYS, help="days of history before the anchor day")
    parser.add_argument("--step", type=int, default=DEFAULT_STEP, help="seconds between samples (divides 7200)")
    parser.add_argument("--end", type=int, help="epoch seconds (default: the anchor day, 00:00 UTC)")
    args = parser.parse_args(argv)
    world = generator.build_world(args.seed, args.scale, args.anchor_day, args.history_days)
    try:
        report = backfill(world, args.data_dir, step=args.step, end=args.end, progress=print)
    except StackError as exc:
        print(f"prometheus back-fill failed: {exc}", file=sys.stderr)
        return 1
    if report is None:
        print(f"{args.data_dir} is already back-filled (see {marker_path(args.data_dir)})")
    else:
        print(json.dumps(asdict(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
