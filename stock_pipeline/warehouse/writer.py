"""The one write path into the warehouse: binary COPY, idempotent, one transaction per call.

Every operation takes an asyncpg pool (or connection), a table of `tables.metadata` (or its
name) and a DataFrame whose columns are a subset of the table's:

- `upsert(db, table, rows)`: insert or update by primary key. A chunk whose key range holds no
  stored row is COPYed straight into the table; any other chunk is COPYed into a temporary table
  and moved by one INSERT ... SELECT ... ON CONFLICT DO UPDATE that leaves out rows equal to the
  stored ones, so re-sending unchanged data writes nothing (no dead tuples, no WAL, no row
  locks), while a changed value (a source correction) is written and gets a new `updated_at`.
- `replace_window(db, table, rows, start=, end=, codes=)`: for trade_date-partitioned tables,
  delete [start, end] (optionally only for some codes) and COPY the rows straight into the table;
  no temporary table, the window is empty. A year that has no partition yet and receives many
  rows (a full import) gets its partition built whole: rows first, primary key and indexes after.
- `append(db, table, rows)`: COPY the rows in as they are (append-only data).

Common to all: the batch is put in key order and duplicate keys collapse to the last row; a bad
value raises WriteError naming the table, the column and a key, and nothing of the batch is
written; missing yearly partitions are created first, in their own short transaction; a COPY the
server refuses (not because of the data) is retried as batched INSERT in a new transaction.
The COPY stream is encoded from NumPy arrays (copy_format.py), the next chunk in a worker thread
while the server stores the current one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

import asyncpg
import numpy as np
import pandas as pd
from sqlalchemy import Column, Table

from stock_pipeline.settings import Settings
from stock_pipeline.warehouse.catalog import (
    Database,
    connection,
    partitions_lock,
    quote,
    raise_maintenance_work_mem,
    resolve,
    secondary_indexes,
)
from stock_pipeline.warehouse.copy_format import (
    BadValue,
    PreparedColumn,
    encode_binary,
    kind_of,
    prepare_column,
    to_records,
)

log = logging.getLogger(__name__)

Method = Literal["copy", "insert"]

# A year without a partition that receives at least this many rows in one replace_window (a
# full import, a backfill) gets its partition built whole: rows COPYed into a new table, its
# primary key and indexes built once from sorted data, then attached. Cheaper than inserting
# every row into the indexes one by one; below this, one by one is cheap enough.
NEW_PARTITION_MIN_ROWS = 100_000
BUILD_MAINTENANCE_WORK_MEM = "1GB"

# Set by the database on every write; never a reason to rewrite a row.
BOOKKEEPING_COLUMNS = frozenset({"fetched_at", "updated_at"})

# Errors that say the server will not take COPY here, whatever the data: row-level security on
# the target (0A000), a proxy or server without COPY support, or a binary value the column's
# actual type does not accept (a schema that drifted from tables.py). INSERT may still work.
_COPY_REFUSED: tuple[type[Exception], ...] = (
    asyncpg.FeatureNotSupportedError,
    asyncpg.UnsupportedServerFeatureError,
    asyncpg.ProtocolViolationError,
    asyncpg.InvalidBinaryRepresentationError,
)
_COPY_CONTEXT = re.compile(r"COPY [^,]+, line (\d+)(?:, column (\w+))?")


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


@dataclass(frozen=True)
class WriteResult:
    """What one call wrote.

    rows: rows of the batch after collapsing duplicate keys; changed: rows inserted or updated
    (upsert) or copied (replace_window); unchanged: upsert rows equal to the stored ones;
    deleted: rows replace_window removed from the window; duplicates: input rows dropped because
    a later row had the same key; method: "copy", or "insert" after a fallback.
    """

    table: str
    operation: str
    rows: int
    changed: int
    unchanged: int
    deleted: int
    duplicates: int
    chunks: int
    seconds: float
    method: str

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class _Chunk:
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


class _Batch:
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
        self.duplicates = 0
        upfront = dict.fromkeys([*self.key, *extra_keys])
        self.prepared: dict[str, PreparedColumn] = {}
        for name in upfront:
            self.prepared[name] = self._prepare(table.c[name], frame[name], 0)
        self._collapse_duplicates()

    def __len__(self) -> int:
        return len(self.frame)

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
        return {k: _format_value(self.frame[k].iloc[row]) for k in self.key}

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

    def key_bounds(self, chunk: _Chunk) -> tuple[list[Any], list[Any]]:
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
        return np.unique(self.row_years(column)).tolist()

    def subset(self, mask: np.ndarray) -> _Batch:
        """The rows where `mask` is true, as a batch of their own."""
        if mask.all():
            return self
        rows = self.frame.iloc[np.flatnonzero(mask)].reset_index(drop=True)
        return _Batch(self.table, rows, extra_keys=list(self.prepared))

    # -- chunks -------------------------------------------------------------------------------

    def encode_chunk(self, start: int, stop: int, method: Method) -> _Chunk:
        """Rows [start, stop) converted, validated and encoded (runs in a worker thread)."""
        columns = [
            self.prepared[c.name].slice(start, stop)
            if c.name in self.prepared
            else self._prepare(c, self.frame[c.name].iloc[start:stop], start)
            for c in self.columns
        ]
        if method == "copy":
            encoded = encode_binary(columns)
            if encoded is not None:
                return _Chunk(start, stop, data=encoded[0], order=encoded[1])
        return _Chunk(start, stop, records=to_records(columns))

    async def chunks(self, chunk_rows: int, method: Method) -> AsyncIterator[_Chunk]:
        """The batch in chunks; the next chunk is encoded in a thread while this one is sent."""
        n = len(self.frame)
        starts = list(range(0, n, chunk_rows))
        if len(starts) <= 1:
            if n:
                yield self.encode_chunk(0, n, method)
            return
        loop = asyncio.get_running_loop()

        def submit(i: int) -> asyncio.Future[_Chunk]:
            begin = starts[i]
            return loop.run_in_executor(
                None, self.encode_chunk, begin, min(begin + chunk_rows, n), method
            )

        pending: asyncio.Future[_Chunk] | None = submit(0)
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

    def server_error(self, exc: asyncpg.PostgresError, chunk: _Chunk | None) -> WriteError:
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
            nulls = self.frame[column].iloc[rows.start : rows.stop].isna().to_numpy()
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


# -- connections and partitions --------------------------------------------------------------


async def _existing_partitions(conn: asyncpg.Connection, table: Table) -> set[str] | None:
    """Names of the table's partitions, or None when it is not natively partitioned (e.g. a
    TimescaleDB hypertable, which makes its own chunks)."""
    rows = await conn.fetch(
        """
        SELECT c.relname, p.partrelid IS NOT NULL AS partitioned
        FROM pg_class t
        LEFT JOIN pg_partitioned_table p ON p.partrelid = t.oid
        LEFT JOIN pg_inherits i ON i.inhparent = t.oid
        LEFT JOIN pg_class c ON c.oid = i.inhrelid
        WHERE t.oid = to_regclass($1)
        """,
        quote(table.name),
    )
    if not rows:
        raise WriteError(table.name, "the table does not exist: run the migrations first")
    if not rows[0]["partitioned"]:
        return None
    return {r["relname"] for r in rows if r["relname"]}


async def ensure_partitions(db: Database, table: Table | str, years: Iterable[int]) -> list[str]:
    """Create the yearly partitions `{table}_{year}` that are missing; returns the new names.

    Runs in its own short transaction under an advisory lock, so two writers never race to
    create the same partition. Does nothing for tables that are not natively partitioned.
    """
    table = resolve(table)
    column = table.info.get("partition_column")
    wanted = sorted(set(years))
    if not column or not wanted:
        return []
    async with connection(db) as conn:
        existing = await _existing_partitions(conn, table)
        if existing is None:
            return []
        missing = [y for y in wanted if f"{table.name}_{y}" not in existing]
        if not missing:
            return []
        created = []
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                partitions_lock(table.name),
            )
            existing = await _existing_partitions(conn, table) or set()
            for year in missing:
                name = f"{table.name}_{year}"
                if name in existing:
                    continue  # another writer made it while we waited for the lock
                await conn.execute(
                    f"CREATE TABLE {quote(name)} PARTITION OF {quote(table.name)} "
                    f"FOR VALUES FROM ('{year:04d}-01-01') TO ('{year + 1:04d}-01-01')"
                )
                created.append(name)
    if created:
        log.info("[writer] %s: created partitions %s", table.name, ", ".join(created))
    return created


async def _new_partition_years(db: Database, table: Table, row_years: np.ndarray) -> list[int]:
    """Years of the batch that have no partition yet and enough rows to build one whole."""
    if not table.info.get("partition_column") or not len(row_years):
        return []
    years, counts = np.unique(row_years, return_counts=True)
    big = [int(y) for y, n in zip(years, counts, strict=True) if n >= NEW_PARTITION_MIN_ROWS]
    if not big:
        return []
    async with connection(db) as conn:
        existing = await _existing_partitions(conn, table)
    if existing is None:
        return []
    return [y for y in big if f"{table.name}_{y}" not in existing]


async def _build_partition(
    conn: asyncpg.Connection,
    table: Table,
    year: int,
    batch: _Batch,
    size: int,
    how: Method,
    progress: _Progress,
) -> int:
    """Create `{table}_{year}` as a plain table, COPY the year's rows into it, build its
    primary key and the table's indexes, and attach it; inside the caller's transaction, so
    readers see the partition only complete. Returns the number of chunks."""
    name = f"{table.name}_{year}"
    column = quote(table.info["partition_column"])
    low, high = f"'{year:04d}-01-01'", f"'{year + 1:04d}-01-01'"
    began = time.perf_counter()
    await conn.execute(
        f"CREATE TABLE {quote(name)} (LIKE {quote(table.name)} INCLUDING DEFAULTS "
        "INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION)"
    )
    # The bound as a CHECK: rows are checked as they stream in, and ATTACH needs no scan.
    bound = quote(f"{name}_bound")
    await conn.execute(
        f"ALTER TABLE {quote(name)} ADD CONSTRAINT {bound} "
        f"CHECK ({column} IS NOT NULL AND {column} >= {low} AND {column} < {high})"
    )
    chunks = await _copy_batch(conn, batch, name, size, how, progress)
    await raise_maintenance_work_mem(conn, BUILD_MAINTENANCE_WORK_MEM, local=True)
    constraints = await conn.fetch(
        "SELECT pg_get_constraintdef(oid) AS definition FROM pg_constraint "
        "WHERE conrelid = to_regclass($1) AND contype IN ('p', 'u') ORDER BY contype, conname",
        quote(table.name),
    )
    for constraint in constraints:
        await conn.execute(f"ALTER TABLE {quote(name)} ADD {constraint['definition']}")
    for index in await secondary_indexes(conn, table.name):
        if index.table == table.name:
            await conn.execute(index.create_on(name))
    await conn.execute(
        f"ALTER TABLE {quote(table.name)} ATTACH PARTITION {quote(name)} "
        f"FOR VALUES FROM ({low}) TO ({high})"
    )
    await conn.execute(f"ALTER TABLE {quote(name)} DROP CONSTRAINT {bound}")
    log.info(
        "[writer] %s: built partition %s whole (%d rows, indexes after the load), %.2fs",
        table.name,
        name,
        len(batch),
        time.perf_counter() - began,
    )
    return chunks


# -- writing ------------------------------------------------------------------------------------


async def _write_chunk(
    conn: asyncpg.Connection, target: str, columns: Sequence[str], chunk: _Chunk, method: Method
) -> None:
    if chunk.data is not None:
        await conn.copy_to_table(
            target, source=memoryview(chunk.data), columns=list(columns), format="binary"
        )
    elif method == "copy":
        await conn.copy_records_to_table(target, records=chunk.records, columns=list(columns))
    else:
        placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
        await conn.executemany(
            f"INSERT INTO {quote(target)} ({', '.join(map(quote, columns))}) "
            f"VALUES ({placeholders})",
            chunk.records,
        )


def _chunk_rows(chunk_rows: int | None) -> int:
    rows = chunk_rows if chunk_rows is not None else Settings.from_env().copy_chunk_rows
    if rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {rows}")
    return rows


@dataclass
class _Progress:
    """Which rows a transaction is writing, so a server error can name their key."""

    batch: _Batch
    chunk: _Chunk | None = None

    def at(self, batch: _Batch, chunk: _Chunk) -> None:
        self.batch, self.chunk = batch, chunk

    def error(self, exc: asyncpg.PostgresError) -> WriteError:
        return self.batch.server_error(exc, self.chunk)


async def _copy_batch(
    conn: asyncpg.Connection,
    batch: _Batch,
    target: str,
    size: int,
    how: Method,
    progress: _Progress,
) -> int:
    """Write the whole batch into `target` chunk by chunk; returns the number of chunks."""
    count = 0
    async with contextlib.aclosing(batch.chunks(size, how)) as chunks:
        async for chunk in chunks:
            progress.at(batch, chunk)
            await _write_chunk(conn, target, batch.column_names, chunk, how)
            count += 1
    return count


async def _run(
    db: Database,
    batch: _Batch,
    operation: str,
    method: Method,
    body,
) -> tuple[tuple[int, int], Method]:
    """Run `body(conn, method, progress)` in one transaction; on a COPY refusal, run it again
    with INSERT. Maps data errors to WriteError. Returns body's result and the method used."""
    progress = _Progress(batch)
    async with connection(db) as conn:
        try:
            async with conn.transaction():
                return await body(conn, method, progress), method
        except _COPY_REFUSED as exc:
            if method != "copy":
                raise progress.error(exc) from exc
            log.warning(
                "[writer] %s %s: COPY refused (%s: %s); retrying with batched INSERT",
                batch.name,
                operation,
                type(exc).__name__,
                exc.args[0] if exc.args else "",
            )
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise progress.error(exc) from exc
        try:
            progress = _Progress(batch)
            async with conn.transaction():
                return await body(conn, "insert", progress), "insert"
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise progress.error(exc) from exc


async def replace_window(
    db: Database,
    table: Table | str,
    rows: pd.DataFrame | Mapping[str, Any],
    *,
    start: date,
    end: date,
    codes: Sequence[str] | None = None,
    chunk_rows: int | None = None,
    method: Method = "copy",
) -> WriteResult:
    """Make the rows of `table` with trade_date in [start, end] (and code in `codes`, when
    given) exactly `rows`, in one transaction.

    Idempotent; a concurrent reader sees the old window or the new one, never a mix. Rows outside
    the window (or of other codes) are an error. Replace writers of one table take turns (an
    advisory lock), and wait for running upserts of that table.
    """
    began = time.perf_counter()
    table = resolve(table)
    date_column = table.info.get("partition_column") or "trade_date"
    if date_column not in table.c:
        raise WriteError(table.name, "replace_window needs a trade_date-partitioned table")
    if start > end:
        raise ValueError(f"replace_window: start {start} is after end {end}")
    code_column = "code" if codes is not None else None
    if codes is not None and "code" not in table.c:
        raise WriteError(table.name, "codes given, but the table has no code column")
    batch = _Batch(table, rows, extra_keys=[date_column, *([code_column] if code_column else [])])
    _check_window(batch, date_column, start, end, codes)
    row_years = batch.row_years(date_column)
    new_years = await _new_partition_years(db, table, row_years)
    await ensure_partitions(db, table, [y for y in batch.years(date_column) if y not in new_years])
    size = _chunk_rows(chunk_rows)
    target = table.name

    where = f"{quote(date_column)} BETWEEN $1 AND $2"
    arguments: list[Any] = [start, end]
    if codes is not None:
        where += " AND code = ANY($3::text[])"
        arguments.append(list(codes))

    async def body(conn: asyncpg.Connection, how: Method, progress: _Progress) -> tuple[int, int]:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            f"stock_pipeline.write:{table.name}",
        )
        building: list[int] = []
        if new_years:
            # Held to the commit: nobody creates these partitions while they are being built.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                partitions_lock(table.name),
            )
            existing = await _existing_partitions(conn, table) or set()
            building = [y for y in new_years if f"{table.name}_{y}" not in existing]
        status = await conn.execute(f"DELETE FROM {quote(target)} WHERE {where}", *arguments)
        deleted = int(status.split()[-1])
        in_new = np.isin(row_years, building)
        count = await _copy_batch(conn, batch.subset(~in_new), target, size, how, progress)
        for year in building:
            part = batch.subset(row_years == year)
            count += await _build_partition(conn, table, year, part, size, how, progress)
        return deleted, count

    (deleted, chunks), used = await _run(db, batch, "replace_window", method, body)
    result = WriteResult(
        table.name,
        "replace_window",
        len(batch),
        len(batch),
        0,
        deleted,
        batch.duplicates,
        chunks,
        time.perf_counter() - began,
        used,
    )
    log.info(
        "[writer] %s replace_window %s..%s: %d rows, %d deleted, %d chunks, %.2fs%s",
        table.name,
        start,
        end,
        result.rows,
        deleted,
        chunks,
        result.seconds,
        "" if used == "copy" else " (INSERT fallback)",
    )
    return result


async def append(
    db: Database,
    table: Table | str,
    rows: pd.DataFrame | Mapping[str, Any],
    *,
    chunk_rows: int | None = None,
    method: Method = "copy",
) -> WriteResult:
    """COPY `rows` into `table` as they are, in one transaction: no window, no merge.

    For append-only data (logs, snapshots under a new key). Duplicate keys inside the batch
    collapse to the last row as everywhere; a key that is already stored makes the whole batch
    fail with a WriteError naming it.
    """
    began = time.perf_counter()
    table = resolve(table)
    partition_column = table.info.get("partition_column")
    batch = _Batch(table, rows, extra_keys=[partition_column] if partition_column else [])
    if partition_column:
        await ensure_partitions(db, table, batch.years(partition_column))
    size = _chunk_rows(chunk_rows)

    async def body(conn: asyncpg.Connection, how: Method, progress: _Progress) -> tuple[int, int]:
        return len(batch), await _copy_batch(conn, batch, table.name, size, how, progress)

    (written, chunks), used = await _run(db, batch, "append", method, body)
    result = WriteResult(
        table.name,
        "append",
        len(batch),
        written,
        0,
        0,
        batch.duplicates,
        chunks,
        time.perf_counter() - began,
        used,
    )
    log.info(
        "[writer] %s append: %d rows, %d chunks, %.2fs%s",
        table.name,
        result.rows,
        chunks,
        result.seconds,
        "" if used == "copy" else " (INSERT fallback)",
    )
    return result


def _check_window(
    batch: _Batch, date_column: str, start: date, end: date, codes: Sequence[str] | None
) -> None:
    dates = batch.dates(date_column)
    outside = (dates < np.datetime64(start, "D")) | (dates > np.datetime64(end, "D"))
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise WriteError(
            batch.name,
            f"{int(outside.sum())} rows lie outside the window {start}..{end}, "
            f"e.g. key {batch.describe_key(first)}",
            column=date_column,
            key=batch.key_at(first),
        )
    if codes is not None:
        objects = batch.prepared["code"].objects
        assert objects is not None
        foreign = ~pd.Series(objects).isin(set(codes)).to_numpy()
        if foreign.any():
            first = int(np.flatnonzero(foreign)[0])
            raise WriteError(
                batch.name,
                f"{int(foreign.sum())} rows have codes not in the replaced codes, "
                f"e.g. key {batch.describe_key(first)}",
                column="code",
                key=batch.key_at(first),
            )


def _key_range(alias: str, key: Sequence[str]) -> str:
    """`alias`'s key between parameters $1.. (lowest key) and $n+1.. (highest key)."""
    columns = ", ".join(f"{alias}.{quote(k)}" for k in key)
    low = ", ".join(f"${i + 1}" for i in range(len(key)))
    high = ", ".join(f"${i + 1 + len(key)}" for i in range(len(key)))
    return f"ROW({columns}) >= ROW({low}) AND ROW({columns}) <= ROW({high})"


def _overlap_sql(target: str, batch: _Batch) -> str:
    """Whether any stored row has a key within a chunk's key range (one index probe)."""
    return f"SELECT EXISTS (SELECT 1 FROM {quote(target)} o WHERE {_key_range('o', batch.key)})"


def _upsert_sql(target: str, staging: str, batch: _Batch) -> str:
    """INSERT ... SELECT from the staging table, skipping rows equal to the stored ones.

    The NOT EXISTS probe is limited to the chunk's key range ($1.. to $n..), so it reads only
    the stored rows the chunk can touch, whatever plan the planner picks.
    """
    columns = ", ".join(map(quote, batch.column_names))
    key = ", ".join(map(quote, batch.key))
    match = " AND ".join(f"o.{quote(k)} = s.{quote(k)}" for k in batch.key)
    match += " AND " + _key_range("o", batch.key)
    values = batch.value_columns
    if not values:
        # Every column is part of the key: a present row cannot differ.
        return (
            f"INSERT INTO {quote(target)} ({columns}) SELECT {columns} FROM {staging} s "
            f"WHERE NOT EXISTS (SELECT 1 FROM {quote(target)} o WHERE {match}) "
            f"ON CONFLICT ({key}) DO NOTHING"
        )
    stored = ", ".join(f"o.{quote(c)}" for c in values)
    staged = ", ".join(f"s.{quote(c)}" for c in values)
    assignments = [f"{quote(c)} = excluded.{quote(c)}" for c in values]
    for c in sorted(BOOKKEEPING_COLUMNS & set(batch.table.c.keys())):
        source = f"excluded.{quote(c)}" if c in batch.column_names else "now()"
        assignments.append(f"{quote(c)} = {source}")
    current = ", ".join(f"t.{quote(c)}" for c in values)
    incoming = ", ".join(f"excluded.{quote(c)}" for c in values)
    # ROW(...) keeps a single value column a row comparison too.
    return (
        f"INSERT INTO {quote(target)} AS t ({columns}) SELECT {columns} FROM {staging} s "
        f"WHERE NOT EXISTS (SELECT 1 FROM {quote(target)} o WHERE {match} "
        f"AND ROW({stored}) IS NOT DISTINCT FROM ROW({staged})) "
        f"ON CONFLICT ({key}) DO UPDATE SET {', '.join(assignments)} "
        f"WHERE ROW({current}) IS DISTINCT FROM ROW({incoming})"
    )


async def upsert(
    db: Database,
    table: Table | str,
    rows: pd.DataFrame | Mapping[str, Any],
    *,
    chunk_rows: int | None = None,
    method: Method = "copy",
) -> WriteResult:
    """Insert or update `rows` by the table's primary key, in one transaction.

    Idempotent: rows equal to the stored ones (bookkeeping columns aside) are skipped without
    writing anything; changed rows are updated and get a new `updated_at`. Columns the batch
    lacks keep their stored values on update.
    """
    began = time.perf_counter()
    table = resolve(table)
    partition_column = table.info.get("partition_column")
    batch = _Batch(table, rows, extra_keys=[partition_column] if partition_column else [])
    if partition_column:
        await ensure_partitions(db, table, batch.years(partition_column))
    size = _chunk_rows(chunk_rows)
    staging = quote(f"_upsert_{table.name}")
    sql = _upsert_sql(table.name, staging, batch)
    overlap = _overlap_sql(table.name, batch)
    columns = ", ".join(map(quote, batch.column_names))

    async def body(conn: asyncpg.Connection, how: Method, progress: _Progress) -> tuple[int, int]:
        # Shared: upserts of one table run together; replace_window waits for them.
        await conn.execute(
            "SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))",
            f"stock_pipeline.write:{table.name}",
        )
        # Room to hash a chunk's stored rows in memory for the unchanged-row probe.
        await conn.execute("SET LOCAL work_mem = '64MB'")
        staged = False
        changed = count = 0
        async with contextlib.aclosing(batch.chunks(size, how)) as chunks:
            async for chunk in chunks:
                progress.at(batch, chunk)
                count += 1
                bounds = [*sum(batch.key_bounds(chunk), [])]
                if how == "copy" and not await conn.fetchval(overlap, *bounds):
                    # Nothing stored in this key range: every row is new, COPY it straight in.
                    try:
                        async with conn.transaction():
                            await _write_chunk(conn, table.name, batch.column_names, chunk, how)
                        changed += len(chunk)
                        continue
                    except asyncpg.UniqueViolationError:
                        pass  # a concurrent writer stored one of these keys: merge instead
                if staged:
                    await conn.execute(f"TRUNCATE {staging}")
                else:
                    await conn.execute(
                        f"DROP TABLE IF EXISTS pg_temp.{staging}; "
                        f"CREATE TEMPORARY TABLE {staging} ON COMMIT DROP AS "
                        f"SELECT {columns} FROM {quote(table.name)} WITH NO DATA"
                    )
                    staged = True
                await _write_chunk(conn, f"_upsert_{table.name}", batch.column_names, chunk, how)
                status = await conn.execute(sql, *bounds)
                changed += int(status.split()[-1])
        if staged:
            await conn.execute(f"DROP TABLE {staging}")
        return changed, count

    (changed, chunks), used = await _run(db, batch, "upsert", method, body)
    result = WriteResult(
        table.name,
        "upsert",
        len(batch),
        changed,
        len(batch) - changed,
        0,
        batch.duplicates,
        chunks,
        time.perf_counter() - began,
        used,
    )
    log.info(
        "[writer] %s upsert: %d rows, %d changed, %d chunks, %.2fs%s",
        table.name,
        result.rows,
        changed,
        chunks,
        result.seconds,
        "" if used == "copy" else " (INSERT fallback)",
    )
    return result
