"""`stock-pipeline service install|uninstall|start|stop|status`: the Dagster webserver and the
Dagster daemon of this project as OS services, `stock-pipeline-webserver` and
`stock-pipeline-daemon`.

- Linux: systemd units, for your account (~/.config/systemd/user) or, as root or with --system,
  for the machine (/etc/systemd/system). The settings go to an EnvironmentFile of mode 0600
  (<home>/service/environment), not into the units, as they may hold passwords.
- macOS: launchd plists in ~/Library/LaunchAgents (/Library/LaunchDaemons with --system), the
  settings in their EnvironmentVariables; the plists are mode 0600 for that reason.
- Windows: Task Scheduler tasks (at logon; at boot as SYSTEM with --system) registered with
  schtasks; the settings in <home>\\service\\environment.json, which the wrapper reads.

Both services run in STOCK_PIPELINE_HOME with DAGSTER_HOME=<home>/dagster, STOCK_PIPELINE_HOME
and every STOCK_PIPELINE_* variable set at install time (re-install after changing one), and load
the code from <home>/dagster/workspace.yaml. Each runs through logwrap (a rotating log in
<home>/logs, the same on every OS) and first through prepare (the embedded PostgreSQL and Redis
that no URL replaces, and dagster.yaml). They are restarted when they fail.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from stock_pipeline.service import manage
from stock_pipeline.service.manage import ServiceError
from stock_pipeline.service.render import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    PLATFORMS,
    Platform,
    ServiceSpec,
)
from stock_pipeline.settings import Settings, SettingsError

ACTIONS = ("install", "uninstall", "start", "stop", "status")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "service",
        help="run the Dagster webserver and daemon as OS services (systemd, launchd, schtasks)",
        description=(
            "Install, remove, start, stop or show the stock-pipeline-webserver and "
            "stock-pipeline-daemon services, run with the STOCK_PIPELINE_* settings set now."
        ),
    )
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print every file (path and content) and command instead; write and run nothing",
    )
    parser.add_argument(
        "--platform", choices=PLATFORMS, help="the OS to act for (default: this machine's)"
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--system",
        action="store_true",
        help="for the machine, started at boot (the default for root on Linux and macOS)",
    )
    scope.add_argument(
        "--user", action="store_true", help="for your account, started at login (the default)"
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"webserver host ({DEFAULT_HOST})")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"webserver port ({DEFAULT_PORT})"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        platform: Platform = args.platform or manage.detect_platform()
        system = args.system or (not args.user and manage.default_system_scope(platform))
        spec = manage.build_spec(Settings.from_env(), host=args.host, port=args.port, system=system)
        if args.action in ("install", "uninstall"):
            return _change(args, spec, platform)
        return _control(args, spec, platform)
    except (ServiceError, SettingsError) as exc:
        print(f"stock-pipeline service: error: {exc}", file=sys.stderr)
        return 2


def _change(args: argparse.Namespace, spec: ServiceSpec, platform: Platform) -> int:
    build = manage.install_plan if args.action == "install" else manage.uninstall_plan
    if args.dry_run:
        manage.print_plan(build(spec.masked(), platform), spec)
        return 0
    plan = build(spec, platform)
    manage.require_tools(plan.commands, platform, args.action)
    if args.action == "install":
        manage.require_dagster(spec)
    manage.execute(plan)
    for line in _after(args.action, spec, platform):
        print(line)
    return 0


def _after(action: str, spec: ServiceSpec, platform: Platform) -> list[str]:
    if action == "uninstall":
        return [f"uninstalled; the logs ({spec.home / 'logs'}) and the Dagster instance stay"]
    started = platform == "macos"  # launchd starts a job at load (RunAtLoad)
    lines = [
        f"installed for STOCK_PIPELINE_HOME={spec.home}; "
        + ("launchd started them." if started else "start them: stock-pipeline service start"),
        f"webserver: http://{spec.host}:{spec.port}   logs: {spec.home / 'logs'}",
        "warehouse schema: run `stock-pipeline db upgrade` once (and after upgrades)",
    ]
    if platform == "linux" and not spec.system and not manage.lingering():
        lines.append(
            "your user services stop when you log out; keep them running with "
            f"`loginctl enable-linger {getpass.getuser()}`"
        )
    return lines


def _control(args: argparse.Namespace, spec: ServiceSpec, platform: Platform) -> int:
    commands = manage.control_commands(spec, platform, args.action)
    status = manage.control_commands(spec, platform, "status")
    if args.dry_run:
        for command in commands:
            print(f"would run: {command}")
        return 0
    manage.require_tools(commands, platform, args.action)
    if args.action != "status":
        for command in commands:
            manage.run_command(command)
    results = [manage.run_command(command) for command in status]
    lines, all_running = manage.status_lines(spec, platform, results)
    for line in lines:
        print(line)
    return 3 if args.action == "status" and not all_running else 0
