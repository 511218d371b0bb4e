"""The simulator refuses promptly, in one line, to start where it cannot listen.

Before binding was checked, the CLI (and SimulatorProcess) waited forever on a port already
taken or a host that does not resolve, ignoring SIGINT/SIGTERM.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from stock_pipeline.baostock.simulator import (
    SimulatorConfig,
    SimulatorProcess,
    SimulatorServer,
    SimulatorStartError,
)

BOGUS_HOST = "no-such-host.invalid"  # .invalid never resolves (RFC 2606)
SMALL = SimulatorConfig(seed=5, n_codes=60)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port this test listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    command = [sys.executable, "-m", "stock_pipeline.cli", "simulator", "--n-codes", "60", *args]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    return result, time.monotonic() - started


def test_cli_exits_2_when_the_port_is_taken(taken_port: int) -> None:
    result, elapsed = run_cli("--port", str(taken_port))
    assert result.returncode == 2 and elapsed < 20
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {taken_port}" in lines[0] and "already in use" in lines[0]
    assert "choose another port" in lines[0]


def test_cli_exits_2_when_the_host_does_not_resolve() -> None:
    result, elapsed = run_cli("--host", BOGUS_HOST, "--port", "0")
    assert result.returncode == 2 and elapsed < 20
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert BOGUS_HOST in lines[0] and "cannot be resolved" in lines[0]
    assert "127.0.0.1" in lines[0]  # what to use instead


def test_cli_exits_2_on_a_bad_fault_kind() -> None:
    result, _ = run_cli("--port", "0", "--fault-code", "sh.600000=explode")
    assert result.returncode == 2
    assert "explode" in result.stderr and "empty" in result.stderr  # the kinds to choose from
    assert len(result.stderr.strip().splitlines()) == 1


def test_process_start_raises_promptly(taken_port: int) -> None:
    for host, port, expected in (
        ("127.0.0.1", taken_port, "already in use"),
        (BOGUS_HOST, 0, "cannot be resolved"),
    ):
        sim = SimulatorProcess(SMALL, host=host, port=port)
        started = time.monotonic()
        with pytest.raises(SimulatorStartError, match=expected):
            sim.start()
        assert time.monotonic() - started < 20
        assert sim.pid is None  # the child is gone


def test_server_fails_before_prewarming(taken_port: int) -> None:
    # Generating 5000 stocks takes tens of seconds: the port is checked first.
    sim = SimulatorServer(SimulatorConfig(n_codes=5000, prewarm=True), port=taken_port)
    started = time.monotonic()
    with pytest.raises(SimulatorStartError, match="already in use"):
        sim.start()
    assert time.monotonic() - started < 5
    with pytest.raises(SimulatorStartError, match="cannot be resolved"):
        SimulatorServer(SMALL, host=BOGUS_HOST).start()


def test_a_port_out_of_range_is_one_line_and_exit_2() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "stock_pipeline.cli", "simulator", "--port", "99999"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "99999 is not a port" in done.stderr and "Traceback" not in done.stderr
