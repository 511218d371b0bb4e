"""BaostockPool against the BaoStock simulator, through the real (unmodified) baostock client.

Covers: no cross-talk between concurrent sessions, login reuse and TTL re-login, credentials,
the shared rate limit, retries and fast failure, typed replies converted in the worker, the
fault paths (dropped connection, silent server, slow pages, blacklist reply, wedged and killed
workers), captured client output, and clean shutdown (no worker left, also after Ctrl-C or when
the parent dies).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import date
from typing import Any

import pandas as pd
import psutil
import pytest

from stock_pipeline.baostock.errors import (
    BlacklistedError,
    ConnectionLost,
    PermanentError,
    PoolClosedError,
    RequestTimeout,
    TransientError,
)
from stock_pipeline.baostock.pool import BaostockPool, FrameResult, PoolConfig
from stock_pipeline.baostock.simulator import SimulatorConfig, SimulatorServer
from stock_pipeline.baostock.simulator.server import FaultContext
from stock_pipeline.baostock.typed import to_frame
from stock_pipeline.baostock.worker import FRAME_MIN_ROWS
from stock_pipeline.settings import Settings
from stock_pipeline_tests.helpers import assert_gone
from stock_pipeline_tests.helpers import fast_pool_config as pool_config

KLINE = "query_history_k_data_plus"
FIELDS = "date,code,open,high,low,close,volume,tradestatus"


def kline(code: str, start: date | str, end: date | str, fields: str = FIELDS) -> dict[str, Any]:
    return {
        "code": code,
        "fields": fields,
        "start_date": str(start),
        "end_date": str(end),
        "frequency": "d",
        "adjustflag": "3",
    }


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    # Small jitter shuffles reply order across sessions, which is what exposes cross-talk.
    with SimulatorServer(SimulatorConfig(seed=7, n_codes=300, latency_ms=1.0, jitter_ms=4.0)) as s:
        yield s


@pytest.fixture(scope="module")
def codes(sim: SimulatorServer) -> list[str]:
    return sim.market.codes(date(2024, 6, 3))


@pytest.mark.timeout(120)
def test_no_cross_talk_across_8_sessions(sim: SimulatorServer, codes: list[str]) -> None:
    """2,400 requests over 8 sessions: every row belongs to its request's code and dates."""
    rng = random.Random(3)
    days = sim.market.trading_days(date(2023, 1, 1), date(2024, 12, 31))
    plan = []
    for _ in range(2400):
        first = rng.randrange(len(days) - 20)
        plan.append((rng.choice(codes), days[first], days[first + rng.randrange(0, 20)]))

    async def run() -> list[Any]:
        async with BaostockPool(pool_config(sim, concurrency=8)) as pool:
            results = await asyncio.gather(*(pool.query(KLINE, **kline(*p)) for p in plan))
            assert pool.stats.logins == 8, "one login per session, reused for every request"
            return results

    results = asyncio.run(run())
    mismatched = 0
    for (code, start, end), result in zip(plan, results, strict=True):
        expected = sim.market.daily_columns(code, start, end, "3")
        got = list(zip(*result.rows, strict=True)) if result.rows else [(), (), (), (), (), ()]
        ok = (
            list(got[1]) == [code] * len(result.rows)
            and all(str(start) <= d <= str(end) for d in got[0])
            and list(got[0]) == expected["date"]
            and list(got[5]) == expected["close"]
        )
        mismatched += not ok
    assert mismatched == 0, f"{mismatched} of {len(plan)} results carried someone else's rows"
    assert sum(len(r.rows) for r in results) > 10_000


def test_login_is_reused_and_renewed_after_ttl(sim: SimulatorServer, codes: list[str]) -> None:
    async def run() -> tuple[int, int, int]:
        config = pool_config(sim, concurrency=2, session_ttl_s=0.5)
        async with BaostockPool(config) as pool:
            for code in codes[:20]:
                await pool.query(KLINE, **kline(code, "2024-06-03", "2024-06-07"))
            before = pool.stats.logins
            await asyncio.sleep(0.7)
            for code in codes[:4]:
                await pool.query(KLINE, **kline(code, "2024-06-03", "2024-06-07"))
            return before, pool.stats.logins, pool.stats.requests

    before, after, requests = asyncio.run(run())
    assert before == 2  # 20 requests, no extra login
    assert after == 4  # both sessions re-logged in once their TTL had passed
    assert requests == 24


def test_pages_are_drained_and_a_failed_page_is_never_truncation(sim: SimulatorServer) -> None:
    """7 rows per page: a month is 4 pages. A connection dropped on page 2 fails the attempt
    (no silently short result) and the retry returns every row."""
    requests_for: dict[str, int] = {}
    lock = threading.Lock()

    def drop_second_page(ctx: FaultContext) -> str | None:
        with lock:
            requests_for[ctx.code] = requests_for.get(ctx.code, 0) + 1
            return "drop" if ctx.code == "sz.000001" and requests_for[ctx.code] == 2 else None

    config = SimulatorConfig(seed=7, n_codes=300, fault_hook=drop_second_page)
    with SimulatorServer(config) as faulty:
        expected = faulty.market.daily_columns("sz.000001", date(2024, 5, 6), date(2024, 6, 7))
        plain_rows = len(
            faulty.market.daily_columns("sh.600000", date(2024, 5, 6), date(2024, 6, 7))["date"]
        )

        async def run() -> tuple[Any, Any]:
            async with BaostockPool(pool_config(faulty, page_size=7)) as pool:
                plain = await pool.query(KLINE, **kline("sh.600000", "2024-05-06", "2024-06-07"))
                faulted = await pool.query(KLINE, **kline("sz.000001", "2024-05-06", "2024-06-07"))
                return plain, faulted

        plain, faulted = asyncio.run(run())
    # Full pages, then one short (possibly empty) page that tells the client it is done.
    assert len(plain.rows) == plain_rows > 14 and plain.server_requests == plain_rows // 7 + 1
    assert faulted.attempts == 2
    assert [row[0] for row in faulted.rows] == expected["date"]
    assert [row[5] for row in faulted.rows] == expected["close"]


def test_rate_limit_is_shared_by_all_sessions(codes: list[str]) -> None:
    """qps=20 over 4 sessions: 41 requests take >= 2 s, and a server limiting at 25/s (it
    counts logins too) never has to refuse one."""
    config = SimulatorConfig(seed=7, n_codes=300, max_rps=25)
    with SimulatorServer(config) as limited:

        async def run() -> float:
            async with BaostockPool(pool_config(limited, qps=20.0)) as pool:
                await asyncio.sleep(1.0)  # the 4 logins leave the server's 1 s window
                started = time.perf_counter()
                await asyncio.gather(
                    *(pool.query(KLINE, **kline(c, "2024-06-03", "2024-06-03")) for c in codes[:41])
                )
                return time.perf_counter() - started

        elapsed = asyncio.run(run())
        refused = limited.stats.faults["rate_limit"]
    assert elapsed >= 1.9, f"41 requests at 20 qps took only {elapsed:.2f}s"
    assert refused == 0


def test_permanent_errors_fail_fast(sim: SimulatorServer, codes: list[str]) -> None:
    async def run() -> dict[str, tuple[PermanentError, float]]:
        cases = {
            "bad code": kline("sh.999999", "2024-06-03", "2024-06-07"),
            "bad field": kline(codes[0], "2024-06-03", "2024-06-07", fields="date,code,vwap"),
            "bad date": kline(codes[0], "2024-13-01", "2024-06-07"),
            "start after end": kline(codes[0], "2024-06-07", "2024-06-03"),
            "bad adjustflag": {**kline(codes[0], "2024-06-03", "2024-06-07"), "adjustflag": "9"},
        }
        out = {}
        async with BaostockPool(pool_config(sim, backoff_base_s=1.0, backoff_max_s=1.0)) as pool:
            for name, params in cases.items():
                requests = pool.stats.requests
                started = time.perf_counter()
                with pytest.raises(PermanentError) as caught:
                    await pool.query(KLINE, **params)
                out[name] = (caught.value, time.perf_counter() - started)
                assert pool.stats.requests - requests <= 1, f"{name} was retried"
            with pytest.raises(PermanentError, match="no API"):
                await pool.query("query_nonexistent_thing")
        return out

    results = asyncio.run(run())
    for name, (_, elapsed) in results.items():
        assert elapsed < 0.5, f"{name} took {elapsed:.2f}s: permanent errors must not back off"
    assert results["bad code"][0].error_code == "10004011"
    assert "invalid security code" in str(results["bad code"][0])
    assert results["bad field"][0].error_code == "10004012"


def test_dropped_connection_is_retried_on_a_new_connection(sim: SimulatorServer) -> None:
    """The server closes the socket mid-reply: no busy loop, a fast error, a retry that works."""
    seen: set[str] = set()
    lock = threading.Lock()

    def drop_first(ctx: FaultContext) -> str | None:
        with lock:
            if ctx.code.startswith("sz.") and ctx.code not in seen:
                seen.add(ctx.code)
                return "drop"
        return None

    config = SimulatorConfig(seed=7, n_codes=300, fault_hook=drop_first)
    with SimulatorServer(config) as faulty:
        targets = [c for c in faulty.market.codes(date(2024, 6, 3)) if c.startswith("sz.")][:6]

        async def run() -> tuple[list[Any], float, Any]:
            async with BaostockPool(pool_config(faulty)) as pool:
                started = time.perf_counter()
                results = await asyncio.gather(
                    *(pool.query(KLINE, **kline(c, "2024-06-03", "2024-06-07")) for c in targets)
                )
                return results, time.perf_counter() - started, pool.stats

        results, elapsed, stats = asyncio.run(run())
        assert faulty.stats.faults["drop"] == len(targets)
    assert all(r.attempts == 2 and len(r.rows) == 5 for r in results)
    assert stats.connection_losses == len(targets) and stats.timeouts == 0
    assert stats.workers_killed == 0  # the worker saw EOF itself: no busy loop to kill
    assert elapsed < 2.0, f"{len(targets)} dropped connections cost {elapsed:.2f}s"


def test_silent_server_costs_one_timeout_then_recovers(sim: SimulatorServer) -> None:
    seen: set[str] = set()
    lock = threading.Lock()

    def silent_first(ctx: FaultContext) -> str | None:
        with lock:
            if ctx.code == "sh.600000" and ctx.code not in seen:
                seen.add(ctx.code)
                return "silent"
        return None

    config = SimulatorConfig(seed=7, n_codes=300, fault_hook=silent_first)
    with SimulatorServer(config) as faulty:

        async def run() -> tuple[Any, float]:
            async with BaostockPool(pool_config(faulty, request_timeout_s=1.0)) as pool:
                started = time.perf_counter()
                result = await pool.query(KLINE, **kline("sh.600000", "2024-06-03", "2024-06-07"))
                return result, time.perf_counter() - started

        result, elapsed = asyncio.run(run())
    assert result.attempts == 2 and len(result.rows) == 5
    assert 1.0 <= elapsed < 1.0 + 1.0 + 0.5, f"silent connection cost {elapsed:.2f}s"


def test_slow_pages_of_a_long_history_do_not_time_out() -> None:
    """Each page arrives within the timeout, the whole request takes several timeouts: the
    parent bounds silence (progress after each page), not the request."""
    config = SimulatorConfig(seed=7, n_codes=300, latency_ms=300.0)
    with SimulatorServer(config) as slow:
        expected = slow.market.daily_columns("sh.600000", date(2024, 3, 1), date(2024, 5, 31))

        async def run() -> tuple[Any, float]:
            pool_cfg = pool_config(
                slow, concurrency=1, request_timeout_s=0.5, page_size=5, max_retries=0
            )
            async with BaostockPool(pool_cfg) as pool:
                started = time.perf_counter()
                result = await pool.query(KLINE, **kline("sh.600000", "2024-03-01", "2024-05-31"))
                return result, time.perf_counter() - started

        result, elapsed = asyncio.run(run())
    assert [row[0] for row in result.rows] == expected["date"]
    assert result.server_requests == len(expected["date"]) // 5 + 1 >= 12
    assert elapsed > 2 * (0.5 + 1.0), f"{elapsed:.2f}s: not the long request this test needs"


def test_silence_on_a_later_page_still_fails_fast(sim: SimulatorServer) -> None:
    """The server goes silent on page 3 of 5: the attempt fails after about the timeout (the
    pages before it reset nothing beyond it) and the retry returns every row."""
    pages: dict[str, int] = {}
    lock = threading.Lock()

    def silent_third_page(ctx: FaultContext) -> str | None:
        with lock:
            pages[ctx.code] = pages.get(ctx.code, 0) + 1
            return "silent" if ctx.code == "sh.600000" and pages[ctx.code] == 3 else None

    config = SimulatorConfig(seed=7, n_codes=300, fault_hook=silent_third_page)
    with SimulatorServer(config) as faulty:

        async def run() -> tuple[Any, float]:
            pool_cfg = pool_config(faulty, concurrency=1, request_timeout_s=1.0, page_size=5)
            async with BaostockPool(pool_cfg) as pool:
                started = time.perf_counter()
                result = await pool.query(KLINE, **kline("sh.600000", "2024-05-06", "2024-06-07"))
                return result, time.perf_counter() - started

        result, elapsed = asyncio.run(run())
    assert result.attempts == 2 and len(result.rows) == 25
    assert 1.0 <= elapsed < 1.0 + 1.0 + 0.5, f"a page's silence cost {elapsed:.2f}s"


def test_worker_wedged_between_pages_is_killed_at_the_deadline() -> None:
    """Progress messages keep a long request alive only while they come: a worker stopped
    after some pages is killed within the timeout plus grace of its last sign of life."""
    config = SimulatorConfig(seed=7, n_codes=300, latency_ms=100.0)
    with SimulatorServer(config) as slow:

        async def run() -> tuple[int, float]:
            pool_cfg = pool_config(
                slow, concurrency=1, request_timeout_s=0.5, page_size=5, max_retries=0
            )
            async with BaostockPool(pool_cfg) as pool:
                [wedged] = pool.worker_pids()
                query = asyncio.create_task(
                    pool.query(KLINE, **kline("sh.600000", "2024-03-01", "2024-05-31"))
                )
                await asyncio.sleep(0.45)  # a few pages in (login and pages take 0.1 s each)
                os.kill(wedged, signal.SIGSTOP)
                stopped = time.perf_counter()
                with pytest.raises(RequestTimeout, match="session replaced"):
                    await query
                return wedged, time.perf_counter() - stopped

        wedged, elapsed = asyncio.run(run())
    assert elapsed < 0.5 + 1.0 + 0.2, f"wedged worker held the request {elapsed:.2f}s"
    assert not psutil.pid_exists(wedged)


def test_wedged_worker_is_killed_at_the_deadline_and_replaced(sim: SimulatorServer) -> None:
    """A worker that cannot even notice its socket timeout (SIGSTOP) is killed and replaced."""

    async def run() -> None:
        config = pool_config(sim, concurrency=1, request_timeout_s=0.5, max_retries=0)
        async with BaostockPool(config) as pool:
            [wedged] = pool.worker_pids()
            os.kill(wedged, signal.SIGSTOP)
            started = time.perf_counter()
            with pytest.raises(RequestTimeout, match="session replaced"):
                await pool.query(KLINE, **kline("sh.600000", "2024-06-03", "2024-06-07"))
            elapsed = time.perf_counter() - started
            assert elapsed < 0.5 + 1.0 + 0.5, f"wedged worker held the request {elapsed:.2f}s"
            assert not psutil.pid_exists(wedged)
            result = await pool.query(KLINE, **kline("sh.600000", "2024-06-03", "2024-06-07"))
            assert len(result.rows) == 5
            assert pool.worker_pids() != [wedged] and pool.stats.workers_killed == 1

    asyncio.run(run())


def test_worker_killed_mid_request_is_replaced(sim: SimulatorServer) -> None:
    async def run() -> None:
        async with BaostockPool(pool_config(sim, concurrency=2)) as pool:
            victim = pool.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            results = await asyncio.gather(
                *(pool.query(KLINE, **kline("sh.600000", "2024-06-03", "2024-06-07")) for _ in "ab")
            )
            assert all(len(r.rows) == 5 for r in results)
            assert victim not in pool.worker_pids() and len(pool.worker_pids()) == 2

    asyncio.run(run())


def test_blacklist_reply_pauses_the_pool_then_succeeds(sim: SimulatorServer) -> None:
    seen: set[str] = set()
    lock = threading.Lock()

    def blacklist_first(ctx: FaultContext) -> str | None:
        with lock:
            if ctx.code == "sh.600000" and ctx.code not in seen:
                seen.add(ctx.code)
                return "blacklist"
        return None

    config = SimulatorConfig(seed=7, n_codes=300, fault_hook=blacklist_first)
    with SimulatorServer(config) as faulty:

        async def run() -> tuple[Any, float, Any]:
            async with BaostockPool(pool_config(faulty, blacklist_backoff_s=0.6)) as pool:
                started = time.perf_counter()
                result = await pool.query(KLINE, **kline("sh.600000", "2024-06-03", "2024-06-07"))
                return result, time.perf_counter() - started, pool.stats

        result, elapsed, stats = asyncio.run(run())
    assert result.attempts == 2 and len(result.rows) == 5
    assert stats.blacklist_replies == 1
    # Waited out the pool-wide pause (0.6 s), and not much more.
    assert 0.6 <= elapsed < 0.6 + 0.5, f"blacklist reply cost {elapsed:.2f}s"


def test_persistent_blacklist_trips_the_breaker(sim: SimulatorServer) -> None:
    """When every reply is a blacklist reply, requests fail fast instead of queueing forever."""
    config = SimulatorConfig(seed=7, n_codes=300, blacklist_rate=1.0)
    with SimulatorServer(config) as refusing:

        async def run() -> tuple[list[Any], float]:
            pool_cfg = pool_config(refusing, blacklist_backoff_s=5.0, max_retries=1)
            async with BaostockPool(pool_cfg) as pool:
                started = time.perf_counter()
                outcomes = await asyncio.gather(
                    *(
                        pool.query(KLINE, **kline("sh.600000", "2024-06-03", "2024-06-07"))
                        for _ in range(12)
                    ),
                    return_exceptions=True,
                )
                return outcomes, time.perf_counter() - started

        outcomes, elapsed = asyncio.run(run())
    assert all(isinstance(o, BlacklistedError) for o in outcomes)
    assert any("pool paused" in str(o) for o in outcomes)
    # 4 first attempts, one pause of 5 s, then everything fails fast: far less than 12 pauses.
    assert elapsed < 5.0 + 3.0, f"took {elapsed:.2f}s"


def test_client_output_goes_to_logging_not_stdout(
    sim: SimulatorServer, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="stock_pipeline.baostock")

    async def run() -> None:
        async with BaostockPool(pool_config(sim, concurrency=2)) as pool:
            await pool.query(KLINE, **kline("sh.600000", "2024-06-03", "2024-06-07"))

    asyncio.run(run())
    out, _ = capfd.readouterr()
    assert "login success" not in out and "logout success" not in out
    assert any("login success!" in r.getMessage() for r in caplog.records)


def test_close_logs_out_and_leaves_no_worker(sim: SimulatorServer) -> None:
    before = sim.stats.requests["logout"]

    async def run() -> list[int]:
        async with BaostockPool(pool_config(sim, concurrency=3)) as pool:
            pids = pool.worker_pids()
            assert len(pids) == 3
            await pool.query(KLINE, **kline("sh.600000", "2024-06-03", "2024-06-07"))
        with pytest.raises(PoolClosedError):
            await pool.query(KLINE, **kline("sh.600000", "2024-06-03", "2024-06-07"))
        return pids

    pids = asyncio.run(run())
    assert_gone(pids, within_s=1.0)
    assert sim.stats.requests["logout"] - before == 3
    assert not [p for p in psutil.Process().children() if p.pid in pids]


def test_cancelled_request_reply_is_dropped_and_close_logs_out() -> None:
    """Cancel mid-request (what Ctrl-C does): the worker still answers it, later; that reply is
    dropped on arrival, the next request on the same session gets its own, close logs out."""
    config = SimulatorConfig(seed=7, n_codes=300, fault_codes={"sh.600000": "slow"}, spike_ms=300)
    with SimulatorServer(config) as slow:

        async def run() -> list[int]:
            async with BaostockPool(pool_config(slow, concurrency=1)) as pool:
                pids = pool.worker_pids()
                task = asyncio.create_task(
                    pool.query(KLINE, **kline("sh.600000", "2024-06-03", "2024-06-07"))
                )
                await asyncio.sleep(0.05)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                result = await pool.query(KLINE, **kline("sz.000001", "2024-06-03", "2024-06-07"))
                assert {row[1] for row in result.rows} == {"sz.000001"}
                assert result.pool_wait_s > 0.15  # it waited behind the abandoned request
            return pids

        pids = asyncio.run(run())
        logouts = slow.stats.requests["logout"]
    assert_gone(pids, within_s=1.0)
    assert logouts == 1


SECRET = "Pa55-never-logged"


def test_pool_from_settings_logs_in_as_the_user_and_never_shows_the_password(
    sim: SimulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="stock_pipeline")
    settings = Settings.from_env(
        {
            "STOCK_PIPELINE_BAOSTOCK_ENDPOINT": sim.endpoint,
            "STOCK_PIPELINE_BAOSTOCK_CONCURRENCY": "2",
            "STOCK_PIPELINE_BAOSTOCK_USER": "someone",
            "STOCK_PIPELINE_BAOSTOCK_PASSWORD": SECRET,
        }
    )
    config = PoolConfig.from_settings(settings)
    assert (config.user, config.password) == ("someone", SECRET)
    assert (PoolConfig().user, PoolConfig().password) == ("anonymous", "123456")  # login()'s
    assert SECRET not in repr(config) and "someone" in repr(config)

    async def run() -> tuple[Any, list[int]]:
        async with BaostockPool.from_settings(settings) as pool:
            assert pool.config.qps == 20.0 and pool.config.concurrency == 2
            result = await pool.query(KLINE, **kline("sh.600000", "2024-06-03", "2024-06-07"))
            return result, pool.worker_pids()

    result, pids = asyncio.run(run())
    assert len(result.rows) == 5
    assert_gone(pids, within_s=1.0)
    logged = [r.getMessage() + str(r.exc_text) for r in caplog.records]
    assert any("login success" in m for m in logged)  # the client's output is logged...
    assert not [m for m in logged if SECRET in m]  # ...and the password never


@pytest.mark.parametrize(
    ("user", "password", "code", "cause"),
    [
        ("baduser", SECRET, "10001002", "wrong user name or password"),
        ("someone", "", "10001009", "password empty"),  # the client's own check
    ],
    ids=["rejected user", "empty password"],
)
def test_bad_credentials_fail_the_start_clearly(
    sim: SimulatorServer,
    caplog: pytest.LogCaptureFixture,
    user: str,
    password: str,
    code: str,
    cause: str,
) -> None:
    caplog.set_level("DEBUG", logger="stock_pipeline")
    config = pool_config(sim, concurrency=2, user=user, password=password)

    async def run() -> tuple[BaostockPool, PermanentError, float]:
        pool = BaostockPool(config)
        started = time.perf_counter()
        with pytest.raises(PermanentError) as caught:
            await pool.start()
        return pool, caught.value, time.perf_counter() - started

    pool, error, elapsed = asyncio.run(run())
    message = str(error)
    assert f"cannot log in to {sim.host}:{sim.port} as user {user!r}: {cause}" in message
    assert "STOCK_PIPELINE_BAOSTOCK_USER and STOCK_PIPELINE_BAOSTOCK_PASSWORD" in message
    assert error.error_code == code and message.count(f"[{code}]") == 1
    assert elapsed < 2.0, "a credential error is permanent: no retries"
    assert pool.worker_pids() == []
    assert not [r for r in caplog.records if SECRET in r.getMessage()]
    assert SECRET not in message


def test_query_frame_converts_in_the_worker() -> None:
    """Long replies cross the pipe as typed frames, small ones as rows; both match query(). A
    malformed value fails the request for good (never NULL, never retried)."""
    config = SimulatorConfig(seed=7, n_codes=300, fault_codes={"sz.000001": "bad_value"})
    with SimulatorServer(config) as garbling:

        async def run() -> tuple[Any, ...]:
            async with BaostockPool(pool_config(garbling, concurrency=2)) as pool:
                year = kline("sh.600000", "2023-01-01", "2023-12-31")
                raw = await pool.query(KLINE, **year)
                typed = await pool.query_frame(KLINE, **year)
                small = await pool.query_frame(
                    KLINE, **kline("sh.600000", "2024-06-03", "2024-06-07")
                )
                requests = pool.stats.requests
                with pytest.raises(PermanentError) as garbled:
                    await pool.query_frame(KLINE, **{**year, "code": "sz.000001"})
                assert pool.stats.requests == requests + 1, "malformed values are not retried"
                return raw, typed, small, garbled.value

        raw, typed, small, garbled = asyncio.run(run())
    assert isinstance(typed, FrameResult) and len(raw.rows) >= FRAME_MIN_ROWS
    assert typed.frame is not None and typed.rows == [] and typed.convert_s > 0
    assert typed.row_count == len(raw.rows) and typed.fields == raw.fields
    assert str(typed.frame["trade_date"].dtype) == "datetime64[ns]"
    assert str(typed.frame["volume"].dtype) == "Int64"
    # Exactly what converting query()'s rows in the parent gives.
    pd.testing.assert_frame_equal(typed.frame, to_frame(KLINE, raw.fields, raw.rows))
    assert small.frame is None and len(small.rows) == 5 and len(small.to_frame()) == 5
    assert "malformed values" in str(garbled) and "'N/A'" in str(garbled)
    assert "sz.000001" in str(garbled)


_CHILD = textwrap.dedent(
    """
    import asyncio, signal, sys
    from stock_pipeline.baostock.pool import BaostockPool, PoolConfig

    # Ctrl-C as a terminal delivers it, whatever disposition the test process passed on.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    async def main():
        config = PoolConfig(endpoint=(sys.argv[1], int(sys.argv[2])), concurrency=3, qps=1e5)
        async with BaostockPool(config) as pool:
            print(" ".join(map(str, pool.worker_pids())), flush=True)
            while True:
                await pool.query("query_history_k_data_plus", code="sh.600000",
                                 fields="date,code,close", start_date="2015-01-05",
                                 end_date="2024-06-07", frequency="d", adjustflag="3")

    if __name__ == "__main__":
        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """
)


def _start_child(sim: SimulatorServer) -> tuple[subprocess.Popen[str], list[int]]:
    """A process running an async pool under asyncio.run, querying in a loop."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, sim.host, str(sim.port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    pids = [int(p) for p in line.split()]
    assert len(pids) == 3, f"child did not start its pool: {line!r}"
    return child, pids


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ctrl_c_logs_out_and_stops_every_worker(sim: SimulatorServer) -> None:
    """SIGINT to a process busy with an async pool: asyncio.run cancels the work, the pool's
    `async with` logs every session out and every worker process exits."""
    before = sim.stats.requests["logout"]
    inherited = signal.getsignal(signal.SIGINT)
    child, pids = _start_child(sim)
    time.sleep(0.5)  # busy querying
    child.send_signal(signal.SIGINT)
    try:
        out, _ = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        raise AssertionError(
            f"the child ignored SIGINT for 60 s (the test process's SIGINT: {inherited!r})"
        ) from None
    assert "interrupted" in out
    assert_gone(pids)
    assert sim.stats.requests["logout"] - before == 3


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_workers_exit_when_the_parent_is_killed(sim: SimulatorServer) -> None:
    child, pids = _start_child(sim)
    child.kill()
    child.wait(10)
    assert child.stdout is not None
    child.stdout.close()
    assert_gone(pids, within_s=5.0)


def test_unreachable_server_fails_the_start_clearly(sim: SimulatorServer) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = PoolConfig(
        endpoint=("127.0.0.1", port),
        concurrency=2,
        qps=1e5,
        request_timeout_s=2.0,
        max_retries=1,
        backoff_base_s=0.05,
    )

    async def run() -> BaostockPool:
        pool = BaostockPool(config)
        started = time.perf_counter()
        with pytest.raises(TransientError, match=f"cannot log in to 127.0.0.1:{port}"):
            await pool.start()
        assert time.perf_counter() - started < 3.0
        return pool

    pool = asyncio.run(run())
    assert pool.worker_pids() == []


def test_connection_lost_error_is_transient() -> None:
    assert ConnectionLost("x").transient and RequestTimeout("x").transient
    assert not PermanentError("x").transient
