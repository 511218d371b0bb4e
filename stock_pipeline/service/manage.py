"""Installs, removes and controls the services: writes the files render.py produces and calls
the OS manager, systemctl (Linux), launchctl (macOS) or schtasks (Windows).

Every action is first a Plan (files to write or remove, commands to run), so a dry run prints
exactly what a real run does. A missing OS tool is found before anything is written.
"""

from __future__ import annotations

import csv
import getpass
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from stock_pipeline.service.render import (
    Platform,
    Service,
    ServiceFile,
    ServiceSpec,
    service_files,
    services,
    task_file,
)
from stock_pipeline.settings import ENV_PREFIX, Settings

OS_NAMES = {"linux": "Linux (systemd)", "macos": "macOS (launchd)", "windows": "Windows"}


class ServiceError(Exception):
    """An action cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class Command:
    args: tuple[str, ...]
    may_fail: bool = False  # undoing what may not be there: a job not loaded, a task not running

    def __str__(self) -> str:
        return shlex.join(self.args)


@dataclass
class Plan:
    before: list[Command] = field(default_factory=list)
    write: list[ServiceFile] = field(default_factory=list)
    remove: list[PurePath] = field(default_factory=list)
    after: list[Command] = field(default_factory=list)

    @property
    def commands(self) -> list[Command]:
        return self.before + self.after


def detect_platform() -> Platform:
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "darwin":
        return "macos"
    if sys.platform == "win32":
        return "windows"
    raise ServiceError(f"no service manager known for {sys.platform}: pass --platform")


def default_system_scope(platform: Platform) -> bool:
    """Root installs for the machine; everyone else for their own account."""
    return platform != "windows" and hasattr(os, "geteuid") and os.geteuid() == 0


def build_spec(
    settings: Settings,
    *,
    host: str,
    port: int,
    system: bool,
    env: Mapping[str, str] | None = None,
) -> ServiceSpec:
    """The spec for this interpreter, this account and the current STOCK_PIPELINE_* settings."""
    env = os.environ if env is None else env
    domain = env.get("USERDOMAIN")
    return ServiceSpec(
        python=Path(sys.executable),  # not resolved: a venv's python is a symlink out of it
        home=settings.home,
        user_home=Path.home(),
        env={k: v for k, v in env.items() if k.startswith(ENV_PREFIX)},
        host=host,
        port=port,
        system=system,
        account=f"{domain}\\{getpass.getuser()}" if domain else getpass.getuser(),
    )


def install_plan(spec: ServiceSpec, platform: Platform) -> Plan:
    plan = Plan(write=service_files(spec, platform))
    if platform == "linux":
        units = [f"{service.name}.service" for service in services(spec)]
        plan.after = [_systemctl(spec, "daemon-reload"), _systemctl(spec, "enable", *units)]
    elif platform == "macos":
        plists = [file.path for file in plan.write if file.path.suffix == ".plist"]
        plan.before = [_launchctl_bootout(spec, service) for service in services(spec)]
        plan.after = [Command(("launchctl", "bootstrap", _domain(spec), str(p))) for p in plists]
    else:
        plan.after = [
            _schtasks("/Create", "/XML", str(task_file(spec, service)), "/TN", service.name, "/F")
            for service in services(spec)
        ]
    return plan


def uninstall_plan(spec: ServiceSpec, platform: Platform) -> Plan:
    """Stop, unregister, remove the files install wrote. The logs, the Dagster instance and the
    workspace file stay (other commands use the last two)."""
    written = service_files(spec, platform)
    plan = Plan(remove=[file.path for file in written if file.path != spec.workspace])
    if platform == "linux":
        units = [f"{service.name}.service" for service in services(spec)]
        plan.before = [_systemctl(spec, "disable", "--now", *units, may_fail=True)]
        plan.after = [_systemctl(spec, "daemon-reload")]
    elif platform == "macos":
        plan.before = [_launchctl_bootout(spec, service) for service in services(spec)]
    else:
        for service in services(spec):
            plan.before.append(_schtasks("/End", "/TN", service.name, may_fail=True))
            plan.before.append(_schtasks("/Delete", "/TN", service.name, "/F", may_fail=True))
    return plan


def control_commands(spec: ServiceSpec, platform: Platform, action: str) -> list[Command]:
    """`start`, `stop` or `status` for each service, as the OS manager spells it. A status
    command answers "not running" with its exit code too: that is no failure."""
    commands = []
    asks = action == "status"
    for service in services(spec):
        if platform == "linux":
            verb = {"start": "start", "stop": "stop", "status": "is-active"}[action]
            commands.append(_systemctl(spec, verb, f"{service.name}.service", may_fail=asks))
        elif platform == "macos":
            target = f"{_domain(spec)}/{service.label}"
            verb = {"start": ("kickstart",), "stop": ("kill", "SIGTERM"), "status": ("print",)}
            commands.append(Command(("launchctl", *verb[action], target), may_fail=asks))
        else:
            verb = {"start": ("/Run",), "stop": ("/End",), "status": ("/Query",)}[action]
            extra = ("/FO", "CSV", "/NH") if asks else ()
            commands.append(_schtasks(*verb, "/TN", service.name, *extra, may_fail=asks))
    return commands


def _systemctl(spec: ServiceSpec, *args: str, may_fail: bool = False) -> Command:
    scope = () if spec.system else ("--user",)
    return Command(("systemctl", *scope, *args), may_fail)


def _domain(spec: ServiceSpec) -> str:
    uid = os.getuid() if hasattr(os, "getuid") else 501  # 501: a Mac's first account
    return "system" if spec.system else f"gui/{uid}"


def _launchctl_bootout(spec: ServiceSpec, service: Service) -> Command:
    # Not loaded is fine: install reloads, uninstall removes.
    return Command(("launchctl", "bootout", f"{_domain(spec)}/{service.label}"), may_fail=True)


def _schtasks(*args: str, may_fail: bool = False) -> Command:
    return Command(("schtasks", *args), may_fail)


def lingering() -> bool:
    """Whether systemd keeps this account's user services running without a login session."""
    return Path("/var/lib/systemd/linger", getpass.getuser()).exists()


def print_plan(plan: Plan, spec: ServiceSpec) -> None:
    """Every file with its full content, every command; nothing is written or run."""
    print(f"dry run: nothing is written or run; secrets show as ***. Home: {spec.home}")
    for command in plan.before:
        print(f"\nwould run: {command}")
    for file in plan.write:
        print(f"\nwould write {file.path} (mode {file.mode:04o}, {file.encoding}):")
        for line in file.text.splitlines():
            print(f"    {line}".rstrip())
    for path in plan.remove:
        print(f"\nwould remove {path}")
    for command in plan.after:
        print(f"\nwould run: {command}")


def execute(plan: Plan) -> None:
    """Run the plan; check first that its tools exist (require_tools)."""
    for command in plan.before:
        run_command(command)
    for file in plan.write:
        write_file(file)
        print(f"wrote {file.path}")
    for path in plan.remove:
        if Path(path).exists():
            Path(path).unlink()
            print(f"removed {path}")
    for command in plan.after:
        run_command(command)


def require_tools(commands: list[Command], platform: Platform, action: str) -> None:
    for tool in dict.fromkeys(command.args[0] for command in commands):
        if shutil.which(tool) is None:
            raise ServiceError(
                f"{tool} not found on PATH: `service {action}` manages {OS_NAMES[platform]} "
                f"services through it. On another OS pass --platform; `stock-pipeline service "
                f"{action} --dry-run` prints the files and commands without running anything"
            )


def run_command(command: Command) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command.args, capture_output=True, text=True)
    if result.returncode != 0 and not command.may_fail:
        answer = (result.stderr.strip() or result.stdout.strip()).splitlines()
        hint = ""
        if command.args[:2] == ("systemctl", "--user") and "bus" in " ".join(answer):
            hint = " (user services need your login session: not via sudo or su; or --system)"
        raise ServiceError(
            f"`{command}` failed (exit {result.returncode}): {' '.join(answer[-3:])}{hint}"
        )
    return result


def write_file(file: ServiceFile) -> None:
    """Created with its mode from the start: a secret is never readable by others meanwhile."""
    path = Path(file.path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file.mode)
        with os.fdopen(fd, "wb") as out:
            os.chmod(path, file.mode)  # an existing file keeps its old mode otherwise
            out.write(file.data)
    except OSError as exc:
        raise ServiceError(
            f"cannot write {path}: {exc.strerror}. System-wide services (--system) need root; "
            "without it, install for your account (--user)"
        ) from exc


def require_dagster(spec: ServiceSpec) -> None:
    for service in services(spec):
        if not Path(service.command[0]).exists():
            raise ServiceError(
                f"{service.command[0]} is missing: the services run the Dagster of "
                f"{spec.python}'s environment; install stock-pipeline (with dagster-webserver) "
                "there, or run this command with that environment's python"
            )


def status_lines(
    spec: ServiceSpec, platform: Platform, results: list[subprocess.CompletedProcess[str]]
) -> tuple[list[str], bool]:
    """One line per service, and whether all of them run."""
    lines, all_running = [], True
    for service, result in zip(services(spec), results, strict=True):
        running, answer = _STATE_READERS[platform](result)
        all_running = all_running and running
        lines.append(f"{service.name}: {answer} (log: {service.log_file})")
    return lines, all_running


def _systemd_state(result: subprocess.CompletedProcess[str]) -> tuple[bool, str]:
    answer = result.stdout.strip() or result.stderr.strip() or "unknown"
    return answer == "active", answer


def _launchd_state(result: subprocess.CompletedProcess[str]) -> tuple[bool, str]:
    if result.returncode != 0:
        return False, "not loaded"
    fields = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.strip().partition(" = ")
        if sep and key in ("state", "pid", "last exit code"):
            fields.setdefault(key, value)
    state = fields.get("state", "unknown")
    if state == "running":
        return True, f"running (pid {fields.get('pid', '?')})"
    return False, f"{state} (last exit code {fields.get('last exit code', '?')})"


def _task_state(result: subprocess.CompletedProcess[str]) -> tuple[bool, str]:
    if result.returncode != 0:
        return False, "not installed"
    # CSV columns: task name, next run time, status (the words are localized, the order not).
    rows = [row for row in csv.reader(result.stdout.splitlines()) if len(row) >= 3]
    status = rows[0][2] if rows else "unknown"
    return status.lower() == "running", status


_STATE_READERS = {"linux": _systemd_state, "macos": _launchd_state, "windows": _task_state}
