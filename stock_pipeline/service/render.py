"""The service files, rendered from a ServiceSpec: systemd units (Linux), launchd plists (macOS),
Task Scheduler XML (Windows), and the workspace file both services load.

Pure: nothing is read, written or run here, so every platform's files can be produced (and
compared with golden files) on any machine. manage.py writes them and calls the OS tools.
"""

from __future__ import annotations

import json
import plistlib
import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import PurePath, PurePosixPath, PureWindowsPath
from typing import Literal

from stock_pipeline.instance import WORKSPACE_YAML
from stock_pipeline.settings import ENV_PREFIX, redact_url

Platform = Literal["linux", "macos", "windows"]
PLATFORMS: tuple[Platform, ...] = ("linux", "macos", "windows")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3000
RESTART_DELAY_S = 5
# The wrapper gives Dagster logwrap.STOP_TIMEOUT_S (45 s) after SIGINT before killing it; the OS
# manager waits a little longer before killing the wrapper.
STOP_TIMEOUT_S = 60
# A first start of the embedded PostgreSQL creates its cluster: allow for that.
START_TIMEOUT_S = 300
TASK_NAMESPACE = "http://schemas.microsoft.com/windows/2004/02/mit/task"
# Run with -m: imported here, they would warn that the package loaded them first.
WRAPPER_MODULE = "stock_pipeline.service.logwrap"
PREPARE_MODULE = "stock_pipeline.service.prepare"
WRITTEN_BY = "Written by `stock-pipeline service install`"
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN")


@dataclass(frozen=True)
class ServiceSpec:
    """Everything the rendered files depend on. Paths are PureWindowsPath for Windows files and
    PurePosixPath otherwise, so one machine can render every platform's."""

    python: PurePath  # the interpreter of the environment stock-pipeline is installed in
    home: PurePath  # STOCK_PIPELINE_HOME, absolute
    user_home: PurePath  # the OS account's home folder: user-scope files go under it
    env: Mapping[str, str] = field(default_factory=dict)  # the STOCK_PIPELINE_* variables set
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    system: bool = False  # started at boot for the machine, instead of at the account's login
    account: str = ""  # Windows: the task's user (DOMAIN\name); unused elsewhere

    @property
    def dagster_home(self) -> PurePath:
        return self.home / "dagster"

    @property
    def workspace(self) -> PurePath:
        return self.dagster_home / "workspace.yaml"

    @property
    def service_dir(self) -> PurePath:
        """Files the services read that do not belong in the OS manager's folder."""
        return self.home / "service"

    @property
    def env_file(self) -> PurePath:
        return self.service_dir / "environment"

    @property
    def embedded_servers(self) -> tuple[str, ...]:
        """The servers the services start themselves: those without a configured URL."""
        urls = {"postgres": "DATABASE_URL", "redis": "REDIS_URL"}
        return tuple(name for name, var in urls.items() if not self.env.get(ENV_PREFIX + var))

    def homes(self) -> dict[str, str]:
        return {"DAGSTER_HOME": str(self.dagster_home), ENV_PREFIX + "HOME": str(self.home)}

    def settings(self) -> dict[str, str]:
        """Every STOCK_PIPELINE_* variable set, but the home (given absolute by homes())."""
        return {k: v for k, v in sorted(self.env.items()) if k != ENV_PREFIX + "HOME"}

    def environment(self) -> dict[str, str]:
        """What both services run with: the homes and the settings."""
        return self.homes() | self.settings()

    def masked(self) -> ServiceSpec:
        """The same spec with passwords shown as ***: what a dry run prints."""
        return replace(self, env={k: mask_secret(k, v) for k, v in self.env.items()})

    def executable(self, name: str) -> PurePath:
        """A console script installed next to the interpreter (bin/ or Scripts\\)."""
        suffix = ".exe" if isinstance(self.python, PureWindowsPath) else ""
        return self.python.parent / f"{name}{suffix}"


@dataclass(frozen=True)
class Service:
    name: str  # stock-pipeline-webserver: the systemd unit and scheduled task name
    label: str  # com.stock-pipeline.webserver: the launchd label
    description: str
    command: tuple[str, ...]  # the Dagster process
    log_file: PurePath


@dataclass(frozen=True)
class ServiceFile:
    path: PurePath
    text: str
    mode: int = 0o644
    encoding: str = "utf-8"

    @property
    def data(self) -> bytes:
        return self.text.encode(self.encoding)


def mask_secret(name: str, value: str) -> str:
    if any(word in name.upper() for word in SECRET_WORDS):
        return "***"
    return redact_url(value) if name.upper().endswith("_URL") else value


def services(spec: ServiceSpec) -> tuple[Service, Service]:
    """The webserver and the daemon, both loading the code from the home's workspace file."""
    workspace = str(spec.workspace)
    logs = spec.home / "logs"
    webserver = Service(
        name="stock-pipeline-webserver",
        label="com.stock-pipeline.webserver",
        description=f"stock-pipeline Dagster webserver on http://{spec.host}:{spec.port}",
        command=(
            str(spec.executable("dagster-webserver")),
            *("-h", spec.host, "-p", str(spec.port), "-w", workspace),
        ),
        log_file=logs / "stock-pipeline-webserver.log",
    )
    daemon = Service(
        name="stock-pipeline-daemon",
        label="com.stock-pipeline.daemon",
        description="stock-pipeline Dagster daemon (schedules, sensors, run queue)",
        command=(str(spec.executable("dagster-daemon")), "run", "-w", workspace),
        log_file=logs / "stock-pipeline-daemon.log",
    )
    return webserver, daemon


def wrapped(
    spec: ServiceSpec, service: Service, *options: str, command: tuple[str, ...] = ()
) -> list[str]:
    """`command` (default: the service's) run through the rotating-log wrapper."""
    wrapper = [str(spec.python), "-m", WRAPPER_MODULE, *options, str(service.log_file), "--"]
    return wrapper + list(command or service.command)


def prepare_command(spec: ServiceSpec) -> tuple[str, ...]:
    return (str(spec.python), "-m", PREPARE_MODULE)


def service_files(spec: ServiceSpec, platform: Platform) -> list[ServiceFile]:
    """Every file `install` writes for `platform`, the workspace file first."""
    workspace = ServiceFile(spec.workspace, WORKSPACE_YAML)
    renderers = {"linux": _linux_files, "macos": _macos_files, "windows": _windows_files}
    return [workspace, *renderers[platform](spec)]


def unit_dir(spec: ServiceSpec) -> PurePath:
    if spec.system:
        return PurePosixPath("/etc/systemd/system")
    return spec.user_home / ".config" / "systemd" / "user"


def launchd_dir(spec: ServiceSpec) -> PurePath:
    if spec.system:
        return PurePosixPath("/Library/LaunchDaemons")
    return spec.user_home / "Library" / "LaunchAgents"


def task_file(spec: ServiceSpec, service: Service) -> PurePath:
    return spec.service_dir / f"{service.name}.xml"


def windows_env_file(spec: ServiceSpec) -> PurePath:
    return spec.env_file.with_suffix(".json")


def _linux_files(spec: ServiceSpec) -> list[ServiceFile]:
    # The settings may hold passwords: in a file only its owner reads, not in the unit.
    env = ServiceFile(spec.env_file, systemd_environment_file(spec), mode=0o600)
    units = [
        ServiceFile(unit_dir(spec) / f"{service.name}.service", systemd_unit(spec, service))
        for service in services(spec)
    ]
    return [env, *units]


def _macos_files(spec: ServiceSpec) -> list[ServiceFile]:
    # 0600: the plist's EnvironmentVariables may hold passwords.
    return [
        ServiceFile(
            launchd_dir(spec) / f"{service.label}.plist", launchd_plist(spec, service), 0o600
        )
        for service in services(spec)
    ]


def _windows_files(spec: ServiceSpec) -> list[ServiceFile]:
    env = ServiceFile(windows_env_file(spec), environment_json(spec), mode=0o600)
    tasks = [
        # schtasks reads task XML as UTF-16, as Task Scheduler itself exports it.
        ServiceFile(task_file(spec, service), task_xml(spec, service), encoding="utf-16")
        for service in services(spec)
    ]
    return [env, *tasks]


def systemd_quote(word: str, *, in_command: bool = True) -> str:
    """One word of a unit file line, as systemd splits and unescapes it: % starts a specifier
    everywhere, $ a variable in Exec lines; quotes and backslashes need a quoted word."""
    escaped = word.replace("%", "%%")
    if in_command:
        escaped = escaped.replace("$", "$$")
    if re.fullmatch(r"[\w@+=:,./%$-]+", escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_command(words: list[str] | tuple[str, ...]) -> str:
    return " ".join(systemd_quote(word) for word in words)


def systemd_unit(spec: ServiceSpec, service: Service) -> str:
    environment = [
        f"Environment={systemd_quote(f'{k}={v}', in_command=False)}"
        for k, v in spec.homes().items()
    ]
    prepare = wrapped(spec, service, command=prepare_command(spec))
    lines = [
        f"# {WRITTEN_BY} for STOCK_PIPELINE_HOME={spec.home}.",
        "# Re-run it after changing a STOCK_PIPELINE_* setting.",
        "[Unit]",
        f"Description={_no_specifiers(service.description)}",
        "",
        "[Service]",
        "Type=simple",
        f"WorkingDirectory={_no_specifiers(str(spec.home))}",
        *environment,
        f"EnvironmentFile={_no_specifiers(str(spec.env_file))}",
        "# Embedded servers up (when no URL is configured) and dagster.yaml from the settings.",
        f"ExecStartPre={systemd_command(prepare)}",
        f"ExecStart={systemd_command(wrapped(spec, service))}",
        "Restart=on-failure",
        f"RestartSec={RESTART_DELAY_S}",
        f"TimeoutStartSec={START_TIMEOUT_S}",
        "KillSignal=SIGINT",
        *_kill_mode(spec),
        f"TimeoutStopSec={STOP_TIMEOUT_S}",
        "",
        "[Install]",
        f"WantedBy={'multi-user.target' if spec.system else 'default.target'}",
        "",
    ]
    return "\n".join(lines)


def _kill_mode(spec: ServiceSpec) -> list[str]:
    if spec.embedded_servers:
        servers = " and ".join(spec.embedded_servers)
        return [
            f"# The embedded servers ExecStartPre starts ({servers}) run in this unit's group:",
            "# stop only the wrapper (it stops Dagster), so they keep serving the other unit.",
            "KillMode=process",
        ]
    return ["# SIGINT to the wrapper alone: it passes it on to Dagster once.", "KillMode=mixed"]


def _no_specifiers(text: str) -> str:
    return text.replace("%", "%%")


def systemd_environment_file(spec: ServiceSpec) -> str:
    """The STOCK_PIPELINE_* settings for EnvironmentFile=, double-quoted (systemd unescapes
    backslash, quote, $ and backtick there, and expands nothing)."""
    lines = [
        f"# {WRITTEN_BY}: the settings both services run with.",
        "# Mode 0600: it may hold passwords. Re-run the install after changing a setting.",
    ]
    # The homes are in the units themselves.
    lines += [f"{name}={_double_quoted(value)}" for name, value in spec.settings().items()]
    return "\n".join(lines) + "\n"


def _double_quoted(value: str) -> str:
    return '"' + re.sub(r'([\\"$`])', r"\\\1", value) + '"'


def environment_json(spec: ServiceSpec) -> str:
    """Windows: Task Scheduler has no environment setting, so the wrapper reads this file."""
    return json.dumps(spec.environment(), indent=2) + "\n"


def launchd_plist(spec: ServiceSpec, service: Service) -> str:
    job = {
        "Label": service.label,
        "ProgramArguments": wrapped(spec, service, "--prepare"),
        "EnvironmentVariables": spec.environment(),
        "WorkingDirectory": str(spec.home),
        "RunAtLoad": True,
        # Restarted when it fails; `service stop` ends it with exit code 0, and it stays down.
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": RESTART_DELAY_S,
        "ExitTimeOut": STOP_TIMEOUT_S,
        # The wrapper's own errors, before its log file is open; Dagster's go to that file.
        "StandardErrorPath": str(service.log_file.with_suffix(".launchd.log")),
    }
    return plistlib.dumps(job, sort_keys=True).decode("utf-8")


def task_xml(spec: ServiceSpec, service: Service) -> str:
    """A Task Scheduler 1.2 task: at logon (or at boot as SYSTEM with --system), restarted
    every minute when it fails, no time limit."""
    task = ET.Element("Task", version="1.2", xmlns=TASK_NAMESPACE)
    info = ET.SubElement(task, "RegistrationInfo")
    _text(info, "Description", service.description)
    _text(info, "URI", f"\\{service.name}")
    _triggers(task, spec)
    _principal(task, spec)
    settings = ET.SubElement(task, "Settings")
    for name, value in _TASK_SETTINGS.items():
        _text(settings, name, value)
    restart = ET.SubElement(settings, "RestartOnFailure")
    _text(restart, "Interval", "PT1M")
    _text(restart, "Count", "999")
    action = ET.SubElement(ET.SubElement(task, "Actions", Context="Author"), "Exec")
    env_file = str(windows_env_file(spec))
    arguments = wrapped(spec, service, "--env-file", env_file, "--prepare")
    _text(action, "Command", str(_windowless(spec.python)))
    # Split again by the C runtime's rules, which list2cmdline writes for.
    _text(action, "Arguments", subprocess.list2cmdline(arguments[1:]))
    _text(action, "WorkingDirectory", str(spec.home))
    ET.indent(task)
    return '<?xml version="1.0" encoding="UTF-16"?>\n' + ET.tostring(task, "unicode") + "\n"


_TASK_SETTINGS = {
    "MultipleInstancesPolicy": "IgnoreNew",
    "DisallowStartIfOnBatteries": "false",
    "StopIfGoingOnBatteries": "false",
    "AllowHardTerminate": "true",
    "StartWhenAvailable": "true",
    "AllowStartOnDemand": "true",
    "Enabled": "true",
    "ExecutionTimeLimit": "PT0S",  # the default, 72 hours, would end a service
    "Priority": "5",  # normal; the default 7 is below normal
}


def _windowless(python: PurePath) -> PurePath:
    """pythonw.exe beside python.exe: no console window opens at logon (the wrapper starts
    Dagster without one too)."""
    return python.with_name("pythonw.exe") if python.name.lower() == "python.exe" else python


def _triggers(task: ET.Element, spec: ServiceSpec) -> None:
    triggers = ET.SubElement(task, "Triggers")
    if spec.system:
        _text(ET.SubElement(triggers, "BootTrigger"), "Enabled", "true")
        return
    logon = ET.SubElement(triggers, "LogonTrigger")
    _text(logon, "Enabled", "true")
    _text(logon, "UserId", spec.account)


def _principal(task: ET.Element, spec: ServiceSpec) -> None:
    principal = ET.SubElement(ET.SubElement(task, "Principals"), "Principal", id="Author")
    if spec.system:
        _text(principal, "UserId", "S-1-5-18")  # LocalSystem
        _text(principal, "RunLevel", "HighestAvailable")
        return
    _text(principal, "UserId", spec.account)
    _text(principal, "LogonType", "InteractiveToken")
    _text(principal, "RunLevel", "LeastPrivilege")


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = text
    return element
