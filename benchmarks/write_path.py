"""Benchmark: the warehouse write path, the same N synthetic stock_daily rows loaded every way.

    uv run python benchmarks/write_path.py [--rows N] [--database-url URL] [--repeat K]

(a) bare COPY into a plain table with no indexes, no key, no partitions: the limit. Timed from
    the DataFrame with the fastest client path there is (the writer's NumPy binary encoder);
    (a_records) is the same with asyncpg's copy_records_to_table fed by itertuples, for reference;
(b) the seed's baseline: SQLAlchemy pg_insert().values(rows) ON CONFLICT DO UPDATE, batches
    sized under asyncpg's 32,767-parameter cap, through an async engine. Run on --seed-rows rows
    (default 40,000: at ~4k rows/s the full N would take minutes) and reported as rows/s;
(c) SQLAlchemy executemany upsert, 5,000 dicts per call;
(d) writer.replace_window into stock_daily (primary key + (trade_date, code) index), its yearly
    partition present and empty: the writer rebuilds the partition whole (rows over several
    COPY streams, then primary key and index in parallel) and swaps it in. (a_parallel) is the
    bare COPY split over as many connections; (d_index_builds) times the primary key and the
    cross-section index built on the loaded bare_daily, alone and both at once. Loading then
    indexing can do no better than a_parallel + both builds at once, which bounds
    replace_vs_bare_copy (reported there). (d_in_place) is replace_window with the
    rows inserted into both indexes one by one (what a small window does), and (d_reference) a
    bare COPY into the indexed table: the gap between (d_reference) and (d_in_place) is the
    writer's own cost. (d_new_partitions) is replace_window into stock_daily as the migrations
    leave it (no partition for the year yet): built whole too. Only (d) is in the summary;
(e) writer.upsert into the empty stock_daily;
(f) the same upsert again, every row unchanged;
(g) a full import of N technical_daily rows (33 columns, primary key + (trade_date, code) index)
    into the empty table (partitions present) with writer.replace_window: all indexes in place
    (every row inserted into both as it arrives; the writer's whole-partition build switched
    off) vs with index management: inside indexes.bulk_load (secondary index dropped) with the
    writer building each partition whole (rows over several COPY streams, then the primary key
    and the dropped index built in parallel; the rebuild at the end only attaches it); the
    table's primary key constraint stays throughout, seed D2. (g_pk_maintained) is bulk_load
    with the primary key maintained row by row and the secondary index rebuilt afterwards.
    (g_load_then_index_floor) is the same rows COPYed over as many streams into a bare
    technical_daily-shaped table, then both indexes built at once: what index management can
    at best cost, so indexes-in-place / that bounds index_mgmt_speedup.

Every method starts from an empty target after a CHECKPOINT. (b)-(f) all write stock_daily, so
they pay the same index maintenance; (a) pays none, which is what "bare" means. With --repeat K
the fast methods run K times and the best run counts (the machine is shared).

The benchmark works in its own scratch database, dropped at the end, on the server given by
--database-url or STOCK_PIPELINE_DATABASE_URL, else the embedded one under STOCK_PIPELINE_HOME.
Prints one JSON object per line; the last line is the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import numpy as np
import pandas as pd
from common import emit, scratch_database, server_url
from sqlalchemy import MetaData, Table, create_engine
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import create_async_engine

from stock_pipeline.settings import Settings
from stock_pipeline.warehouse import partitions, writer
from stock_pipeline.warehouse.indexes import bulk_load
from stock_pipeline.warehouse.tables import (
    INDICATOR_COLUMNS,
    index_definitions,
    metadata,
    stock_daily,
    technical_daily,
)
from stock_pipeline.warehouse.urls import display_url, sqlalchemy_url

PARAMETER_CAP = 32_767  # asyncpg's limit on bind parameters per statement
CODES = 5_000


# -- data ----------------------------------------------------------------------------------------


def _keys(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(code, trade_date) for n rows: CODES stocks x enough trading days, in key order."""
    days = pd.bdate_range("2024-01-02", periods=-(-n // CODES))
    codes = np.sort([f"{'sh' if i % 2 else 'sz'}.{600000 + i:06d}" for i in range(CODES)])
    return (
        np.repeat(codes, len(days))[:n].astype(object),
        np.tile(days.values.astype("datetime64[D]"), CODES)[:n],
    )


def daily_frame(n: int, seed: int = 1) -> pd.DataFrame:
    """stock_daily-shaped rows; about 2% suspended days with NULL prices."""
    rng = np.random.default_rng(seed)
    code, day = _keys(n)
    close = np.round(rng.uniform(3, 80, n), 2)
    suspended = rng.random(n) < 0.02
    price = np.where(suspended, np.nan, close)
    return pd.DataFrame(
        {
            "code": code,
            "trade_date": day,
            "open": np.round(price * rng.uniform(0.97, 1.03, n), 2),
            "high": np.round(price * 1.03, 2),
            "low": np.round(price * 0.97, 2),
            "close": price,
            "pre_close": np.round(close * rng.uniform(0.9, 1.1, n), 2),
            "pct_chg": np.where(suspended, np.nan, np.round(rng.normal(0, 2, n), 4)),
            "volume": pd.array(np.where(suspended, 0, rng.integers(10_000, 10**8, n))),
            "amount": np.round(close * rng.uniform(1e5, 1e8, n), 2),
            "turnover": np.round(rng.uniform(0, 8, n), 4),
            "trade_status": ~suspended,
            "is_st": rng.random(n) < 0.03,
            "pe_ttm": np.round(rng.uniform(-50, 200, n), 4),
            "pb_mrq": np.round(rng.uniform(0.3, 20, n), 4),
            "ps_ttm": np.round(rng.uniform(0.1, 30, n), 4),
            "pcf_ncf_ttm": np.round(rng.uniform(-100, 100, n), 4),
            "back_adjust_factor": np.round(rng.uniform(1, 20, n), 6),
        }
    )


def technical_frame(n: int, seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    code, day = _keys(n)
    values = rng.uniform(0, 100, (n, len(INDICATOR_COLUMNS)))
    frame = pd.DataFrame(values, columns=list(INDICATOR_COLUMNS))
    frame.insert(0, "trade_date", day)
    frame.insert(0, "code", code)
    return frame


def window(frame: pd.DataFrame) -> dict[str, dt.date]:
    days = frame["trade_date"].to_numpy()
    return {"start": pd.Timestamp(days.min()).date(), "end": pd.Timestamp(days.max()).date()}


def seed_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """What the original code did before writing: dicts with None for NaN, dates as dates."""
    out = frame.astype(object).where(frame.notna(), None)
    out["trade_date"] = [d.date() for d in pd.to_datetime(frame["trade_date"])]
    return out.to_dict("records")


# -- the methods ---------------------------------------------------------------------------------


async def bare_copy(pool: asyncpg.Pool, table: Table, frame: pd.DataFrame, chunk_rows: int) -> None:
    """(a) COPY into a table through the writer's encoder, nothing else (writer.append)."""
    await writer.append(pool, table, frame, chunk_rows=chunk_rows)


async def bare_copy_records(pool: asyncpg.Pool, table: Table, frame: pd.DataFrame) -> None:
    """(a_records) asyncpg's copy_records_to_table, tuples from itertuples (NaN to None)."""
    clean = frame.astype(object).where(frame.notna(), None)
    clean["trade_date"] = [d.date() for d in pd.to_datetime(frame["trade_date"])]
    async with pool.acquire() as conn, conn.transaction():
        for start in range(0, len(clean), 50_000):
            part = clean.iloc[start : start + 50_000]
            await conn.copy_records_to_table(
                table.name,
                records=part.itertuples(index=False, name=None),
                columns=list(frame.columns),
            )


def _conflict_update(table: Table, statement: Any) -> Any:
    key = [c.name for c in table.primary_key.columns]
    return statement.on_conflict_do_update(
        index_elements=key,
        set_={c.name: statement.excluded[c.name] for c in table.c if c.name not in key},
    )


async def seed_values(url: str, table: Table, frame: pd.DataFrame) -> None:
    """(b) the original design: insert().values(batch) ON CONFLICT DO UPDATE."""
    engine = create_async_engine(sqlalchemy_url(url, "asyncpg"))
    try:
        records = seed_records(frame)
        batch = min(5_000, PARAMETER_CAP // len(frame.columns))
        async with engine.begin() as conn:
            for start in range(0, len(records), batch):
                statement = pg_insert(table).values(records[start : start + batch])
                await conn.execute(_conflict_update(table, statement))
    finally:
        await engine.dispose()


async def sqlalchemy_executemany(url: str, table: Table, frame: pd.DataFrame) -> None:
    """(c) SQLAlchemy executemany of an ON CONFLICT DO UPDATE insert, 5,000 dicts per call."""
    engine = create_async_engine(sqlalchemy_url(url, "asyncpg"))
    try:
        records = seed_records(frame)
        statement = _conflict_update(table, pg_insert(table))
        async with engine.begin() as conn:
            for start in range(0, len(records), 5_000):
                await conn.execute(statement, records[start : start + 5_000])
    finally:
        await engine.dispose()


async def bare_copy_parallel(
    pool: asyncpg.Pool, table: Table, frame: pd.DataFrame, streams: int, chunk_rows: int
) -> None:
    """(a_parallel) bare COPY split over `streams` connections, one slice of rows each."""
    bounds = np.linspace(0, len(frame), streams + 1).astype(int)
    await asyncio.gather(
        *(
            writer.append(pool, table, frame.iloc[low:high], chunk_rows=chunk_rows)
            for low, high in zip(bounds[:-1], bounds[1:], strict=True)
        )
    )


async def index_builds(pool: asyncpg.Pool, bare: Table) -> dict[str, float]:
    """Seconds to build the primary key and the cross-section index of the table `bare`
    stands in for, on the loaded `bare` (maintenance_work_mem raised, as the writer does):
    both at once on two connections, as the writer builds them, then each alone; dropped
    again after each."""
    statements = {
        "primary_key": f'CREATE UNIQUE INDEX bench_pk ON "{bare.name}" (code, trade_date)',
        "cross_section_index": f'CREATE INDEX bench_ix ON "{bare.name}" (trade_date, code)',
    }

    async def build(statement: str) -> None:
        async with pool.acquire() as conn:
            await conn.execute("SET maintenance_work_mem = '1GB'")
            await conn.execute(statement)
            await conn.execute("RESET maintenance_work_mem")

    async def drop() -> None:
        # No CHECKPOINT: after one, setting hint bits would write full-page images, which the
        # writer's builds (right after the load) never do.
        await pool.execute("DROP INDEX IF EXISTS bench_pk, bench_ix")

    seconds = {}
    await drop()
    # First, like the writer: the first scan of freshly loaded rows also sets their hint bits.
    seconds["both_at_once"] = await timed(
        lambda: asyncio.gather(*(build(s) for s in statements.values()))
    )
    await drop()
    for name, statement in statements.items():
        seconds[name] = await timed(lambda s=statement: build(s))
        await drop()
    return seconds


async def load_then_index_floor(
    pool: asyncpg.Pool,
    bare: Table,
    frame: pd.DataFrame,
    streams: int,
    chunk_rows: int,
    repeat: int,
) -> tuple[float, dict[str, float]]:
    """The fastest a writer that builds both indexes after the rows can be: the rows over
    `streams` COPY connections into `bare`, then both index builds at once."""
    seconds = []
    for _ in range(repeat):
        await fresh(pool, bare.name)
        seconds.append(
            await timed(lambda: bare_copy_parallel(pool, bare, frame, streams, chunk_rows))
        )
    return min(seconds), await index_builds(pool, bare)


@contextlib.contextmanager
def whole_partitions_off(rows: int) -> Iterator[None]:
    """The writer inserts every row into the indexes one by one, however big the batch."""
    threshold = partitions.WHOLE_PARTITION_MIN_ROWS
    partitions.WHOLE_PARTITION_MIN_ROWS = rows + 1
    try:
        yield
    finally:
        partitions.WHOLE_PARTITION_MIN_ROWS = threshold


# -- harness -------------------------------------------------------------------------------------


async def fresh(pool: asyncpg.Pool, *tables: str) -> None:
    """Empty the targets and flush dirty pages, so no method pays for another's checkpoint."""
    async with pool.acquire() as conn:
        for name in tables:
            await conn.execute(f'TRUNCATE "{name}"')
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT")


async def drop_partitions(pool: asyncpg.Pool, table: str) -> None:
    """Leave the table as the migrations do: no partitions (the writer creates them)."""
    names = await pool.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass($1)",
        table,
    )
    for row in names:
        await pool.execute(f'DROP TABLE "{row["relname"]}"')


async def timed(work: Callable[[], Awaitable[Any]]) -> float:
    began = time.perf_counter()
    await work()
    return time.perf_counter() - began


def report(method: str, rows: int, seconds: float, **extra: Any) -> dict[str, Any]:
    record = {
        "method": method,
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds),
        **extra,
    }
    emit(record)
    return record


def create_tables(url: str) -> tuple[Table, Table]:
    """The warehouse tables used here, plus `bare_daily` and `bare_technical`: the columns of
    stock_daily and technical_daily and nothing else (no key, no index, no partitions)."""
    engine = create_engine(sqlalchemy_url(url, "psycopg2"))
    try:
        metadata.create_all(engine, tables=[stock_daily, technical_daily, index_definitions])
        scratch = MetaData()
        bare = []
        for name, source in (("bare_daily", stock_daily), ("bare_technical", technical_daily)):
            columns = [c._copy() for c in source.c]
            for column in columns:
                column.primary_key = False
            bare.append(Table(name, scratch, *columns))
        scratch.create_all(engine)
        return bare[0], bare[1]
    finally:
        engine.dispose()


async def run_benchmark(
    url: str, rows: int, seed_rows: int, repeat: int, settings: Settings
) -> dict[str, Any]:
    bare, bare_technical = create_tables(url)
    # Passed to the writer as the Dagster resource does (the writer reads no environment).
    chunk_rows = settings.copy_chunk_rows
    copy_options = {"chunk_rows": chunk_rows}
    whole_options = {**copy_options, "streams": settings.copy_streams}
    daily = daily_frame(rows)
    technical = technical_frame(rows)
    async with asyncpg.create_pool(url, min_size=2, max_size=4) as pool:
        version = await pool.fetchval("SHOW server_version")
        emit({"setup": "write_path", "postgres": version, "rows": rows, "repeat": repeat})
        years = sorted({d.year for d in pd.to_datetime(daily["trade_date"].unique())})
        await writer.ensure_partitions(pool, stock_daily, years)
        await writer.ensure_partitions(pool, technical_daily, years)

        async def best(
            target: str, work: Callable[[], Awaitable[Any]], without_partitions: bool = False
        ) -> float:
            seconds = []
            for _ in range(repeat):
                await fresh(pool, target)
                if without_partitions:
                    await drop_partitions(pool, target)
                seconds.append(await timed(work))
            return min(seconds)

        a = await best("bare_daily", lambda: bare_copy(pool, bare, daily, chunk_rows))
        report("a_bare_copy_unindexed", rows, a, target="bare_daily (no key, no index)")
        a_records = await best("bare_daily", lambda: bare_copy_records(pool, bare, daily))
        report("a_records_copy_unindexed", rows, a_records, client="copy_records_to_table")

        subset = daily.iloc[:seed_rows]
        await fresh(pool, "stock_daily")
        b = await timed(lambda: seed_values(url, stock_daily, subset))
        batch = min(5_000, PARAMETER_CAP // len(daily.columns))
        report(
            "b_seed_values_upsert",
            len(subset),
            b,
            rows_per_s_note=f"measured on {len(subset)} rows, ratios use rows/s",
            rows_per_statement=batch,
        )
        b_rate = len(subset) / b

        await fresh(pool, "stock_daily")
        c = await timed(lambda: sqlalchemy_executemany(url, stock_daily, daily))
        report("c_sqlalchemy_executemany_upsert", rows, c)

        streams = min(settings.copy_streams, pool.get_max_size())
        a_parallel, builds = await load_then_index_floor(
            pool, bare, daily, streams, chunk_rows, repeat
        )
        report("a_parallel_bare_copy_unindexed", rows, a_parallel, streams=streams)
        report(
            "d_index_builds",
            rows,
            builds["both_at_once"],
            target="bare_daily, loaded: primary key and (trade_date, code) index",
            **{f"{name}_seconds": round(value, 3) for name, value in builds.items()},
            bound_replace_vs_bare_copy=round(a / (a_parallel + builds["both_at_once"]), 3),
            note="a writer that keeps both indexes and builds them after the rows can do no "
            "better than a_parallel + both builds at once: a / that bounds replace_vs_bare_copy",
        )

        def replace_daily() -> Awaitable[writer.WriteResult]:
            return writer.replace_window(pool, stock_daily, daily, **whole_options, **window(daily))

        d = await best("stock_daily", replace_daily)
        report(
            "d_writer_replace_window",
            rows,
            d,
            target="stock_daily (pk + ix), partition present and empty",
            note="partition rebuilt whole and swapped in",
        )
        with whole_partitions_off(rows):
            d_in_place = await best("stock_daily", replace_daily)
        report(
            "d_writer_replace_window_in_place",
            rows,
            d_in_place,
            target="stock_daily (pk + ix)",
            note="rows inserted into both indexes one by one",
        )
        d_ref = await best("stock_daily", lambda: bare_copy(pool, stock_daily, daily, chunk_rows))
        report(
            "d_reference_bare_copy_into_stock_daily",
            rows,
            d_ref,
            target="stock_daily (pk + ix)",
            note="bare COPY into the indexed table: what in-place replace costs beyond the indexes",
            in_place_vs_this=round(d_ref / d_in_place, 3),
        )
        d_new = await best("stock_daily", replace_daily, without_partitions=True)
        report(
            "d_writer_replace_window_new_partitions",
            rows,
            d_new,
            target="stock_daily as the migrations leave it: no partition for the year yet",
            note="the writer builds the partition whole: rows, then primary key and index",
        )
        await writer.ensure_partitions(pool, stock_daily, years)

        e_runs, f_runs = [], []
        for _ in range(repeat):
            await fresh(pool, "stock_daily")
            e_runs.append(
                await timed(lambda: writer.upsert(pool, stock_daily, daily, **copy_options))
            )
            with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
                await pool.execute("CHECKPOINT")
            f_runs.append(
                await timed(lambda: writer.upsert(pool, stock_daily, daily, **copy_options))
            )
        e, f = min(e_runs), min(f_runs)
        report("e_writer_upsert_empty", rows, e)
        report("f_writer_upsert_unchanged", rows, f)

        with whole_partitions_off(rows):
            g_indexed = await best(
                "technical_daily",
                lambda: writer.replace_window(
                    pool, technical_daily, technical, **whole_options, **window(technical)
                ),
            )
        report(
            "g_full_import_with_indexes",
            rows,
            g_indexed,
            target="technical_daily",
            note="every row inserted into both indexes as it arrives",
        )
        g_copy, g_builds = await load_then_index_floor(
            pool, bare_technical, technical, streams, chunk_rows, repeat
        )
        await fresh(pool, bare_technical.name)
        report(
            "g_load_then_index_floor",
            rows,
            g_copy + g_builds["both_at_once"],
            target="bare_technical: COPY over the streams, then both index builds at once",
            copy_seconds=round(g_copy, 3),
            index_builds_seconds=round(g_builds["both_at_once"], 3),
            bound_index_mgmt_speedup=round(g_indexed / (g_copy + g_builds["both_at_once"]), 2),
        )

        async def managed() -> None:
            async with bulk_load(pool, technical_daily, concurrently=False):
                await writer.replace_window(
                    pool, technical_daily, technical, **whole_options, **window(technical)
                )

        g_managed = await best("technical_daily", managed)
        report("g_full_import_index_management", rows, g_managed, target="technical_daily")

        # The same without building partitions whole: only the secondary index is managed.
        with whole_partitions_off(rows):
            g_pk = await best("technical_daily", managed)
        await writer.ensure_partitions(pool, technical_daily, years)
        report(
            "g_pk_maintained_index_management",
            rows,
            g_pk,
            target="technical_daily",
            note="secondary index dropped and rebuilt, primary key maintained row by row",
            speedup=round(g_indexed / g_pk, 2),
        )

    a_rate = rows / a
    summary = {
        "summary": "write_path",
        "rows": rows,
        "replace_vs_bare_copy": round((rows / d) / a_rate, 3),
        "replace_vs_seed_values": round((rows / d) / b_rate, 1),
        "upsert_vs_executemany": round((rows / e) / (rows / c), 2),
        "upsert_unchanged_time_vs_first": round(f / e, 3),
        "index_mgmt_speedup": round(g_indexed / g_managed, 2),
        "postgres": version,
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed-rows", type=int, default=40_000, help="rows for method (b)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each fast method")
    parser.add_argument("--database-url", help="a PostgreSQL server (its maintenance DB)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    url, release = server_url(args.database_url, settings)
    emit({"server": display_url(url)})
    try:

        async def go() -> dict[str, Any]:
            async with scratch_database(url, "write_path") as scratch:
                return await run_benchmark(
                    scratch,
                    args.rows,
                    min(args.seed_rows, args.rows),
                    max(1, args.repeat),
                    settings,
                )

        emit(asyncio.run(go()))
    finally:
        release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
