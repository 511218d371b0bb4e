"""Benchmark: the ETL read path, N raw_k_daily rows (18 columns) read into a typed DataFrame.

    uv run python benchmarks/etl_read.py [--rows N] [--database-url URL] [--repeat K]

Every method runs the same query (a trade_date window with bind parameters, in key order) and
must produce the same DataFrame, dtypes from tables.py (reader.frame_dtypes); each is checked
against read_frame's:

(a) asyncpg fetch: Record objects, then one column at a time into its dtype;
(b) COPY (query) TO STDOUT (FORMAT csv) into pandas.read_csv with explicit dtypes (t/f
    booleans, dates parsed with their format). Exact here, but CSV alone cannot tell a NULL
    text from an empty one;
(c) COPY (query) TO STDOUT (FORMAT binary), received and not decoded: the transfer alone, the
    floor of any COPY-based reader;
(d) reader.read_frame: binary COPY of the query wrapped so NULLs do not change a row's size,
    decoded with NumPy, one strided copy per column;
(e) read_frame on the same rows with codes of varying length (text lengths vary, so the rows
    are located one by one before they are gathered): the reader's slow path.

The rows carry NULLs of every type (2% suspended days without prices, missing valuations,
volumes and flags). Methods take turns in every round and the best of --repeat rounds counts
(the machine is shared). The benchmark works in its own scratch database, dropped at the end.
Prints one JSON object per line; the last line is the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import numpy as np
import pandas as pd
from common import emit, scratch_database, server_url
from sqlalchemy import create_engine

from stock_pipeline.settings import Settings
from stock_pipeline.warehouse import writer
from stock_pipeline.warehouse.reader import frame_dtypes, read_frame
from stock_pipeline.warehouse.tables import RAW_TABLES, metadata
from stock_pipeline.warehouse.urls import display_url, sqlalchemy_url

CODES = 5_000
raw_k_daily = RAW_TABLES["raw_k_daily"]
COLUMNS = [c.name for c in raw_k_daily.c if c.name != "fetched_at"]
DTYPES = frame_dtypes(raw_k_daily.c[name] for name in COLUMNS)
QUERY = (
    f"SELECT {', '.join(COLUMNS)} FROM raw_k_daily "
    "WHERE trade_date BETWEEN $1 AND $2 ORDER BY code, trade_date"
)
# The same rows with codes of 9 to 11 bytes (in the order of the stored codes).
VARIABLE_QUERY = QUERY.replace(
    "code,", "code || repeat('x', extract(day FROM trade_date)::int % 3) AS code,", 1
).replace("ORDER BY code", "ORDER BY raw_k_daily.code")


def k_daily_frame(n: int, seed: int = 3) -> pd.DataFrame:
    """raw_k_daily rows in key order, NULLs in every nullable type."""
    rng = np.random.default_rng(seed)
    days = pd.bdate_range("2024-01-02", periods=-(-n // CODES))
    codes = np.sort([f"{'sh' if i % 2 else 'sz'}.{600000 + i:06d}" for i in range(CODES)])
    close = np.round(rng.uniform(3, 80, n), 2)
    suspended = rng.random(n) < 0.02
    price = np.where(suspended, np.nan, close)

    def sometimes_null(values: Any, share: float, dtype: str) -> Any:
        array = pd.array(values, dtype=dtype)
        array[rng.random(n) < share] = pd.NA
        return array

    return pd.DataFrame(
        {
            "code": np.repeat(codes, len(days))[:n],
            "trade_date": np.tile(days.values.astype("datetime64[D]"), CODES)[:n],
            "open": np.round(price * rng.uniform(0.97, 1.03, n), 2),
            "high": np.round(price * 1.03, 2),
            "low": np.round(price * 0.97, 2),
            "close": price,
            "pre_close": np.round(close * rng.uniform(0.9, 1.1, n), 2),
            "volume": sometimes_null(rng.integers(0, 10**10, n), 0.01, "Int64"),
            "amount": np.round(close * rng.uniform(1e5, 1e8, n), 2),
            "adjust_flag": np.full(n, 3),
            "turnover": np.round(rng.uniform(0, 8, n), 4),
            "trade_status": sometimes_null(~suspended, 0.01, "boolean"),
            "pct_chg": np.where(suspended, np.nan, np.round(rng.normal(0, 2, n), 4)),
            "pe_ttm": np.where(rng.random(n) < 0.05, np.nan, np.round(rng.normal(30, 80, n), 4)),
            "pb_mrq": np.round(rng.uniform(0.3, 20, n), 4),
            "ps_ttm": np.round(rng.uniform(0.1, 30, n), 4),
            "pcf_ncf_ttm": np.round(rng.normal(0, 100, n), 4),
            "is_st": sometimes_null(rng.random(n) < 0.03, 0.01, "boolean"),
        }
    )


# -- the methods ---------------------------------------------------------------------------------


async def fetch_frame(pool: asyncpg.Pool, sql: str, *args: Any) -> pd.DataFrame:
    """(a) asyncpg's fetch, then each column into its dtype (None becomes NaN, NA or NaT)."""
    async with pool.acquire() as conn:
        records = await conn.fetch(sql, *args)
    columns = list(zip(*records, strict=True)) if records else [() for _ in COLUMNS]
    data = {}
    for name, values in zip(COLUMNS, columns, strict=True):
        dtype = DTYPES[name]
        if dtype == np.dtype("datetime64[ns]"):
            data[name] = np.array(values, dtype="datetime64[D]").astype(dtype)
        elif dtype == np.float64:
            data[name] = np.array(values, dtype=np.float64)
        else:
            data[name] = pd.array(values, dtype=dtype)
    return pd.DataFrame(data)


async def csv_frame(pool: asyncpg.Pool, sql: str, *args: Any) -> pd.DataFrame:
    """(b) COPY ... (FORMAT csv) into pandas.read_csv: NULL is an empty field."""
    buffer = io.BytesIO()
    async with pool.acquire() as conn:
        await conn.copy_from_query(sql, *args, output=buffer, format="csv")
    buffer.seek(0)
    dates = [name for name, dtype in DTYPES.items() if dtype == np.dtype("datetime64[ns]")]
    frame = pd.read_csv(
        buffer,
        header=None,
        names=COLUMNS,
        dtype={name: "str" if name in dates else dtype for name, dtype in DTYPES.items()},
        keep_default_na=False,
        na_values=[""],
        true_values=["t"],
        false_values=["f"],
    )
    for name in dates:
        frame[name] = pd.to_datetime(frame[name], format="%Y-%m-%d").astype("datetime64[ns]")
    return frame


async def binary_transfer(pool: asyncpg.Pool, sql: str, *args: Any) -> int:
    """(c) COPY ... (FORMAT binary) received into one buffer, as read_frame does; no decoding."""
    received = bytearray()

    async def receive(chunk: bytes) -> None:
        received.extend(chunk)

    async with pool.acquire() as conn:
        await conn.copy_from_query(sql, *args, output=receive, format="binary")
    return len(received)


# -- harness -------------------------------------------------------------------------------------


async def timed(work: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    began = time.perf_counter()
    result = await work()
    return time.perf_counter() - began, result


async def run_benchmark(url: str, rows: int, repeat: int, settings: Settings) -> dict[str, Any]:
    engine = create_engine(sqlalchemy_url(url, "psycopg2"))
    try:
        metadata.create_all(engine, tables=[raw_k_daily])
    finally:
        engine.dispose()
    frame = k_daily_frame(rows)
    start = pd.Timestamp(frame["trade_date"].min()).date()
    end = pd.Timestamp(frame["trade_date"].max()).date()
    async with asyncpg.create_pool(url, min_size=1, max_size=2) as pool:
        version = await pool.fetchval("SHOW server_version")
        emit({"setup": "etl_read", "postgres": version, "rows": rows, "repeat": repeat})
        await writer.replace_window(
            pool,
            raw_k_daily,
            frame,
            start=start,
            end=end,
            chunk_rows=settings.copy_chunk_rows,
            streams=settings.copy_streams,
        )
        await pool.execute("VACUUM ANALYZE raw_k_daily")
        methods: dict[str, Callable[[], Awaitable[Any]]] = {
            "a_fetch": lambda: fetch_frame(pool, QUERY, start, end),
            "b_csv_read_csv": lambda: csv_frame(pool, QUERY, start, end),
            "c_binary_transfer_only": lambda: binary_transfer(pool, QUERY, start, end),
            "d_read_frame": lambda: read_frame(pool, raw_k_daily, QUERY, start, end),
            "e_read_frame_variable_text": lambda: read_frame(
                pool, raw_k_daily, VARIABLE_QUERY, start, end
            ),
        }
        best = dict.fromkeys(methods, float("inf"))
        results: dict[str, Any] = {}
        for _ in range(repeat):
            for name, work in methods.items():
                seconds, results[name] = await timed(work)
                best[name] = min(best[name], seconds)
        expected = frame[COLUMNS].astype(DTYPES)
        variable = expected.assign(
            code=expected["code"] + ["x" * (d.day % 3) for d in expected["trade_date"]]
        )
        pd.testing.assert_frame_equal(results["e_read_frame_variable_text"], variable)
        for name in ("a_fetch", "b_csv_read_csv", "d_read_frame"):
            pd.testing.assert_frame_equal(results[name], expected)
        for name, seconds in best.items():
            extra = {"bytes": results[name]} if name == "c_binary_transfer_only" else {}
            emit(
                {
                    "method": name,
                    "rows": rows,
                    "seconds": round(seconds, 3),
                    "rows_per_s": round(rows / seconds),
                    **extra,
                }
            )
    d = best["d_read_frame"]
    return {
        "summary": "etl_read",
        "rows": rows,
        "read_frame_vs_fetch": round(best["a_fetch"] / d, 2),
        "read_frame_vs_csv": round(best["b_csv_read_csv"] / d, 2),
        "transfer_share": round(best["c_binary_transfer_only"] / d, 3),
        "variable_text_time_vs_fixed": round(best["e_read_frame_variable_text"] / d, 2),
        "frames_equal": True,
        "postgres": version,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every method")
    parser.add_argument("--database-url", help="a PostgreSQL server (its maintenance DB)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    url, release = server_url(args.database_url, settings)
    emit({"server": display_url(url)})
    try:

        async def go() -> dict[str, Any]:
            async with scratch_database(url, "etl_read") as scratch:
                return await run_benchmark(scratch, args.rows, max(1, args.repeat), settings)

        emit(asyncio.run(go()))
    finally:
        release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
