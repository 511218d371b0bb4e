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
import copy
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

import asyncpg
import numpy as np
import pandas as pd
from sqlalchemy import Column, Table

from stock_pipeline.settings import Settings
from stock_pipeline.warehouse.catalog import (
    Database,
    IndexDefinition,
    connection,
    partitions_lock,
    plain_indexes,
    quote,
    raise_maintenance_work_mem,
    recorded_indexes,
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
from stock_pipeline.warehouse.tables import STAGE_SCHEMA

log = logging.getLogger(__name__)

Method = Literal["copy", "insert"]

# A year that receives at least this many rows in one replace_window (a full import, a
# backfill) and has no partition yet, or a partition holding nothing outside the window, gets
# its partition built whole: rows COPYed into a new table, its primary key and indexes built
# once after the rows, then attached (replacing the old partition, if any). Far cheaper than
# inserting every row into the indexes one by one, and it leaves no dead tuples behind; below
# this, one by one is cheap enough.
WHOLE_PARTITION_MIN_ROWS = 100_000
# Swapping a rebuilt partition in needs an ACCESS EXCLUSIVE lock on the table for an instant.
# Each attempt queues ahead of new readers for at most _SWAP_LOCK_ATTEMPT; after
# SWAP_LOCK_WAIT_S of readers that never let go, the rows are moved in place instead.
SWAP_LOCK_WAIT_S = 30.0
_SWAP_LOCK_ATTEMPT = "1s"
# The CHECK that bounds a stage to its year until it is attached.
_BOUND = "stock_pipeline_year_bound"
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
        return list(_year_counts(self.row_years(column)))

    def subset(self, mask: np.ndarray) -> _Batch:
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

    def encode_chunk(self, start: int, stop: int, method: Method) -> _Chunk:
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
                return _Chunk(start, stop, data=encoded[0], order=encoded[1])
        return _Chunk(start, stop, records=to_records(columns))

    async def chunks(self, chunk_rows: int, method: Method) -> AsyncIterator[_Chunk]:
        """The batch in chunks; the next chunk is encoded in a thread while this one is sent."""
        n = len(self)
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


def _year_counts(row_years: np.ndarray) -> dict[int, int]:
    """Rows per year, years ascending (a bincount: years span a few decades at most)."""
    if not len(row_years):
        return {}
    first = int(row_years.min())
    counts = np.bincount(row_years - first)
    return {first + int(i): int(counts[i]) for i in np.flatnonzero(counts)}


def _big_years(table: Table, row_years: np.ndarray) -> list[int]:
    """Years of the batch with enough rows to build their partition whole."""
    if not table.info.get("partition_column"):
        return []
    counts = _year_counts(row_years)
    return [year for year, n in counts.items() if n >= WHOLE_PARTITION_MIN_ROWS]


async def _missing_partition_years(db: Database, table: Table, years: list[int]) -> list[int]:
    if not years:
        return []
    async with connection(db) as conn:
        existing = await _existing_partitions(conn, table)
    if existing is None:
        return []
    return [y for y in years if f"{table.name}_{y}" not in existing]


def _ranges_outside_years(start: date, end: date, years: Iterable[int]) -> list[tuple[date, date]]:
    """[start, end] without the given whole years, as date ranges."""
    ranges: list[tuple[date, date]] = []
    low = start
    for year in sorted(years):
        first, last = date(year, 1, 1), date(year, 12, 31)
        if first > low:
            ranges.append((low, min(end, first - timedelta(days=1))))
        low = max(low, last + timedelta(days=1))
    if low <= end:
        ranges.append((low, end))
    return ranges


# -- whole partitions ----------------------------------------------------------------------------
#
# A year built whole goes through a table of the same name in STAGE_SCHEMA: created like the
# parent, bounded to its year by a CHECK, loaded, indexed, then (in the write's transaction)
# moved into the parent's schema and ATTACHed, after dropping the partition it replaces. Built
# under its final name, it gets the index names PostgreSQL gives a partition; a replaced
# partition's own names are kept. From a pool, the stage is loaded by several COPY streams and
# indexed by parallel builds on committed connections, under session-level locks that keep
# other writers of the table out; from one connection, everything happens in the write's
# transaction and the rows go in with COPY FREEZE.


@dataclass(frozen=True)
class _WholeYear:
    """A year whose partition is built whole: a new one, or one replacing a partition that
    holds nothing outside the window."""

    year: int
    replaces: bool


@dataclass
class _Staged:
    """Stages built over several connections before the write's transaction."""

    plan: list[_WholeYear]
    streams: int
    chunks: int = 0
    seconds: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _StageIndexes:
    """How to index a stage: CREATE INDEX statements (any order, any connection), then the
    ALTER TABLE statements that turn unique indexes into the key constraints."""

    builds: list[str]
    constraints: list[str]


def _stage(table: Table, year: int) -> str:
    return f"{quote(STAGE_SCHEMA)}.{quote(f'{table.name}_{year}')}"


async def _ensure_stage_schema(db: Database, table: Table) -> None:
    async with connection(db) as conn:
        if await conn.fetchval("SELECT to_regnamespace($1) IS NOT NULL", STAGE_SCHEMA):
            return
        try:
            async with conn.transaction():
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(STAGE_SCHEMA)}")
        except asyncpg.UniqueViolationError:
            pass  # a concurrent writer created it
        except asyncpg.InsufficientPrivilegeError as exc:
            raise WriteError(
                table.name,
                f"cannot create schema {STAGE_SCHEMA} for whole-partition builds ({exc}): "
                "run `stock-pipeline db upgrade`, which creates it",
            ) from None


async def _holds_rows_outside(
    conn: asyncpg.Connection, partition: str, where: str, arguments: Sequence[Any]
) -> bool:
    return await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM {quote(partition)} WHERE NOT ({where}))", *arguments
    )


async def _plan_whole_years(
    conn: asyncpg.Connection,
    table: Table,
    big_years: Sequence[int],
    where: str,
    arguments: Sequence[Any],
) -> list[_WholeYear]:
    """Which of the big years get their partition built whole; the caller holds the table's
    write and partition locks."""
    existing = await _existing_partitions(conn, table) if big_years else None
    if existing is None:
        return []  # nothing big, or not natively partitioned (e.g. a hypertable)
    if await conn.fetchval(
        "SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass($1)", quote(table.name)
    ):
        return []  # rows loaded into a stage would skip the table's row-level security
    plan = []
    for year in big_years:
        name = f"{table.name}_{year}"
        if name not in existing:
            plan.append(_WholeYear(year, replaces=False))
        elif not await _holds_rows_outside(conn, name, where, arguments):
            plan.append(_WholeYear(year, replaces=True))
    return plan


async def _stage_indexes(
    conn: asyncpg.Connection, table: Table, whole: _WholeYear
) -> _StageIndexes:
    """The key constraints and indexes the stage gets: those of the partition it replaces
    (names kept), else the parent's; plus the parent's indexes a bulk load dropped for now
    (bulk_load's rebuild then only attaches them)."""
    partition = f"{table.name}_{whole.year}"
    stage = _stage(table, whole.year)
    source = partition if whole.replaces else table.name
    keys = await conn.fetch(
        "SELECT conname, contype::text, pg_get_indexdef(conindid) AS definition FROM pg_constraint "
        "WHERE conrelid = to_regclass($1) AND contype IN ('p', 'u') ORDER BY contype, conname",
        quote(source),
    )
    builds, constraints = [], []
    for key in keys:
        index = IndexDefinition(source, key["conname"], key["definition"])
        if whole.replaces:
            name = key["conname"]
        elif key["contype"] == "p":
            name = f"{partition}_pkey"  # what PostgreSQL names a partition's primary key
        else:
            columns = index.parts["body"].split("(", 1)[1].rstrip(")").replace(" ", "")
            name = f"{partition}_{columns.replace(',', '_')}_key"
        builds.append(index.create_on(stage, name=name, qualified=True))
        kind = "PRIMARY KEY" if key["contype"] == "p" else "UNIQUE"
        constraints.append(
            f"ALTER TABLE {stage} ADD CONSTRAINT {quote(name)} {kind} USING INDEX {quote(name)}"
        )
    if whole.replaces:
        indexes = await plain_indexes(conn, partition)
    else:
        indexes = [i for i in await secondary_indexes(conn, table.name) if i.table == table.name]
    bodies = {i.body for i in indexes}
    for index in indexes:
        builds.append(
            index.create_on(stage, name=index.name if whole.replaces else None, qualified=True)
        )
    for pending in await recorded_indexes(conn):
        if pending.table == table.name and pending.body not in bodies:
            bodies.add(pending.body)
            builds.append(pending.create_on(stage, qualified=True))
    return _StageIndexes(builds, constraints)


async def _create_stage(conn: asyncpg.Connection, table: Table, year: int) -> str:
    """An empty stage for `year` (a leftover of an interrupted load is dropped first)."""
    stage = _stage(table, year)
    column = quote(table.info["partition_column"])
    low, high = _year_bounds(year)
    await conn.execute(f"DROP TABLE IF EXISTS {stage}")
    await conn.execute(
        f"CREATE TABLE {stage} (LIKE {quote(table.name)} INCLUDING DEFAULTS "
        "INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION)"
    )
    # The bound as a CHECK: rows are checked as they stream in, and ATTACH needs no scan.
    await conn.execute(
        f"ALTER TABLE {stage} ADD CONSTRAINT {quote(_BOUND)} "
        f"CHECK ({column} IS NOT NULL AND {column} >= {low} AND {column} < {high})"
    )
    return stage


def _year_bounds(year: int) -> tuple[str, str]:
    return f"'{year:04d}-01-01'", f"'{year + 1:04d}-01-01'"


async def _build_stage_in_transaction(
    conn: asyncpg.Connection,
    table: Table,
    whole: _WholeYear,
    batch: _Batch,
    size: int,
    how: Method,
    progress: _Progress,
) -> int:
    """Create, load and index the stage inside the caller's transaction. COPY FREEZE: the
    table is new in this transaction, so its rows go in frozen and all-visible; readers never
    rewrite the pages to set hint bits, and index-only scans work at once."""
    await _create_stage(conn, table, whole.year)
    chunks = await _copy_batch(
        conn,
        batch,
        f"{table.name}_{whole.year}",
        size,
        how,
        progress,
        freeze=True,
        schema=STAGE_SCHEMA,
    )
    indexes = await _stage_indexes(conn, table, whole)
    await raise_maintenance_work_mem(conn, BUILD_MAINTENANCE_WORK_MEM, local=True)
    for statement in [*indexes.builds, *indexes.constraints]:
        await conn.execute(statement)
    return chunks


async def _extra_connections(
    pool: asyncpg.Pool, wanted: int, stack: contextlib.AsyncExitStack
) -> list[asyncpg.Connection]:
    """Up to `wanted` more connections from the pool, without waiting for busy ones (a pool
    shared with other work may have none to spare: then fewer streams)."""
    extra: list[asyncpg.Connection] = []
    for _ in range(wanted):
        try:
            extra.append(await stack.enter_async_context(pool.acquire(timeout=0.5)))
        except TimeoutError:
            break
    return extra


async def _build_stage_in_parallel(
    connections: Sequence[asyncpg.Connection],
    table: Table,
    whole: _WholeYear,
    batch: _Batch,
    size: int,
) -> int:
    """Create the stage and commit it, COPY the batch into it over every connection (one
    transaction each), then build its indexes in parallel. Returns the number of chunks."""
    first = connections[0]
    began = time.perf_counter()
    await _create_stage(first, table, whole.year)
    name = f"{table.name}_{whole.year}"
    queue: asyncio.Queue[_Chunk | None] = asyncio.Queue(maxsize=len(connections))

    async def produce() -> int:
        count = 0
        async with contextlib.aclosing(batch.chunks(size, "copy")) as chunks:
            async for chunk in chunks:
                await queue.put(chunk)
                count += 1
        for _ in connections:
            await queue.put(None)
        return count

    async def stream(conn: asyncpg.Connection) -> None:
        progress = _Progress(batch)
        try:
            async with conn.transaction():
                while (chunk := await queue.get()) is not None:
                    progress.at(batch, chunk)
                    await _write_chunk(
                        conn, name, batch.column_names, chunk, "copy", schema=STAGE_SCHEMA
                    )
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise progress.error(exc) from exc

    try:
        async with asyncio.TaskGroup() as group:
            producer = group.create_task(produce())
            for conn in connections:
                group.create_task(stream(conn))
    except BaseExceptionGroup as failed:
        raise _first_error(failed) from None
    loaded = time.perf_counter()
    indexes = await _stage_indexes(first, table, whole)

    async def build(conn: asyncpg.Connection, statements: Sequence[str]) -> None:
        await raise_maintenance_work_mem(conn, BUILD_MAINTENANCE_WORK_MEM, local=False)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.execute("RESET maintenance_work_mem")

    shares = [indexes.builds[i :: len(connections)] for i in range(len(connections))]
    try:
        async with asyncio.TaskGroup() as group:
            for conn, statements in zip(connections, shares, strict=True):
                if statements:
                    group.create_task(build(conn, statements))
    except BaseExceptionGroup as failed:
        raise _first_error(failed) from None
    for statement in indexes.constraints:
        await first.execute(statement)
    log.debug(
        "[writer] %s: stage %d: %d rows over %d COPY streams %.2fs, %d indexes %.2fs",
        table.name,
        whole.year,
        len(batch),
        len(connections),
        loaded - began,
        len(indexes.builds),
        time.perf_counter() - loaded,
    )
    return producer.result()


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The error that failed a task group (the other tasks were cancelled because of it)."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return _first_error(error)
        if not isinstance(error, asyncio.CancelledError):
            return error
    return group.exceptions[0]


async def _lock_for_swap(conn: asyncpg.Connection, parent: str, partition: str) -> bool:
    """ACCESS EXCLUSIVE on the table and the partition, to swap the partition. Waits in short
    attempts, so a long-running reader never holds every other reader up behind the swap;
    False after SWAP_LOCK_WAIT_S without the lock."""
    deadline = time.monotonic() + SWAP_LOCK_WAIT_S
    previous = await conn.fetchval("SELECT current_setting('lock_timeout')")
    while True:
        try:
            async with conn.transaction():
                await conn.execute(
                    "SELECT set_config('lock_timeout', $1, true)", _SWAP_LOCK_ATTEMPT
                )
                await conn.execute(
                    f"LOCK TABLE ONLY {quote(parent)}, ONLY {quote(partition)} "
                    "IN ACCESS EXCLUSIVE MODE"
                )
            return True
        except asyncpg.LockNotAvailableError:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)
        finally:
            await conn.execute("SELECT set_config('lock_timeout', $1, true)", previous)


async def _place_stage(
    conn: asyncpg.Connection,
    table: Table,
    whole: _WholeYear,
    columns: Sequence[str],
    where: str,
    arguments: Sequence[Any],
) -> tuple[int, str]:
    """Put the indexed stage in place of `{table}_{year}`, in the caller's transaction.
    Returns the rows removed from the window and what was done."""
    partition = f"{table.name}_{whole.year}"
    stage = _stage(table, whole.year)
    removed, done = 0, "attached"
    if whole.replaces:
        # Checked again under the lock: a writer that does not take the write lock (append)
        # may have added rows meanwhile, which the swap would drop.
        if not await _lock_for_swap(conn, table.name, partition):
            done = "moved in place (readers held the table)"
        elif await _holds_rows_outside(conn, partition, where, arguments):
            done = "moved in place (the partition got rows outside the window)"
        else:
            done = "swapped in"
        if done != "swapped in":
            # The rows go in one by one after all, indexes maintained as they arrive.
            listed = ", ".join(map(quote, columns))
            status = await conn.execute(f"DELETE FROM {quote(partition)} WHERE {where}", *arguments)
            await conn.execute(
                f"INSERT INTO {quote(partition)} ({listed}) SELECT {listed} FROM {stage}"
            )
            await conn.execute(f"DROP TABLE {stage}")
            return int(status.split()[-1]), done
        removed = await conn.fetchval(f"SELECT count(*) FROM {quote(partition)}")
        await conn.execute(f"DROP TABLE {quote(partition)}")
    schema = await conn.fetchval(
        "SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = to_regclass($1)",
        quote(table.name),
    )
    await conn.execute(f"ALTER TABLE {stage} SET SCHEMA {schema}")
    low, high = _year_bounds(whole.year)
    await conn.execute(
        f"ALTER TABLE {quote(table.name)} ATTACH PARTITION {quote(partition)} "
        f"FOR VALUES FROM ({low}) TO ({high})"
    )
    await conn.execute(f"ALTER TABLE {quote(partition)} DROP CONSTRAINT {quote(_BOUND)}")
    return removed, done


async def _drop_stages(conn: asyncpg.Connection, table: Table, plan: Iterable[_WholeYear]) -> None:
    """Drop what is left of the stages (nothing after a successful write). A stage that
    cannot be dropped now is dropped by the next build of its year."""
    for whole in plan:
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {_stage(table, whole.year)}")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("[writer] %s: could not drop stage %d: %s", table.name, whole.year, exc)


def _copy_streams(db: Database, streams: int | None) -> int:
    """COPY streams for a whole-partition build: one for a single connection."""
    if not isinstance(db, asyncpg.Pool):
        return 1
    wanted = streams if streams is not None else Settings.from_env().copy_streams
    if wanted < 1:
        raise ValueError(f"streams must be >= 1, got {wanted}")
    return min(wanted, db.get_max_size())


@contextlib.asynccontextmanager
async def _table_session_locks(
    pool: asyncpg.Pool, table: Table
) -> AsyncIterator[asyncpg.Connection]:
    """A connection holding the table's write and partition locks for the whole session
    (stages are built over several transactions); released on every path."""
    keys = [f"stock_pipeline.write:{table.name}", partitions_lock(table.name)]
    async with pool.acquire() as conn:
        for key in keys:
            await conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", key)
        try:
            yield conn
        finally:
            for key in reversed(keys):
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)


# -- writing ------------------------------------------------------------------------------------


async def _write_chunk(
    conn: asyncpg.Connection,
    target: str,
    columns: Sequence[str],
    chunk: _Chunk,
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
            await _write_chunk(conn, target, batch.column_names, chunk, how, freeze, schema)
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
    streams: int | None = None,
    method: Method = "copy",
) -> WriteResult:
    """Make the rows of `table` with trade_date in [start, end] (and code in `codes`, when
    given) exactly `rows`, in one transaction.

    Idempotent; a concurrent reader sees the old window or the new one, never a mix. Rows outside
    the window (or of other codes) are an error. Replace writers of one table take turns (an
    advisory lock), and wait for running upserts of that table.

    A year with at least WHOLE_PARTITION_MIN_ROWS rows whose partition is missing, or holds
    nothing outside the window, gets its partition built whole (see "whole partitions" above):
    from a pool over `streams` connections (default STOCK_PIPELINE_COPY_STREAMS).
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
    big_years = _big_years(table, row_years)
    missing = await _missing_partition_years(db, table, big_years)
    await ensure_partitions(db, table, [y for y in _year_counts(row_years) if y not in missing])
    if big_years:
        await _ensure_stage_schema(db, table)
    size = _chunk_rows(chunk_rows)
    parallel = _copy_streams(db, streams)

    where = f"{quote(date_column)} BETWEEN $1 AND $2"
    window_arguments: list[Any] = [start, end]
    if codes is not None:
        where += " AND code = ANY($3::text[])"
        window_arguments.append(list(codes))

    def body_for(staged: _Staged | None):
        """The write's transaction; with `staged`, the stages of its plan are built already."""

        async def body(
            conn: asyncpg.Connection, how: Method, progress: _Progress
        ) -> tuple[int, int]:
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"stock_pipeline.write:{table.name}",
            )
            whole = staged.plan if staged else None
            if whole is None:
                if big_years:
                    # Held to the commit: nobody creates these partitions meanwhile.
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                        partitions_lock(table.name),
                    )
                whole = await _plan_whole_years(conn, table, big_years, where, window_arguments)
            years = [w.year for w in whole]
            deleted = 0
            for low, high in _ranges_outside_years(start, end, years):
                status = await conn.execute(
                    f"DELETE FROM {quote(table.name)} WHERE {where}",
                    low,
                    high,
                    *window_arguments[2:],
                )
                deleted += int(status.split()[-1])
            rest = batch.subset(~np.isin(row_years, years))
            count = await _copy_batch(conn, rest, table.name, size, how, progress)
            for year in whole:
                in_year = row_years == year.year
                year_began = time.perf_counter()
                if staged is None:
                    part = batch.subset(in_year)
                    count += await _build_stage_in_transaction(
                        conn, table, year, part, size, how, progress
                    )
                removed, done = await _place_stage(
                    conn, table, year, batch.column_names, where, window_arguments
                )
                deleted += removed
                log.info(
                    "[writer] %s: %s partition %s_%d whole (%d rows, %s), %s, %.2fs",
                    table.name,
                    "rebuilt" if year.replaces else "built",
                    table.name,
                    year.year,
                    int(in_year.sum()),
                    f"{staged.streams} COPY streams, indexes built in parallel"
                    if staged
                    else "loaded and indexed in the transaction",
                    done,
                    time.perf_counter() - year_began + (staged.seconds[year.year] if staged else 0),
                )
            return deleted, count

        return body

    outcome = None
    if big_years and parallel > 1 and method == "copy":
        assert isinstance(db, asyncpg.Pool)
        outcome = await _replace_with_stages(
            db,
            table,
            batch,
            row_years,
            big_years,
            where,
            window_arguments,
            size,
            parallel,
            body_for,
        )
    if outcome is None:
        outcome = await _run(db, batch, "replace_window", method, body_for(None))
    (deleted, chunks), used = outcome
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


async def _replace_with_stages(
    pool: asyncpg.Pool,
    table: Table,
    batch: _Batch,
    row_years: np.ndarray,
    big_years: Sequence[int],
    where: str,
    window_arguments: Sequence[Any],
    size: int,
    streams: int,
    body_for,
) -> tuple[tuple[int, int], Method] | None:
    """replace_window with its whole years staged over several connections first; None when
    there is nothing to stage or the server refuses COPY (then the caller writes it all in one
    transaction, which can fall back to INSERT)."""
    async with _table_session_locks(pool, table) as conn, contextlib.AsyncExitStack() as stack:
        plan = await _plan_whole_years(conn, table, big_years, where, window_arguments)
        if not plan:
            return None
        try:
            connections = [conn, *await _extra_connections(pool, streams - 1, stack)]
            staged = _Staged(plan, len(connections))
            for whole in plan:
                part = batch.subset(row_years == whole.year)
                began = time.perf_counter()
                try:
                    staged.chunks += await _build_stage_in_parallel(
                        connections, table, whole, part, size
                    )
                except _COPY_REFUSED as refused:
                    log.warning(
                        "[writer] %s: COPY refused while staging (%s: %s); writing in one "
                        "transaction instead",
                        table.name,
                        type(refused).__name__,
                        refused.args[0] if refused.args else "",
                    )
                    return None
                staged.seconds[whole.year] = time.perf_counter() - began
            await stack.aclose()  # give the extra connections back before the transaction
            (deleted, chunks), used = await _run(
                conn, batch, "replace_window", "copy", body_for(staged)
            )
            return (deleted, chunks + staged.chunks), used
        finally:
            await _drop_stages(conn, table, plan)


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
