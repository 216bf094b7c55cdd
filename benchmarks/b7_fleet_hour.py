"""B7 the fleet axis: B6's steady-state hour at 10,000 instances against 1,000, same history.

Two warehouses differ only in their fleet: the demo world at ``1 x --scale`` and at
``10 x --scale`` (1,000 and 10,000 instances at ``--scale 1``), both with ``HISTORY_DAYS``
of history, each filled as B6 fills its warehouses (events at the demo's rate per alive
instance-day, so ten times the fleet has ten times the events; Prometheus back-filled over
the history; every copy and mart materialised through the routines).

The hour is B6's (``b6_steady_hour``): every pg_cron job the default schedules start between
12:00 and 13:00 UTC, each running the job's own command, the marts' pending-day jobs, and
the data checks of every refresh it logged; run in fresh processes, alternating between the
two warehouses after one untimed warm-up hour each, ``--repeat`` times; the fastest of each
is compared, step kind by step kind. Goals: the hour at ten times the fleet costs at most ten
times as much (no worse than linear), and at 10,000 instances it takes under two minutes.

``--b7-homes DIR1,DIR10`` measures two running, materialised stacks instead (e.g. made by
``dwh up`` at ``DWH_SCALE=1`` and ``DWH_SCALE=10`` with the same ``DWH_HISTORY_DAYS``).

**Checked**: every job, mart refresh and check ran without an error, and every refresh left
exactly one ``dwh.refresh_log`` row (``copy = source``, as in B6).
"""

from __future__ import annotations

from contextlib import ExitStack

from benchmarks.b6_steady_hour import HOUR, fill, hour_rows, measure_hours, sizes
from benchmarks.harness import BenchContext, BenchError, BenchResult, Goal, bench_stack
from dwh_assets.local.generator import INSTANCES_PER_SCALE
from dwh_assets.local.local_stack import LocalStack

NAME = "B7"
TITLE = "the fleet axis: the steady-state hour at 10,000 vs 1,000 instances, same history"
NEEDS_DAGSTER = False

FLEETS = (1, 10)  # world scales at --scale 1: 1,000 and 10,000 instances
HISTORY_DAYS = 60
GOAL_SECONDS = 120.0


def instances(stack: LocalStack) -> int:
    return round(INSTANCES_PER_SCALE * stack.cfg.scale)


def run(ctx: BenchContext) -> BenchResult:
    result = BenchResult(details={"hour_utc": HOUR, "history_days": HISTORY_DAYS, "stacks": {}})
    reuse = ctx.reuse.get(NAME, [])
    with ExitStack() as stacks:
        warehouses: dict[int, LocalStack] = {}
        for fleet, home in zip(FLEETS, reuse or [None] * len(FLEETS)):
            if home is not None:
                stack = stacks.enter_context(bench_stack(ctx.scale, dagster=False, home=home, progress=ctx.progress))
                details = {"reused": str(home)}
            else:
                world = max(0.01, fleet * ctx.scale)
                ctx.progress(f"B7: a stack of {round(INSTANCES_PER_SCALE * world):,} instances, {HISTORY_DAYS} days ...")
                stack = stacks.enter_context(bench_stack(ctx.scale, dagster=False, history_days=HISTORY_DAYS,
                                                         world_scale=world, progress=lambda _line: None))
                details = fill(stack, ctx.progress)
            warehouses[instances(stack)] = stack
            result.details["stacks"][instances(stack)] = details | {
                "scale": stack.cfg.scale, "history_days": stack.cfg.history_days, **sizes(stack)}
        if len({s.cfg.history_days for s in warehouses.values()}) != 1 or len(warehouses) != len(FLEETS):
            raise BenchError(f"B7 compares two fleets over one history; got {result.details['stacks']}")
        plan, runs, _, load = measure_hours(ctx, NAME, warehouses, lambda n: f"{n:,} instances")
    result.details["plan"] = [f"{s.minute:02d} {s.label}" for s in plan]
    result.details["runs"] = runs
    result.details["load"] = load
    result.rows, best = hour_rows(NAME, plan, runs, lambda n: f"{n:,} instances")
    result.goals = goals(result, best)
    return result


def goals(result: BenchResult, best: dict[int, float]) -> list[Goal]:
    small, large = sorted(best)
    fleet = large / small
    ratio = best[large] / best[small]
    # What grows faster than the fleet: the step kinds whose time grew more than the fleet did.
    faster = sorted((r for r in result.rows if r.ratio is not None and r.ratio > fleet and r.method != "the whole hour"),
                    key=lambda r: -r.ratio)
    note = ("grows faster than the fleet: " + ", ".join(f"{r.method} {r.ratio:.1f}x" for r in faster)) if faster \
        else "no step grows faster than the fleet"
    return [
        Goal(NAME, f"the hour at {large:,} instances within {fleet:g}x of the hour at {small:,} (no worse than linear)",
             f"{ratio:.2f}x ({best[large]:.1f} s vs {best[small]:.1f} s)", ratio <= fleet, note),
        Goal(NAME, f"the hour's work at {large:,} instances under {GOAL_SECONDS:.0f} s",
             f"{best[large]:.1f} s", best[large] < GOAL_SECONDS),
    ]
