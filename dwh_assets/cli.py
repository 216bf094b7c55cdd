"""``dwh``: bring the local stack up and down, look at it, migrate the warehouse.

    dwh up [--no-dagster] [--no-materialize]   start everything that is not running
    dwh down                                   stop everything
    dwh status                                 component, port, pid, state, log file
    dwh migrate                                apply SQL migrations, sync pg_cron jobs
    dwh env                                    shell exports for `dagster` / `psql` (no secrets)
"""

from __future__ import annotations

import argparse
import shlex
import sys

from dwh_assets.config import load_config
from dwh_assets.stack.process import StackError


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines)


def cmd_up(args: argparse.Namespace) -> int:
    from dwh_assets.stack.local_stack import LocalStack

    cfg = load_config(create=True)
    print(f"dwh: stack directory {cfg.home}", flush=True)
    stack = LocalStack(cfg)
    stack.up(dagster=not args.no_dagster)
    if not args.no_materialize:
        from dwh_assets.materialize import materialize_all

        print("materialising the warehouse ...", flush=True)
        materialize_all(cfg)
    print(_status_text(stack))
    if not args.no_dagster:
        print(f"\nDagster UI: {cfg.dagster_url}   (shell: eval \"$(dwh env)\")")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from dwh_assets.stack.local_stack import LocalStack

    LocalStack(load_config()).down()
    return 0


def _status_text(stack) -> str:
    rows = [[s.component, s.port or "-", s.pid or "-", s.state, s.log_file] for s in stack.status()]
    return _table(rows, ["component", "port", "pid", "state", "log"])


def cmd_status(args: argparse.Namespace) -> int:
    from dwh_assets.stack.local_stack import LocalStack

    stack = LocalStack(load_config())
    print(f"stack directory: {stack.cfg.home}")
    print(_status_text(stack))
    return 0 if all(s.state == "running" for s in stack.status()) else 3


def cmd_migrate(args: argparse.Namespace) -> int:
    from dwh_assets.migrate import migrate

    print(migrate(load_config()))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    for key, value in load_config().client_env().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dwh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the stack (idempotent) and materialise the warehouse")
    up.add_argument("--no-dagster", action="store_true", help="leave Dagster's webserver and daemon out")
    up.add_argument("--no-materialize", action="store_true", help="start everything but materialise nothing")
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop every component").set_defaults(func=cmd_down)
    sub.add_parser("status", help="show each component").set_defaults(func=cmd_status)
    sub.add_parser("migrate", help="apply SQL migrations and sync pg_cron jobs").set_defaults(func=cmd_migrate)
    sub.add_parser("env", help="print shell exports for dagster/psql against the stack").set_defaults(func=cmd_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except StackError as exc:
        print(f"dwh {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
