"""The read path for ETL: a query's rows as a typed DataFrame, fast.

    frame = await read_frame(pool, raw_k_daily, "SELECT * FROM raw_k_daily WHERE trade_date
                             BETWEEN $1 AND $2 AND code = ANY($3)", start, end, codes)

The dtypes come from the table specs in tables.py (each table is declared once), by column name:
Date -> datetime64[ns] (NaT for NULL), Double -> float64 (NaN for NULL), BigInteger, Integer and
SmallInteger -> Int64 (nullable) or int64 (NOT NULL), Boolean -> boolean, Text -> str,
DateTime -> datetime64[ns] (UTC when timezone-aware). Columns a query computes are typed by
Column objects passed instead of a table.

How: one `COPY (query) TO STDOUT (FORMAT binary)`, decoded with NumPy (copy_format.py). The
query is wrapped so that NULL never changes a row's size (a float NULL is sent as NaN, which it
reads as anyway, any other as a placeholder with its bit set in an int8 mask) and text columns
come last: market data, whose codes all have 9 bytes, then arrives as rows of one layout, and
each column is one strided copy. Text of varying length takes a slower path (rows located one
by one: about twice the time). A subquery with ORDER BY is read in its order, so the rows keep
the query's. benchmarks/etl_read.py compares this with asyncpg's fetch and with CSV into
pandas.read_csv.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Column, DateTime, Table

from stock_pipeline.warehouse.catalog import Database, connection, quote, resolve
from stock_pipeline.warehouse.copy_format import Kind, decode_binary, kind_of

__all__ = ["frame_dtypes", "read_frame"]

# The wire kind of each PostgreSQL result type read_frame decodes.
_RESULT_KINDS: dict[str, Kind] = {
    "float8": "float8",
    "float4": "float4",
    "int8": "int8",
    "int4": "int4",
    "int2": "int2",
    "bool": "bool",
    "date": "date",
    "timestamp": "timestamp",
    "timestamptz": "timestamp",
    "text": "text",
    "varchar": "text",
    "bpchar": "text",
    "name": "text",
}
_INTEGERS = {"int8", "int4", "int2"}
_FLOATS = {"float8", "float4"}
# Result kinds a column's spec accepts (any integer width for an integer column).
_ACCEPTS: dict[str, set[str]] = {
    "float8": {"float8", "float4"},
    **{kind: _INTEGERS for kind in _INTEGERS},
    "bool": {"bool"},
    "date": {"date"},
    "timestamp": {"timestamp"},
    "text": {"text"},
}
# What a NULL other than a float's is sent as (its NULL-ness goes in a mask).
_PLACEHOLDERS: dict[str, str] = {
    "int8": "0",
    "int4": "0",
    "int2": "0",
    "bool": "false",
    "date": "2000-01-01",
    "timestamp": "2000-01-01 00:00:00+00",
    "text": "",
}
_MASK_BITS = 63  # NULL bits per int8 mask (the sign bit stays clear)
_PG_EPOCH = np.datetime64("2000-01-01")
# What datetime64[ns] holds (1677-09-21 to 2262-04-11; int64 nanoseconds since 1970, NaT
# aside), as PostgreSQL sends dates (days since 2000-01-01) and timestamps (microseconds).
_EPOCH_US = 946_684_800 * 10**6
_MICROSECONDS_LIMITS = (-((2**63 - 1) // 1000) - _EPOCH_US, (2**63 - 1) // 1000 - _EPOCH_US)
_DAYS_LIMITS = (
    -(-_MICROSECONDS_LIMITS[0] // 86_400_000_000),
    _MICROSECONDS_LIMITS[1] // 86_400_000_000,
)


def frame_dtypes(columns: Iterable[Column]) -> dict[str, Any]:
    """The DataFrame dtype of each column (read_frame's typing, for building frames alike)."""
    return {column.name: _dtype(column) for column in columns}


def _dtype(column: Column) -> Any:
    kind = kind_of(column.type)
    if kind in _FLOATS:
        return np.dtype(np.float64)
    if kind in _INTEGERS:
        return np.dtype(np.int64) if not column.nullable else pd.Int64Dtype()
    if kind == "bool":
        return pd.BooleanDtype()
    if kind == "date":
        return np.dtype("datetime64[ns]")
    if kind == "timestamp":
        aware = isinstance(column.type, DateTime) and column.type.timezone
        return pd.DatetimeTZDtype("ns", "UTC") if aware else np.dtype("datetime64[ns]")
    return pd.StringDtype(na_value=np.nan)  # what dtype="str" means


@dataclass(frozen=True)
class _Field:
    """One column of the query's result: its name, the spec typing it, and its wire kind."""

    name: str
    column: Column
    kind: Kind


async def read_frame(
    db: Database, table: Table | str | Sequence[Column], sql: str, *args: Any
) -> pd.DataFrame:
    """The rows of `sql` (bind parameters $1.. given as `args`) as a DataFrame, its columns in
    the query's order, typed by the column of the same name in `table` (a warehouse table, its
    name, or Column objects, e.g. `Column("rows", BigInteger, nullable=False)` for a count).

    Raises ValueError for a result column that `table` does not declare, two result columns of
    the same name, a result type that does not match the declared one (the message says what
    to cast), a NULL in a column declared NOT NULL that reads as int64, or a date outside
    datetime64[ns] (1677-2262). Row order is the query's: wrapping keeps it.

    `sql` is one statement (a trailing semicolon is dropped, unless a comment follows it).
    COPY takes no parameters, so asyncpg inlines `args` as literals, replacing every `$n` in
    the text, one inside a string literal too.
    """
    specs = _specs(table)
    async with connection(db) as conn:
        statement = await conn.prepare(sql)
        fields = _fields(statement.get_attributes(), specs)
        received = bytearray()

        async def receive(chunk: bytes) -> None:
            received.extend(chunk)

        await conn.copy_from_query(_wrapped(sql, fields), *args, output=receive, format="binary")
    # Decoding takes a while for millions of rows: off the event loop.
    return await asyncio.to_thread(_frame, received, fields)


def _specs(table: Table | str | Sequence[Column]) -> dict[str, Column]:
    columns = resolve(table).columns if isinstance(table, Table | str) else table
    return {column.name: column for column in columns}


def _fields(attributes: Sequence[Any], specs: dict[str, Column]) -> list[_Field]:
    """The result columns with their specs, checked against them."""
    names = [a.name for a in attributes]
    if not names:
        raise ValueError("read_frame: the query returns no columns")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"read_frame: the query returns {twice} more than once: alias them")
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ValueError(
            f"read_frame: result columns {unknown} are not declared: select columns of the "
            "table, or pass Column objects that type them"
        )
    fields = []
    for attribute in attributes:
        column = specs[attribute.name]
        wanted = kind_of(column.type)
        kind = (
            _RESULT_KINDS.get(attribute.type.name)
            if attribute.type.schema == "pg_catalog"
            else None
        )
        if kind is None or kind not in _ACCEPTS[wanted]:
            raise ValueError(
                f"read_frame: column {attribute.name} is {attribute.type.name} in the result but "
                f"{column.type} in its spec: cast it in the query "
                f"({attribute.name}::{_cast_hint(wanted)})"
            )
        fields.append(_Field(attribute.name, column, kind))
    return fields


def _cast_hint(kind: Kind) -> str:
    return "timestamptz" if kind == "timestamp" else kind


def _wrapped(sql: str, fields: Sequence[_Field]) -> str:
    """`sql` as a subquery whose rows never vary in size with NULLs: a float NULL is sent as NaN
    (what it reads as anyway), any other NULL as a placeholder with its bit set in an int8
    mask sent first; text columns come last."""
    masks, masked = [], _masked(fields)
    for low in range(0, len(masked), _MASK_BITS):
        group = [f"q.{quote(f.name)}" for f in masked[low : low + _MASK_BITS]]
        bits = " + ".join(
            f"CASE WHEN {name} IS NULL THEN {1 << bit}::int8 ELSE 0::int8 END"
            for bit, name in enumerate(group)
        )
        # num_nulls first: one call, and most rows hold no NULL.
        masks.append(f"CASE WHEN num_nulls({', '.join(group)}) = 0 THEN 0::int8 ELSE {bits} END")
    values = [
        f"coalesce(q.{quote(f.name)}, '{'NaN' if f.kind in _FLOATS else _PLACEHOLDERS[f.kind]}')"
        for f in _wire_order(fields)
    ]
    body = sql.strip().rstrip(";")
    # The query on lines of its own: a trailing -- comment must not swallow the ")".
    return f"SELECT {', '.join([*masks, *values])} FROM (\n{body}\n) AS q"


def _masked(fields: Sequence[_Field]) -> list[_Field]:
    """The fields whose NULLs travel in the masks (bit i of mask j: field 63 * j + i)."""
    return [f for f in fields if f.kind not in _FLOATS]


def _wire_order(fields: Sequence[_Field]) -> list[_Field]:
    return sorted(fields, key=lambda f: f.kind == "text")


def _frame(received: bytearray, fields: Sequence[_Field]) -> pd.DataFrame:
    """The decoded COPY stream as a DataFrame, columns in the query's order."""
    ordered, masked = _wire_order(fields), _masked(fields)
    n_masks = -(-len(masked) // _MASK_BITS)
    decoded = decode_binary(
        np.frombuffer(received, dtype=np.uint8), ["int8"] * n_masks + [f.kind for f in ordered]
    )
    values = {f.name: column for f, column in zip(ordered, decoded[n_masks:], strict=True)}
    nulls = {
        f.name: (decoded[i // _MASK_BITS] >> (i % _MASK_BITS)) & 1 == 1
        for i, f in enumerate(masked)
    }
    columns = {f.name: _series(f, values[f.name], nulls.get(f.name)) for f in fields}
    return pd.DataFrame(columns, copy=False)


def _series(field: _Field, values: np.ndarray, null: np.ndarray | None) -> Any:
    """One decoded column as an array of its spec's dtype; `null` is None for floats (NULL
    arrived as NaN)."""
    dtype = _dtype(field.column)
    if null is None:
        return values
    if field.kind == "text":
        values[null] = np.nan
        return pd.array(values, dtype=dtype)
    if field.kind in _INTEGERS:
        if dtype != np.int64:
            return pd.arrays.IntegerArray(values, null)
        if null.any():
            raise ValueError(
                f"read_frame: column {field.name} is NOT NULL in its spec, but the query "
                "returned NULL: pass a nullable Column for it"
            )
        return values
    if field.kind == "bool":
        return pd.arrays.BooleanArray(values, null)
    stamps = _as_datetime64(field, values, null)
    if isinstance(dtype, pd.DatetimeTZDtype):
        return pd.DatetimeIndex(stamps).tz_localize("UTC").array
    return stamps


def _as_datetime64(field: _Field, values: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Dates (days since 2000) or timestamps (microseconds since 2000) as datetime64[ns],
    NaT for NULL; ValueError for a value datetime64[ns] cannot hold (infinity, say)."""
    unit, (low, high) = (
        ("D", _DAYS_LIMITS) if field.kind == "date" else ("us", _MICROSECONDS_LIMITS)
    )
    outside = ~null & ((values < low) | (values > high))
    if outside.any():
        raise ValueError(
            f"read_frame: column {field.name} holds a value datetime64[ns] cannot hold "
            "(before 1677-09-21, after 2262-04-11, or infinity)"
        )
    epoch = _PG_EPOCH.astype(f"datetime64[{unit}]")
    stamps = (epoch + np.where(null, 0, values).astype(f"timedelta64[{unit}]")).astype(
        "datetime64[ns]"
    )
    stamps[null] = np.datetime64("NaT")
    return stamps
