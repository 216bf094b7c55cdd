"""``dwh``: migrate a warehouse; bring the local demo stack up and down.

The warehouse (any PostgreSQL 15+, configured by a TOML file):

    dwh migrate [--config FILE] [--dry-run]    bootstrap, migrations, sources, grants, pg_cron jobs
    dwh migrate --prerequisites [--config FILE]
                                               print what a superuser must run first, as one SQL script
    dwh reader install [--config FILE]         install the source reader (run on the database host)
    dwh relay install [--config FILE]          install the relay: reader + its database (run on the relay's host)
    dwh env [--config FILE]                    shell exports for Dagster and psql (no secrets)
    dwh forget --user ID | --organization ID [--config FILE]
                                               erase a Clerk user or organization from every copy and snapshot

The local demo stack (``DWH_HOME``, default ``.dwh/``):

    dwh up [--no-dagster] [--no-superset] [--no-materialize]
                                               start what is not running, migrate, materialise
    dwh down                                   stop everything
    dwh status                                 component, port, pid, state, log file; where the UIs are
    dwh dashboards import                      import the package's dashboards into the stack's Superset (as `dwh up` does)
    dwh dashboards export                      write the stack's Superset dashboards back to dwh_assets/warehouse/dashboards/

Without --config, the warehouse commands use ``DWH_CONFIG``, else the local stack's own
configuration (``<DWH_HOME>/dwh.toml``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from dwh_assets.warehouse.catalog_model import Subject
from dwh_assets.warehouse.deployment import CONFIG_ENV, DeploymentConfig, DeploymentError
from dwh_assets.warehouse.errors import DwhError


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines)


def _print(line: str) -> None:
    print(line, flush=True)


# ----- the warehouse ------------------------------------------------------------------------------


def deployment(args: argparse.Namespace) -> DeploymentConfig:
    """--config, else DWH_CONFIG, else the local stack's configuration."""
    path = args.config or os.environ.get(CONFIG_ENV)
    if path:
        return DeploymentConfig.load(path)
    from dwh_assets.local.config import load_config

    try:
        cfg = load_config()
    except SystemExit as e:
        raise DeploymentError(
            f"no deployment configuration: pass --config FILE or set {CONFIG_ENV} "
            f"(dwh.example.toml shows every setting), or start the local stack with `dwh up`. ({e})"
        ) from None
    return cfg.deployment()


def cmd_migrate(args: argparse.Namespace) -> int:
    from dwh_assets.warehouse import migrate

    cfg = deployment(args)
    if args.prerequisites:
        # Progress goes to stderr: stdout is the script, for `> prerequisites.sql`.
        script = migrate.prerequisites(cfg, progress=lambda line: print(line, file=sys.stderr, flush=True))
        sys.stdout.write(script.script())
        return 0
    if args.dry_run:
        _print(f"plan for {cfg.warehouse.host}:{cfg.warehouse.port}/{cfg.warehouse.database} (nothing is changed):")
        lines = migrate.plan(cfg, progress=_print)
        for line in lines:
            _print(f"  {line}")
        return 1 if any(line.startswith("REFUSED") for line in lines) else 0
    migrate.migrate(cfg, progress=_print)
    return 0


def cmd_reader_install(args: argparse.Namespace) -> int:
    from dwh_assets.warehouse.sources.reader_install import install_reader

    cfg = deployment(args)
    path = install_reader(cfg)
    _print(f"installed the source reader in {path.parent} for OS user {cfg.reader.os_user}")
    return 0


def cmd_relay_install(args: argparse.Namespace) -> int:
    from dwh_assets.warehouse.sources.relay import install_relay

    cfg = deployment(args)
    schemas = install_relay(cfg)
    _print(f"installed the relay in {cfg.relay.host}:{cfg.relay.port}/{cfg.relay.database} "
           f"(reader in {cfg.reader.directory}); it serves {', '.join(schemas)} to {cfg.relay.user}")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from dwh_assets.warehouse.erasure import check_id, forget

    subject = next(s for s in Subject if getattr(args, s.value) is not None)
    subject_id = check_id(subject, getattr(args, subject.value))  # refused before any configuration is read
    _print(forget(deployment(args), subject, subject_id).summary())
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """--config or DWH_CONFIG: that deployment's environment; else (or DWH_CONFIG naming its file) the local stack's."""
    values = None
    if not args.config:
        from dwh_assets.local.config import load_config

        try:
            stack = load_config()
        except SystemExit:
            if not os.environ.get(CONFIG_ENV):
                raise
        else:
            configured = os.environ.get(CONFIG_ENV)
            # The stack's own shell exports DWH_CONFIG=<its dwh.toml>: that is still the stack.
            if not configured or Path(configured).resolve() == stack.deployment_file.resolve():
                values = stack.shell_env()
    if values is None:
        from dwh_assets.warehouse.connect import shell_env

        values = shell_env(deployment(args), str(Path(sys.executable).parent), os.environ.get("PATH", ""))
    for key, value in values.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


# ----- the local demo stack ------------------------------------------------------------------------


def _status_text(stack) -> str:
    rows = [[s.component, s.port or "-", s.pid or "-", s.state, s.log_file] for s in stack.status()]
    return _table(rows, ["component", "port", "pid", "state", "log"])


def _ui_text(stack) -> str:
    """Where the UIs are and how to log in: the password's file, never the password."""
    from dwh_assets.local.config import SUPERSET_ADMIN

    cfg = stack.cfg
    superset = (f"{cfg.superset_url}   user {SUPERSET_ADMIN}, password in {cfg.superset_admin_password_file}"
                if stack.superset.is_running() else "not running (`dwh up` starts it; see `dwh status`)")
    return (f"Dagster UI:   {cfg.dagster_url}\n"
            f"Superset UI:  {superset}\n"
            f"shell:        eval \"$(.venv/bin/dwh env)\"")


def cmd_up(args: argparse.Namespace) -> int:
    from dwh_assets.local.config import load_config
    from dwh_assets.local.local_stack import LocalStack

    cfg = load_config(create=True)
    _print(f"dwh: stack directory {cfg.home}")
    stack = LocalStack(cfg)
    problems = stack.up(dagster=not args.no_dagster, superset=not args.no_superset)
    if not args.no_materialize:
        from dwh_assets.local.materialize import materialize_all

        _print("materialising the warehouse ...")
        materialize_all(cfg)
    _print(_status_text(stack))
    _print("\n" + _ui_text(stack))
    for problem in problems:
        print(f"dwh up: {problem}", file=sys.stderr)
    # 3, as `dwh status` when not everything runs: the rest of the stack is up and usable.
    return 3 if problems else 0


def cmd_down(args: argparse.Namespace) -> int:
    from dwh_assets.local.config import load_config
    from dwh_assets.local.local_stack import LocalStack

    LocalStack(load_config()).down()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from dwh_assets.local.config import load_config
    from dwh_assets.local.local_stack import LocalStack

    stack = LocalStack(load_config())
    _print(f"stack directory: {stack.cfg.home}")
    _print(_status_text(stack))
    _print("\n" + _ui_text(stack))
    return 0 if all(s.state == "running" for s in stack.status()) else 3


def cmd_dashboards(args: argparse.Namespace) -> int:
    from dwh_assets.local.config import load_config
    from dwh_assets.local import superset

    cfg = load_config()
    if not superset.Superset(cfg).is_running():
        print(f"dwh dashboards: superset is not running at {cfg.superset_url}; start it with `dwh up`", file=sys.stderr)
        return 3
    if args.dashboards_command == "import":
        _print(str(superset.import_dashboards(cfg, args.directory)))
        return 0
    changes = superset.export_dashboards(cfg, args.directory)
    for line in changes or ["no change: the dashboards directory already equals Superset"]:
        _print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dwh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, help=f"deployment configuration (TOML); default ${CONFIG_ENV}")
        return p

    migrate = with_config(sub.add_parser("migrate", help="bootstrap, apply migrations, sync sources and pg_cron jobs"))
    migrate.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    migrate.add_argument("--prerequisites", action="store_true",
                         help="print what a superuser must run before migrate can (one SQL script), change nothing")
    migrate.set_defaults(func=cmd_migrate)
    reader = sub.add_parser("reader", help="the source reader of the reader backend")
    reader_sub = reader.add_subparsers(dest="reader_command", required=True)
    with_config(reader_sub.add_parser("install", help="install it for the database server (run on the database host)")
                ).set_defaults(func=cmd_reader_install)
    relay = sub.add_parser("relay", help="the relay backend: the source reader on a self-hosted Postgres")
    relay_sub = relay.add_subparsers(dest="relay_command", required=True)
    with_config(relay_sub.add_parser("install", help="install the reader and the relay's database (run on the relay's host)")
                ).set_defaults(func=cmd_relay_install)
    with_config(sub.add_parser("env", help="print shell exports for dagster/psql (no secrets)")).set_defaults(func=cmd_env)
    forget = with_config(sub.add_parser(
        "forget", help="erase a Clerk user or organization from every copy and snapshot, in one transaction",
        description="Erase a subject from the warehouse as the owner (docs/personal-data.md): its rows in every copy "
                    "and snapshot, its id where it only mentions it; logged as a keyed hash, never the id; the "
                    "refreshes leave it out from now on."))
    who = forget.add_mutually_exclusive_group(required=True)
    for subject in Subject:
        who.add_argument(f"--{subject.value}", metavar="ID", help=f"the Clerk {subject.value} id")
    forget.set_defaults(func=cmd_forget)

    up = sub.add_parser("up", help="start the local stack (idempotent) and materialise the warehouse")
    up.add_argument("--no-dagster", action="store_true", help="leave Dagster's webserver and daemon out")
    up.add_argument("--no-superset", action="store_true", help="leave Superset (and the dashboards import) out")
    up.add_argument("--no-materialize", action="store_true", help="start everything but materialise nothing")
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop every component of the local stack").set_defaults(func=cmd_down)
    sub.add_parser("status", help="show each component of the local stack").set_defaults(func=cmd_status)
    dashboards = sub.add_parser("dashboards", help="the Superset dashboards kept as code in dwh_assets/warehouse/dashboards/")
    dashboards_sub = dashboards.add_subparsers(dest="dashboards_command", required=True)
    for name, text in (("import", "import the package's dashboards into the stack's Superset (upsert by uuid)"),
                       ("export", "write every dashboard of the stack's Superset back to the package's dashboards")):
        p = dashboards_sub.add_parser(name, help=text)
        p.add_argument("--directory", type=Path, default=None, help="default: dwh_assets/warehouse/dashboards/ of the checkout")
        p.set_defaults(func=cmd_dashboards)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DwhError as exc:  # a sentence meant for the user, not a traceback
        print(f"dwh {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
