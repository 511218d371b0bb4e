"""The COPY writer against real PostgreSQL: idempotence, last-wins duplicates, all-or-nothing
batches, no writes for unchanged rows, corrections, partitions on demand, error messages, the
INSERT fallback and concurrent readers."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from stock_pipeline.settings import Settings
from stock_pipeline.warehouse import partitions, writer
from stock_pipeline.warehouse.batch import DEFAULT_CHUNK_ROWS
from stock_pipeline.warehouse.copy_format import encode_binary, kind_of, prepare_column
from stock_pipeline.warehouse.tables import (
    RAW_TABLES,
    index_constituents,
    stock_daily,
    stocks,
)
from stock_pipeline.warehouse.urls import asyncpg_dsn
from stock_pipeline.warehouse.writer import WriteError, replace_window, upsert
from stock_pipeline_tests.helpers import recreate_tables
from stock_pipeline_tests.helpers import run_with_pool as run

TABLES = [stock_daily, stocks, index_constituents]
raw_adjust_factor = RAW_TABLES["raw_adjust_factor"]
DATA_COLUMNS = [c.name for c in stock_daily.c if c.name != "updated_at"]


@pytest.fixture(autouse=True)
def fresh_tables(engine: Engine) -> Iterator[None]:
    """Every test starts from empty tables (and no partitions)."""
    recreate_tables(engine, TABLES)
    yield


def daily_rows(
    codes: int = 5, days: int = 4, start: str = "2024-01-02", seed: int = 0
) -> pd.DataFrame:
    """Synthetic stock_daily rows in key order (code, trade_date)."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range(start, periods=days)
    code = np.repeat([f"sh.{600000 + i}" for i in range(codes)], days)
    n = codes * days
    close = np.round(rng.uniform(5, 50, n), 2)
    return pd.DataFrame(
        {
            "code": code,
            "trade_date": np.tile(dates.values, codes),
            "open": close,
            "high": close + 1,
            "low": close - 1,
            "close": close,
            "pre_close": close,
            "pct_chg": np.round(rng.normal(0, 2, n), 4),
            "volume": rng.integers(1_000, 1_000_000, n),
            "amount": close * 1000,
            "turnover": rng.uniform(0, 5, n),
            "trade_status": np.ones(n, dtype=bool),
            "is_st": np.zeros(n, dtype=bool),
            "pe_ttm": rng.uniform(5, 50, n),
            "pb_mrq": rng.uniform(1, 5, n),
            "ps_ttm": np.where(rng.random(n) < 0.3, np.nan, rng.uniform(1, 5, n)),
            "pcf_ncf_ttm": rng.uniform(-5, 5, n),
            "back_adjust_factor": np.ones(n),
        }
    )


def checksum(engine: Engine, columns: list[str] | None = None) -> str | None:
    """md5 over the table in key order: all columns, or only `columns`."""
    row = "t::text" if columns is None else "ROW(" + ", ".join(columns) + ")::text"
    with engine.connect() as conn:
        return conn.execute(
            text(f"SELECT md5(string_agg({row}, '|' ORDER BY code, trade_date)) FROM stock_daily t")
        ).scalar()


def fetch(engine: Engine, sql: str) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


def window(frame: pd.DataFrame) -> dict[str, dt.date]:
    dates = pd.to_datetime(frame["trade_date"])
    return {"start": dates.min().date(), "end": dates.max().date()}


# -- idempotence ---------------------------------------------------------------------------------


def test_replace_window_twice_gives_an_identical_table(pg_dsn: str, engine: Engine):
    rows = daily_rows(codes=6, days=5)
    first = run(pg_dsn, lambda pool: replace_window(pool, stock_daily, rows, **window(rows)))
    after_first = checksum(engine, DATA_COLUMNS)
    second = run(pg_dsn, lambda pool: replace_window(pool, stock_daily, rows, **window(rows)))
    assert checksum(engine, DATA_COLUMNS) == after_first
    assert (first.rows, first.deleted, second.deleted) == (30, 0, 30)
    assert fetch(engine, "SELECT count(*) FROM stock_daily") == [(30,)]


def test_upsert_twice_gives_an_identical_table_including_updated_at(pg_dsn: str, engine: Engine):
    rows = daily_rows(codes=6, days=5)
    first = run(pg_dsn, lambda pool: upsert(pool, stock_daily, rows, chunk_rows=7))
    after_first = checksum(engine)
    second = run(pg_dsn, lambda pool: upsert(pool, stock_daily, rows, chunk_rows=7))
    assert checksum(engine) == after_first
    assert (first.changed, first.unchanged, first.chunks) == (30, 0, 5)
    assert (second.changed, second.unchanged) == (0, 30)


def test_values_round_trip_with_nan_as_null(pg_dsn: str, engine: Engine):
    rows = daily_rows(codes=2, days=3)
    rows["volume"] = rows["volume"].astype("Int64")
    rows["trade_status"] = rows["trade_status"].astype("boolean")
    rows.loc[1, ["open", "volume", "trade_status"]] = [np.nan, None, None]
    run(pg_dsn, lambda pool: upsert(pool, stock_daily, rows))
    stored = fetch(
        engine,
        "SELECT code, trade_date, open, volume, trade_status, ps_ttm FROM stock_daily "
        "ORDER BY code, trade_date",
    )
    assert stored[1][2:5] == (None, None, None)
    for (code, day, open_, volume, status, ps), (_, src) in zip(
        stored, rows.iterrows(), strict=True
    ):
        assert (code, day) == (src["code"], src["trade_date"].date())
        if not pd.isna(src["open"]):
            assert (open_, volume, status) == (src["open"], src["volume"], True)
        assert ps == (None if np.isnan(src["ps_ttm"]) else src["ps_ttm"])


def test_irregular_text_rows_round_trip(pg_dsn: str, engine: Engine):
    """Names of many lengths and NULL patterns: too irregular for block encoding, so the
    records path carries them; both paths must store the same values."""
    n = 300
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "code": [f"sz.{i:06d}" for i in range(n)],
            "name": [None if i % 7 == 0 else "股票" * (i % 13) + f"{i}" for i in range(n)],
            "security_type": rng.integers(1, 6, n),
            "list_date": [dt.date(1990, 1, 1) + dt.timedelta(days=int(d)) for d in range(n)],
            "delist_date": [None if i % 3 else "2020-05-06" for i in range(n)],
            "is_listed": [None if i % 5 == 0 else bool(i % 2) for i in range(n)],
            "industry": [None if i % 2 else "制造业" + "x" * (i % 11) for i in range(n)],
        }
    )
    prepared = [
        prepare_column(name, kind_of(stocks.c[name].type), frame[name]) for name in frame.columns
    ]
    assert encode_binary(prepared) is None, "expected the records path for irregular rows"
    assert encode_binary([p.slice(0, 5) for p in prepared]) is not None

    def null(value: Any) -> Any:
        return None if value is None or pd.isna(value) else value

    for method in ("copy", "insert"):
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE stocks"))
        result = run(pg_dsn, lambda pool, how=method: upsert(pool, stocks, frame, method=how))
        assert result.changed == n
        stored = fetch(
            engine,
            "SELECT code, name, security_type, list_date, delist_date, is_listed, industry "
            "FROM stocks ORDER BY code",
        )
        for got, (_, want) in zip(stored, frame.iterrows(), strict=True):
            assert got == (
                want["code"],
                null(want["name"]),
                want["security_type"],
                want["list_date"],
                None if null(want["delist_date"]) is None else dt.date(2020, 5, 6),
                null(want["is_listed"]),
                null(want["industry"]),
            )


# -- duplicates ----------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["upsert", "replace_window"])
def test_duplicate_keys_in_a_batch_last_one_wins(pg_dsn: str, engine: Engine, operation: str):
    rows = daily_rows(codes=3, days=3)
    # Unsorted, with the same key three times: the last occurrence must be stored.
    key = rows.iloc[4][["code", "trade_date"]]
    extra = pd.concat([rows.iloc[[4]], rows.iloc[[4]]]).assign(close=[111.0, 222.0])
    batch = pd.concat([rows, extra]).sample(frac=1, random_state=1)
    batch = pd.concat([batch, rows.iloc[[4]].assign(close=333.0)])

    async def write(pool: asyncpg.Pool) -> writer.WriteResult:
        if operation == "upsert":
            return await upsert(pool, stock_daily, batch, chunk_rows=4)
        return await replace_window(pool, stock_daily, batch, chunk_rows=4, **window(rows))

    result = run(pg_dsn, write)
    assert (result.rows, result.duplicates) == (9, 3)
    stored = fetch(
        engine,
        f"SELECT close FROM stock_daily WHERE code = '{key['code']}' "
        f"AND trade_date = '{key['trade_date'].date()}'",
    )
    assert stored == [(333.0,)]


def test_upsert_duplicate_that_equals_the_stored_row_still_wins(pg_dsn: str, engine: Engine):
    """Stored A; the batch says B then A: the table must end with A (the last), not B."""
    rows = daily_rows(codes=1, days=1)
    run(pg_dsn, lambda pool: upsert(pool, stock_daily, rows))
    batch = pd.concat([rows.assign(close=99.0), rows])
    run(pg_dsn, lambda pool: upsert(pool, stock_daily, batch))
    assert fetch(engine, "SELECT close FROM stock_daily") == [(rows["close"].iloc[0],)]


# -- all or nothing ------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["upsert", "replace_window"])
def test_bad_row_in_the_middle_chunk_leaves_the_table_as_it_was(
    pg_dsn: str, engine: Engine, operation: str
):
    before = daily_rows(codes=3, days=4, seed=1)
    run(pg_dsn, lambda pool: upsert(pool, stock_daily, before))
    snapshot = checksum(engine)
    batch = daily_rows(codes=3, days=4, seed=2).astype({"volume": object})
    batch.loc[6, "volume"] = "abc"  # rows 0-3 chunk 1, 4-7 chunk 2, 8-11 chunk 3

    async def write(pool: asyncpg.Pool) -> None:
        if operation == "upsert":
            await upsert(pool, stock_daily, batch, chunk_rows=4)
        else:
            await replace_window(pool, stock_daily, batch, chunk_rows=4, **window(batch))

    with pytest.raises(WriteError) as caught:
        run(pg_dsn, write)
    assert str(caught.value) == (
        "stock_daily: column volume: value 'abc' is not an integer "
        "(key code=sh.600001, trade_date=2024-01-04)"
    )
    assert caught.value.column == "volume"
    assert checksum(engine) == snapshot


def test_server_side_data_error_in_the_middle_chunk_is_mapped_and_rolled_back(
    pg_dsn: str, engine: Engine
):
    """A rule only the server knows (a CHECK constraint): COPY fails on chunk 2, the error names
    the row's key, and chunk 1 is rolled back."""
    with engine.begin() as conn:
        conn.execute(
            text("ALTER TABLE stock_daily ADD CONSTRAINT volume_positive CHECK (volume > 0)")
        )
    batch = daily_rows(codes=3, days=4)
    batch.loc[5, "volume"] = -1
    with pytest.raises(WriteError) as caught:
        run(
            pg_dsn,
            lambda pool: replace_window(pool, stock_daily, batch, chunk_rows=4, **window(batch)),
        )
    message = str(caught.value)
    assert message.startswith("stock_daily: ")
    assert "volume_positive" in message
    assert "(key code=sh.600001, trade_date=2024-01-03)" in message
    assert fetch(engine, "SELECT count(*) FROM stock_daily") == [(0,)]


# -- no writes for unchanged rows, corrections propagate -------------------------------------


def _table_stats(conn_dsn: str) -> Callable[[asyncpg.Connection], Awaitable[tuple[int, ...]]]:
    async def stats(conn: asyncpg.Connection) -> tuple[int, ...]:
        row = await conn.fetchrow(
            "SELECT coalesce(sum(n_tup_ins), 0)::int, coalesce(sum(n_tup_upd), 0)::int, "
            "coalesce(sum(n_dead_tup), 0)::int FROM pg_stat_user_tables "
            "WHERE relname LIKE 'stock_daily%'"
        )
        return tuple(row)

    return stats


def test_unchanged_rows_add_no_dead_tuples_and_a_correction_propagates(pg_dsn: str, engine: Engine):
    rows = daily_rows(codes=4, days=5)
    corrected = rows.copy()
    corrected.loc[7, "close"] = 12.34

    async def scenario(pool: asyncpg.Pool) -> tuple[tuple[int, ...], list, list]:
        async with pool.acquire() as conn:
            await upsert(conn, stock_daily, rows)
            stamps = await conn.fetch(
                "SELECT updated_at FROM stock_daily ORDER BY code, trade_date"
            )
            unchanged = await upsert(conn, stock_daily, rows)
            assert (unchanged.changed, unchanged.unchanged) == (0, 20)
            locked = await conn.fetchval("SELECT count(*) FROM stock_daily WHERE xmax <> 0")
            assert locked == 0, "unchanged rows were locked or updated"
            changed = await upsert(conn, stock_daily, corrected)
            assert (changed.changed, changed.unchanged) == (1, 19)
            # Counters reach pg_stat_* when the backend goes idle; wait for the one update.
            stats = _table_stats(pg_dsn)
            for _ in range(100):
                if await conn.fetchval("SHOW server_version_num") >= "150000":
                    await conn.execute("SELECT pg_stat_force_next_flush()")
                numbers = await stats(conn)
                if numbers[1] >= 1:
                    break
                await asyncio.sleep(0.1)
            after = await conn.fetch("SELECT updated_at FROM stock_daily ORDER BY code, trade_date")
            return numbers, stamps, after

    (inserted, updated, dead), stamps, after = run(pg_dsn, scenario)
    assert (inserted, updated, dead) == (20, 1, 1)
    assert fetch(
        engine,
        "SELECT close FROM stock_daily WHERE code = 'sh.600001' AND trade_date = '2024-01-04'",
    ) == [(12.34,)]
    changed_stamps = [i for i, (a, b) in enumerate(zip(stamps, after, strict=True)) if a != b]
    assert changed_stamps == [7]
    assert after[7][0] > stamps[7][0]


def test_upsert_merges_a_key_a_concurrent_writer_stored_meanwhile(pg_dsn: str, engine: Engine):
    """A chunk whose key range looked empty is COPYed straight in; when another session commits
    one of its keys first, the chunk is merged instead of failing."""
    rows = daily_rows(codes=3, days=3)

    async def scenario(pool: asyncpg.Pool) -> writer.WriteResult:
        await writer.ensure_partitions(pool, stock_daily, [2024])
        async with pool.acquire() as other:
            transaction = other.transaction()
            await transaction.start()
            await other.execute(
                "INSERT INTO stock_daily (code, trade_date, close) VALUES ('sh.600001', $1, -1)",
                dt.date(2024, 1, 3),
            )
            write = asyncio.create_task(upsert(pool, stock_daily, rows))
            await asyncio.sleep(0.5)  # the COPY now waits on the uncommitted key
            await transaction.commit()
            return await write

    result = run(pg_dsn, scenario)
    assert (result.rows, result.changed) == (9, 9)
    stored = fetch(engine, "SELECT code, trade_date, close FROM stock_daily ORDER BY 1, 2")
    expected = [(r.code, r.trade_date.date(), r.close) for r in rows.itertuples()]
    assert stored == expected


def test_upsert_without_value_columns_inserts_missing_keys_only(pg_dsn: str, engine: Engine):
    members = pd.DataFrame(
        {"index_code": "sh.000300", "code": ["a", "b", "c"], "valid_from": dt.date(2024, 6, 3)}
    )
    run(pg_dsn, lambda pool: upsert(pool, index_constituents, members.iloc[:2]))
    result = run(pg_dsn, lambda pool: upsert(pool, index_constituents, members))
    assert (result.changed, result.unchanged) == (1, 2)
    assert fetch(engine, "SELECT code FROM index_constituents ORDER BY code") == [
        ("a",),
        ("b",),
        ("c",),
    ]


def test_upsert_keeps_columns_the_batch_does_not_carry(pg_dsn: str, engine: Engine):
    rows = daily_rows(codes=2, days=2)
    run(pg_dsn, lambda pool: upsert(pool, stock_daily, rows))
    factors = rows[["code", "trade_date"]].assign(back_adjust_factor=2.5)
    result = run(pg_dsn, lambda pool: upsert(pool, stock_daily, factors))
    assert result.changed == 4
    assert fetch(engine, "SELECT DISTINCT back_adjust_factor FROM stock_daily") == [(2.5,)]
    assert fetch(engine, "SELECT count(*) FROM stock_daily WHERE close IS NULL") == [(0,)]


def test_append_copies_new_rows_and_rejects_a_stored_key(pg_dsn: str, engine: Engine):
    rows = daily_rows(codes=2, days=3)
    result = run(pg_dsn, lambda pool: writer.append(pool, stock_daily, rows.iloc[:4]))
    assert (result.operation, result.rows, result.changed) == ("append", 4, 4)
    snapshot = checksum(engine)
    with pytest.raises(WriteError) as caught:
        run(pg_dsn, lambda pool: writer.append(pool, stock_daily, rows.iloc[2:], chunk_rows=1))
    assert str(caught.value).startswith("stock_daily: duplicate key value violates unique")
    assert str(caught.value).endswith("(key code=sh.600000, trade_date=2024-01-04)")
    assert checksum(engine) == snapshot


# -- windows and partitions ----------------------------------------------------------------------


def test_replace_window_replaces_only_the_window_and_the_codes(pg_dsn: str, engine: Engine):
    rows = daily_rows(codes=3, days=5)
    run(pg_dsn, lambda pool: upsert(pool, stock_daily, rows))
    day = dt.date(2024, 1, 4)
    new = rows[(rows.trade_date == pd.Timestamp(day)) & (rows.code == "sh.600001")]
    new = new.assign(close=77.0)
    result = run(
        pg_dsn,
        lambda pool: replace_window(
            pool, stock_daily, new, start=day, end=dt.date(2024, 1, 5), codes=["sh.600001"]
        ),
    )
    assert (result.deleted, result.rows) == (2, 1)
    assert fetch(engine, "SELECT count(*) FROM stock_daily") == [(14,)]
    assert fetch(
        engine,
        "SELECT code, trade_date, close FROM stock_daily WHERE close = 77",
    ) == [("sh.600001", day, 77.0)]


def test_replace_window_rejects_rows_outside_the_window_or_codes(pg_dsn: str, engine: Engine):
    rows = daily_rows(codes=2, days=3)
    with pytest.raises(WriteError, match=r"2 rows lie outside the window 2024-01-02..2024-01-03"):
        run(
            pg_dsn,
            lambda pool: replace_window(
                pool, stock_daily, rows, start=dt.date(2024, 1, 2), end=dt.date(2024, 1, 3)
            ),
        )
    with pytest.raises(WriteError, match=r"3 rows have codes not in the replaced codes, e\.g\. "):
        run(
            pg_dsn,
            lambda pool: replace_window(
                pool, stock_daily, rows, codes=["sh.600000"], **window(rows)
            ),
        )
    assert fetch(engine, "SELECT count(*) FROM stock_daily") == [(0,)]


def test_replace_window_on_another_date_column_of_a_plain_table(pg_dsn: str, engine: Engine):
    """A code's whole factor history replaced at once: a factor BaoStock withdrew goes too."""
    recreate_tables(engine, [raw_adjust_factor])

    def factors(*rows: tuple[str, str, float]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "code": [r[0] for r in rows],
                "divid_operate_date": pd.to_datetime([r[1] for r in rows]),
                "back_adjust_factor": [r[2] for r in rows],
            }
        )

    stored = factors(("sh.600000", "2020-06-01", 1.1), ("sh.600000", "2021-06-01", 1.2),
                     ("sz.000001", "2021-06-01", 1.5))  # fmt: skip
    run(pg_dsn, lambda pool: upsert(pool, raw_adjust_factor, stored))
    served = factors(("sh.600000", "2020-06-01", 1.1), ("sh.600000", "2022-06-01", 1.3))
    result = run(
        pg_dsn,
        lambda pool: replace_window(
            pool,
            raw_adjust_factor,
            served,
            start=dt.date(1990, 12, 19),
            end=dt.date(2024, 12, 31),
            codes=["sh.600000"],
            date_column="divid_operate_date",
        ),
    )
    assert (result.deleted, result.rows) == (2, 2)
    assert fetch(
        engine,
        "SELECT code, divid_operate_date, back_adjust_factor FROM raw_adjust_factor ORDER BY 1, 2",
    ) == [
        ("sh.600000", dt.date(2020, 6, 1), 1.1),
        ("sh.600000", dt.date(2022, 6, 1), 1.3),
        ("sz.000001", dt.date(2021, 6, 1), 1.5),  # another code: untouched
    ]
    with pytest.raises(WriteError, match="no 'trade_date'"):
        run(
            pg_dsn,
            lambda pool: replace_window(
                pool, raw_adjust_factor, served, start=dt.date(2020, 1, 1), end=dt.date(2024, 1, 1)
            ),
        )


def test_partitions_appear_on_demand_for_a_new_year(pg_dsn: str, engine: Engine):
    def partitions() -> list[tuple]:
        return fetch(
            engine,
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'stock_daily'::regclass ORDER BY 1",
        )

    assert partitions() == []
    run(pg_dsn, lambda pool: upsert(pool, stock_daily, daily_rows(start="2023-12-28", days=4)))
    assert partitions() == [
        ("stock_daily_2023", "FOR VALUES FROM ('2023-01-01') TO ('2024-01-01')"),
        ("stock_daily_2024", "FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')"),
    ]

    # Two writers racing into the same new year: the advisory lock lets one create it.
    async def race(pool: asyncpg.Pool) -> None:
        first = daily_rows(codes=2, start="2026-03-02")
        second = daily_rows(codes=2, start="2026-03-02").assign(code=lambda f: f.code + "x")
        await asyncio.gather(upsert(pool, stock_daily, first), upsert(pool, stock_daily, second))

    run(pg_dsn, race)
    assert [name for name, _ in partitions()] == [
        "stock_daily_2023",
        "stock_daily_2024",
        "stock_daily_2026",
    ]
    assert fetch(engine, "SELECT count(*) FROM stock_daily_2026") == [(16,)]


def _partition_state(engine: Engine, partition: str) -> list[tuple]:
    """Indexes (definition, validity, parent index) and constraints of a partition."""
    return fetch(
        engine,
        f"""
        SELECT 'index', pg_get_indexdef(i.indexrelid), i.indisvalid::text,
               (SELECT h.inhparent::regclass::text FROM pg_inherits h
                WHERE h.inhrelid = i.indexrelid)
        FROM pg_index i WHERE i.indrelid = '{partition}'::regclass
        UNION ALL
        SELECT 'constraint', conname, pg_get_constraintdef(oid), conparentid::regclass::text
        FROM pg_constraint WHERE conrelid = '{partition}'::regclass
        UNION ALL
        SELECT 'bound', pg_get_expr(relpartbound, oid), relispartition::text, NULL
        FROM pg_class WHERE oid = '{partition}'::regclass
        ORDER BY 1, 2
        """,
    )


def test_a_new_partition_is_built_whole_and_matches_one_created_empty(
    pg_dsn: str, engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """Enough rows for a year without a partition: the partition is loaded first, indexed
    after, then attached, and ends up exactly like one created empty and filled row by row."""
    rows = daily_rows(codes=5, days=6)
    run(pg_dsn, lambda pool: replace_window(pool, stock_daily, rows, **window(rows)))
    created_empty = _partition_state(engine, "stock_daily_2024")
    filled = checksum(engine, DATA_COLUMNS)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE stock_daily_2024"))

    monkeypatch.setattr(partitions, "WHOLE_PARTITION_MIN_ROWS", 10)
    with caplog.at_level(logging.INFO, logger="stock_pipeline.warehouse.writer"):
        result = run(pg_dsn, lambda pool: replace_window(pool, stock_daily, rows, **window(rows)))
    assert "built partition stock_daily_2024 whole (30 rows" in caplog.text
    assert result.rows == 30
    assert _partition_state(engine, "stock_daily_2024") == created_empty
    assert checksum(engine, DATA_COLUMNS) == filled


def test_a_bad_row_while_building_a_partition_leaves_no_partition(
    pg_dsn: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(partitions, "WHOLE_PARTITION_MIN_ROWS", 10)
    rows = daily_rows(codes=3, days=4).astype({"close": object})
    rows.loc[9, "close"] = "n/a"
    with pytest.raises(WriteError, match=r"column close: value 'n/a' is not a number"):
        run(
            pg_dsn,
            lambda pool: replace_window(pool, stock_daily, rows, chunk_rows=4, **window(rows)),
        )
    assert fetch(engine, "SELECT to_regclass('stock_daily_2024')::text") == [(None,)]


def _dead_tuples_and_heap_fetches(engine: Engine, partition: str, day: str) -> tuple[int, int]:
    """Dead tuples left in the partition, and heap fetches of an index-only cross-section
    (0 when every page is all-visible)."""
    with engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))
        conn.execute(text("SET enable_bitmapscan = off"))
        plan = conn.execute(
            text(
                "EXPLAIN (ANALYZE, FORMAT JSON) "
                f"SELECT code FROM {partition} WHERE trade_date = DATE '{day}'"
            )
        ).scalar()
        dead = conn.execute(
            text("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = to_regclass(:name)"),
            {"name": partition},
        ).scalar()
    node = plan[0]["Plan"]
    assert node["Node Type"] == "Index Only Scan", node
    return int(dead or 0), int(node["Heap Fetches"])


def _stages_left(engine: Engine) -> list[tuple]:
    return fetch(
        engine, "SELECT tablename FROM pg_tables WHERE schemaname = 'stock_pipeline_stage'"
    )


@pytest.mark.parametrize("streams", [1, 3], ids=["in_transaction", "parallel_stage"])
def test_a_partition_holding_only_the_window_is_rebuilt_whole_and_swapped_in(
    pg_dsn: str,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    streams: int,
):
    """A big replace of a window that covers all a partition holds (a re-import of the year)
    builds a new partition whole and swaps it in: same names, indexes and constraints as
    before, the new rows, no dead tuples; loaded in the write's transaction (COPY FREEZE),
    its pages are all-visible for index-only scans at once."""
    old = daily_rows(codes=5, days=6, seed=1)
    run(pg_dsn, lambda pool: replace_window(pool, stock_daily, old, **window(old)))
    before = _partition_state(engine, "stock_daily_2024")
    new = daily_rows(codes=5, days=6, seed=2)
    run(pg_dsn, lambda pool: replace_window(pool, stock_daily, new, streams=streams, **window(new)))
    expected = checksum(engine, DATA_COLUMNS)
    run(pg_dsn, lambda pool: replace_window(pool, stock_daily, old, **window(old)))

    monkeypatch.setattr(partitions, "WHOLE_PARTITION_MIN_ROWS", 10)
    with caplog.at_level(logging.INFO, logger="stock_pipeline.warehouse.writer"):
        result = run(
            pg_dsn,
            lambda pool: replace_window(pool, stock_daily, new, streams=streams, **window(new)),
        )
    assert "rebuilt partition stock_daily_2024 whole (30 rows" in caplog.text
    assert "swapped in" in caplog.text
    assert (result.rows, result.deleted) == (30, 30)
    assert _partition_state(engine, "stock_daily_2024") == before
    assert checksum(engine, DATA_COLUMNS) == expected
    assert _stages_left(engine) == []
    dead, heap_fetches = _dead_tuples_and_heap_fetches(engine, "stock_daily_2024", "2024-01-03")
    assert dead == 0
    if streams == 1:
        assert heap_fetches == 0

    # The same again is idempotent, and an empty partition is swapped as well.
    run(pg_dsn, lambda pool: replace_window(pool, stock_daily, new, streams=streams, **window(new)))
    assert checksum(engine, DATA_COLUMNS) == expected
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE stock_daily"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="stock_pipeline.warehouse.writer"):
        run(
            pg_dsn,
            lambda pool: replace_window(pool, stock_daily, new, streams=streams, **window(new)),
        )
    assert "rebuilt partition stock_daily_2024 whole" in caplog.text
    assert _partition_state(engine, "stock_daily_2024") == before
    assert checksum(engine, DATA_COLUMNS) == expected


def test_rows_outside_the_window_keep_the_partition_in_place(
    pg_dsn: str, engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    rows = daily_rows(codes=5, days=8, seed=1)
    run(pg_dsn, lambda pool: replace_window(pool, stock_daily, rows, **window(rows)))
    monkeypatch.setattr(partitions, "WHOLE_PARTITION_MIN_ROWS", 10)
    days = sorted(rows.trade_date.unique())
    inside = rows[rows.trade_date <= days[5]].assign(close=1.0)  # 30 rows, 10 stay outside
    # Also with codes: the other codes' rows of the window stay too.
    some = inside[inside.code.isin(["sh.600000", "sh.600001"])]
    with caplog.at_level(logging.INFO, logger="stock_pipeline.warehouse.writer"):
        run(pg_dsn, lambda pool: replace_window(pool, stock_daily, inside, **window(inside)))
        run(
            pg_dsn,
            lambda pool: replace_window(
                pool, stock_daily, some, codes=["sh.600000", "sh.600001"], **window(some)
            ),
        )
    assert "rebuilt partition" not in caplog.text
    assert fetch(engine, "SELECT count(*), count(*) FILTER (WHERE close = 1) FROM stock_daily") == [
        (40, 30)
    ]


def test_a_bad_row_while_rebuilding_a_partition_keeps_the_old_one(
    pg_dsn: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
):
    rows = daily_rows(codes=3, days=4)
    run(pg_dsn, lambda pool: replace_window(pool, stock_daily, rows, **window(rows)))
    before = checksum(engine)
    monkeypatch.setattr(partitions, "WHOLE_PARTITION_MIN_ROWS", 10)
    bad = rows.astype({"volume": object})
    bad.loc[9, "volume"] = -(2**70)
    with pytest.raises(WriteError, match=r"column volume: .* out of range"):
        run(
            pg_dsn,
            lambda pool: replace_window(pool, stock_daily, bad, chunk_rows=4, **window(bad)),
        )
    assert checksum(engine) == before
    assert _stages_left(engine) == []


def test_rows_added_outside_the_window_while_staging_are_kept(
    pg_dsn: str, engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """A writer that skips the write lock (a raw INSERT here) adds a row outside the window
    while the stage is built: the swap would drop it, so the rows are moved in place."""
    monkeypatch.setattr(partitions, "WHOLE_PARTITION_MIN_ROWS", 10)
    rows = daily_rows(codes=5, days=6)
    run(pg_dsn, lambda pool: replace_window(pool, stock_daily, rows, **window(rows)))
    build = partitions.build_stage_in_parallel

    async def intrude(*args: Any) -> int:
        chunks = await build(*args)
        intruder = await asyncpg.connect(pg_dsn)
        try:
            await intruder.execute(
                "INSERT INTO stock_daily (code, trade_date, close) "
                "VALUES ('sh.699999', '2024-06-03', 1.5)"
            )
        finally:
            await intruder.close()
        return chunks

    monkeypatch.setattr(partitions, "build_stage_in_parallel", intrude)
    new = rows.assign(close=2.5)
    with caplog.at_level(logging.INFO, logger="stock_pipeline.warehouse.writer"):
        run(pg_dsn, lambda pool: replace_window(pool, stock_daily, new, streams=2, **window(new)))
    assert "moved in place (the partition got rows outside the window)" in caplog.text
    assert fetch(
        engine, "SELECT count(*), count(*) FILTER (WHERE close = 2.5) FROM stock_daily"
    ) == [(31, 30)]
    assert _stages_left(engine) == []


def test_a_whole_partition_build_inside_the_callers_transaction_rolls_back_with_it(
    pg_dsn: str, engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """Given one connection, the build runs in the caller's transaction (a savepoint), with
    COPY FREEZE; rolling the caller back restores the old partition."""
    monkeypatch.setattr(partitions, "WHOLE_PARTITION_MIN_ROWS", 10)
    old = daily_rows(codes=5, days=6, seed=1)
    run(pg_dsn, lambda pool: replace_window(pool, stock_daily, old, **window(old)))
    before = checksum(engine)
    new = daily_rows(codes=5, days=6, seed=2)

    async def scenario(pool: asyncpg.Pool) -> int:
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            await replace_window(conn, stock_daily, new, **window(new))
            seen = await conn.fetchval("SELECT count(*) FROM stock_daily WHERE close IS NOT NULL")
            await transaction.rollback()
            return seen

    with caplog.at_level(logging.INFO, logger="stock_pipeline.warehouse.writer"):
        assert run(pg_dsn, scenario) == 30
    assert "rebuilt partition stock_daily_2024 whole (30 rows, loaded and indexed" in caplog.text
    assert checksum(engine) == before
    assert _stages_left(engine) == []


def test_a_cancelled_parallel_build_leaves_no_stage_and_no_lock(
    pg_dsn: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(partitions, "WHOLE_PARTITION_MIN_ROWS", 10)
    rows = daily_rows(codes=5, days=6)
    started = asyncio.Event()
    build = partitions.build_stage_in_parallel

    async def stall(*args: Any) -> int:
        await build(*args)
        started.set()
        await asyncio.sleep(60)
        return 0

    monkeypatch.setattr(partitions, "build_stage_in_parallel", stall)

    async def scenario(pool: asyncpg.Pool) -> None:
        task = asyncio.create_task(
            replace_window(pool, stock_daily, rows, streams=2, **window(rows))
        )
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Checked while the pool (and the writer's connection in it) is still open.
        other = await asyncpg.connect(pg_dsn)
        try:
            held = await other.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            )
        finally:
            await other.close()
        assert held == 0

    run(pg_dsn, scenario)
    assert _stages_left(engine) == []
    monkeypatch.setattr(partitions, "build_stage_in_parallel", build)
    run(pg_dsn, lambda pool: replace_window(pool, stock_daily, rows, **window(rows)))
    assert fetch(engine, "SELECT count(*) FROM stock_daily") == [(30,)]


def test_a_reader_that_never_lets_go_gets_the_rows_moved_in_place(
    pg_dsn: str, engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """The swap waits for readers in short attempts; a reader holding the table past
    SWAP_LOCK_WAIT_S does not fail the write: the rows are moved in place instead."""
    old = daily_rows(codes=5, days=6, seed=1)
    new = daily_rows(codes=5, days=6, seed=2)
    run(pg_dsn, lambda pool: replace_window(pool, stock_daily, new, **window(new)))
    expected = checksum(engine, DATA_COLUMNS)
    run(pg_dsn, lambda pool: replace_window(pool, stock_daily, old, **window(old)))
    monkeypatch.setattr(partitions, "WHOLE_PARTITION_MIN_ROWS", 10)
    monkeypatch.setattr(partitions, "SWAP_LOCK_WAIT_S", 0.3)
    monkeypatch.setattr(partitions, "_SWAP_LOCK_ATTEMPT", "100ms")

    async def scenario(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as reader, reader.transaction():
            assert await reader.fetchval("SELECT count(*) FROM stock_daily") == 30
            await replace_window(pool, stock_daily, new, **window(new))
            # The reader was never blocked for long and reads on.
            assert await reader.fetchval("SELECT count(*) FROM stock_daily") == 30

    with caplog.at_level(logging.INFO, logger="stock_pipeline.warehouse.writer"):
        run(pg_dsn, scenario)
    assert "moved in place (readers held the table)" in caplog.text
    assert checksum(engine, DATA_COLUMNS) == expected
    assert _stages_left(engine) == []


def test_stages_left_by_a_crashed_load_are_dropped(
    pg_dsn: str, engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setattr(partitions, "WHOLE_PARTITION_MIN_ROWS", 10)
    rows = daily_rows(codes=3, days=5)
    run(pg_dsn, lambda pool: replace_window(pool, stock_daily, rows, **window(rows)))
    expected = checksum(engine, DATA_COLUMNS)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE stock_daily"))
        conn.execute(text("CREATE SCHEMA IF NOT EXISTS stock_pipeline_stage"))
        conn.execute(text("CREATE TABLE stock_pipeline_stage.stock_daily_2024 (junk int)"))
        conn.execute(text("CREATE TABLE stock_pipeline_stage.stock_daily_2019 (junk int)"))
        conn.execute(text("CREATE TABLE stock_pipeline_stage.stocks_x_2019 (kept int)"))
    with caplog.at_level(logging.WARNING, logger="stock_pipeline.warehouse.partitions"):
        run(pg_dsn, lambda pool: replace_window(pool, stock_daily, rows, **window(rows)))
    assert "dropped stock_pipeline_stage.stock_daily_2019, left by an interrupted" in caplog.text
    assert checksum(engine, DATA_COLUMNS) == expected
    assert _stages_left(engine) == [("stocks_x_2019",)]
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE stock_pipeline_stage.stocks_x_2019"))


@pytest.mark.parametrize("streams", [1, 2])
def test_concurrent_whole_partition_writers_take_turns(
    pg_dsn: str, engine: Engine, monkeypatch: pytest.MonkeyPatch, streams: int
):
    monkeypatch.setattr(partitions, "WHOLE_PARTITION_MIN_ROWS", 10)
    first = daily_rows(codes=6, days=5, seed=1)
    second = daily_rows(codes=6, days=5, seed=2)
    digests = set()
    for frame in (first, second):
        run(pg_dsn, lambda pool, f=frame: replace_window(pool, stock_daily, f, **window(f)))
        digests.add(checksum(engine, DATA_COLUMNS))

    async def race(pool: asyncpg.Pool) -> None:
        await asyncio.gather(
            *(
                replace_window(pool, stock_daily, frame, streams=streams, **window(frame))
                for frame in (first, second, first, second)
            )
        )

    run(pg_dsn, race)
    assert checksum(engine, DATA_COLUMNS) in digests
    assert fetch(engine, "SELECT count(*) FROM stock_daily") == [(30,)]
    assert _stages_left(engine) == []


def test_a_table_with_row_level_security_gets_big_new_years_row_by_row(
    pg_dsn: str, engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """A stage would skip the table's policies, so a big year without a partition gets one
    created empty and its rows one by one (the owner writes here, so COPY is allowed)."""
    monkeypatch.setattr(partitions, "WHOLE_PARTITION_MIN_ROWS", 10)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE stock_daily ENABLE ROW LEVEL SECURITY"))
    rows = daily_rows(codes=5, days=6)
    with caplog.at_level(logging.INFO, logger="stock_pipeline.warehouse"):
        result = run(pg_dsn, lambda pool: replace_window(pool, stock_daily, rows, **window(rows)))
    assert result.rows == 30
    assert "partition stock_daily_2024 whole" not in caplog.text
    assert "created partitions stock_daily_2024" in caplog.text
    assert fetch(engine, "SELECT count(*) FROM stock_daily_2024") == [(30,)]


def test_ensure_partitions_skips_tables_that_are_not_natively_partitioned(
    pg_dsn: str, engine: Engine
):
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE stock_daily CASCADE"))
        # Stands in for a TimescaleDB hypertable: a plain table where metadata says partitioned.
        conn.execute(text("CREATE TABLE stock_daily (LIKE stocks)"))
    assert run(pg_dsn, lambda pool: writer.ensure_partitions(pool, stock_daily, [2024])) == []


@pytest.mark.parametrize("whole", [False, True], ids=["in_place", "rebuilt_and_swapped"])
def test_concurrent_reader_sees_the_old_window_or_the_new_one(
    pg_dsn: str, engine: Engine, monkeypatch: pytest.MonkeyPatch, whole: bool
):
    if whole:
        monkeypatch.setattr(partitions, "WHOLE_PARTITION_MIN_ROWS", 100)
    old = daily_rows(codes=40, days=10, seed=1)
    new = daily_rows(codes=30, days=10, seed=2)
    run(pg_dsn, lambda pool: replace_window(pool, stock_daily, old, **window(old)))

    def digest(frame: pd.DataFrame) -> tuple[int, float]:
        return len(frame), round(float(frame["close"].sum()), 4)

    allowed = {digest(old), digest(new)}

    async def scenario(pool: asyncpg.Pool) -> set[tuple[int, float]]:
        seen: set[tuple[int, float]] = set()
        done = asyncio.Event()

        async def read() -> None:
            async with pool.acquire() as conn:
                while not done.is_set():
                    count, total = await conn.fetchrow(
                        "SELECT count(*), round(coalesce(sum(close), 0)::numeric, 4)::float8 "
                        "FROM stock_daily"
                    )
                    seen.add((count, total))
                    await asyncio.sleep(0)

        reader = asyncio.create_task(read())
        for i in range(6):
            frame = new if i % 2 == 0 else old
            await replace_window(pool, stock_daily, frame, chunk_rows=50, **window(old))
        done.set()
        await reader
        return seen

    seen = run(pg_dsn, scenario)
    assert seen <= allowed, f"a reader saw a half-replaced window: {seen - allowed}"


# -- settings come from the caller ---------------------------------------------------------------


def test_chunk_rows_and_streams_default_to_constants_never_the_environment(
    pg_dsn: str, engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """Settings are read by the Dagster resource and passed down: unset, chunk_rows and streams
    are the Settings defaults, whatever STOCK_PIPELINE_* says (garbage here, which
    Settings.from_env would refuse)."""
    assert Settings().copy_chunk_rows == DEFAULT_CHUNK_ROWS
    assert Settings().copy_streams == partitions.DEFAULT_COPY_STREAMS
    monkeypatch.setenv("STOCK_PIPELINE_COPY_CHUNK_ROWS", "not a number")
    monkeypatch.setenv("STOCK_PIPELINE_COPY_STREAMS", "not a number")
    monkeypatch.setattr(partitions, "WHOLE_PARTITION_MIN_ROWS", 10)
    rows = daily_rows(codes=5, days=6)
    with caplog.at_level(logging.INFO, logger="stock_pipeline.warehouse.writer"):
        replaced = run(pg_dsn, lambda pool: replace_window(pool, stock_daily, rows, **window(rows)))
    upserted = run(pg_dsn, lambda pool: upsert(pool, stock_daily, rows))
    assert (replaced.chunks, upserted.chunks, upserted.unchanged) == (1, 1, 30)
    streams = min(partitions.DEFAULT_COPY_STREAMS, 4)  # run_with_pool's pool holds 4
    if streams > 1:
        assert f"{streams} COPY streams" in caplog.text
    else:
        assert "loaded and indexed in the transaction" in caplog.text
    with pytest.raises(ValueError, match="chunk_rows must be >= 1"):
        run(pg_dsn, lambda pool: upsert(pool, stock_daily, rows, chunk_rows=0))
    with pytest.raises(ValueError, match="streams must be >= 1"):
        run(pg_dsn, lambda pool: replace_window(pool, stock_daily, rows, streams=0, **window(rows)))


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("close", "abc", "column close: value 'abc' is not a number"),
        ("volume", 1.5, "column volume: value '1.5' is not an integer"),
        ("volume", 2**70, f"column volume: value '{2**70}' is out of range for int8"),
        ("trade_status", "yes", "column trade_status: value 'yes' is not a boolean"),
        ("code", None, "column code: NULL in a NOT NULL column"),
        ("trade_date", "2024-13-45", "column trade_date: value '2024-13-45' is not a date"),
    ],
)
def test_bad_value_error_names_table_column_and_key(
    pg_dsn: str, engine: Engine, column: str, value: Any, expected: str
):
    rows = daily_rows(codes=2, days=2).astype({column: object})
    rows.loc[2, column] = value
    with pytest.raises(WriteError) as caught:
        run(pg_dsn, lambda pool: upsert(pool, stock_daily, rows))
    message = str(caught.value)
    assert message.startswith(f"stock_daily: {expected} (key ")
    if column == "code":
        assert message.endswith("(key code=NULL, trade_date=2024-01-02)")
    elif column != "trade_date":
        assert message.endswith("(key code=sh.600001, trade_date=2024-01-02)")
    assert fetch(engine, "SELECT count(*) FROM stock_daily") == [(0,)]


def test_out_of_range_smallint_and_unknown_columns(pg_dsn: str):
    frame = pd.DataFrame({"code": ["sh.1", "sh.2"], "security_type": [1, 40_000]})
    with pytest.raises(WriteError, match=r"^stocks: column security_type: value '40000' is out"):
        run(pg_dsn, lambda pool: upsert(pool, stocks, frame))
    with pytest.raises(WriteError, match=r"columns \['colour'\] are not in the table"):
        run(pg_dsn, lambda pool: upsert(pool, stocks, frame.assign(colour="red")))


# -- COPY refused: fallback to INSERT ------------------------------------------------------------


@pytest.mark.parametrize("operation", ["upsert", "replace_window"])
def test_insert_method_writes_the_same_table_as_copy(pg_dsn: str, engine: Engine, operation: str):
    rows = daily_rows(codes=4, days=3)

    async def write(pool: asyncpg.Pool, method: str) -> writer.WriteResult:
        if operation == "upsert":
            return await upsert(pool, stock_daily, rows, chunk_rows=5, method=method)
        return await replace_window(
            pool, stock_daily, rows, chunk_rows=5, method=method, **window(rows)
        )

    copied = run(pg_dsn, lambda pool: write(pool, "copy"))
    by_copy = checksum(engine, DATA_COLUMNS)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE stock_daily"))
    inserted = run(pg_dsn, lambda pool: write(pool, "insert"))
    assert checksum(engine, DATA_COLUMNS) == by_copy
    assert (copied.method, inserted.method, inserted.chunks) == ("copy", "insert", 3)


@pytest.fixture
def rls_role(engine: Engine, pg_dsn: str) -> Iterator[str]:
    """A DSN for a role subject to row-level security on stock_daily, which makes the server
    refuse COPY FROM into it (FeatureNotSupported) while INSERT is allowed."""
    role = f"sp_rls_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE stock_daily_2024 PARTITION OF stock_daily "
                "FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')"
            )
        )
        conn.execute(text(f"CREATE ROLE {role} LOGIN NOBYPASSRLS"))
        conn.execute(text(f"GRANT ALL ON stock_daily, stock_daily_2024 TO {role}"))
        conn.execute(text("ALTER TABLE stock_daily ENABLE ROW LEVEL SECURITY"))
        conn.execute(text(f"CREATE POLICY everything ON stock_daily TO {role} USING (true)"))
    try:
        yield asyncpg_dsn(make_url(pg_dsn).set(username=role))
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS stock_daily CASCADE"))
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))


@pytest.mark.parametrize("whole", [False, True], ids=["in_place", "big_enough_to_build_whole"])
def test_copy_refused_by_the_server_falls_back_to_insert(
    rls_role: str,
    engine: Engine,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    whole: bool,
):
    """Row-level security refuses COPY; a table with it is never built whole either (a stage
    would skip its policies)."""
    if whole:
        monkeypatch.setattr(partitions, "WHOLE_PARTITION_MIN_ROWS", 5)
    rows = daily_rows(codes=3, days=3)
    with caplog.at_level(logging.INFO, logger="stock_pipeline.warehouse.writer"):
        result = run(rls_role, lambda pool: replace_window(pool, stock_daily, rows, **window(rows)))
    assert result.method == "insert"
    assert "COPY refused (FeatureNotSupportedError" in caplog.text
    assert "retrying with batched INSERT" in caplog.text
    assert fetch(engine, "SELECT count(*) FROM stock_daily") == [(9,)]


# -- secrets -------------------------------------------------------------------------------------


def test_password_never_appears_in_errors_or_logs(pg_dsn: str, caplog: pytest.LogCaptureFixture):
    url = make_url(pg_dsn)
    password = url.password or "s3cret-Pa55word"  # trust auth ignores a password it never asked
    dsn = asyncpg_dsn(url.set(password=password))
    rows = daily_rows(codes=2, days=2).astype({"close": object})
    rows.loc[1, "close"] = "abc"
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(WriteError) as caught:
            run(dsn, lambda pool: upsert(pool, stock_daily, rows))
        result = run(dsn, lambda pool: upsert(pool, stock_daily, daily_rows(), method="insert"))
    for text_ in (str(caught.value), repr(caught.value), caplog.text, repr(result)):
        assert password not in text_
