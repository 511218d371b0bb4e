"""`stock-pipeline service`: the files rendered for each OS (golden files for the macOS plists
and the Windows tasks: regenerate them with UPDATE_GOLDEN=1), the dry run, install and uninstall
against stand-in OS tools, and the rotating-log wrapper. Nothing here touches this machine's
services."""

from __future__ import annotations

import codecs
import getpass
import json
import logging
import os
import plistlib
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath, PureWindowsPath

import psutil
import pytest

from stock_pipeline.cli import main
from stock_pipeline.service import logwrap as logwrap_module
from stock_pipeline.service import manage, render
from stock_pipeline.service.prepare import write_if_changed
from stock_pipeline.service.render import ServiceSpec, service_files, services

GOLDEN = Path(__file__).parent / "golden" / "service"
PASSWORD = 'pa$$ "w%rd\\`1'
SETTINGS = {"STOCK_PIPELINE_BAOSTOCK_PASSWORD": PASSWORD, "STOCK_PIPELINE_LOG_LEVEL": "DEBUG"}
EXTERNAL = {
    "STOCK_PIPELINE_DATABASE_URL": "postgresql://sp:s3cret@db.internal:5432/warehouse",
    "STOCK_PIPELINE_REDIS_URL": "redis://cache.internal:6379/0",
}
POSIX_SPEC = ServiceSpec(
    python=PurePosixPath("/opt/sp/venv/bin/python"),
    home=PurePosixPath("/srv/sp"),
    user_home=PurePosixPath("/home/sp"),
    env={"STOCK_PIPELINE_HOME": "/srv/sp", **SETTINGS},
)
WINDOWS_SPEC = ServiceSpec(
    python=PureWindowsPath(r"C:\sp\venv\Scripts\python.exe"),
    home=PureWindowsPath(r"C:\sp\home"),
    user_home=PureWindowsPath(r"C:\Users\sp"),
    env=SETTINGS,
    account="SP-PC\\sp",
)
TASK = "{http://schemas.microsoft.com/windows/2004/02/mit/task}"
Cli = Callable[..., tuple[int, str]]


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden file {path}: create it with UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), (
        f"{name} differs from its golden file; if intended: UPDATE_GOLDEN=1 pytest {__file__}"
    )


def files_by_name(spec: ServiceSpec, platform: render.Platform) -> dict[str, render.ServiceFile]:
    return {file.path.name: file for file in service_files(spec, platform)}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections, each key with all its values (Environment= repeats)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


@pytest.mark.parametrize("name", ["webserver", "daemon"])
def test_systemd_unit_settings(name: str):
    unit = parse_unit(files_by_name(POSIX_SPEC, "linux")[f"stock-pipeline-{name}.service"].text)
    service = unit["Service"]
    for key, value in {
        "Type": "simple",
        "Restart": "on-failure",
        "RestartSec": "5",
        "KillSignal": "SIGINT",
        "TimeoutStopSec": "60",
        "KillMode": "process",  # the embedded servers started by ExecStartPre keep running
        "WorkingDirectory": "/srv/sp",
        "EnvironmentFile": "/srv/sp/service/environment",
    }.items():
        assert service[key] == [value], key
    assert service["Environment"] == ["DAGSTER_HOME=/srv/sp/dagster", "STOCK_PIPELINE_HOME=/srv/sp"]
    wrapper = ["/opt/sp/venv/bin/python", "-m", "stock_pipeline.service.logwrap"]
    log = f"/srv/sp/logs/stock-pipeline-{name}.log"
    prepare = ["/opt/sp/venv/bin/python", "-m", "stock_pipeline.service.prepare"]
    assert shlex.split(service["ExecStartPre"][0]) == [*wrapper, log, "--", *prepare]
    dagster = {
        "webserver": ["dagster-webserver", "-h", "127.0.0.1", "-p", "3000"],
        "daemon": ["dagster-daemon", "run"],
    }[name]
    dagster[0] = f"/opt/sp/venv/bin/{dagster[0]}"
    workspace = ["-w", "/srv/sp/dagster/workspace.yaml"]
    assert shlex.split(service["ExecStart"][0]) == [*wrapper, log, "--", *dagster, *workspace]
    assert unit["Install"]["WantedBy"] == ["default.target"]
    assert "Wants" not in unit["Unit"] and "After" not in unit["Unit"]


def test_systemd_scope_and_external_servers():
    spec = replace(POSIX_SPEC, system=True, env=EXTERNAL)
    files = files_by_name(spec, "linux")
    unit = parse_unit(files["stock-pipeline-daemon.service"].text)
    assert unit["Service"]["KillMode"] == ["mixed"]  # nothing else of its own to keep running
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    paths = {str(file.path) for file in service_files(spec, "linux")}
    assert "/etc/systemd/system/stock-pipeline-webserver.service" in paths
    user_paths = {str(file.path) for file in service_files(POSIX_SPEC, "linux")}
    assert "/home/sp/.config/systemd/user/stock-pipeline-webserver.service" in user_paths


def test_systemd_environment_file_keeps_passwords_out_of_the_units(tmp_path: Path):
    files = files_by_name(POSIX_SPEC, "linux")
    env = files["environment"]
    assert env.mode == 0o600
    # Within double quotes systemd unescapes \\ \" $ ` as a POSIX shell does: sh reads it back.
    (tmp_path / "environment").write_text(env.text)
    for name, value in SETTINGS.items():
        script = f'. "$1" && printf %s "${name}"'
        read = subprocess.run(
            ["sh", "-c", script, "sh", str(tmp_path / "environment")],
            capture_output=True,
            text=True,
            check=True,
        )
        assert read.stdout == value
    for name in ("stock-pipeline-webserver.service", "stock-pipeline-daemon.service"):
        assert "pa$$" not in files[name].text


def test_systemd_quoting():
    assert render.systemd_quote("/opt/sp/bin/python") == "/opt/sp/bin/python"
    assert render.systemd_quote("/a b/100%$x") == '"/a b/100%%$$x"'
    assert render.systemd_quote('C:\\x"y') == '"C:\\\\x\\"y"'
    assert render.systemd_quote("A=$x y", in_command=False) == '"A=$x y"'


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path):
    # Real paths (systemd checks the executable exists); a home that needs quoting and escaping.
    home = tmp_path / "sp home 100%"
    spec = ServiceSpec(python=Path(sys.executable), home=home, user_home=tmp_path, env=SETTINGS)
    units = []
    for file in service_files(spec, "linux"):
        if file.path.suffix == ".service":
            units.append(tmp_path / file.path.name)
            units[-1].write_text(file.text, encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""  # systemd only warns about a line it ignores


@pytest.mark.parametrize("name", ["webserver", "daemon"])
def test_launchd_plist(name: str):
    label = f"com.stock-pipeline.{name}"
    file = files_by_name(POSIX_SPEC, "macos")[f"{label}.plist"]
    assert_golden(f"{label}.plist", file.text)
    assert str(file.path) == f"/home/sp/Library/LaunchAgents/{label}.plist"
    assert file.mode == 0o600
    job = plistlib.loads(file.data)
    assert plistlib.loads(plistlib.dumps(job)) == job
    assert job["Label"] == label
    assert job["KeepAlive"] == {"SuccessfulExit": False}
    assert job["RunAtLoad"] is True
    assert job["WorkingDirectory"] == "/srv/sp"
    assert job["EnvironmentVariables"] == {
        "DAGSTER_HOME": "/srv/sp/dagster",
        "STOCK_PIPELINE_HOME": "/srv/sp",
        **SETTINGS,
    }
    arguments = job["ProgramArguments"]
    log = f"/srv/sp/logs/stock-pipeline-{name}.log"
    assert arguments[:6] == [
        "/opt/sp/venv/bin/python",
        *("-m", "stock_pipeline.service.logwrap", "--prepare", log, "--"),
    ]
    assert arguments[6] == f"/opt/sp/venv/bin/dagster-{name}"


def test_launchd_system_scope():
    spec = replace(POSIX_SPEC, system=True)
    paths = {str(file.path) for file in service_files(spec, "macos")}
    assert "/Library/LaunchDaemons/com.stock-pipeline.daemon.plist" in paths


@pytest.mark.parametrize("name", ["webserver", "daemon"])
def test_windows_task(name: str):
    file = files_by_name(WINDOWS_SPEC, "windows")[f"stock-pipeline-{name}.xml"]
    # The golden copy is the text in UTF-8; the file itself is UTF-16, as schtasks reads it.
    assert_golden(f"stock-pipeline-{name}.task.xml", file.text)
    assert file.data.startswith(codecs.BOM_UTF16)
    assert str(file.path) == rf"C:\sp\home\service\stock-pipeline-{name}.xml"
    task = ET.fromstring(file.data)
    assert task.tag == f"{TASK}Task" and task.get("version") == "1.2"

    def text(path: str) -> str | None:
        return task.findtext("/".join(f"{TASK}{part}" for part in path.split("/")))

    assert text("Triggers/LogonTrigger/UserId") == "SP-PC\\sp"
    assert text("Principals/Principal/LogonType") == "InteractiveToken"
    assert text("Settings/RestartOnFailure/Interval") == "PT1M"
    assert text("Settings/RestartOnFailure/Count") == "999"
    assert text("Settings/ExecutionTimeLimit") == "PT0S"
    assert text("Actions/Exec/Command") == r"C:\sp\venv\Scripts\pythonw.exe"
    assert text("Actions/Exec/WorkingDirectory") == r"C:\sp\home"
    arguments = text("Actions/Exec/Arguments") or ""
    env = r"--env-file C:\sp\home\service\environment.json --prepare"
    log = rf"C:\sp\home\logs\stock-pipeline-{name}.log"
    assert arguments.startswith(f"-m stock_pipeline.service.logwrap {env} {log} -- ")
    assert rf"C:\sp\venv\Scripts\dagster-{name}.exe" in arguments


def test_windows_system_task_runs_at_boot_as_system():
    spec = replace(WINDOWS_SPEC, system=True)
    task = ET.fromstring(files_by_name(spec, "windows")["stock-pipeline-daemon.xml"].data)
    assert task.find(f"./{TASK}Triggers/{TASK}BootTrigger") is not None
    assert task.findtext(f"./{TASK}Principals/{TASK}Principal/{TASK}UserId") == "S-1-5-18"


def test_windows_environment_file():
    env = files_by_name(WINDOWS_SPEC, "windows")["environment.json"]
    assert env.mode == 0o600
    assert json.loads(env.text) == {
        "DAGSTER_HOME": r"C:\sp\home\dagster",
        "STOCK_PIPELINE_HOME": r"C:\sp\home",
        **SETTINGS,
    }


def test_workspace_loads_the_installed_package():
    workspace = files_by_name(POSIX_SPEC, "linux")["workspace.yaml"]
    assert str(workspace.path) == "/srv/sp/dagster/workspace.yaml"
    assert "load_from:\n  - python_module:\n      module_name: stock_pipeline.definitions\n" in (
        workspace.text
    )


def test_masked_spec_hides_passwords():
    masked = replace(POSIX_SPEC, env={**SETTINGS, **EXTERNAL}).masked()
    assert masked.env["STOCK_PIPELINE_BAOSTOCK_PASSWORD"] == "***"
    assert masked.env["STOCK_PIPELINE_DATABASE_URL"] == (
        "postgresql://sp:***@db.internal:5432/warehouse"
    )
    assert masked.env["STOCK_PIPELINE_LOG_LEVEL"] == "DEBUG"


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> Iterator[Cli]:
    """main(argv) with HOME and STOCK_PIPELINE_HOME in tmp_path and a password set; returns the
    exit code and stdout + stderr. Restores the logging main configures."""
    for name in list(os.environ):
        if name.startswith("STOCK_PIPELINE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("STOCK_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STOCK_PIPELINE_BAOSTOCK_PASSWORD", PASSWORD)
    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> tuple[int, str]:
        code = main(["service", *argv])
        out = capsys.readouterr()
        return code, out.out + out.err

    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("stock_pipeline").level
    yield run
    root.handlers[:], root.level = saved[:2]
    logging.getLogger("stock_pipeline").setLevel(saved[2])


def cli_spec(tmp_path: Path) -> ServiceSpec:
    """The spec the `cli` fixture's commands build, with the password masked."""
    return ServiceSpec(
        python=Path(sys.executable),
        home=tmp_path / "home",
        user_home=tmp_path / "user",
        env={"STOCK_PIPELINE_BAOSTOCK_PASSWORD": "***"},
        account=getpass.getuser(),
    )


@pytest.mark.parametrize("platform", render.PLATFORMS)
@pytest.mark.parametrize("action", ["install", "uninstall"])
def test_dry_run_prints_everything_and_writes_nothing(
    cli: Cli, tmp_path: Path, platform: str, action: str
):
    code, output = cli(action, "--dry-run", "--platform", platform, "--user")
    assert code == 0, output
    plan = (manage.install_plan if action == "install" else manage.uninstall_plan)(
        cli_spec(tmp_path), platform
    )
    for file in plan.write:
        assert f"would write {file.path} (mode {file.mode:04o}" in output
        assert all(f"    {line}".rstrip() in output for line in file.text.splitlines())
    for path in plan.remove:
        assert f"would remove {path}" in output
    for command in plan.commands:
        assert f"would run: {command}" in output
    assert PASSWORD not in output and "***" in output
    assert list(tmp_path.iterdir()) == []


def test_root_installs_system_wide_unless_told_user(cli: Cli, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert "/etc/systemd/system/" in cli("install", "--dry-run", "--platform", "linux")[1]
    assert "/etc/systemd/" not in cli("install", "--dry-run", "--platform", "linux", "--user")[1]


@pytest.mark.parametrize(("platform", "tool"), [("linux", "systemctl"), ("macos", "launchctl")])
@pytest.mark.parametrize("action", ["install", "status"])
def test_missing_os_tool_says_so(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, platform: str, tool: str, action: str
):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, output = cli(action, "--platform", platform, "--user")
    assert code == 2
    assert "Traceback" not in output
    assert f"error: {tool} not found on PATH" in output and "--dry-run" in output
    assert list(tmp_path.iterdir()) == []


STAND_IN = """#!/bin/sh
echo "$(basename "$0") $*" >> "{calls}"
case "$*" in
  *is-active*) echo active ;;
  "print "*) printf 'state = running\\n\\tpid = 4242\\n' ;;
  *"/Query"*) echo '"\\\\stock-pipeline-daemon","N/A","Running"' ;;
  "bootout "*) echo "Boot-out failed: 5: Input/output error" >&2; exit 5 ;;
esac
"""


@pytest.fixture
def stand_in_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """systemctl, launchctl and schtasks that only record their calls (in the returned file)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool in ("systemctl", "launchctl", "schtasks"):
        (bin_dir / tool).write_text(STAND_IN.format(calls=calls))
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    yield calls


@pytest.mark.parametrize("platform", render.PLATFORMS)
def test_install_status_uninstall_with_stand_in_tools(
    cli: Cli, tmp_path: Path, stand_in_tools: Path, platform: render.Platform
):
    spec = cli_spec(tmp_path)
    installed = service_files(spec, platform)
    code, output = cli("install", "--platform", platform, "--user")
    assert code == 0, output
    for file in installed:
        assert Path(file.path).stat().st_mode & 0o777 == file.mode, file.path
    install_calls = stand_in_tools.read_text().splitlines()
    assert install_calls == [str(c) for c in manage.install_plan(spec, platform).commands]

    code, output = cli("status", "--platform", platform, "--user")
    assert code == 0, output
    first = services(spec)[0]
    assert output.splitlines()[0].startswith(f"{first.name}: ")
    assert {"linux": ": active", "macos": "running (pid 4242)", "windows": ": Running"}[
        platform
    ] in output

    for action in ("stop", "start"):
        stand_in_tools.write_text("")
        code, output = cli(action, "--platform", platform, "--user")
        assert code == 0, output
        calls = stand_in_tools.read_text().splitlines()
        asked = [str(c) for c in manage.control_commands(spec, platform, action)]
        assert calls[: len(asked)] == asked  # then the status commands

    code, output = cli("uninstall", "--platform", platform, "--user")
    assert code == 0, output
    assert not any(Path(file.path).exists() for file in installed[1:])
    assert Path(spec.workspace).exists()  # other commands may use it


def test_prepare_writes_only_changes(tmp_path: Path):
    path = tmp_path / "dagster" / "dagster.yaml"
    assert write_if_changed(path, "a: 1\n")
    modified = path.stat().st_mtime_ns
    assert not write_if_changed(path, "a: 1\n")
    assert path.stat().st_mtime_ns == modified
    assert write_if_changed(path, "a: 2\n") and path.read_text() == "a: 2\n"
    assert [p.name for p in path.parent.iterdir()] == ["dagster.yaml"]


def test_the_os_manager_waits_longer_than_the_wrapper():
    assert render.STOP_TIMEOUT_S > logwrap_module.STOP_TIMEOUT_S + 10


def logwrap(log: Path, *args: str, child: str, **popen) -> subprocess.Popen[bytes]:
    wrapper = [sys.executable, "-m", "stock_pipeline.service.logwrap", *args, str(log), "--"]
    return subprocess.Popen([*wrapper, sys.executable, "-c", child], **popen)


def test_logwrap_rotates(tmp_path: Path):
    log = tmp_path / "logs" / "child.log"
    child = "for i in range(300): print(f'line {i:04d} \\x1b[32m' + 'x' * 40 + '\\x1b[0m')"
    wrapper = logwrap(log, "--max-bytes", "2000", "--backups", "2", child=child)
    assert wrapper.wait(30) == 0
    files = sorted(log.parent.iterdir())
    assert [f.name for f in files] == ["child.log", "child.log.1", "child.log.2"]
    assert all(f.stat().st_size <= 2000 for f in files)
    lines = [line for f in reversed(files) for line in f.read_text().splitlines()]
    numbered = [line for line in lines if line.startswith("line ")]
    assert numbered[-1].startswith("line 0299")  # the newest lines kept, in order
    assert numbered == sorted(numbered)
    assert all(line.endswith(" " + "x" * 40) for line in numbered)  # colour codes stripped
    assert "[logwrap] exited with code 0" in lines[-1]


def test_logwrap_passes_on_the_exit_code_and_the_env_file(tmp_path: Path):
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps({"SP_TEST_VALUE": "from the file"}))
    log = tmp_path / "child.log"
    child = "import os, sys; print(os.environ['SP_TEST_VALUE']); sys.exit(3)"
    assert logwrap(log, "--env-file", str(env_file), child=child).wait(30) == 3
    assert "from the file" in log.read_text()


def wait_for_line(log: Path, prefix: str, timeout: float = 20.0) -> str:
    """The first line of `log` starting with `prefix` (the wrapper's own lines quote the
    command, so a bare substring would match too early)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = log.read_text().splitlines() if log.exists() else []
        found = [line for line in lines if line.startswith(prefix)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no line {prefix!r}... in {log} after {timeout}s"
        time.sleep(0.05)


CHILD = """
import os, signal, sys, time
if {ignore_sigint}:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
print("ready", os.getpid(), flush=True)
try:
    time.sleep(120)
except KeyboardInterrupt:
    print("child got SIGINT", flush=True)
"""


@pytest.mark.parametrize("ignore_sigint", [False, True])
def test_logwrap_sigterm_stops_the_child(tmp_path: Path, ignore_sigint: bool):
    log = tmp_path / "child.log"
    child = CHILD.format(ignore_sigint=ignore_sigint)
    wrapper = logwrap(log, "--stop-timeout", "1", child=child)
    try:
        pid = int(wait_for_line(log, "ready ").split()[1])
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(20) == 0  # a requested stop is a success: launchd leaves it down
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
    assert not psutil.pid_exists(pid)
    text = log.read_text()
    assert "SIGTERM: stopping" in text
    # SIGINT reaches the child; one that ignores it is killed after --stop-timeout.
    assert ("child got SIGINT" in text.splitlines()) is not ignore_sigint
