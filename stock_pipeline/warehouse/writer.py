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
  no temporary table, the window is empty. A year that receives many rows (a full import, a
  re-import) and has no partition yet, or one holding nothing outside the window, gets its
  partition built whole instead: rows first, primary key and indexes after, then swapped in;
  from a pool, over several COPY streams with the indexes built in parallel.
- `append(db, table, rows)`: COPY the rows in as they are (append-only data).

Common to all: COPY goes in chunks of `chunk_rows` rows (None: batch.DEFAULT_CHUNK_ROWS; the
Dagster resource passes the configured STOCK_PIPELINE_COPY_CHUNK_ROWS, nothing here reads the
environment); the batch is put in key order and duplicate keys collapse to the last row; a bad
value raises WriteError naming the table, the column and a key, and nothing of the batch is
written; missing yearly partitions are created first, in their own short transaction; a COPY the
server refuses (not because of the data) is retried as batched INSERT in a new transaction.
The COPY stream is encoded from NumPy arrays (copy_format.py), the next chunk in a worker thread
while the server stores the current one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import asyncpg
import numpy as np
import pandas as pd
from sqlalchemy import Table

from stock_pipeline.warehouse import partitions
from stock_pipeline.warehouse.batch import (
    BOOKKEEPING_COLUMNS,
    COPY_REFUSED,
    Batch,
    Method,
    Progress,
    WriteError,
    copy_batch,
    resolve_chunk_rows,
    write_chunk,
    year_counts,
)
from stock_pipeline.warehouse.catalog import (
    Database,
    connection,
    lock_until_commit,
    partitions_lock,
    quote,
    resolve,
    write_lock,
)
from stock_pipeline.warehouse.partitions import ensure_partitions

__all__ = [
    "WriteError",
    "WriteResult",
    "append",
    "ensure_partitions",
    "replace_window",
    "upsert",
]

log = logging.getLogger(__name__)


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


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc.args[0] if exc.args else ''}"


@dataclass(frozen=True)
class Written:
    """What one write's transaction did: rows inserted, updated or copied (`changed`), rows
    left as they were (`unchanged`, upsert) or removed (`deleted`, replace_window), chunks sent,
    and the method that did it ("insert" after a fallback; set by _run)."""

    changed: int
    chunks: int
    deleted: int = 0
    unchanged: int = 0
    method: Method = "copy"


# A write's transaction: body(conn, method, progress), run by _run.
WriteBody = Callable[[asyncpg.Connection, Method, Progress], Awaitable[Written]]


async def _prepare(
    db: Database, table: Table | str, rows: pd.DataFrame | Mapping[str, Any]
) -> Batch:
    """The checked batch, its yearly partitions created (append and upsert)."""
    table = resolve(table)
    partition_column = table.info.get("partition_column")
    batch = Batch(table, rows, extra_keys=[partition_column] if partition_column else [])
    if partition_column:
        await ensure_partitions(db, table, batch.years(partition_column))
    return batch


def _finish(
    batch: Batch, operation: str, written: Written, began: float, detail: str
) -> WriteResult:
    """The WriteResult of a call, logged in one line; `detail` is what the line says about
    the rows."""
    result = WriteResult(
        batch.name,
        operation,
        len(batch),
        written.changed,
        written.unchanged,
        written.deleted,
        batch.duplicates,
        written.chunks,
        time.perf_counter() - began,
        written.method,
    )
    log.info(
        "[writer] %s %s: %s, %d chunks, %.2fs%s",
        batch.name,
        operation,
        detail,
        written.chunks,
        result.seconds,
        "" if written.method == "copy" else " (INSERT fallback)",
    )
    return result


async def _run(
    db: Database, batch: Batch, operation: str, method: Method, body: WriteBody
) -> Written:
    """Run `body(conn, method, progress)` in one transaction; on a COPY refusal, run it again
    with INSERT. Maps data errors to WriteError."""
    progress = Progress(batch)
    async with connection(db) as conn:
        try:
            async with conn.transaction():
                return dataclasses.replace(await body(conn, method, progress), method=method)
        except COPY_REFUSED as exc:
            if method != "copy":
                raise progress.error(exc) from exc
            log.warning(
                "[writer] %s %s: COPY refused (%s); retrying with batched INSERT",
                batch.name,
                operation,
                _describe(exc),
            )
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise progress.error(exc) from exc
        try:
            progress = Progress(batch)
            async with conn.transaction():
                return dataclasses.replace(await body(conn, "insert", progress), method="insert")
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise progress.error(exc) from exc


# -- replace_window ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """The rows a replace_window replaces: `column` (the table's trade_date) in [start, end],
    and, when `codes` is given, code in `codes`."""

    column: str
    start: date
    end: date
    codes: tuple[str, ...] | None = None

    @classmethod
    def of(
        cls,
        table: Table,
        start: date,
        end: date,
        codes: Sequence[str] | None,
        date_column: str | None = None,
    ) -> Window:
        column = date_column or table.info.get("partition_column") or "trade_date"
        if column not in table.c:
            raise WriteError(
                table.name, f"replace_window needs a date column; the table has no {column!r}"
            )
        if start > end:
            raise ValueError(f"replace_window: start {start} is after end {end}")
        if codes is not None and "code" not in table.c:
            raise WriteError(table.name, "codes given, but the table has no code column")
        return cls(column, start, end, None if codes is None else tuple(codes))

    @property
    def key_columns(self) -> list[str]:
        """The columns the window is checked on."""
        return [self.column, *([] if self.codes is None else ["code"])]

    @property
    def where(self) -> str:
        """The window as an SQL condition over the parameters `arguments()`."""
        where = f"{quote(self.column)} BETWEEN $1 AND $2"
        return where if self.codes is None else where + " AND code = ANY($3::text[])"

    def arguments(self, low: date | None = None, high: date | None = None) -> list[Any]:
        """Parameters of `where`: the window, or only its dates in [low, high]."""
        dates = [self.start if low is None else low, self.end if high is None else high]
        return dates if self.codes is None else [*dates, list(self.codes)]

    def check(self, batch: Batch) -> None:
        """Raise WriteError if a row of the batch lies outside the window."""
        dates = batch.dates(self.column)
        outside = (dates < np.datetime64(self.start, "D")) | (dates > np.datetime64(self.end, "D"))
        if outside.any():
            first = int(np.flatnonzero(outside)[0])
            raise WriteError(
                batch.name,
                f"{int(outside.sum())} rows lie outside the window {self.start}..{self.end}, "
                f"e.g. key {batch.describe_key(first)}",
                column=self.column,
                key=batch.key_at(first),
            )
        if self.codes is not None:
            objects = batch.prepared["code"].objects
            assert objects is not None
            foreign = ~pd.Series(objects).isin(set(self.codes)).to_numpy()
            if foreign.any():
                first = int(np.flatnonzero(foreign)[0])
                raise WriteError(
                    batch.name,
                    f"{int(foreign.sum())} rows have codes not in the replaced codes, "
                    f"e.g. key {batch.describe_key(first)}",
                    column="code",
                    key=batch.key_at(first),
                )


@dataclass(frozen=True)
class ReplacePlan:
    """One replace_window, decided before its transaction: the checked batch and its window,
    each row's year, and the years with enough rows to have their partition built whole.

    `write` is the write's transaction. `staged`: the whole years' stages were built over
    several connections beforehand (`_replace_with_stages`), so the transaction only places
    them; without it, the transaction plans, builds and places them itself.
    """

    batch: Batch
    window: Window
    row_years: np.ndarray
    big_years: list[int]
    chunk_rows: int
    staged: partitions.Staged | None = None

    @classmethod
    def make(
        cls,
        table: Table,
        rows: pd.DataFrame | Mapping[str, Any],
        window: Window,
        chunk_rows: int | None,
    ) -> ReplacePlan:
        size = resolve_chunk_rows(chunk_rows)
        batch = Batch(table, rows, extra_keys=window.key_columns)
        window.check(batch)
        row_years = batch.row_years(window.column)
        return cls(batch, window, row_years, partitions.big_years(table, row_years), size)

    @property
    def table(self) -> Table:
        return self.batch.table

    async def whole_years(self, conn: asyncpg.Connection) -> list[partitions.WholeYear]:
        """Which big years get their partition built whole (the caller holds the table's
        write and partition locks)."""
        return await partitions.plan_whole_years(
            conn, self.table, self.big_years, self.window.where, self.window.arguments()
        )

    async def write(self, conn: asyncpg.Connection, how: Method, progress: Progress) -> Written:
        """The transaction: delete the window outside the years built whole, COPY the rows of
        the other years straight in, then put each whole year's partition in place."""
        await lock_until_commit(conn, write_lock(self.table.name))
        whole = await self._years_built_whole(conn)
        years = [w.year for w in whole]
        deleted = await self._delete_outside(conn, years)
        rest = self.batch.subset(~np.isin(self.row_years, years))
        chunks = await copy_batch(conn, rest, self.table.name, self.chunk_rows, how, progress)
        for year in whole:
            placed = await self._place_whole_year(conn, year, how, progress)
            deleted += placed.deleted
            chunks += placed.chunks
        return Written(len(self.batch), chunks, deleted)

    async def _years_built_whole(self, conn: asyncpg.Connection) -> list[partitions.WholeYear]:
        """The years staged already, or else planned now, in the transaction."""
        if self.staged:
            return self.staged.plan
        if self.big_years:
            # Held to the commit: nobody creates these partitions meanwhile.
            await lock_until_commit(conn, partitions_lock(self.table.name))
        return await self.whole_years(conn)

    async def _delete_outside(self, conn: asyncpg.Connection, years: Sequence[int]) -> int:
        """Delete the window's stored rows, except in `years` (their partitions are replaced
        whole); returns how many."""
        deleted = 0
        for low, high in partitions.ranges_outside_years(self.window.start, self.window.end, years):
            status = await conn.execute(
                f"DELETE FROM {quote(self.table.name)} WHERE {self.window.where}",
                *self.window.arguments(low, high),
            )
            deleted += int(status.split()[-1])
        return deleted

    async def _place_whole_year(
        self,
        conn: asyncpg.Connection,
        year: partitions.WholeYear,
        how: Method,
        progress: Progress,
    ) -> Written:
        """Build the year's stage here unless it is staged already, and put it in place."""
        began = time.perf_counter()
        in_year = self.row_years == year.year
        chunks = 0
        if self.staged is None:
            chunks = await partitions.build_stage_in_transaction(
                conn, self.table, year, self.batch.subset(in_year), self.chunk_rows, how, progress
            )
        placed = await partitions.place_stage(
            conn,
            self.table,
            year,
            self.batch.column_names,
            self.window.where,
            self.window.arguments(),
        )
        rows = int(in_year.sum())
        log.info(
            "[writer] %s: %s partition %s_%d whole (%d rows, %s), %s, %.2fs",
            self.table.name,
            "rebuilt" if year.replaces else "built",
            self.table.name,
            year.year,
            rows,
            f"{self.staged.streams} COPY streams, indexes built in parallel"
            if self.staged
            else "loaded and indexed in the transaction",
            placed.how,
            time.perf_counter() - began + (self.staged.seconds[year.year] if self.staged else 0),
        )
        return Written(rows, chunks, placed.deleted)


async def replace_window(
    db: Database,
    table: Table | str,
    rows: pd.DataFrame | Mapping[str, Any],
    *,
    start: date,
    end: date,
    codes: Sequence[str] | None = None,
    date_column: str | None = None,
    chunk_rows: int | None = None,
    streams: int | None = None,
    method: Method = "copy",
) -> WriteResult:
    """Make the rows of `table` with trade_date in [start, end] (and code in `codes`, when
    given) exactly `rows`, in one transaction. `date_column` names another date column to
    window on (default: the table's partition column, else trade_date).

    Idempotent; a concurrent reader sees the old window or the new one, never a mix. Rows outside
    the window (or of other codes) are an error. Replace writers of one table take turns (an
    advisory lock), and wait for running upserts of that table.

    A year with at least WHOLE_PARTITION_MIN_ROWS rows whose partition is missing, or holds
    nothing outside the window, gets its partition built whole (partitions.py):
    from a pool over `streams` connections (None: partitions.DEFAULT_COPY_STREAMS). Swapping a
    partition in is, like TRUNCATE, not MVCC-safe for REPEATABLE READ readers whose snapshot
    predates it.
    """
    began = time.perf_counter()
    table = resolve(table)
    window = Window.of(table, start, end, codes, date_column)
    plan = ReplacePlan.make(table, rows, window, chunk_rows)
    streams = partitions.copy_streams(db, streams)
    await ensure_partitions(db, table, year_counts(plan.row_years), leave_missing=plan.big_years)
    written = None
    if plan.big_years:
        await partitions.ensure_stage_schema(db, table)
        if streams > 1 and method == "copy":
            assert isinstance(db, asyncpg.Pool)  # copy_streams gives one connection one stream
            written = await _replace_with_stages(db, plan, streams)
    if written is None:
        written = await _run(db, plan.batch, "replace_window", method, plan.write)
    return _finish(
        plan.batch,
        "replace_window",
        written,
        began,
        f"{start}..{end}: {len(plan.batch)} rows, {written.deleted} deleted",
    )


async def _replace_with_stages(
    pool: asyncpg.Pool, plan: ReplacePlan, streams: int
) -> Written | None:
    """replace_window with its whole years staged over several connections first; None when
    there is nothing to stage or the server refuses COPY (then the caller writes it all in one
    transaction, which can fall back to INSERT)."""
    async with (
        partitions.table_session_locks(pool, plan.table) as conn,
        contextlib.AsyncExitStack() as stack,
    ):
        whole = await plan.whole_years(conn)
        if not whole:
            return None
        try:
            connections = [conn, *await partitions.extra_connections(pool, streams - 1, stack)]
            staged = await _build_stages(connections, plan, whole)
            if staged is None:
                return None
            await stack.aclose()  # give the extra connections back before the transaction
            staged_plan = dataclasses.replace(plan, staged=staged)
            written = await _run(conn, plan.batch, "replace_window", "copy", staged_plan.write)
            return dataclasses.replace(written, chunks=written.chunks + staged.chunks)
        finally:
            await partitions.drop_stages(conn, plan.table, whole)


async def _build_stages(
    connections: Sequence[asyncpg.Connection],
    plan: ReplacePlan,
    whole: list[partitions.WholeYear],
) -> partitions.Staged | None:
    """Load and index the stage of every whole year over all `connections`; None when the
    server refuses COPY."""
    staged = partitions.Staged(whole, len(connections))
    for year in whole:
        began = time.perf_counter()
        try:
            staged.chunks += await partitions.build_stage_in_parallel(
                connections,
                plan.table,
                year,
                plan.batch.subset(plan.row_years == year.year),
                plan.chunk_rows,
            )
        except COPY_REFUSED as refused:
            log.warning(
                "[writer] %s: COPY refused while staging (%s); writing in one transaction instead",
                plan.table.name,
                _describe(refused),
            )
            return None
        staged.seconds[year.year] = time.perf_counter() - began
    return staged


# -- append and upsert ---------------------------------------------------------------------------


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
    batch = await _prepare(db, table, rows)
    size = resolve_chunk_rows(chunk_rows)

    async def body(conn: asyncpg.Connection, how: Method, progress: Progress) -> Written:
        return Written(len(batch), await copy_batch(conn, batch, batch.name, size, how, progress))

    written = await _run(db, batch, "append", method, body)
    return _finish(batch, "append", written, began, f"{len(batch)} rows")


def _key_range(alias: str, key: Sequence[str]) -> str:
    """`alias`'s key between parameters $1.. (lowest key) and $n+1.. (highest key)."""
    columns = ", ".join(f"{alias}.{quote(k)}" for k in key)
    low = ", ".join(f"${i + 1}" for i in range(len(key)))
    high = ", ".join(f"${i + 1 + len(key)}" for i in range(len(key)))
    return f"ROW({columns}) >= ROW({low}) AND ROW({columns}) <= ROW({high})"


def _overlap_sql(target: str, batch: Batch) -> str:
    """Whether any stored row has a key within a chunk's key range (one index probe)."""
    return f"SELECT EXISTS (SELECT 1 FROM {quote(target)} o WHERE {_key_range('o', batch.key)})"


def _upsert_sql(target: str, staging: str, batch: Batch) -> str:
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
    batch = await _prepare(db, table, rows)
    table = batch.table
    size = resolve_chunk_rows(chunk_rows)
    staging = quote(f"_upsert_{table.name}")
    sql = _upsert_sql(table.name, staging, batch)
    overlap = _overlap_sql(table.name, batch)
    columns = ", ".join(map(quote, batch.column_names))

    async def body(conn: asyncpg.Connection, how: Method, progress: Progress) -> Written:
        # Shared: upserts of one table run together; replace_window waits for them.
        await lock_until_commit(conn, write_lock(table.name), shared=True)
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
                            await write_chunk(conn, table.name, batch.column_names, chunk, how)
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
                await write_chunk(conn, f"_upsert_{table.name}", batch.column_names, chunk, how)
                status = await conn.execute(sql, *bounds)
                changed += int(status.split()[-1])
        if staged:
            await conn.execute(f"DROP TABLE {staging}")
        return Written(changed, count, unchanged=len(batch) - changed)

    written = await _run(db, batch, "upsert", method, body)
    return _finish(batch, "upsert", written, began, f"{len(batch)} rows, {written.changed} changed")
