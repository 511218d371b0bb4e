"""A write's rows: checked against their table, key columns converted and put in key order,
the rest converted and encoded chunk by chunk for binary COPY; and the COPY primitives every
write operation uses (writer.py) to stream them."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

import asyncpg
import numpy as np
import pandas as pd
from sqlalchemy import Column, Table

from stock_pipeline.warehouse.catalog import quote
from stock_pipeline.warehouse.copy_format import (
    BadValue,
    PreparedColumn,
    encode_binary,
    kind_of,
    prepare_column,
    to_records,
)

Method = Literal["copy", "insert"]

# Rows per COPY chunk when the caller names none: bounds client and temp-table memory. The
# default of Settings.copy_chunk_rows; the Dagster resource passes the configured value.
DEFAULT_CHUNK_ROWS = 50_000

# Set by the database on every write; never a reason to rewrite a row.
BOOKKEEPING_COLUMNS = frozenset({"fetched_at", "updated_at"})

# Errors that say the server will not take COPY here, whatever the data: row-level security on
# the target (0A000), a proxy or server without COPY support, or a binary value the column's
# actual type does not accept (a schema that drifted from tables.py). INSERT may still work.
COPY_REFUSED: tuple[type[Exception], ...] = (
    asyncpg.FeatureNotSupportedError,
    asyncpg.UnsupportedServerFeatureError,
    asyncpg.ProtocolViolationError,
    asyncpg.InvalidBinaryRepresentationError,
)
_COPY_CONTEXT = re.compile(r"COPY [^,]+, line (\d+)(?:, column (\w+))?")


def year_counts(row_years: np.ndarray) -> dict[int, int]:
    """Rows per year, years ascending (a bincount: years span a few decades at most)."""
    if not len(row_years):
        return {}
    first = int(row_years.min())
    counts = np.bincount(row_years - first)
    return {first + int(i): int(counts[i]) for i in np.flatnonzero(counts)}


class WriteError(Exception):
    """The batch holds data the table cannot take; nothing of the batch was written."""

    def __init__(
        self,
        table: str,
        message: str,
        *,
        column: str | None = None,
        key: Mapping[str, Any] | None = None,
    ):
        super().__init__(f"{table}: {message}")
        self.table = table
        self.column = column
        self.key = dict(key) if key else None


@dataclass
class Chunk:
    start: int
    stop: int
    data: np.ndarray | None = None  # a binary COPY stream
    order: np.ndarray | None = None  # tuple i of `data` is row start + order[i]
    records: list[tuple] | None = None  # for INSERT, or COPY of irregular rows

    def __len__(self) -> int:
        return self.stop - self.start


def _format_value(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "NULL"
    if isinstance(value, pd.Timestamp | np.datetime64):
        stamp = pd.Timestamp(value)
        if stamp is pd.NaT:
            return "NULL"
        return stamp.date().isoformat() if stamp == stamp.normalize() else stamp.isoformat()
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


class Batch:
    """A DataFrame checked against its table: the columns to write in table order, key columns
    converted up front (for duplicates, windows, partitions and error keys), the rest converted
    chunk by chunk."""

    def __init__(
        self,
        table: Table,
        rows: pd.DataFrame | Mapping[str, Any],
        extra_keys: Sequence[str] = (),
    ):
        self.table = table
        self.name = table.name
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(dict(rows))
        unknown = [str(c) for c in frame.columns if c not in table.c]
        if unknown:
            raise WriteError(self.name, f"columns {unknown} are not in the table")
        if frame.columns.duplicated().any():
            raise WriteError(self.name, "the batch names a column twice")
        self.key = [c.name for c in table.primary_key.columns]
        missing = [
            c.name
            for c in table.c
            if c.name not in frame.columns
            and (c.primary_key or (not c.nullable and c.server_default is None))
        ]
        if missing:
            raise WriteError(self.name, f"required columns {missing} are missing from the batch")
        self.columns: list[Column] = [c for c in table.c if c.name in frame.columns]
        self.column_names = [c.name for c in self.columns]
        self.value_columns = [
            c for c in self.column_names if c not in self.key and c not in BOOKKEEPING_COLUMNS
        ]
        self.frame = frame
        # Positions in `frame` of this batch's rows (a subset shares its parent's frame).
        self.rows: np.ndarray | None = None
        self.duplicates = 0
        upfront = dict.fromkeys([*self.key, *extra_keys])
        self.prepared: dict[str, PreparedColumn] = {}
        for name in upfront:
            self.prepared[name] = self._prepare(table.c[name], frame[name], 0)
        self._collapse_duplicates()

    def __len__(self) -> int:
        return len(self.frame) if self.rows is None else len(self.rows)

    def _column(self, name: str, start: int = 0, stop: int | None = None) -> pd.Series:
        """Rows [start, stop) of one input column."""
        series = self.frame[name]
        if self.rows is None:
            return series.iloc[start:stop]
        return series.iloc[self.rows[start:stop]]

    # -- conversion ---------------------------------------------------------------------------

    def _prepare(self, column: Column, series: pd.Series, offset: int) -> PreparedColumn:
        try:
            prepared = prepare_column(column.name, kind_of(column.type), series)
        except BadValue as bad:
            raise self.bad_value(bad.column, offset + bad.row, bad.value, bad.problem) from None
        if not column.nullable and prepared.null is not None:
            row = offset + int(np.flatnonzero(prepared.null)[0])
            raise self.bad_value(column.name, row, None, "")
        return prepared

    def key_at(self, row: int) -> dict[str, str]:
        """The primary key of row `row` (position in the batch), formatted for messages."""
        return {k: _format_value(self._column(k, row, row + 1).iloc[0]) for k in self.key}

    def describe_key(self, row: int) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.key_at(row).items())

    def bad_value(self, column: str, row: int, value: Any, problem: str) -> WriteError:
        if problem:
            what = f"value {_format_value(value)!r} {problem}"
        else:
            what = "NULL in a NOT NULL column"
        return WriteError(
            self.name,
            f"column {column}: {what} (key {self.describe_key(row)})",
            column=column,
            key=self.key_at(row),
        )

    def _collapse_duplicates(self) -> None:
        """Order the batch by key and keep the last row of every key.

        Input already in key order (a backfill in code order, a day in code order) is
        recognised in O(n) and left as it is. Key order makes each chunk a narrow key range
        (see `key_bounds`) and index insertions local.
        """
        n = len(self.frame)
        if n < 2 or not self.key or self._strictly_increasing():
            return
        sortable = []
        for name in self.key:
            col = self.prepared[name]
            values = self._key_values(col)
            # Ranks of the text values in sorted order; other kinds sort as they are.
            sortable.append(pd.factorize(values, sort=True)[0] if col.kind == "text" else values)
        order = np.lexsort(sortable[::-1])  # stable: equal keys keep their input order
        ranked = [key[order] for key in sortable]
        same_as_next = np.ones(n - 1, dtype=bool)
        for key in ranked:
            same_as_next &= key[1:] == key[:-1]
        keep = np.append(~same_as_next, True)
        self.duplicates = int(n - keep.sum())
        self.frame = self.frame.iloc[order[keep]].reset_index(drop=True)
        self.prepared = {
            name: self._prepare(self.table.c[name], self.frame[name], 0) for name in self.prepared
        }

    def key_bounds(self, chunk: Chunk) -> tuple[list[Any], list[Any]]:
        """The smallest and largest key of a chunk (the batch is in key order), as values for
        query parameters."""
        columns = [self.prepared[k] for k in self.key]
        first = to_records([c.slice(chunk.start, chunk.start + 1) for c in columns])[0]
        last = to_records([c.slice(chunk.stop - 1, chunk.stop) for c in columns])[0]
        return list(first), list(last)

    @staticmethod
    def _key_values(col: PreparedColumn) -> np.ndarray:
        return col.objects if col.kind == "text" else col.values  # type: ignore[return-value]

    def _strictly_increasing(self) -> bool:
        greater = np.zeros(len(self.frame) - 1, dtype=bool)
        equal = np.ones(len(self.frame) - 1, dtype=bool)
        for name in self.key:
            values = self._key_values(self.prepared[name])
            # NULL keys are rejected in _prepare, so plain comparisons are safe here.
            greater |= equal & (values[1:] > values[:-1])
            equal &= values[1:] == values[:-1]
        return bool(greater.all())

    def dates(self, column: str) -> np.ndarray:
        """A date column (converted up front) as datetime64[D]."""
        return self.prepared[column].as_dates()

    def row_years(self, column: str) -> np.ndarray:
        """The year of each row's date in `column`."""
        return self.dates(column).astype("datetime64[Y]").astype(np.int64) + 1970

    def years(self, column: str) -> list[int]:
        """The distinct years of a date column."""
        return list(year_counts(self.row_years(column)))

    def subset(self, mask: np.ndarray) -> Batch:
        """The rows where `mask` is true, as a batch of their own: in key order already, it
        shares this batch's frame and converted key columns (no copy of the other columns;
        the encoder picks its rows chunk by chunk)."""
        if mask.all():
            return self
        positions = np.flatnonzero(mask)
        part = copy.copy(self)
        part.rows = positions if self.rows is None else self.rows[positions]
        part.prepared = {name: col.take(positions) for name, col in self.prepared.items()}
        part.duplicates = 0
        return part

    # -- chunks -------------------------------------------------------------------------------

    def encode_chunk(self, start: int, stop: int, method: Method) -> Chunk:
        """Rows [start, stop) converted, validated and encoded (runs in a worker thread)."""
        columns = [
            self.prepared[c.name].slice(start, stop)
            if c.name in self.prepared
            else self._prepare(c, self._column(c.name, start, stop), start)
            for c in self.columns
        ]
        if method == "copy":
            encoded = encode_binary(columns)
            if encoded is not None:
                return Chunk(start, stop, data=encoded[0], order=encoded[1])
        return Chunk(start, stop, records=to_records(columns))

    async def chunks(self, chunk_rows: int, method: Method) -> AsyncIterator[Chunk]:
        """The batch in chunks; the next chunk is encoded in a thread while this one is sent."""
        n = len(self)
        starts = list(range(0, n, chunk_rows))
        if len(starts) <= 1:
            if n:
                yield self.encode_chunk(0, n, method)
            return
        loop = asyncio.get_running_loop()

        def submit(i: int) -> asyncio.Future[Chunk]:
            begin = starts[i]
            return loop.run_in_executor(
                None, self.encode_chunk, begin, min(begin + chunk_rows, n), method
            )

        pending: asyncio.Future[Chunk] | None = submit(0)
        try:
            for i in range(len(starts)):
                assert pending is not None
                chunk = await pending
                pending = submit(i + 1) if i + 1 < len(starts) else None
                yield chunk
        finally:
            if pending is not None:
                # Abandoned after an error: let it finish, and drop its result or error.
                pending.add_done_callback(lambda f: f.cancelled() or f.exception())

    # -- server errors ------------------------------------------------------------------------

    def server_error(self, exc: asyncpg.PostgresError, chunk: Chunk | None) -> WriteError:
        """A PostgreSQL data or constraint error as a WriteError with the column and a key."""
        message = exc.args[0] if exc.args else type(exc).__name__
        column = getattr(exc, "column_name", None)
        row: int | None = None
        match = _COPY_CONTEXT.search(getattr(exc, "context", None) or "")
        if match and chunk is not None:
            line = int(match.group(1)) - 1
            column = column or match.group(2)
            if 0 <= line < len(chunk):
                row = chunk.start + (int(chunk.order[line]) if chunk.order is not None else line)
        if row is None and column in self.frame.columns:
            # No line number (an INSERT failed): the first NULL of that column is the culprit
            # of a NOT NULL violation.
            rows = range(chunk.start, chunk.stop) if chunk is not None else range(len(self))
            nulls = self._column(column, rows.start, rows.stop).isna().to_numpy()
            if isinstance(exc, asyncpg.NotNullViolationError) and nulls.any():
                row = rows.start + int(np.flatnonzero(nulls)[0])
        where = f"column {column}: " if column else ""
        key = f" (key {self.describe_key(row)})" if row is not None else ""
        return WriteError(
            self.name,
            f"{where}{message}{key}",
            column=column,
            key=self.key_at(row) if row is not None else None,
        )


# -- COPY ------------------------------------------------------------------------------------


async def write_chunk(
    conn: asyncpg.Connection,
    target: str,
    columns: Sequence[str],
    chunk: Chunk,
    method: Method,
    freeze: bool = False,
    schema: str | None = None,
) -> None:
    if chunk.data is not None:
        await conn.copy_to_table(
            target,
            source=memoryview(chunk.data),
            columns=list(columns),
            schema_name=schema,
            format="binary",
            freeze=freeze or None,
        )
    elif method == "copy":
        await conn.copy_records_to_table(
            target, records=chunk.records, columns=list(columns), schema_name=schema
        )
    else:
        placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
        qualified = f"{quote(schema)}.{quote(target)}" if schema else quote(target)
        await conn.executemany(
            f"INSERT INTO {qualified} ({', '.join(map(quote, columns))}) VALUES ({placeholders})",
            chunk.records,
        )


def resolve_chunk_rows(chunk_rows: int | None) -> int:
    """`chunk_rows`, or DEFAULT_CHUNK_ROWS for None (never the environment: settings are read
    by the Dagster resource and passed down)."""
    rows = DEFAULT_CHUNK_ROWS if chunk_rows is None else chunk_rows
    if rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {rows}")
    return rows


@dataclass
class Progress:
    """Which rows a transaction is writing, so a server error can name their key."""

    batch: Batch
    chunk: Chunk | None = None

    def at(self, batch: Batch, chunk: Chunk) -> None:
        self.batch, self.chunk = batch, chunk

    def error(self, exc: asyncpg.PostgresError) -> WriteError:
        return self.batch.server_error(exc, self.chunk)


async def copy_batch(
    conn: asyncpg.Connection,
    batch: Batch,
    target: str,
    size: int,
    how: Method,
    progress: Progress,
    *,
    freeze: bool = False,
    schema: str | None = None,
) -> int:
    """Write the whole batch into `target` chunk by chunk; returns the number of chunks.
    `freeze` only for a table created in this transaction (COPY FREEZE)."""
    count = 0
    async with contextlib.aclosing(batch.chunks(size, how)) as chunks:
        async for chunk in chunks:
            progress.at(batch, chunk)
            await write_chunk(conn, target, batch.column_names, chunk, how, freeze, schema)
            count += 1
    return count
