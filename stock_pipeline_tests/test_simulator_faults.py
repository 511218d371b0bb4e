"""Fault injection, latency, rate limiting and the out-of-process simulator.

Dropped and silent connections would make the raw baostock client spin or block forever, so
those are observed with a raw socket client that has a timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import date

import baostock
import pytest

from stock_pipeline.baostock.endpoint import point_client_at
from stock_pipeline.baostock.simulator import (
    BLACKLIST_ERROR_CODE,
    RATE_LIMIT_ERROR_CODE,
    TRANSIENT_ERROR_CODE,
    FaultContext,
    SimulatorConfig,
    SimulatorProcess,
    SimulatorServer,
)
from stock_pipeline_tests.helpers import exchange

SMALL = {"seed": 5, "n_codes": 60}
LOGIN = ("00", ["login", "anonymous", "123456", "0"])


def k_request(code: str, day: str = "2024-03-01") -> tuple[str, list[str]]:
    body = ["query_history_k_data_plus", "anonymous", "1", "2000", code, "date,code,close"]
    return "95", body + [day, day, "d", "3"]


def second_request_fails(ctx: FaultContext) -> str | None:
    return "error" if ctx.request_number == 2 else None


def second_request_is_empty(ctx: FaultContext) -> str | None:
    return "empty" if ctx.request_number == 2 else None


@pytest.fixture(scope="module")
def faulty() -> Iterator[SimulatorServer]:
    config = SimulatorConfig(
        **SMALL,
        fault_codes={
            "sh.600000": "error",
            "sz.000001": "blacklist",
        },
    )
    with SimulatorServer(config) as server:
        yield server


def code_for(sim: SimulatorServer, index: int) -> str:
    return sim.market.codes(sim.market.grid_dates[-1])[index]


def test_targeted_error_and_blacklist_through_the_client(faulty: SimulatorServer) -> None:
    point_client_at(faulty.host, faulty.port)
    assert baostock.login().error_code == "0"
    try:
        err = baostock.query_history_k_data_plus(
            "sh.600000", "date,close", "2024-01-02", "2024-01-05"
        )
        assert err.error_code == TRANSIENT_ERROR_CODE
        black = baostock.query_adjust_factor("sz.000001", "2015-01-01", "2024-01-01")
        assert black.error_code == BLACKLIST_ERROR_CODE and "黑名单" in black.error_msg
        other = code_for(faulty, 3)
        ok = baostock.query_history_k_data_plus(other, "date,close", "2024-01-02", "2024-01-05")
        assert ok.error_code == "0" and ok.data
    finally:
        baostock.logout()
    stats = faulty.stats
    assert stats.faults["error"] >= 1 and stats.faults["blacklist"] >= 1
    assert stats.requests["query_history_k_data_plus"] >= 2


def test_malformed_rows() -> None:
    missing = SimulatorConfig(**SMALL, fault_codes={"sh.600000": "missing_field"})
    bad = SimulatorConfig(**SMALL, fault_codes={"sh.600000": "bad_value"})
    for config, check in (
        (missing, lambda rows: any(len(r) == 2 for r in rows)),
        (bad, lambda rows: any("N/A" in r for r in rows)),
    ):
        with SimulatorServer(config) as sim:
            request = k_request("sh.600000")
            request[1][6:8] = ["2024-01-02", "2024-02-28"]
            (_, _), (_, body) = exchange((sim.host, sim.port), [LOGIN, request])
            assert body[0] == "0"
            rows = json.loads(body[6])["record"]
            assert (
                check(rows) and sum(len(r) == 3 and "N/A" not in r for r in rows) == len(rows) - 1
            )


def test_empty_reply_for_a_targeted_code_through_the_client() -> None:
    config = SimulatorConfig(**SMALL, fault_codes={"sh.600000": "empty"})
    with SimulatorServer(config) as sim:
        point_client_at(sim.host, sim.port)
        assert baostock.login().error_code == "0"
        try:
            assert sim.market.is_traded("sh.600000", date(2024, 1, 2))
            empty = baostock.query_history_k_data_plus(
                "sh.600000", "date,close", "2024-01-02", "2024-01-05"
            )
            assert empty.error_code == "0" and empty.fields == ["date", "close"]
            assert not empty.next()
            factors = baostock.query_adjust_factor("sh.600000", "2010-01-01", "2026-12-31")
            assert factors.error_code == "0" and not factors.next()
            other = baostock.query_history_k_data_plus(
                "sz.000001", "date,close", "2024-01-02", "2024-01-05"
            )
            assert other.error_code == "0" and other.next()
        finally:
            baostock.logout()
        assert sim.stats.faults["empty"] == 2
    with SimulatorServer(SimulatorConfig(**SMALL, fault_hook=second_request_is_empty)) as sim:
        code = code_for(sim, 1)
        replies = exchange((sim.host, sim.port), [LOGIN, k_request(code), k_request(code)])
        records = [json.loads(body[6])["record"] for _, body in replies[1:]]
        assert [body[0] for _, body in replies] == ["0", "0", "0"]
        assert records[0] == [] and len(records[1]) == 1


def test_dropped_connection_is_seen_as_eof() -> None:
    with SimulatorServer(SimulatorConfig(**SMALL, fault_codes={"sh.600000": "drop"})) as sim:
        replies = exchange((sim.host, sim.port), [LOGIN])
        assert replies[0][1][0] == "0"
        with pytest.raises(ConnectionResetError):
            exchange((sim.host, sim.port), [LOGIN, k_request("sh.600000")])
        assert sim.stats.faults["drop"] == 1


def test_silent_connection_times_out() -> None:
    with SimulatorServer(SimulatorConfig(**SMALL, fault_codes={"sh.600000": "silent"})) as sim:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            exchange((sim.host, sim.port), [LOGIN, k_request("sh.600000")], timeout=0.5)
        assert time.monotonic() - started < 3
        while sim.stats.active_connections and time.monotonic() - started < 5:
            time.sleep(0.05)  # the server lets go of a silent connection once the client hangs up
        assert sim.stats.active_connections == 0


def test_random_fault_rates_and_hook() -> None:
    config = SimulatorConfig(**SMALL, error_rate=0.5)
    with SimulatorServer(config) as sim:
        code = code_for(sim, 1)
        replies = exchange((sim.host, sim.port), [LOGIN] + [k_request(code)] * 200)
        errors = sum(body[0] == TRANSIENT_ERROR_CODE for _, body in replies[1:])
        assert 60 <= errors <= 140
        assert sim.stats.faults["error"] == errors
    with SimulatorServer(SimulatorConfig(**SMALL, fault_hook=second_request_fails)) as sim:
        code = code_for(sim, 1)
        replies = exchange((sim.host, sim.port), [LOGIN, k_request(code), k_request(code)])
        assert [body[0] for _, body in replies] == ["0", TRANSIENT_ERROR_CODE, "0"]


def test_rate_limit_replies_like_a_blacklist() -> None:
    with SimulatorServer(SimulatorConfig(**SMALL, max_rps=10)) as sim:
        code = code_for(sim, 2)
        replies = exchange((sim.host, sim.port), [LOGIN] + [k_request(code)] * 30)
        codes = [body[0] for _, body in replies]
        assert codes.count(RATE_LIMIT_ERROR_CODE) >= 15
        assert all("黑名单" in body[1] for _, body in replies if body[0] == RATE_LIMIT_ERROR_CODE)
        assert sim.stats.faults["rate_limit"] == codes.count(RATE_LIMIT_ERROR_CODE)


def test_latency_is_asynchronous() -> None:
    with SimulatorServer(SimulatorConfig(**SMALL, latency_ms=200)) as sim:
        code = code_for(sim, 1)
        endpoint = (sim.host, sim.port)
        results: list[float] = []

        def one() -> None:
            started = time.monotonic()
            exchange(endpoint, [LOGIN, k_request(code)])
            results.append(time.monotonic() - started)

        started = time.monotonic()
        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        assert min(results) >= 0.4  # login + query, 200 ms each
        assert elapsed < 1.6  # eight connections in parallel, not 8 x 400 ms


def test_process_serves_and_leaves_nothing_behind() -> None:
    with SimulatorProcess(SimulatorConfig(**SMALL)) as sim:
        pid = sim.pid
        replies = exchange((sim.host, sim.port), [LOGIN, k_request("sh.600000")])
        assert replies[1][1][0] == "0"
    assert not _alive(pid)


def test_process_dies_with_its_parent() -> None:
    script = textwrap.dedent(
        """
        import os, sys
        from stock_pipeline.baostock.simulator import SimulatorConfig, SimulatorProcess
        sim = SimulatorProcess(SimulatorConfig(seed=5, n_codes=60))
        sim.start()
        print(sim.pid, flush=True)
        os._exit(0)  # no cleanup: the child must notice on its own
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    pid = int(out.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0): treat it as dead
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_slow_fault_adds_a_latency_spike() -> None:
    config = SimulatorConfig(**SMALL, fault_codes={"sh.600000": "slow"}, spike_ms=300)
    with SimulatorServer(config) as sim:
        started = time.monotonic()
        replies = exchange((sim.host, sim.port), [LOGIN, k_request("sh.600000")])
        assert replies[1][1][0] == "0" and time.monotonic() - started >= 0.3


def test_cli_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "stock_pipeline.cli", "simulator", "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--n-codes", "60", "--fault-code", "sz.000001=empty"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = ""
        deadline = time.monotonic() + 60
        while "listening on" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        endpoint = line.split("listening on ")[1].split()[0]
        host, port = endpoint.rsplit(":", 1)
        replies = exchange((host, int(port)), [LOGIN, k_request("sh.600000")])
        assert replies[1][1][0] == "0" and json.loads(replies[1][1][6])["record"]
        replies = exchange((host, int(port)), [LOGIN, k_request("sz.000001")])
        assert replies[1][1][0] == "0" and json.loads(replies[1][1][6])["record"] == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
