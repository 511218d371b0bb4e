"""read_frame against real PostgreSQL: exact round trips of every type (NULLs, extreme numbers
and dates, awkward text), dtypes from the table specs, bind parameters, row order, computed
columns, errors that say what to cast; and the binary COPY decoder on its own."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import asyncpg
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import BigInteger, Boolean, Column, Date, Double, Integer
from sqlalchemy.engine import Engine

from stock_pipeline.warehouse import copy_format, writer
from stock_pipeline.warehouse.copy_format import decode_binary, encode_binary, prepare_column
from stock_pipeline.warehouse.reader import frame_dtypes, read_frame
from stock_pipeline.warehouse.tables import RAW_TABLES, fetch_log, stocks, sync_state
from stock_pipeline_tests.helpers import recreate_tables
from stock_pipeline_tests.helpers import run_with_pool as run

raw_k_daily = RAW_TABLES["raw_k_daily"]
K_COLUMNS = [c.name for c in raw_k_daily.c if c.name != "fetched_at"]
K_DTYPES = frame_dtypes(raw_k_daily.c[name] for name in K_COLUMNS)
STOCK_COLUMNS = [c.name for c in stocks.c if c.name != "updated_at"]
AWKWARD_TEXT = [
    'comma, "quotes" and \\ backslash',
    "new\nline\r\nand\ttab",
    "",
    " padded ",
    "\\N",
    "NULL",
    "浦发银行",
    "🚀 rocket ünïcödé",
    "x" * 5_000,
]


@pytest.fixture(autouse=True)
def fresh_tables(engine: Engine) -> Iterator[None]:
    recreate_tables(engine, [raw_k_daily, stocks, sync_state, fetch_log])
    yield


def k_rows() -> pd.DataFrame:
    """raw_k_daily rows with every nullable column NULL somewhere, extreme values, and
    dates from 1677 to 2262 (what datetime64[ns] holds)."""
    days = [dt.date(1677, 9, 22), dt.date(1990, 12, 19), dt.date(2024, 1, 2), dt.date(2262, 4, 11)]
    n = len(days) * 3
    rng = np.random.default_rng(7)
    floats = rng.normal(0, 1e6, (n, 12))
    floats[0] = [1e308, -1e308, 5e-324, -0.0, 1.5, -2.5, 0.0, 1e-300, -1e-300, 123.456, 1e15, -7]
    floats[1] = np.nan  # every float column NULL
    frame = pd.DataFrame(
        floats,
        columns=[c for c in K_COLUMNS if K_DTYPES[c] == np.float64],
    )
    frame.insert(0, "trade_date", np.tile(np.array(days, dtype="datetime64[D]"), 3))
    frame.insert(1, "code", np.repeat(["sh.600000", "sz.000001", "bj.430047"], len(days)))
    frame["volume"] = pd.array([2**63 - 1, -(2**63), 0, None, *range(8)], dtype="Int64")
    frame["adjust_flag"] = pd.array([3, None, -1, *[2] * 9], dtype="Int64")
    frame["trade_status"] = pd.array([True, None, False, *[True] * 9], dtype="boolean")
    frame["is_st"] = pd.array([None, False, True, *[False] * 9], dtype="boolean")
    return frame[K_COLUMNS]


def k_window(frame: pd.DataFrame) -> dict[str, dt.date]:
    days = pd.to_datetime(frame["trade_date"])
    return {"start": days.min().date(), "end": days.max().date()}


def stock_rows() -> pd.DataFrame:
    """stocks rows with awkward text (varying lengths), NULLs of every type."""
    n = len(AWKWARD_TEXT)
    return pd.DataFrame(
        {
            "code": [f"sh.{600000 + i}" for i in range(n)],
            "name": AWKWARD_TEXT,
            "security_type": pd.array([1, None, 5, -32768, 32767, *[2] * (n - 5)], dtype="Int64"),
            "list_date": [
                dt.date(1991, 1, 29),
                None,
                *[dt.date(2000 + i, 2, 28) for i in range(n - 2)],
            ],
            "delist_date": [None] * n,
            "is_listed": pd.array([True, False, None, *[True] * (n - 3)], dtype="boolean"),
            "industry": [None, *AWKWARD_TEXT[1:]],
            "industry_classification": [*AWKWARD_TEXT[::-1]],
        }
    )


def typed(frame: pd.DataFrame, dtypes: dict[str, Any]) -> pd.DataFrame:
    return frame[list(dtypes)].astype(dtypes).reset_index(drop=True)


# -- dtypes ----------------------------------------------------------------------------------------


def test_dtypes_follow_the_table_specs():
    assert {name: str(dtype) for name, dtype in frame_dtypes(stocks.c).items()} == {
        "code": "str",
        "name": "str",
        "security_type": "Int64",
        "list_date": "datetime64[ns]",
        "delist_date": "datetime64[ns]",
        "is_listed": "boolean",
        "industry": "str",
        "industry_classification": "str",
        "updated_at": "datetime64[ns, UTC]",
    }
    log = frame_dtypes(fetch_log.c)
    assert (log["id"], log["codes_requested"], log["rows"]) == (np.int64, np.int64, np.int64)
    assert (log["seconds"], log["window_start"]) == (np.float64, np.dtype("datetime64[ns]"))
    assert K_DTYPES["volume"] == pd.Int64Dtype() and K_DTYPES["close"] == np.float64


# -- round trips -----------------------------------------------------------------------------------


def test_market_data_round_trips_exactly_nulls_extremes_and_dates(pg_dsn: str):
    rows = k_rows()
    sql = f"SELECT {', '.join(K_COLUMNS)} FROM raw_k_daily ORDER BY code, trade_date"

    async def scenario(pool: asyncpg.Pool) -> pd.DataFrame:
        await writer.upsert(pool, raw_k_daily, rows)
        return await read_frame(pool, raw_k_daily, sql)

    read = run(pg_dsn, scenario)
    expected = typed(rows.sort_values(["code", "trade_date"]), K_DTYPES)
    pd.testing.assert_frame_equal(read, expected, check_exact=True)
    assert read["close"].isna().sum() == 1  # the row whose every float is NULL
    assert np.signbit(read.loc[read["volume"].eq(2**63 - 1).fillna(False), "close"]).all()


def test_text_round_trips_exactly_and_null_is_not_empty(pg_dsn: str):
    """Commas, quotes, newlines, backslashes, \\N, unicode, 5,000 characters: text of varying
    length (the decoder's slow path) comes back byte for byte, '' and NULL apart."""
    rows = stock_rows()

    async def scenario(pool: asyncpg.Pool) -> pd.DataFrame:
        await writer.upsert(pool, stocks, rows)
        return await read_frame(pool, stocks, "SELECT * FROM stocks ORDER BY code")

    read = run(pg_dsn, scenario)
    pd.testing.assert_frame_equal(
        read[STOCK_COLUMNS], typed(rows, frame_dtypes(stocks.c[c] for c in STOCK_COLUMNS))
    )
    assert read.loc[2, "name"] == "" and pd.isna(read.loc[0, "industry"])
    assert str(read["updated_at"].dtype) == "datetime64[ns, UTC]"
    assert read["updated_at"].notna().all()


def test_timestamps_round_trip_to_the_microsecond(pg_dsn: str):
    stamps = pd.to_datetime(
        ["1969-07-20 20:17:40.123456+00", "2024-02-29 23:59:59.999999+08", None], utc=True
    )
    rows = pd.DataFrame(
        {
            "dataset": ["a", "b", "c"],
            "code": ["", "sh.600000", "x"],
            "last_success_at": stamps,
            "last_attempt_at": stamps.fillna(pd.Timestamp("2262-04-11 23:47:16", tz="UTC")),
            "last_status": ["ok", "failed", "empty"],
            "consecutive_failures": [0, 2**31 - 1, -(2**31)],
        }
    )

    async def scenario(pool: asyncpg.Pool) -> pd.DataFrame:
        await writer.upsert(pool, sync_state, rows)
        return await read_frame(pool, sync_state, "SELECT * FROM sync_state ORDER BY dataset")

    read = run(pg_dsn, scenario)
    dtypes = frame_dtypes(sync_state.c[name] for name in rows.columns)
    pd.testing.assert_frame_equal(read[list(rows.columns)], typed(rows, dtypes))
    assert read["consecutive_failures"].dtype == np.int64  # NOT NULL in the spec
    assert read["last_error"].isna().all()


def test_an_empty_result_has_the_spec_dtypes(pg_dsn: str):
    read = run(pg_dsn, lambda pool: read_frame(pool, stocks, "SELECT * FROM stocks"))
    assert read.empty and list(read.columns) == [c.name for c in stocks.c]
    assert read.dtypes.to_dict() == frame_dtypes(stocks.c)


# -- queries ---------------------------------------------------------------------------------------


def test_bind_parameters_and_row_order(pg_dsn: str):
    rows = k_rows()
    sql = (
        "SELECT code, trade_date, close, volume FROM raw_k_daily "
        "WHERE trade_date BETWEEN $1 AND $2 AND code = ANY($3) AND coalesce(volume, 0) >= $4 "
        "ORDER BY code DESC, trade_date DESC"
    )
    codes = ["sh.600000", "bj.430047"]

    async def scenario(pool: asyncpg.Pool) -> pd.DataFrame:
        await writer.upsert(pool, raw_k_daily, rows)
        return await read_frame(
            pool, "raw_k_daily", sql, dt.date(1990, 1, 1), dt.date(2100, 1, 1), codes, 0
        )

    read = run(pg_dsn, scenario)
    chosen = rows[
        rows["code"].isin(codes)
        & rows["trade_date"].between(pd.Timestamp("1990-01-01"), pd.Timestamp("2100-01-01"))
        & (rows["volume"].fillna(0) >= 0)
    ].sort_values(["code", "trade_date"], ascending=False)
    columns = ["code", "trade_date", "close", "volume"]
    pd.testing.assert_frame_equal(read, typed(chosen, {c: K_DTYPES[c] for c in columns}))


def test_computed_columns_are_typed_by_column_objects(pg_dsn: str):
    rows = k_rows()
    columns = [
        raw_k_daily.c.code,
        Column("days", BigInteger, nullable=False),
        Column("last_day", Date),
        Column("mean_close", Double),
        Column("any_st", Boolean),
        Column("half", Integer),
    ]
    sql = (
        "SELECT code, count(*) AS days, max(trade_date) AS last_day, "
        "avg(close)::float8 AS mean_close, bool_or(is_st) AS any_st, NULL::int AS half "
        "FROM raw_k_daily GROUP BY code ORDER BY code  -- one row a code\n"
    )

    async def scenario(pool: asyncpg.Pool) -> pd.DataFrame:
        await writer.upsert(pool, raw_k_daily, rows)
        return await read_frame(pool, columns, sql)

    read = run(pg_dsn, scenario)
    assert read.dtypes.to_dict() == frame_dtypes(columns)
    assert read["days"].tolist() == [4, 4, 4]
    assert read["half"].isna().all()
    assert read["last_day"].tolist() == [pd.Timestamp("2262-04-11")] * 3


def test_more_than_63_nullable_columns(pg_dsn: str):
    """NULL bits of 70 integer columns: two masks."""
    columns = [Column(f"c{i}", BigInteger) for i in range(70)]
    select = ", ".join(
        f"CASE WHEN r % 7 = {i % 7} THEN NULL ELSE r * 100 + {i} END::int8 AS c{i}"
        for i in range(70)
    )
    sql = f"SELECT {select} FROM generate_series(0, 20) r ORDER BY r"
    read = run(pg_dsn, lambda pool: read_frame(pool, columns, sql))
    r = np.arange(21)
    for i in (0, 1, 62, 63, 64, 69):
        expected = pd.array(np.where(r % 7 == i % 7, None, r * 100 + i), dtype="Int64")
        pd.testing.assert_extension_array_equal(read[f"c{i}"].array, expected)


def test_one_connection_reads_its_own_uncommitted_rows(pg_dsn: str):
    rows = stock_rows()

    async def scenario(pool: asyncpg.Pool) -> int:
        async with pool.acquire() as conn, conn.transaction():
            await writer.upsert(conn, stocks, rows)
            read = await read_frame(conn, stocks, "SELECT code FROM stocks WHERE name <> ''")
        return len(read)

    assert run(pg_dsn, scenario) == len(rows) - 1


def test_a_late_change_of_layout_switches_to_locating_rows(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
):
    """Blocks of 4 rows, codes of 9 bytes but in the last block one of 8 and one of 10 (the
    same total size): the layout check fails late, and the rows are located instead."""
    monkeypatch.setattr(copy_format, "_BLOCK_TUPLES", 4)
    located = []
    locate = copy_format._decode_located
    monkeypatch.setattr(copy_format, "_decode_located", lambda *a: located.append(1) or locate(*a))
    uniform = (
        "SELECT 'sh.' || (600000 + r) AS code, r::float8 AS close "
        "FROM generate_series(0, 15) r ORDER BY r"
    )
    varying = uniform.replace(
        "'sh.' || (600000 + r)",
        "CASE r WHEN 13 THEN 'sh.60001' WHEN 14 THEN 'sh.6000000' ELSE 'sh.' || (600000 + r) END",
    )
    read = run(pg_dsn, lambda pool: read_frame(pool, raw_k_daily, uniform))
    assert located == [] and read["code"].tolist()[-1] == "sh.600015"
    read = run(pg_dsn, lambda pool: read_frame(pool, raw_k_daily, varying))
    assert located == [1]
    assert read["code"].tolist()[12:] == ["sh.600012", "sh.60001", "sh.6000000", "sh.600015"]
    assert read["close"].tolist() == list(map(float, range(16)))
    assert str(read["code"].dtype) == "str"


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT code, 1 AS colour FROM stocks", r"result columns \['colour'\] are not declared"),
        ("SELECT code, code FROM stocks", r"returns \['code'\] more than once"),
        ("SELECT code, 1.5 AS security_type FROM stocks", r"security_type is numeric .*::int2"),
        ("SELECT 'infinity'::date AS list_date", r"list_date holds a value datetime64\[ns\]"),
        ("SELECT DATE '1500-01-01' AS list_date", r"list_date holds a value datetime64\[ns\]"),
        ("SELECT FROM stocks", r"the query returns no columns"),
    ],
)
def test_errors_say_what_to_change(pg_dsn: str, sql: str, message: str):
    with pytest.raises(ValueError, match=message):
        run(pg_dsn, lambda pool: read_frame(pool, stocks, sql))


def test_null_in_a_not_null_integer_column_is_an_error(pg_dsn: str):
    sql = "SELECT NULL::int8 AS rows FROM generate_series(1, 2)"
    with pytest.raises(ValueError, match="rows is NOT NULL in its spec"):
        run(pg_dsn, lambda pool: read_frame(pool, fetch_log, sql))


# -- the decoder alone -----------------------------------------------------------------------------

EMPTY_STREAM = np.frombuffer(b"PGCOPY\n\xff\r\n\x00" + bytes(8) + b"\xff\xff", dtype=np.uint8)


def _encoded(frame: pd.DataFrame, kinds: list[Any]) -> tuple[np.ndarray, pd.DataFrame]:
    """The frame as binary COPY, and the frame in the order the stream holds its rows."""
    columns = [
        prepare_column(name, kind, frame[name]) for name, kind in zip(frame, kinds, strict=True)
    ]
    data, order = encode_binary(columns)
    return data, frame if order is None else frame.iloc[order]


@pytest.mark.parametrize("varying", [False, True], ids=["one_layout", "located"])
def test_decode_binary_reads_what_encode_binary_wrote(varying: bool):
    n = 50
    frame = pd.DataFrame(
        {
            "d": pd.date_range("1999-12-30", periods=n),
            "x": np.linspace(-1e10, 1e10, n),
            "i": np.arange(n) - 25,
            "b": np.arange(n) % 3 == 0,
            "t": [AWKWARD_TEXT[i % len(AWKWARD_TEXT)] if varying else "浦发" for i in range(n)],
        }
    )
    kinds = ["date", "float8", "int2", "bool", "text"]
    data, stored = _encoded(frame, kinds)
    days, x, i, b, t = decode_binary(data, kinds)
    assert (days == (stored["d"] - pd.Timestamp("2000-01-01")).dt.days).all()
    assert (x == stored["x"]).all() and (i == stored["i"]).all() and (b == stored["b"]).all()
    assert list(t) == list(stored["t"])


def test_decode_binary_refuses_nulls_and_broken_streams():
    null_first, _ = _encoded(pd.DataFrame({"x": [np.nan]}), ["float8"])
    with pytest.raises(ValueError, match="field 0 is NULL"):
        decode_binary(null_first, ["float8"])
    null_later, _ = _encoded(pd.DataFrame({"x": [1.0, np.nan, 2.0]}), ["float8"])
    with pytest.raises(ValueError, match="a NULL where none may be, or a truncated stream"):
        decode_binary(null_later, ["float8"])
    data, _ = _encoded(pd.DataFrame({"x": [1.0, 2.0]}), ["float8"])
    with pytest.raises(ValueError, match="truncated"):
        decode_binary(data[:-1], ["float8"])
    with pytest.raises(ValueError, match="not a binary COPY stream"):
        decode_binary(np.frombuffer(b"x,y\n1,2\n", dtype=np.uint8), ["float8"])
    with pytest.raises(ValueError, match="do not have 2 fields"):
        decode_binary(data, ["float8", "float8"])
    assert [len(c) for c in decode_binary(EMPTY_STREAM, ["text", "date"])] == [0, 0]
