"""What every benchmark shares: the throwaway stack, measured child runs, results.

A benchmark module (``benchmarks/b<N>_<name>.py``) defines ``NAME``, ``TITLE``,
``NEEDS_DAGSTER`` and ``run(ctx: BenchContext) -> BenchResult``. It times its methods
with ``ctx.measure`` (one fresh process per method), checks that every method produced
the same rows (``Row.checksum``), and states its goals as ``Goal`` lines. The runner
(``benchmarks.run``) starts the stack, calls the selected modules and writes the results.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from dwh_assets.local.config import (
    DEFAULT_PORTS,
    LOADER_ROLE,
    OWNER_ROLE,
    WAREHOUSE_DB,
    StackConfig,
    free_port,
    load_config,
)
from dwh_assets.local.local_stack import LocalStack

REPO_ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


class BenchError(RuntimeError):
    """A benchmark could not run or produced wrong rows; the message says which and why."""


@dataclass
class Measurement:
    """What one method run in a child process reports (see benchmarks/child.py)."""

    rows: int
    seconds: float
    client_base_rss: int
    client_peak_rss: int
    server_peak_uss: int | None
    server_programs_peak_rss: int | None = None
    server_cpu_seconds: float | None = None
    server_programs_cpu_seconds: float | None = None


@dataclass
class Row:
    """One line of the results table: a method on a case, and how its copy compares."""

    benchmark: str
    case: str
    method: str
    rows: int
    seconds: float
    client_peak_mb: float
    client_base_mb: float
    server_peak_mb: float | None
    server_programs_peak_mb: float | None
    # Checksum of the rows the method wrote; equal to ``source_checksum`` when correct.
    checksum: str
    source_checksum: str
    ratio: float | None = None
    ratio_to: str = ""
    note: str = ""
    runs: list[float] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    @property
    def equal(self) -> bool:
        return self.checksum == self.source_checksum

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["rows_per_s"] = round(self.rows_per_s, 1)
        d["equal"] = self.equal
        return d


@dataclass
class Goal:
    benchmark: str
    goal: str
    measured: str
    met: bool
    note: str = ""


@dataclass
class BenchResult:
    rows: list[Row] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    # Anything else worth keeping (tuning experiments, sizes, windows).
    details: dict = field(default_factory=dict)


Progress = Callable[[str], None]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class BenchContext:
    """The running stack plus the knobs of this run."""

    stack: LocalStack
    scale: float
    repeat: int = 1
    progress: Progress = say
    # Stacks a benchmark reuses (running) instead of starting its own: "B6" -> [60-day, 365-day
    # home], "B7" -> [1x, 10x fleet home], "B8" -> [the year's home].
    reuse: dict[str, list[Path]] = field(default_factory=dict)
    # A long benchmark hands what it has measured so far (after each round) to the runner,
    # which writes it into the reports marked partial: a run that dies keeps its rounds.
    report_partial: Callable[[BenchResult, str], None] = lambda result, progress: None

    @property
    def b6_homes(self) -> dict[int, Path]:
        return dict(zip((60, 365), self.reuse.get("B6", [])))

    @property
    def cfg(self) -> StackConfig:
        return self.stack.cfg

    def dsn(self, dbname: str = WAREHOUSE_DB, role: str = LOADER_ROLE) -> str:
        return self.cfg.dsn(dbname, role)

    def connect(self, dbname: str = WAREHOUSE_DB, role: str = LOADER_ROLE) -> psycopg.Connection:
        return psycopg.connect(self.dsn(dbname, role), autocommit=True)

    def superuser(self, dbname: str = WAREHOUSE_DB) -> psycopg.Connection:
        return self.stack.postgres.connect(dbname)

    def checkpoint(self) -> None:
        """Flush dirty buffers so one method's writes don't slow the next one down."""
        with self.superuser() as conn:
            conn.execute("CHECKPOINT")

    def measure(self, target: str, *, preload: tuple[str, ...] = (), **kwargs: object) -> Measurement:
        """Run ``target`` ("module:function") in a fresh process; its time and memory."""
        argv = [sys.executable, "-m", "benchmarks.child", target, json.dumps(kwargs, default=str)]
        if preload:
            argv += ["--preload", ",".join(preload)]
        result = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-15:])
            raise BenchError(f"{target} failed (exit {result.returncode}):\n{tail}")
        return Measurement(**json.loads(result.stdout.strip().splitlines()[-1]))

    def measure_best(self, target: str, *, before: Callable[[], None], **kwargs: object) -> tuple[Measurement, list[float]]:
        """``repeat`` runs, each after ``before()`` (untimed); the fastest, and every time."""
        runs: list[Measurement] = []
        for _ in range(self.repeat):
            before()
            self.checkpoint()
            runs.append(self.measure(target, **kwargs))
        return best_of(runs)


def best_of(runs: list[Measurement]) -> tuple[Measurement, list[float]]:
    """The fastest run (with the highest memory peaks of all), and every run's time."""
    best = min(runs, key=lambda m: m.seconds)
    best.client_peak_rss = max(m.client_peak_rss for m in runs)
    for attr in ("server_peak_uss", "server_programs_peak_rss"):
        peaks = [getattr(m, attr) for m in runs if getattr(m, attr) is not None]
        setattr(best, attr, max(peaks) if peaks else None)
    return best, [round(m.seconds, 3) for m in runs]


def _to_mb(value: int | None) -> float | None:
    return None if value is None else round(value / MB, 1)


def make_row(benchmark: str, case: str, method: str, m: Measurement, checksum: str, source_checksum: str,
             runs: list[float], note: str = "") -> Row:
    return Row(
        benchmark=benchmark, case=case, method=method, rows=m.rows, seconds=m.seconds,
        client_peak_mb=round(m.client_peak_rss / MB, 1), client_base_mb=round(m.client_base_rss / MB, 1),
        server_peak_mb=_to_mb(m.server_peak_uss), server_programs_peak_mb=_to_mb(m.server_programs_peak_rss),
        checksum=checksum, source_checksum=source_checksum, runs=runs, note=note,
    )


# ----- the throwaway stack ------------------------------------------------------------------


def stack_scale(scale: float) -> float:
    """The demo world's scale for a benchmark scale (1.0 = the demo; never degenerate)."""
    return max(0.01, min(1.0, scale))


@contextmanager
def bench_stack(scale: float, *, dagster: bool, home: Path | None = None, progress: Progress = say,
                history_days: int | None = None, world_scale: float | None = None) -> Iterator[LocalStack]:
    """A local stack in ``home`` (kept running) or in a fresh /tmp home (torn down after).

    ``world_scale`` overrides ``stack_scale(scale)``; ``history_days`` sets DWH_HISTORY_DAYS
    (default: the stack's default). Stacks may be nested: each restores the environment.
    """
    throwaway = home is None
    if throwaway:
        import tempfile

        home = Path(tempfile.mkdtemp(prefix="dwh-bench-", dir="/tmp"))
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o755)  # traversable by the server's OS user
    saved = dict(os.environ)
    os.environ.pop("DWH_HISTORY_DAYS", None)
    world = stack_scale(scale) if world_scale is None else world_scale
    os.environ.update({"DWH_HOME": str(home), "DWH_SCALE": repr(world), "DWH_SEED": "42"})
    if history_days is not None:
        os.environ["DWH_HISTORY_DAYS"] = str(history_days)
    ports = {f"DWH_{name.upper()}_PORT" for name in DEFAULT_PORTS}
    if (home / "stack.json").exists():
        # A stack of its own: an enclosing stack's ports (its client environment) must not move it.
        for variable in ports:
            os.environ.pop(variable, None)
    else:
        # Free loopback ports, never the defaults a demo stack may be using.
        os.environ.update({variable: str(free_port()) for variable in ports})
    cfg = load_config(create=True)
    os.environ.update(cfg.client_env())
    local = LocalStack(cfg, progress=progress)
    try:
        local.up(dagster=dagster)
        _pause_cron_jobs(local)
        yield local
    finally:
        if throwaway:
            local.down()
            shutil.rmtree(home, ignore_errors=True)
        os.environ.clear()
        os.environ.update(saved)


def _pause_cron_jobs(local: LocalStack) -> None:
    """Deactivate the stack's pg_cron refreshes: a scheduled run must not share the machine."""
    with local.postgres.connect(WAREHOUSE_DB) as conn:
        conn.execute("UPDATE cron.job SET active = false WHERE jobname LIKE 'dwh:%'")


# ----- SQL helpers shared by benchmarks -------------------------------------------------------


def checksum(conn: psycopg.Connection, table: str, row_text: str, where: str = "", params: tuple = ()) -> str:
    """Row count and an order-independent 64-bit hash sum of ``row_text`` over ``table``."""
    query = sql.SQL("SELECT count(*), coalesce(sum(hashtextextended({row}, 0)::numeric), 0) FROM {table} {where}").format(
        row=sql.SQL(row_text), table=sql.Identifier(*table.split(".")), where=sql.SQL(where)
    )
    count, total = conn.execute(query, params).fetchone()
    return f"{count}:{total}"


def clone_table(conn: psycopg.Connection, source: str, target: str) -> None:
    """Create ``target`` with ``source``'s columns, keys, indexes and (daily) partitions."""
    src, dst = sql.Identifier(*source.split(".")), sql.Identifier(*target.split("."))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(dst))
    key = conn.execute(
        "SELECT pg_get_partkeydef(%s::regclass)", (source,)
    ).fetchone()[0]
    partition_by = sql.SQL(" PARTITION BY {}").format(sql.SQL(key)) if key else sql.SQL("")
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL EXCLUDING IDENTITY){}").format(dst, src, partition_by))
    if not key:
        return
    parts = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass ORDER BY 1",
        (source,),
    ).fetchall()
    schema, table = target.split(".")
    src_table = source.split(".")[1]
    for name, bound in parts:
        part = sql.Identifier(schema, table + name.removeprefix(src_table))
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} {}").format(part, dst, sql.SQL(bound)))


# ----- environment of a run ---------------------------------------------------------------------


def machine() -> dict:
    import platform

    import psutil

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": platform.platform(),
    }


def versions(ctx: BenchContext) -> dict:
    from importlib.metadata import PackageNotFoundError, version
    import platform

    out: dict[str, str] = {"python": platform.python_version()}
    with ctx.superuser() as conn:
        out["postgres"] = conn.execute("SHOW server_version").fetchone()[0]
        for name, extversion in conn.execute(
            "SELECT extname, extversion FROM pg_extension WHERE extname IN ('pg_cron', 'pg_partman', 'postgres_fdw') ORDER BY 1"
        ):
            out[name] = extversion
    for package in ("dagster", "psycopg", "pandas", "SQLAlchemy", "prometheus-api-client", "numpy"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    try:
        prom = subprocess.run(["prometheus", "--version"], capture_output=True, text=True, timeout=10)
        out["prometheus"] = (prom.stdout or prom.stderr).split()[2]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        pass
    return out


def utc_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.timezone.utc)

