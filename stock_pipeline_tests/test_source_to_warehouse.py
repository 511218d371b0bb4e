"""End to end through the Dagster resources: simulator -> real baostock client in the session
pool -> typed frame -> COPY writer -> migrated warehouse. Nothing mocked."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import date

import dagster as dg
import psycopg2
import pytest

from stock_pipeline.baostock.fetch import fetch_daily_bars
from stock_pipeline.baostock.simulator import SimulatorConfig, SimulatorServer
from stock_pipeline.definitions import defs
from stock_pipeline.resources import BaostockResource, WarehouseResource
from stock_pipeline.warehouse import writer

START, END = date(2024, 12, 2), date(2025, 1, 10)  # crosses a year: two partitions


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(seed=11, n_codes=60)) as sim:
        yield sim


def _checksum(dsn: str) -> tuple[int, str]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), md5(string_agg((t.code, t.trade_date, t.close, t.volume, "
            "t.trade_status, t.is_st)::text, ',' ORDER BY t.code, t.trade_date)) "
            "FROM raw_k_daily t"
        )
        return cur.fetchone()


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)


def test_daily_bars_flow_into_raw_k_daily(simulator: SimulatorServer, migrated_dsn: str):
    baostock = BaostockResource(endpoint=simulator.endpoint, concurrency=2, qps=500)
    warehouse = WarehouseResource(database_url=migrated_dsn)
    codes = simulator.market.codes(START)[:30]

    async def sync() -> int:
        async with baostock.pool() as pool:
            fetched = await fetch_daily_bars(pool, codes, START, END)
        assert fetched.failures == {}
        async with warehouse.open() as wh:
            result = await writer.replace_window(
                wh.copy_pool, "raw_k_daily", fetched.frame, start=START, end=END, codes=codes
            )
        return result.rows

    written = asyncio.run(sync())
    expected = sum(len(simulator.market.daily_bars(c, START, END)) for c in codes)
    assert written == expected > 0
    first = _checksum(migrated_dsn)
    assert first[0] == expected

    # The same sync again changes nothing (idempotent window replace).
    asyncio.run(sync())
    assert _checksum(migrated_dsn) == first

    # Values arrive typed: the simulator's close for one bar, and suspensions as NULL prices.
    bar = simulator.market.daily_bars(codes[0], START, END)[0]
    with psycopg2.connect(migrated_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT close, trade_status FROM raw_k_daily WHERE code = %s AND trade_date = %s",
            (codes[0], bar["date"]),
        )
        close, status = cur.fetchone()
        assert status == (bar["tradestatus"] == "1")
        assert close == (float(bar["close"]) if bar["close"] else None)
        cur.execute("SELECT count(*) FROM raw_k_daily WHERE NOT trade_status AND close IS NOT NULL")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'raw_k_daily'::regclass")
        assert cur.fetchone()[0] == 2  # 2024 and 2025 partitions, created on demand
