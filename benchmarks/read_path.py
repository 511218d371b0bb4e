"""Benchmark: the strategies' read path, 60 trading days of one code's bars and a code's latest
values, from Redis and from PostgreSQL, against the original system's per-stock read_sql.

    uv run python benchmarks/read_path.py [--codes 5000] [--years 5] [--requests 10000]
                                          [--database-url URL] [--redis-url URL]

Builds a warehouse of --years x --codes in a scratch database (migrated): synthetic stock_daily
and technical_daily rows written with the COPY writer, 2% suspended days (NULL prices), a
factor change a year per code. All years but the last 60 trading days go in whole, as a
backfill leaves them (each code's rows together on disk); the last 60 days go in day by day, as
the daily runs add them (a code's recent rows on 60 different pages). Then the cache is
refreshed into Redis (--redis-url, STOCK_PIPELINE_REDIS_URL or the embedded server) under a
prefix of its own, removed at the end, and each method answers --requests random requests
through stock_pipeline.read.MarketReader, one at a time (latency, not throughput):

  bars60_pg       bars(code, start, end) from PostgreSQL (Redis bypassed): random 60-trading-day
                  windows over all the years;
  bars60_redis    bars(code, start) from Redis: the cached 60 days (what the cache serves);
  bars60_*_qfq    the same, forward-adjusted;
  latest_*        latest(code) from Redis, and from PostgreSQL;
  baseline        the original system: pandas.read_sql of the 60 days of one code through a
                  SQLAlchemy engine (SELECT * ... WHERE code = :code AND trade_date BETWEEN),
                  the same windows as bars60_pg.

  floor_*         a bare round trip through the same drivers (redis-py PING, psycopg2
                  SELECT 1): what the machine allows, whatever the reader does.

A sample of requests is checked: the Redis frame equals the PostgreSQL one. Before measuring,
the servers settle (a Redis snapshot, a PostgreSQL checkpoint). Latencies are wall-clock per
call (perf_counter), percentiles over all requests after a warm-up; the methods take turns in
blocks of 500 requests, so load from other processes falls on all alike (load_avg: the 1-minute
load average before and after, on a machine of os.cpu_count() cores). Prints one
JSON object per line; the last line is the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import redis
from common import emit, redis_server, scratch_database, server_url
from sqlalchemy import create_engine, text

from stock_pipeline.cache.refresh import RefreshResult, refresh_cache
from stock_pipeline.read import MarketReader
from stock_pipeline.settings import Settings
from stock_pipeline.warehouse import migrate, writer
from stock_pipeline.warehouse.engine import Warehouse
from stock_pipeline.warehouse.tables import INDICATOR_COLUMNS
from stock_pipeline.warehouse.urls import display_url, sqlalchemy_url

WINDOW = 60  # trading days a request asks for; also the cached bars
DAILY_TAIL = 60  # the last days loaded one by one, as daily runs do
WARMUP = 200
BLOCK = 500  # requests a method answers before the next one takes its turn
TARGETS_MS = {"bars60_pg_p99_ms": 10.0, "bars60_redis_p99_ms": 1.0, "latest_redis_p99_ms": 1.0}


@dataclasses.dataclass(frozen=True)
class Market:
    codes: np.ndarray
    days: np.ndarray  # datetime64[ns], ascending


def make_market(n_codes: int, years: int) -> Market:
    codes = np.array(
        sorted(
            f"{('sh', 'sz')[i % 2]}.{600000 + i if i % 2 == 0 else i:06d}" for i in range(n_codes)
        )
    )
    end = pd.Timestamp("2024-12-31")
    days = pd.bdate_range(end - pd.DateOffset(years=years) + pd.Timedelta(days=1), end)
    return Market(codes, days.values.astype("datetime64[ns]"))


def rows_for(market: Market, days: np.ndarray, first_day: int, rng: np.random.Generator):
    """(stock_daily, technical_daily) rows of every code on `days` (in key order); the factor
    of a code steps up on day d when (d + code) % 250 == 0: one change a year."""
    n_codes, n_days = len(market.codes), len(days)
    n = n_codes * n_days
    day_index = first_day + np.tile(np.arange(n_days), n_codes)
    code_index = np.repeat(np.arange(n_codes), n_days)
    factor = 1.1 ** ((day_index + code_index) // 250)
    close = np.round(rng.uniform(3, 80, n), 2)
    suspended = rng.random(n) < 0.02
    price = np.where(suspended, np.nan, close)
    volume = pd.array(rng.integers(1, 10**9, n), dtype="Int64")
    volume[suspended] = pd.NA
    bars = pd.DataFrame(
        {
            "code": np.repeat(market.codes, n_days),
            "trade_date": np.tile(days, n_codes),
            "open": np.round(price * 0.99, 2),
            "high": np.round(price * 1.02, 2),
            "low": np.round(price * 0.97, 2),
            "close": price,
            "pre_close": np.round(close * 1.001, 2),
            "pct_chg": np.where(suspended, np.nan, np.round(rng.normal(0, 2, n), 4)),
            "volume": volume,
            "amount": np.where(suspended, np.nan, np.round(close * 1e6, 2)),
            "turnover": np.round(rng.uniform(0, 8, n), 4),
            "trade_status": pd.array(~suspended, dtype="boolean"),
            "is_st": pd.array(rng.random(n) < 0.03, dtype="boolean"),
            "pe_ttm": np.round(rng.normal(30, 80, n), 4),
            "pb_mrq": np.round(rng.uniform(0.3, 20, n), 4),
            "ps_ttm": np.round(rng.uniform(0.1, 30, n), 4),
            "pcf_ncf_ttm": np.round(rng.normal(0, 100, n), 4),
            "back_adjust_factor": factor,
        }
    )
    indicators = pd.DataFrame(
        rng.normal(0, 50, (n, len(INDICATOR_COLUMNS))), columns=list(INDICATOR_COLUMNS)
    )
    indicators.insert(0, "code", bars["code"])
    indicators.insert(1, "trade_date", bars["trade_date"])
    return bars, indicators


async def build_warehouse(dsn: str, market: Market, settings: Settings) -> dict[str, Any]:
    """The synthetic years written through the COPY writer; (rows, seconds)."""
    began = time.perf_counter()
    rng = np.random.default_rng(7)
    rows = 0
    async with await Warehouse.connect(settings, url=dsn) as wh:
        days = market.days
        backfill, tail = days[:-DAILY_TAIL], days[-DAILY_TAIL:]
        years = pd.DatetimeIndex(backfill).year
        for year in np.unique(years):
            chunk = backfill[years == year]
            first = int(np.searchsorted(days, chunk[0]))
            rows += await _write(wh, market, chunk, first, rng, settings)
        for i in range(len(tail)):
            rows += await _write(wh, market, tail[i : i + 1], len(backfill) + i, rng, settings)
        await wh.copy_pool.execute("VACUUM ANALYZE stock_daily")
        await wh.copy_pool.execute("VACUUM ANALYZE technical_daily")
    return {"rows_per_table": rows, "build_s": round(time.perf_counter() - began, 1)}


async def _write(
    wh: Warehouse,
    market: Market,
    days: np.ndarray,
    first: int,
    rng: np.random.Generator,
    settings: Settings,
) -> int:
    bars, indicators = rows_for(market, days, first, rng)
    start, end = pd.Timestamp(days[0]).date(), pd.Timestamp(days[-1]).date()
    for table, frame in (("stock_daily", bars), ("technical_daily", indicators)):
        await writer.replace_window(
            wh.copy_pool,
            table,
            frame,
            start=start,
            end=end,
            chunk_rows=settings.copy_chunk_rows,
            streams=settings.copy_streams,
        )
    return len(bars)


async def refresh(dsn: str, redis_url: str, prefix: str, settings: Settings) -> RefreshResult:
    async with await Warehouse.connect(settings, url=dsn) as wh:
        return await refresh_cache(wh, redis_url, prefix=prefix, bars=WINDOW, ttl_s=3600)


def settle(dsn: str, redis_url: str) -> None:
    """Let the servers finish what the load and the refresh set off before measuring: a Redis
    snapshot (its save rules would start one mid-run after the refresh's writes) and a
    PostgreSQL checkpoint."""
    client = redis.Redis.from_url(redis_url)
    try:
        try:
            client.bgsave()
        except redis.ResponseError:
            pass  # one is already running: wait for it below
        while client.info("persistence").get("rdb_bgsave_in_progress"):
            time.sleep(0.1)
    finally:
        client.close()
    engine = create_engine(sqlalchemy_url(dsn, "psycopg2"))
    try:
        with engine.connect() as conn:
            conn.execute(text("CHECKPOINT"))
    finally:
        engine.dispose()


def latencies_ms(methods: dict[str, Callable[[int], Any]], n: int) -> dict[str, np.ndarray]:
    """Milliseconds of call(i), i in range(n), for every method after WARMUP calls each. The
    methods take turns in blocks of BLOCK requests, so a burst of load from another process
    on the machine lands on all of them alike rather than on one."""
    for call in methods.values():
        for i in range(min(WARMUP, n)):
            call(i)
    times = {name: np.empty(n) for name in methods}
    for low in range(0, n, BLOCK):
        for name, call in methods.items():
            for i in range(low, min(low + BLOCK, n)):
                began = time.perf_counter()
                call(i)
                times[name][i] = time.perf_counter() - began
    return {name: values * 1000 for name, values in times.items()}


def percentiles(name: str, times: np.ndarray) -> dict[str, float]:
    p50, p99 = np.percentile(times, [50, 99])
    record = {
        "method": name,
        "requests": len(times),
        "p50_ms": round(float(p50), 3),
        "p99_ms": round(float(p99), 3),
        "max_ms": round(float(times.max()), 3),
    }
    emit(record)
    return {f"{name}_p50_ms": record["p50_ms"], f"{name}_p99_ms": record["p99_ms"]}


def measure(
    market: Market, settings: Settings, dsn: str, requests: int, seed: int = 11
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    dates = [pd.Timestamp(d).date() for d in market.days]
    codes = [str(c) for c in rng.choice(market.codes, requests)]
    starts = rng.integers(0, len(dates) - WINDOW + 1, requests)
    windows = [(dates[s], dates[s + WINDOW - 1]) for s in starts]
    cached_start = dates[-WINDOW]
    results: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    with (
        MarketReader(settings) as cache,
        MarketReader(settings, use_cache=False) as warehouse,
        _floors(settings) as floors,
    ):
        check_frames(cache, warehouse, codes, cached_start)
        served = cache.served
        methods: dict[str, Callable[[int], Any]] = {
            "bars60_pg": lambda i: warehouse.bars(codes[i], *windows[i]),
            "bars60_redis": lambda i: cache.bars(codes[i], cached_start),
            "bars60_pg_qfq": lambda i: warehouse.bars(codes[i], *windows[i], adjust="qfq"),
            "bars60_redis_qfq": lambda i: cache.bars(codes[i], cached_start, adjust="qfq"),
            "latest_redis": lambda i: cache.latest(codes[i]),
            "latest_pg": lambda i: warehouse.latest(codes[i]),
            "baseline": _baseline(dsn, codes, windows),
            **floors,
        }
        for name, times in latencies_ms(methods, requests).items():
            results |= percentiles(name, times)
        after = cache.served
        results["redis_share"] = round(
            (after["redis"] - served["redis"]) / max(1, sum(after.values()) - sum(served.values())),
            4,
        )
    results["load_after"] = os.getloadavg()[0]
    return results


def check_frames(
    cache: MarketReader, warehouse: MarketReader, codes: list[str], cached_start: dt.date
) -> None:
    """Frames alike whichever store answers, on a sample of the requests."""
    for i in range(0, len(codes), max(1, len(codes) // 50)):
        for adjust in ("none", "qfq"):
            pd.testing.assert_frame_equal(
                cache.bars(codes[i], cached_start, adjust=adjust),
                warehouse.bars(codes[i], cached_start, adjust=adjust),
            )
        pd.testing.assert_frame_equal(cache.latest(codes[i]), warehouse.latest(codes[i]))
    assert len(cache.bars(codes[0], cached_start)) == WINDOW


@contextlib.contextmanager
def _floors(settings: Settings) -> Iterator[dict[str, Callable[[int], Any]]]:
    """The floor under any read on this machine: a bare round trip to each server through the
    same drivers (redis-py PING, psycopg2 SELECT 1)."""
    client = redis.Redis(connection_pool=redis.ConnectionPool.from_url(settings.redis_url))
    engine = create_engine(sqlalchemy_url(settings.database_url, "psycopg2"))
    connection = engine.raw_connection()
    cursor = connection.cursor()

    def select_one(_: int) -> Any:
        cursor.execute("SELECT 1")
        return cursor.fetchall()

    try:
        yield {"floor_redis_ping": lambda _: client.ping(), "floor_pg_select1": select_one}
    finally:
        cursor.close()
        connection.close()
        engine.dispose()
        client.close()


def _baseline(dsn: str, codes: list[str], windows: list[tuple[dt.date, dt.date]]):
    """The original system's read: per stock, pandas.read_sql through a SQLAlchemy engine."""
    engine = create_engine(sqlalchemy_url(dsn, "psycopg2"), pool_size=5)
    sql = text(
        "SELECT * FROM stock_daily WHERE code = :code AND trade_date BETWEEN :start AND :end "
        "ORDER BY trade_date"
    )

    def read(i: int) -> pd.DataFrame:
        start, end = windows[i]
        return pd.read_sql(sql, engine, params={"code": codes[i], "start": start, "end": end})

    return read


def remove_keys(redis_url: str, prefix: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for low in range(0, len(keys), 1000):
            client.delete(*keys[low : low + 1000])
        return len(keys)
    finally:
        client.close()


def run(args: argparse.Namespace, settings: Settings, url: str, redis_url: str) -> dict[str, Any]:
    market = make_market(args.codes, args.years)
    prefix = f"bench:{uuid.uuid4().hex[:8]}"

    async def build(scratch: str) -> tuple[dict[str, Any], RefreshResult]:
        await asyncio.to_thread(migrate.upgrade, scratch)
        built = await build_warehouse(scratch, market, settings)
        return built, await refresh(scratch, redis_url, prefix, settings)

    async def go() -> dict[str, Any]:
        async with scratch_database(url, "read_path") as scratch:
            built, refreshed = await build(scratch)
            emit({"setup": "read_path", "codes": args.codes, "days": len(market.days), **built})
            emit({"refresh": refreshed.metadata()})
            reader_settings = dataclasses.replace(
                settings, database_url=scratch, redis_url=redis_url, cache_prefix=prefix
            )
            try:
                await asyncio.to_thread(settle, scratch, redis_url)
                measured = await asyncio.to_thread(
                    measure, market, reader_settings, scratch, args.requests
                )
            finally:
                remove_keys(redis_url, prefix)
            return {"built": built, "refresh": refreshed, "measured": measured}

    outcome = asyncio.run(go())
    measured, refreshed = outcome["measured"], outcome["refresh"]
    summary = {
        "summary": "read_path",
        **{k: measured[k] for k in ("bars60_pg_p50_ms", "bars60_pg_p99_ms")},
        **{k: measured[k] for k in ("bars60_redis_p50_ms", "bars60_redis_p99_ms")},
        "latest_redis_p99_ms": measured["latest_redis_p99_ms"],
        "latest_pg_p99_ms": measured["latest_pg_p99_ms"],
        "baseline_p99_ms": measured["baseline_p99_ms"],
        "bars60_pg_vs_baseline": round(
            measured["bars60_pg_p99_ms"] / measured["baseline_p99_ms"], 3
        ),
        "baseline_p50_ms": measured["baseline_p50_ms"],
        "latest_redis_p50_ms": measured["latest_redis_p50_ms"],
        "latest_pg_p50_ms": measured["latest_pg_p50_ms"],
        "bars60_redis_qfq_p99_ms": measured["bars60_redis_qfq_p99_ms"],
        "bars60_pg_qfq_p99_ms": measured["bars60_pg_qfq_p99_ms"],
        "floor_redis_ping_p99_ms": measured["floor_redis_ping_p99_ms"],
        "floor_pg_select1_p99_ms": measured["floor_pg_select1_p99_ms"],
        "redis_share": measured["redis_share"],
        "load_avg": [round(measured["load_before"], 2), round(measured["load_after"], 2)],
        "cpus": os.cpu_count(),
        "targets_met": all(measured[k] <= v for k, v in TARGETS_MS.items()),
        "codes": args.codes,
        "days": len(market.days),
        "rows_per_table": outcome["built"]["rows_per_table"],
        "refresh_s": refreshed.seconds,
        "cache_mb": round(refreshed.bytes_written / 1e6, 1),
        "requests": args.requests,
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codes", type=int, default=5_000)
    parser.add_argument("--years", type=int, default=5)
    parser.add_argument("--requests", type=int, default=10_000, help="requests per method")
    parser.add_argument("--database-url", help="a PostgreSQL server (its maintenance DB)")
    parser.add_argument("--redis-url", help="a Redis server (default: settings, or embedded)")
    args = parser.parse_args(argv)
    if args.codes < 1 or args.years < 1 or args.requests < 1:
        parser.error("--codes, --years and --requests must be at least 1")
    settings = Settings.from_env()
    url, release = server_url(args.database_url, settings)
    redis_url, release_redis = redis_server(args.redis_url, settings)
    emit({"server": display_url(url), "redis": display_url(redis_url)})
    try:
        emit(run(args, settings, url, redis_url))
    finally:
        release_redis()
        release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
