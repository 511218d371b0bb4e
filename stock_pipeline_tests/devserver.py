"""`stock-pipeline dev --simulator` started for a test, as a user would start it: a process of
its own (its own session: a signal goes to its pid only, as a terminal's Ctrl-C to its
foreground process), a fresh STOCK_PIPELINE_HOME (embedded PostgreSQL and Redis, none of the
caller's STOCK_PIPELINE_* settings), a free port, its output in a file."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from stock_pipeline.dev import graphql

READY_TIMEOUT_S = 300.0  # a cold start on a busy 2-core CI machine
# The daily graph, which the browser test finds in the lineage view.
DAILY_GRAPH_ASSETS = {
    "raw_trade_dates",
    "raw_stock_basic",
    "raw_all_stock",
    "raw_k_daily",
    "raw_adjust_factor",
    "stocks",
    "trade_calendar",
    "stock_daily",
    "technical_daily",
    "redis_cache",
}
# Every asset the code location serves.
ASSETS = DAILY_GRAPH_ASSETS | {
    *(f"raw_{n}" for n in ("profit", "operation", "growth", "balance", "cash_flow", "dupont")),
    "finance",
    "raw_dividend",
    "raw_performance_express",
    "raw_forecast",
    "corporate_actions",
    "performance_express",
    "earnings_forecast",
    "raw_index_daily",
    "index_daily",
    "raw_hs300_stocks",
    "raw_sz50_stocks",
    "raw_zz500_stocks",
    "index_constituents",
    "raw_stock_industry",
    "industry_membership",
    "stocks_industry",
    "raw_k_weekly",
    "raw_k_monthly",
    "raw_deposit_rate",
    "raw_loan_rate",
    "raw_required_reserve_ratio",
    "raw_money_supply_month",
    "raw_money_supply_year",
    "macro_series",
}
GROUPS = {"p0", "p1", "p2", "p3", "p4", "p5", "etl", "indicators", "cache"}
ASSETS_QUERY = "{ assetNodes { assetKey { path } groupName isPartitioned } }"
REPOSITORY_QUERY = """{ repositoriesOrError { ... on RepositoryConnection { nodes { name
  location { name } jobs { name } schedules { name scheduleState { status } }
  sensors { name sensorState { status } } } } } }"""
RUNS_QUERY = """query Runs($filter: RunsFilter) { runsOrError(filter: $filter) {
  ... on Runs { results { runId status jobName tags { key value } } }
  ... on PythonError { message } } }"""


@dataclass
class DevServer:
    process: subprocess.Popen
    home: Path
    port: int
    output: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.output.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Seconds until dev says it is ready; fails with its output if it exits or is late."""
        began = time.monotonic()
        while "dev: ready in" not in self.text():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"dev exited with {self.process.returncode} before ready:\n{self.tail()}"
                )
            if time.monotonic() - began > timeout:
                raise AssertionError(f"dev not ready after {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.5)
        return time.monotonic() - began

    def tail(self, chars: int = 6000) -> str:
        logs = "".join(
            f"\n--- {log.name} ---\n{log.read_text(errors='replace')[-chars:]}"
            for log in sorted((self.home / "logs").glob("*.log"))
        )
        return self.text()[-chars:] + logs

    def graphql(self, query: str, variables: dict | None = None) -> dict[str, Any]:
        answer = graphql(self.url, query, variables)
        assert not answer.get("errors"), answer["errors"]
        return answer["data"]

    def runs(self, **run_filter: Any) -> list[dict[str, Any]]:
        found = self.graphql(RUNS_QUERY, {"filter": run_filter})["runsOrError"]
        assert "results" in found, found
        return found["results"]

    def tree(self) -> list[psutil.Process]:
        """dev and every process under it, now."""
        leader = psutil.Process(self.process.pid)
        return [leader, *leader.children(recursive=True)]

    def stop(self, signum: int, timeout: float = 30.0) -> float:
        """Send `signum` to dev's pid; the seconds it took to exit (fails after `timeout`)."""
        began = time.monotonic()
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"dev still running {timeout:.0f} s after {signal.Signals(signum).name}:\n"
                + self.tail()
            ) from None
        return time.monotonic() - began

    def leftovers(self, tree: list[psutil.Process], within_s: float = 5.0) -> list[psutil.Process]:
        """Processes of `tree`, or any with this home in their environment, still running
        after `within_s` (a helper such as multiprocessing's resource tracker exits once it
        sees its parent gone)."""
        deadline = time.monotonic() + within_s
        while True:
            left = {p.pid: p for p in tree if _running(p)}
            left.update((p.pid, p) for p in processes_of_home(self.home))
            if not left or time.monotonic() > deadline:
                return list(left.values())
            time.sleep(0.2)


def processes_of_home(home: Path) -> list[psutil.Process]:
    """Running processes whose environment has STOCK_PIPELINE_HOME=`home`."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("STOCK_PIPELINE_HOME") == str(home) and _running(process):
                found.append(process)
        except psutil.Error:  # exited, or not ours to read
            continue
    return found


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def dev_home() -> Iterator[Path]:
    """A fresh home. Enterable (not listable) by the embedded PostgreSQL's OS user under root,
    so its cluster stays in here (pytest's tmp_path lies under a folder only root may enter)."""
    with tempfile.TemporaryDirectory(prefix="sp-dev-") as tmp:
        os.chmod(tmp, 0o711)
        yield Path(tmp)


@contextlib.contextmanager
def running_dev(home: Path, *args: str, **settings: str) -> Iterator[DevServer]:
    """`stock-pipeline dev --simulator ARGS` on `home`, with STOCK_PIPELINE_<NAME> `settings`;
    whatever is left of it at the end is killed (a failed test leaves nothing running)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("STOCK_PIPELINE_") and name != "DAGSTER_HOME"
    }
    env["STOCK_PIPELINE_HOME"] = str(home)
    env.update({f"STOCK_PIPELINE_{name.upper()}": value for name, value in settings.items()})
    port = free_port()
    output = home / "dev-output.txt"
    command = [sys.executable, "-m", "stock_pipeline.cli", "dev", "--simulator"]
    with open(output, "wb") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = DevServer(process, home, port, output)
    try:
        yield server
    finally:
        _kill_what_is_left(server)


def _kill_what_is_left(server: DevServer) -> None:
    """After a failure: dev and its tree killed, the embedded servers stopped cleanly, and any
    other process still working for this home killed."""
    from stock_pipeline.embedded.postgres import EmbeddedPostgres
    from stock_pipeline.embedded.redis import EmbeddedRedis

    if server.process.poll() is None:
        tree = server.tree()
        for process in tree:
            with contextlib.suppress(psutil.Error):
                process.kill()
        server.process.wait()
    for embedded in (
        EmbeddedPostgres(server.home / "postgres"),
        EmbeddedRedis(server.home / "redis"),
    ):
        with contextlib.suppress(Exception):  # best effort: the test has failed already
            embedded.stop()
    for process in processes_of_home(server.home):
        with contextlib.suppress(psutil.Error):
            process.kill()
