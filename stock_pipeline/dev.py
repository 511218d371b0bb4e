"""`stock-pipeline dev`: the Dagster UI and daemon on the local stack, until Ctrl-C.

Starts what is missing (the embedded PostgreSQL and Redis; with --simulator a BaoStock
simulator), migrates the warehouse, writes the Dagster home (dagster.yaml from the settings,
workspace.yaml loading `stock_pipeline.definitions`), then runs `dagster-webserver` and
`dagster-daemon`, each in a process group of its own: the UI, and the schedules, sensors and run
queue. Ctrl-C or SIGTERM stops both groups with all they started (code servers, run workers),
then what dev started. Not `dagster dev`: started without job control (from a script, a
service manager, a test) it ignores SIGINT and SIGTERM and leaves its whole tree running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from stock_pipeline.calendar import NotATradingDayError, load_calendar
from stock_pipeline.instance import write_workspace
from stock_pipeline.local import (
    SIMULATED_STOCKS,
    LocalStackError,
    Services,
    latest_published_end,
    migrate_warehouse,
    open_instance,
    prepare_dagster_home,
    start_services,
    start_simulator,
)
from stock_pipeline.settings import Settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3000
READY_TIMEOUT_S = 180.0
STOP_GRACE_S = 10.0
# Lines of the children's logs shown in the terminal too: errors (not the steps a failed step
# left unexecuted) and the runs the sensors and schedules launch. The logs have everything.
ECHOED = (" - ERROR - ", " - CRITICAL - ", "Completed launch of run")
NOT_ECHOED = ("Not executing",)
ANSI_COLOR = re.compile(r"\x1b\[[0-9;]*m")
ECHO_WIDTH = 220


class DevError(Exception):
    """dev cannot start; the message says why and what to do."""


@dataclass
class Child:
    """A Dagster process dev started, in its own process group, its output in `log`."""

    name: str
    process: subprocess.Popen
    log: Path
    echoed: int = 0  # bytes of the log already looked at for the terminal


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dev",
        help="the Dagster UI and daemon (schedules, sensors, run queue) on the local stack",
        description=(
            "Run the Dagster webserver and daemon on this machine's stack: the configured "
            "servers or the embedded PostgreSQL and Redis, started if not running. Ctrl-C "
            "stops everything dev started."
        ),
    )
    parser.add_argument(
        "--simulator",
        action="store_true",
        help="run on a local BaoStock simulator (offline) instead of BaoStock",
    )
    parser.add_argument(
        "--codes", type=int, default=SIMULATED_STOCKS, help="stocks in the simulator's market"
    )
    parser.add_argument("--seed", type=int, default=7, help="the simulator's market")
    parser.add_argument("--host", default=DEFAULT_HOST, help="the UI's address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="the UI's port")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _dev(args)
    except (DevError, NotATradingDayError, LocalStackError) as exc:
        print(f"stock-pipeline dev: error: {exc}", file=sys.stderr)
        return 2


def _dev(args: argparse.Namespace) -> int:
    began = time.monotonic()
    settings = Settings.from_env()
    _require_free_port(args.host, args.port)
    stack = contextlib.ExitStack()
    previous = _handle_signals(_interrupt)
    try:
        return _serve(args, settings, stack, began)
    except KeyboardInterrupt:
        _say("interrupted: stopping")
        return 0
    finally:
        _handle_signals(signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        stopping = time.monotonic()
        try:
            stack.close()
        finally:
            _say(f"stopped in {time.monotonic() - stopping:.1f} s")
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _serve(
    args: argparse.Namespace, settings: Settings, stack: contextlib.ExitStack, began: float
) -> int:
    """Start the stack and the two Dagster processes; return when one of them exits."""
    services = _start_stack(args, settings, stack)
    workspace = write_workspace(Path(services.env["DAGSTER_HOME"]))
    children: list[Child] = []
    stack.callback(stop_children, children, STOP_GRACE_S)
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    commands = {
        "webserver": ["dagster_webserver", "-h", args.host, "-p", str(args.port)],
        "daemon": ["dagster._daemon", "run"],
    }
    for name, command in commands.items():
        command = [sys.executable, "-m", *command, "-w", str(workspace)]
        children.append(start_child(name, command, services.env, logs / f"{name}.log"))
    _announce(services, children, _url(args.host, args.port))
    _wait_until_ready(_url(_probe_host(args.host), args.port), children)
    _say(f"ready in {time.monotonic() - began:.1f} s: open {_url(args.host, args.port)}")
    _say("Ctrl-C stops the webserver, the daemon and what dev started")
    failed = _supervise(children)
    _say(f"the {failed.name} exited (code {failed.process.returncode}); its log ends with:")
    print(_log_tail(failed.log), file=sys.stderr, flush=True)
    return 1


def _start_stack(
    args: argparse.Namespace, settings: Settings, stack: contextlib.ExitStack
) -> Services:
    """Servers, the simulator if asked for, a migrated warehouse and a ready Dagster storage."""
    services = start_services(settings, stack)
    if args.simulator:
        end = latest_published_end(load_calendar(settings.home), settings)
        start_simulator(services, stack, args.codes, args.seed, end)
    migrate_warehouse(services.env["STOCK_PIPELINE_DATABASE_URL"])
    dagster_home = prepare_dagster_home(settings, services)
    # The storage schema is created here once: the webserver and the daemon starting on an
    # empty database at the same moment would both try to create it.
    with open_instance(dagster_home):
        pass
    return services


def start_child(name: str, command: list[str], env: dict[str, str], log: Path) -> Child:
    """`command` in a new session (its own process group: a terminal's Ctrl-C reaches dev only,
    and dev stops the group), its output appended to `log`."""
    with open(log, "ab") as out:
        out.write(f"--- stock-pipeline dev: {' '.join(command)}\n".encode())
        out.flush()
        process = subprocess.Popen(
            command,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Child(name, process, log, echoed=log.stat().st_size)


def stop_children(children: list[Child], grace_s: float) -> None:
    """SIGTERM to each child's process group, SIGKILL after `grace_s` to what is left of the
    groups and of every process the children started (collected before, in case one left its
    group)."""
    tree = _descendants(children)
    for child in children:
        _signal_group(child, signal.SIGTERM)
    left = _wait_gone(tree, grace_s)
    if left:
        _say(f"{len(left)} processes still running after {grace_s:.0f} s: killing them")
    for child in children:
        _signal_group(child, signal.SIGKILL)
    for process in left + _descendants(children):
        with contextlib.suppress(psutil.Error):
            process.kill()
    for child in children:
        child.process.wait()
    _wait_gone(left, 5.0)


def _descendants(children: list[Child]) -> list[psutil.Process]:
    found: list[psutil.Process] = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            leader = psutil.Process(child.process.pid)
            found += [leader, *leader.children(recursive=True)]
    return found


def _signal_group(child: Child, signum: int) -> None:
    if child.process.poll() is None or _group_alive(child.process.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of `processes` still running after `timeout` (a zombie counts as gone: its
    parent, or init, reaps it)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in processes if _running(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _announce(services: Services, children: list[Child], url: str) -> None:
    for note in services.notes:
        _say(note)
    _say(f"Dagster home: {services.env['DAGSTER_HOME']} (runs, schedules, sensors)")
    roles = {"webserver": f"the UI at {url}", "daemon": "schedules, sensors, run queue"}
    for child in children:
        _say(f"{child.name} (pid {child.process.pid}): {roles[child.name]}; log {child.log}")


def _wait_until_ready(url: str, children: list[Child]) -> None:
    """Until the webserver answers with the code location loaded (a location that fails to
    load is reported; the UI shows it and reloads it)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for child in children:
            if child.process.poll() is not None:
                raise DevError(
                    f"the {child.name} exited during start-up (code {child.process.returncode})"
                    f"; its log ({child.log}) ends with:\n{_log_tail(child.log)}"
                )
        _echo(children)
        status = _location_status(url)
        if status is not None:
            if status != "LOADED":
                _say(f"the code location did not load: {status}")
            return
        time.sleep(0.5)
    raise DevError(
        f"the webserver did not answer at {url} within {READY_TIMEOUT_S:.0f} s; see "
        f"{children[0].log}"
    )


LOCATION_QUERY = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def _location_status(url: str) -> str | None:
    """'LOADED', a load error, or None while the webserver or the location is not ready."""
    try:
        answer = graphql(url, LOCATION_QUERY, timeout=5.0)
    except (OSError, ValueError):  # not listening yet, or starting up
        return None
    workspace = (answer.get("data") or {}).get("workspaceOrError") or {}
    entries = workspace.get("locationEntries") or []
    if not entries or any(entry["loadStatus"] != "LOADED" for entry in entries):
        return None
    for entry in entries:
        error = entry.get("locationOrLoadError") or {}
        if error.get("__typename") == "PythonError":
            return f"{entry['name']}: {error.get('message', '').strip()}"
    return "LOADED"


def graphql(url: str, query: str, variables: dict | None = None, timeout: float = 30.0) -> dict:
    """POST a query to the webserver at `url`; the decoded answer."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _supervise(children: list[Child]) -> Child:
    """Echo the children's notable log lines until one of them exits; return that one."""
    while True:
        _echo(children)
        for child in children:
            if child.process.poll() is not None:
                _echo(children)
                return child
        time.sleep(0.5)


def _echo(children: list[Child]) -> None:
    """The new ECHOED lines of the children's logs, prefixed with the child's name."""
    for child in children:
        try:
            with open(child.log, "rb") as log:
                log.seek(child.echoed)
                chunk = log.read()
        except OSError:
            continue
        complete = chunk[: chunk.rfind(b"\n") + 1]
        child.echoed += len(complete)
        for line in ANSI_COLOR.sub("", complete.decode(errors="replace")).splitlines():
            if any(m in line for m in ECHOED) and not any(m in line for m in NOT_ECHOED):
                print(f"  {child.name} | {line.rstrip()[:ECHO_WIDTH]}", flush=True)


def _log_tail(log: Path, lines: int = 25) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"  (cannot read {log}: {exc})"
    return "\n".join("  " + line for line in ANSI_COLOR.sub("", text).splitlines()[-lines:])


def _require_free_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        if sock.connect_ex((_probe_host(host), port)) == 0:
            raise DevError(f"port {port} on {host} is in use: pass another one with --port")


def _probe_host(host: str) -> str:
    """Where to reach a server listening on `host` from this machine."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def _url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _interrupt(signum: int, frame: Any) -> None:
    """The first SIGINT or SIGTERM starts the shutdown; later ones are ignored until it ends."""
    _handle_signals(signal.SIG_IGN)
    raise KeyboardInterrupt


def _handle_signals(handler: Any) -> dict[int, Any]:
    """`handler` for SIGINT and SIGTERM (whatever dev inherited: started without job control,
    SIGINT arrives ignored, and the children would inherit that); the previous handlers."""
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, handler)
    return previous


def _say(text: str) -> None:
    print(f"dev: {text}", flush=True)
