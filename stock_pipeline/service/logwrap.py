"""`python -m stock_pipeline.service.logwrap [options] LOGFILE -- COMMAND...`

Runs COMMAND with its output (stdout and stderr) in LOGFILE, rotated at 10 MB with 5 old files
kept (logging's RotatingFileHandler). The services run through it on every OS, so each gets the
same log files without logrotate, launchd or Task Scheduler settings.

SIGINT or SIGTERM to the wrapper reaches COMMAND's process group once, as SIGINT: Dagster's
daemon shuts down cleanly only on SIGINT (SIGTERM would kill it outright). A group still running
--stop-timeout seconds later, or at a second signal, is killed. Stopped that way, the wrapper
exits 0, so launchd's KeepAlive {SuccessfulExit: false} leaves it stopped; otherwise it exits
with COMMAND's code (128 + N for a signal N), and a failure is restarted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from logging.handlers import RotatingFileHandler
from pathlib import Path
from types import FrameType
from typing import IO, Any

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5
STOP_TIMEOUT_S = 45.0
PREPARE_MODULE = "stock_pipeline.service.prepare"
# A grandchild (a server the prepare step started) may keep the output pipe open for good.
PIPE_DRAIN_S = 2.0
WINDOWS = sys.platform == "win32"
COLOUR_CODES = re.compile(r"\x1b\[[0-9;]*m")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stock_pipeline.service.logwrap",
        usage="%(prog)s [options] LOGFILE -- COMMAND...",
        description="Run COMMAND with its output in a rotating LOGFILE; pass SIGINT/SIGTERM on.",
    )
    parser.add_argument("logfile", type=Path, metavar="LOGFILE")
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES, help="rotate at this size")
    parser.add_argument("--backups", type=int, default=BACKUPS, help="old files kept")
    parser.add_argument(
        "--stop-timeout", type=float, default=STOP_TIMEOUT_S, help="seconds before a kill"
    )
    parser.add_argument(
        "--env-file", type=Path, help="a JSON object of environment variables to add"
    )
    parser.add_argument(
        "--prepare",
        action="store_true",
        help=f"run `python -m {PREPARE_MODULE}` first; stop with its code if it fails",
    )
    if "--" not in argv:
        parser.error("give the command after --")
    split = list(argv).index("--")
    args = parser.parse_args(argv[:split])
    args.command = list(argv[split + 1 :])
    if not args.command:
        parser.error("give the command after --")
    return args


def open_log(path: Path, max_bytes: int, backups: int) -> logging.Logger:
    """A logger of its own (not in logging's tree) writing bare lines to a rotating file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.Logger("logwrap", logging.INFO)
    log.addHandler(handler)
    return log


def read_env_file(path: Path) -> dict[str, str]:
    values = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(values, dict):
        raise ValueError("not a JSON object")
    return {str(name): str(value) for name, value in values.items()}


class Supervisor:
    """Runs commands one after the other, their output in the log, until a stop signal."""

    def __init__(self, log: logging.Logger, env: dict[str, str], stop_timeout: float):
        self.log = log
        self.env = env
        self.stop_timeout = stop_timeout
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None

    def install_signal_handlers(self) -> None:
        """Before any child starts: a handled signal is reset to the default in a child, while
        an ignored one (as a parent may pass on) would stay ignored there."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def run(self, command: list[str]) -> int:
        """`command`'s exit code, or 0 if a stop signal ended it (or came before it started)."""
        if self.stopping:
            return 0
        self.note(f"starting: {subprocess.list2cmdline(command)}")
        child = _spawn(command, self.env)
        self.child = child
        if self.stopping:  # the signal came while it was starting
            self._interrupt()
        reader = threading.Thread(target=_copy_lines, args=(child.stdout, self.log), daemon=True)
        reader.start()
        code = child.wait()
        reader.join(PIPE_DRAIN_S)
        self.child = None
        code = 128 - code if code < 0 else code
        self.note(f"exited with code {code}" + (" after a stop signal" if self.stopping else ""))
        return 0 if self.stopping else code

    def note(self, message: str) -> None:
        stamp = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        self.log.info("%s [logwrap] %s", stamp, message)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            self.note(f"{signal.Signals(signum).name} again: killing")
            self._kill()
            return
        self.stopping = True
        self.note(f"{signal.Signals(signum).name}: stopping (kill in {self.stop_timeout:g}s)")
        self._interrupt()
        timer = threading.Timer(self.stop_timeout, self._kill)
        timer.daemon = True
        timer.start()

    def _interrupt(self) -> None:
        child = self.child
        if child is None or child.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if WINDOWS:
                child.send_signal(signal.CTRL_BREAK_EVENT)
            else:
                os.killpg(child.pid, signal.SIGINT)

    def _kill(self) -> None:
        child = self.child
        if child is None or child.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if WINDOWS:
                child.kill()
            else:
                os.killpg(child.pid, signal.SIGKILL)


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`command` in a process group of its own, so a stop reaches everything it started."""
    group: dict[str, Any]
    if WINDOWS:
        flags = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        group = {"creationflags": flags}
    else:
        group = {"start_new_session": True}
    return subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **group,
    )


def _copy_lines(stream: IO[bytes], log: logging.Logger) -> None:
    for line in iter(stream.readline, b""):
        # Dagster colours its lines even into a pipe; a log file is read with grep and editors.
        text = COLOUR_CODES.sub("", line.decode("utf-8", "replace"))
        log.info(text.rstrip("\r\n"))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        log = open_log(args.logfile, args.max_bytes, args.backups)
    except OSError as exc:
        print(f"logwrap: cannot open the log {args.logfile}: {exc}", file=sys.stderr)
        return 1
    # Python children write each line as it comes, not in 8 KB blocks to the pipe.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.env_file:
        try:
            env.update(read_env_file(args.env_file))
        except (OSError, ValueError) as exc:
            print(f"logwrap: cannot read --env-file {args.env_file}: {exc}", file=sys.stderr)
            return 1
    supervisor = Supervisor(log, env, args.stop_timeout)
    supervisor.install_signal_handlers()
    try:
        if args.prepare:
            code = supervisor.run([sys.executable, "-m", PREPARE_MODULE])
            if code != 0 or supervisor.stopping:
                return code
        return supervisor.run(args.command)
    except OSError as exc:  # the command cannot be started
        supervisor.note(f"cannot start {args.command[0]}: {exc}")
        print(f"logwrap: cannot start {args.command[0]}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
