"""Batch fetches against the simulator: typed results, per-code failures, retries, progress logs."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import threading
from collections.abc import Iterator
from datetime import date
from typing import Any

import pandas as pd
import pytest

from stock_pipeline.baostock.apis import K_DAILY_FIELDS, K_INDEX_FIELDS, Field
from stock_pipeline.baostock.fetch import (
    FetchResult,
    _foreign_code,
    fetch_daily_bars,
    fetch_many,
    fetch_table,
)
from stock_pipeline.baostock.pool import BaostockPool, FrameResult, PoolConfig
from stock_pipeline.baostock.simulator import SimulatorConfig, SimulatorProcess, SimulatorServer
from stock_pipeline.baostock.simulator.server import FaultContext
from stock_pipeline.baostock.typed import to_frame
from stock_pipeline_tests.helpers import assert_gone, fast_pool_config

START, END = date(2024, 5, 6), date(2024, 6, 28)


def fast_config(sim: SimulatorServer | SimulatorProcess, **overrides: Any) -> PoolConfig:
    """The shared fast settings with this module's shorter backoffs."""
    backoff = {"backoff_base_s": 0.02, "backoff_max_s": 0.1, "blacklist_backoff_s": 0.3}
    return fast_pool_config(sim, **{**backoff, **overrides})


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(seed=11, n_codes=200, latency_ms=1.0)) as s:
        yield s


@pytest.fixture(scope="module")
def codes(sim: SimulatorServer) -> list[str]:
    return sim.market.codes(START)[:120]


def test_daily_bars_are_typed_and_match_the_market(
    sim: SimulatorServer, codes: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="stock_pipeline.baostock")

    async def run() -> FetchResult:
        async with BaostockPool(fast_config(sim)) as pool:
            return await fetch_daily_bars(pool, codes, START, END, batch_size=50)

    result = asyncio.run(run())
    assert result.failures == {} and result.requested == len(codes) and result.batches == 3
    frame = result.frame
    expected = pd.concat(
        [pd.DataFrame(sim.market.daily_columns(c, START, END, "3")) for c in codes],
        ignore_index=True,
    )
    assert len(frame) == len(expected) > 30 * len(codes)
    assert str(frame["trade_date"].dtype) == "datetime64[ns]"
    assert str(frame["volume"].dtype) == "Int64" and str(frame["is_st"].dtype) == "boolean"
    got = frame.sort_values(["code", "trade_date"]).reset_index(drop=True)
    want = expected.sort_values(["code", "date"]).reset_index(drop=True)
    assert got["code"].tolist() == want["code"].tolist()
    assert got["trade_date"].dt.strftime("%Y-%m-%d").tolist() == want["date"].tolist()
    closes = pd.to_numeric(want["close"].replace("", None), errors="raise")
    pd.testing.assert_series_equal(got["close"], closes.astype("float64"), check_names=False)
    assert got["trade_status"].tolist() == (want["tradestatus"] == "1").tolist()

    messages = [r.getMessage() for r in caplog.records]
    batch = re.compile(
        r"^\[p0\.daily_bars\] batch (\d)/3: (\d+)/(\d+) ok, 0 failed, \d+\.\ds, \d+ codes/s"
    )
    batches = sorted(m.group(1) for m in map(batch.match, messages) if m)
    assert batches == ["1", "2", "3"]
    assert any(m.startswith("[p0.daily_bars] done: 120/120 ok, 0 failed") for m in messages)
    step = re.compile(r"^\[p0\.daily_bars\] s[hz]\.\d{6}: \d+ rows, .*pool_wait=.*api=")
    per_request = [m for m in messages if step.match(m)]
    assert len(per_request) == len(codes)


@pytest.mark.parametrize(
    ("start", "end"),
    [(START, END), (date(2023, 1, 1), END)],
    ids=["short: rows converted per batch", "long: frames converted by the workers"],
)
def test_failures_are_reported_per_code_and_never_abort(
    sim: SimulatorServer, start: date, end: date
) -> None:
    """Bad code, malformed values, a short row, a dropped connection, a persistent error: each
    code ends up fetched or failed with its reason, and every other code is fetched, typed and
    complete."""
    good = sim.market.codes(START)[:40]
    flaky, broken, garbled, dropped, ragged = good[:5]
    calls: dict[str, int] = {}
    lock = threading.Lock()

    def hook(ctx: FaultContext) -> str | None:
        with lock:
            calls[ctx.code] = calls.get(ctx.code, 0) + 1
            count = calls[ctx.code]
        if ctx.code == flaky and count <= 3:  # beats the pool's 3 attempts, not the batch retry
            return "error"
        if ctx.code == broken:
            return "error"
        if ctx.code == garbled:
            return "bad_value"
        if ctx.code == dropped:
            return "drop"
        if ctx.code == ragged:
            return "missing_field"
        return None

    faulty_config = SimulatorConfig(seed=11, n_codes=200, fault_hook=hook)
    with SimulatorServer(faulty_config) as faulty:

        async def run() -> FetchResult:
            async with BaostockPool(fast_config(faulty)) as pool:
                result = await fetch_daily_bars(
                    pool, [*good, "sh.999999"], start, end, batch_size=20
                )
                return result

        result = asyncio.run(run())
        fetched_codes = sorted(set(good) - {broken, garbled, dropped, ragged})
        expected = pd.concat(
            [pd.DataFrame(faulty.market.daily_columns(c, start, end, "3")) for c in fetched_codes],
            ignore_index=True,
        )

    assert set(result.failures) == {broken, garbled, dropped, ragged, "sh.999999"}
    assert "do not have 18 values" in result.failures[ragged]
    assert "invalid security code" in result.failures["sh.999999"]
    assert "server system error" in result.failures[broken]
    assert "gave up after 3 attempts" in result.failures[broken]
    assert (
        "N/A" in result.failures[garbled]
        and "query_history_k_data_plus" in result.failures[garbled]
    )
    assert "closed the connection" in result.failures[dropped]
    assert calls[flaky] == 4 and calls[broken] == 6  # 3 pool attempts, then 1 (+2) at batch end
    assert result.retried == 3  # flaky, broken, dropped: transient; bad code/values are not
    got = result.frame.sort_values(["code", "trade_date"]).reset_index(drop=True)
    want = to_frame(
        "query_history_k_data_plus", [f.name for f in K_DAILY_FIELDS], expected.values.tolist()
    )
    pd.testing.assert_frame_equal(got, want.sort_values(["code", "trade_date"], ignore_index=True))


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_faults_in_a_server_process_cost_bounded_time_and_leave_nothing(
    sim: SimulatorServer,
) -> None:
    """Silent, dropping and blacklisting codes against a simulator in its own process: each
    costs at most its timeout or pause per attempt, ends up failed with its reason, the other
    codes are fetched, and neither workers nor the server process survive."""
    good = sim.market.codes(START)[:30]
    silent, dropped, refused = good[5], good[6], good[7]
    faults = {silent: "silent", dropped: "drop", refused: "blacklist"}
    faulty_config = SimulatorConfig(seed=11, n_codes=200, fault_codes=faults)
    with SimulatorProcess(faulty_config) as faulty:
        server_pid = faulty.pid
        assert server_pid is not None

        async def run() -> tuple[FetchResult, list[int]]:
            pool_config = fast_config(faulty, request_timeout_s=0.5, max_retries=1)
            async with BaostockPool(pool_config) as pool:
                result = await fetch_daily_bars(pool, good, START, END)
                return result, pool.worker_pids()

        result, pids = asyncio.run(run())
    assert set(result.failures) == {silent, dropped, refused}
    assert "timed out" in result.failures[silent]
    assert "closed the connection" in result.failures[dropped]
    assert "blacklisted" in result.failures[refused]
    assert set(result.frame["code"]) == set(good) - set(faults)
    # Per code: 2 attempts in the pool, then 2 more at the end of the batch. Silent: 4 socket
    # timeouts of 0.5 s; blacklist: 4 pool-wide pauses of 0.3 s; drops: immediate.
    assert result.timings.wall_s < 4 * 0.5 + 4 * 0.3 + 2.0, result.timings
    assert_gone([*pids, server_pid], within_s=2.0)


def test_other_apis_and_single_requests(sim: SimulatorServer, codes: list[str]) -> None:
    async def run() -> tuple[pd.DataFrame, pd.DataFrame, FetchResult, FetchResult]:
        async with BaostockPool(fast_config(sim)) as pool:
            days = await fetch_table(
                pool, "query_trade_dates", start_date="2024-06-01", end_date="2024-06-30"
            )
            listed = await fetch_table(pool, "query_all_stock", day="2024-06-03")
            factors = await fetch_many(
                pool,
                "query_adjust_factor",
                {
                    c: {"code": c, "start_date": "2015-01-01", "end_date": "2024-12-31"}
                    for c in codes
                },
                label="p0.adjust_factor",
            )
            index = await fetch_daily_bars(
                pool, ["sh.000001"], START, END, fields=K_INDEX_FIELDS, label="p3.index_daily"
            )
            return days, listed, factors, index

    days, listed, factors, index = asyncio.run(run())
    assert len(days) == 30 and days["is_trading_day"].dtype == "boolean"
    assert days["is_trading_day"].sum() == len(sim.market.trading_days(date(2024, 6, 1), END))
    assert set(sim.market.codes(date(2024, 6, 3))) <= set(listed["code"])
    assert factors.failures == {}
    assert list(factors.frame.columns) == [
        "code",
        "divid_operate_date",
        "fore_adjust_factor",
        "back_adjust_factor",
        "adjust_factor",
    ]
    assert str(factors.frame["divid_operate_date"].dtype) == "datetime64[ns]"
    assert index.failures == {} and list(index.frame.columns) == [f.column for f in K_INDEX_FIELDS]
    assert len(index.frame) == len(sim.market.trading_days(START, END))


def test_batches_can_be_streamed_to_a_sink(sim: SimulatorServer, codes: list[str]) -> None:
    received: list[pd.DataFrame] = []

    async def sink(frame: pd.DataFrame) -> None:
        await asyncio.sleep(0.01)  # e.g. a COPY into PostgreSQL
        received.append(frame)

    async def run() -> FetchResult:
        async with BaostockPool(fast_config(sim)) as pool:
            return await fetch_daily_bars(
                pool, codes[:30], START, END, batch_size=10, on_batch=sink
            )

    result = asyncio.run(run())
    assert len(received) == 3 and len(result.frame) == 0
    assert result.rows == sum(len(f) for f in received) > 0
    assert set(pd.concat(received)["code"]) == set(codes[:30])


def test_streamed_batches_release_their_replies(sim: SimulatorServer, codes: list[str]) -> None:
    """Memory stays bounded over long ranges: once a batch is delivered, its replies go (they
    were kept to the end once, 1.2 GB for a 5-year market)."""
    live: list[int] = []

    def sink(frame: pd.DataFrame) -> None:
        gc.collect()
        live.append(sum(isinstance(o, FrameResult) for o in gc.get_objects()))

    async def run() -> FetchResult:
        async with BaostockPool(fast_config(sim, concurrency=2)) as pool:
            return await fetch_daily_bars(
                pool, codes, date(2023, 1, 3), END, batch_size=10, on_batch=sink
            )

    result = asyncio.run(run())
    assert result.failures == {} and len(live) == len(codes) // 10
    # The batch being delivered plus the requests already in flight, never all of them.
    assert max(live) <= 10 + 2 * 2 * 2, live


def test_empty_fetch_has_typed_columns(sim: SimulatorServer) -> None:
    async def run() -> FetchResult:
        async with BaostockPool(fast_config(sim, concurrency=1)) as pool:
            return await fetch_daily_bars(pool, [], START, END)

    result = asyncio.run(run())
    assert result.requested == 0 and len(result.frame) == 0
    assert str(result.frame["trade_date"].dtype) == "datetime64[ns]"


def test_unknown_field_fails_every_key_and_returns_the_failures(sim: SimulatorServer) -> None:
    """A field the catalog does not describe: BaoStock refuses every request (10004012); the
    fetch still returns each key's failure and an empty frame of the known columns."""
    fields = (*K_INDEX_FIELDS[:3], Field("vwap", "float", "vwap"))
    codes = sim.market.codes(START)[:5]

    async def run() -> FetchResult:
        async with BaostockPool(fast_config(sim, concurrency=2)) as pool:
            return await fetch_daily_bars(pool, codes, START, END, fields=fields, batch_size=2)

    result = asyncio.run(run())
    assert set(result.failures) == set(codes) and result.succeeded == 0
    assert all("invalid field" in reason for reason in result.failures.values())
    assert len(result.frame) == 0 and result.retried == 0
    assert list(result.frame.columns) == [f.column for f in K_INDEX_FIELDS[:3]]


def _frame_result(fields: list[str], rows: list[list[str]], *, convert: bool) -> FrameResult:
    kline = "query_history_k_data_plus"
    return FrameResult(
        api=kline,
        params={"code": "sh.600000"},
        fields=fields,
        frame=to_frame(kline, fields, rows) if convert else None,
        rows=[] if convert else rows,
    )


@pytest.mark.parametrize("convert", [True, False], ids=["frame", "rows"])
def test_rows_of_another_code_are_caught(convert: bool) -> None:
    """The cross-talk defence reads the code column of worker frames and of raw rows alike."""
    fields = ["date", "code", "close"]
    own = [["2024-06-03", "sh.600000", "10.0"], ["2024-06-04", "sh.600000", "10.1"]]
    foreign = [*own, ["2024-06-05", "sz.000001", "9.0"]]
    assert _foreign_code(_frame_result(fields, own, convert=convert)) is None
    assert _foreign_code(_frame_result(fields, foreign, convert=convert)) == "sz.000001"
    assert (
        _foreign_code(_frame_result(["date", "close"], [["2024-06-03", "1"]], convert=convert))
        is None
    )


def test_key_column_says_what_each_row_answers(sim: SimulatorServer) -> None:
    """query_all_stock rows do not carry their day: key_column adds it, for frames converted by
    the workers (a day lists ~200 securities) and rows converted per batch (a month of dates)."""
    days = [d.isoformat() for d in sim.market.trading_days(date(2024, 6, 3), date(2024, 6, 7))]
    months = {"2024-05": ("2024-05-01", "2024-05-31"), "2024-06": ("2024-06-01", "2024-06-30")}

    async def run() -> tuple[FetchResult, FetchResult, dict[str, pd.DataFrame]]:
        async with BaostockPool(fast_config(sim, concurrency=2)) as pool:
            listed = await fetch_many(
                pool,
                "query_all_stock",
                {day: {"day": day} for day in days},
                batch_size=2,
                key_column="trade_date",
            )
            calendar = await fetch_many(
                pool,
                "query_trade_dates",
                {m: {"start_date": a, "end_date": b} for m, (a, b) in months.items()},
                key_column="month",
            )
            singles = {day: await fetch_table(pool, "query_all_stock", day=day) for day in days}
            with pytest.raises(ValueError, match="already a column"):
                await fetch_many(pool, "query_all_stock", {}, key_column="code")
            return listed, calendar, singles

    listed, calendar, singles = asyncio.run(run())
    assert list(listed.frame.columns) == ["trade_date", "code", "trade_status", "code_name"]
    assert str(listed.frame["trade_date"].dtype) == "str"
    for day, single in singles.items():
        rows = listed.frame[listed.frame["trade_date"] == day].drop(columns="trade_date")
        assert len(single) >= 100  # big enough to be converted by the worker
        pd.testing.assert_frame_equal(rows.reset_index(drop=True), single)
    by_month = calendar.frame.groupby("month")["calendar_date"].agg(["min", "max", "size"])
    assert by_month["size"].to_dict() == {"2024-05": 31, "2024-06": 30}
    assert (by_month["min"].dt.strftime("%Y-%m") == by_month.index).all()
