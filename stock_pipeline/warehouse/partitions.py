"""Yearly partitions: created on demand, or built whole.

A write that brings a year without a partition creates it first (`ensure_partitions`, its own
short transaction under an advisory lock). A year that receives many rows in one
replace_window, and has no partition yet or one holding nothing outside the window, is built
whole instead: see "whole partitions" below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import asyncpg
import numpy as np
from sqlalchemy import Table

from stock_pipeline.warehouse.batch import (
    COPY_REFUSED,
    Batch,
    Chunk,
    Method,
    Progress,
    WriteError,
    copy_batch,
    write_chunk,
    year_counts,
)
from stock_pipeline.warehouse.catalog import (
    Database,
    IndexDefinition,
    connection,
    lock_until_commit,
    partitions_lock,
    plain_indexes,
    quote,
    raise_maintenance_work_mem,
    recorded_indexes,
    resolve,
    secondary_indexes,
    write_lock,
)
from stock_pipeline.warehouse.tables import STAGE_SCHEMA

log = logging.getLogger(__name__)

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
# COPY streams of a whole-partition build when the caller names none: one stream keeps one
# server core busy. The default of Settings.copy_streams; the Dagster resource passes the
# configured value.
DEFAULT_COPY_STREAMS = min(4, os.cpu_count() or 1)


# -- partitions on demand -----------------------------------------------------------------------


async def existing_partitions(conn: asyncpg.Connection, table: Table) -> set[str] | None:
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


async def ensure_partitions(
    db: Database, table: Table | str, years: Iterable[int], *, leave_missing: Iterable[int] = ()
) -> list[str]:
    """Create the yearly partitions `{table}_{year}` that are missing; returns the new names.
    Years in `leave_missing` are not created (they are about to be built whole).

    Runs in its own short transaction under an advisory lock, so two writers never race to
    create the same partition. Does nothing for tables that are not natively partitioned.
    """
    table = resolve(table)
    column = table.info.get("partition_column")
    wanted = sorted(set(years) - set(leave_missing))
    if not column or not wanted:
        return []
    async with connection(db) as conn:
        existing = await existing_partitions(conn, table)
        if existing is None:
            return []
        missing = [y for y in wanted if f"{table.name}_{y}" not in existing]
        if not missing:
            return []
        created = []
        async with conn.transaction():
            await lock_until_commit(conn, partitions_lock(table.name))
            existing = await existing_partitions(conn, table) or set()
            for year in missing:
                name = f"{table.name}_{year}"
                if name in existing:
                    continue  # another writer made it while we waited for the lock
                await conn.execute(_create_partition_sql(table, year))
                created.append(name)
    if created:
        log.info("[partitions] %s: created partitions %s", table.name, ", ".join(created))
    return created


def big_years(table: Table, row_years: np.ndarray) -> list[int]:
    """Years of the batch with enough rows to build their partition whole."""
    if not table.info.get("partition_column"):
        return []
    counts = year_counts(row_years)
    return [year for year, n in counts.items() if n >= WHOLE_PARTITION_MIN_ROWS]


def _create_partition_sql(table: Table, year: int) -> str:
    low, high = _year_bounds(year)
    return (
        f"CREATE TABLE {quote(f'{table.name}_{year}')} PARTITION OF {quote(table.name)} "
        f"FOR VALUES FROM ({low}) TO ({high})"
    )


def ranges_outside_years(start: date, end: date, years: Iterable[int]) -> list[tuple[date, date]]:
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
class WholeYear:
    """A year whose partition is built whole: a new one, or one replacing a partition that
    holds nothing outside the window."""

    year: int
    replaces: bool


@dataclass
class Staged:
    """Stages built over several connections before the write's transaction."""

    plan: list[WholeYear]
    streams: int
    chunks: int = 0
    seconds: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PlacedStage:
    """A stage put in place of its year's partition: the window's rows that went with the
    old partition, and how (swapped in, or moved in place and why)."""

    deleted: int
    how: str


@dataclass(frozen=True)
class _StageIndexes:
    """How to index a stage: CREATE INDEX statements (any order, any connection), then the
    ALTER TABLE statements that turn unique indexes into the key constraints."""

    builds: list[str]
    constraints: list[str]


def _stage(table: Table, year: int) -> str:
    return f"{quote(STAGE_SCHEMA)}.{quote(f'{table.name}_{year}')}"


async def ensure_stage_schema(db: Database, table: Table) -> None:
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


async def _drop_leftover_stages(conn: asyncpg.Connection, table: Table) -> None:
    """Drop the stages of `table` an interrupted build left behind: the caller holds the
    table's write lock, so no build of it is under way."""
    leftovers = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname ~ $2",
        STAGE_SCHEMA,
        f"^{re.escape(table.name)}_[0-9]{{4}}$",
    )
    for row in leftovers:
        await conn.execute(f"DROP TABLE {quote(STAGE_SCHEMA)}.{quote(row['relname'])}")
        log.warning(
            "[partitions] %s: dropped %s.%s, left by an interrupted build",
            table.name,
            STAGE_SCHEMA,
            row["relname"],
        )


async def plan_whole_years(
    conn: asyncpg.Connection,
    table: Table,
    big_years: Sequence[int],
    where: str,
    arguments: Sequence[Any],
) -> list[WholeYear]:
    """Which of the big years get their partition built whole; the caller holds the table's
    write and partition locks."""
    existing = await existing_partitions(conn, table) if big_years else None
    if existing is None:
        return []  # nothing big, or not natively partitioned (e.g. a hypertable)
    if await conn.fetchval(
        "SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass($1)", quote(table.name)
    ):
        # Rows loaded into a stage would skip the table's row-level security: the rows go in
        # one by one, into partitions created here (the caller left missing big years to us).
        created = [y for y in big_years if f"{table.name}_{y}" not in existing]
        for year in created:
            await conn.execute(_create_partition_sql(table, year))
        if created:
            log.info(
                "[partitions] %s: created partitions %s (row-level security: no stage)",
                table.name,
                ", ".join(f"{table.name}_{y}" for y in created),
            )
        return []
    await _drop_leftover_stages(conn, table)
    plan = []
    for year in big_years:
        name = f"{table.name}_{year}"
        if name not in existing:
            plan.append(WholeYear(year, replaces=False))
        elif not await _holds_rows_outside(conn, name, where, arguments):
            plan.append(WholeYear(year, replaces=True))
    return plan


async def _stage_indexes(conn: asyncpg.Connection, table: Table, whole: WholeYear) -> _StageIndexes:
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
    """An empty stage for `year` (plan_whole_years dropped any leftover first)."""
    stage = _stage(table, year)
    column = quote(table.info["partition_column"])
    low, high = _year_bounds(year)
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


async def build_stage_in_transaction(
    conn: asyncpg.Connection,
    table: Table,
    whole: WholeYear,
    batch: Batch,
    size: int,
    how: Method,
    progress: Progress,
) -> int:
    """Create, load and index the stage inside the caller's transaction. COPY FREEZE: the
    table is new in this transaction, so its rows go in frozen and all-visible; readers never
    rewrite the pages to set hint bits, and index-only scans work at once."""
    await _create_stage(conn, table, whole.year)
    chunks = await copy_batch(
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


async def extra_connections(
    pool: asyncpg.Pool, wanted: int, stack: contextlib.AsyncExitStack
) -> list[asyncpg.Connection]:
    """Up to `wanted` more connections from the pool, without waiting for busy ones (a pool
    shared with other work may have none to spare: then fewer streams)."""
    extra: list[asyncpg.Connection] = []
    for _ in range(wanted):
        try:
            extra.append(await stack.enter_async_context(pool.acquire(timeout=0.5)))
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Busy pool, or the server at max_connections: load over fewer streams.
            log.debug("[partitions] one more connection: %s; %d stream(s)", exc, 1 + len(extra))
            break
    return extra


async def build_stage_in_parallel(
    connections: Sequence[asyncpg.Connection],
    table: Table,
    whole: WholeYear,
    batch: Batch,
    size: int,
) -> int:
    """Create the stage and commit it, COPY the batch into it over every connection (one
    transaction each), then build its indexes in parallel. Returns the number of chunks."""
    first = connections[0]
    began = time.perf_counter()
    await _create_stage(first, table, whole.year)
    name = f"{table.name}_{whole.year}"
    queue: asyncio.Queue[Chunk | None] = asyncio.Queue(maxsize=len(connections))

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
        progress = Progress(batch)
        try:
            async with conn.transaction():
                while (chunk := await queue.get()) is not None:
                    progress.at(batch, chunk)
                    await write_chunk(
                        conn, name, batch.column_names, chunk, "copy", schema=STAGE_SCHEMA
                    )
        except COPY_REFUSED:
            raise  # not the data: the caller writes in one transaction instead
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise progress.error(exc) from exc

    chunks, *_ = await _all_or_error([produce(), *(stream(conn) for conn in connections)])
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
    await _all_or_error(
        [build(conn, share) for conn, share in zip(connections, shares, strict=True) if share]
    )
    for statement in indexes.constraints:
        await first.execute(statement)
    log.debug(
        "[partitions] %s: stage %d: %d rows over %d COPY streams %.2fs, %d indexes %.2fs",
        table.name,
        whole.year,
        len(batch),
        len(connections),
        loaded - began,
        len(indexes.builds),
        time.perf_counter() - loaded,
    )
    return chunks


async def _all_or_error(work: Sequence[Coroutine[Any, Any, Any]]) -> list[Any]:
    """Run `work` concurrently; the first failure cancels the rest and is raised as it is
    (not wrapped in an exception group). Returns the results in order."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(w) for w in work]
    except BaseExceptionGroup as failed:
        raise _first_error(failed) from None
    return [t.result() for t in tasks]


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
        except asyncpg.DeadlockDetectedError:
            # A writer waits on rows this transaction wrote while we wait on its lock: the
            # upgrade to ACCESS EXCLUSIVE cannot happen before this transaction ends.
            return False
        except asyncpg.LockNotAvailableError:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)
        finally:
            await conn.execute("SELECT set_config('lock_timeout', $1, true)", previous)


async def place_stage(
    conn: asyncpg.Connection,
    table: Table,
    whole: WholeYear,
    columns: Sequence[str],
    where: str,
    arguments: Sequence[Any],
) -> PlacedStage:
    """Put the indexed stage in place of `{table}_{year}`, in the caller's transaction."""
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
            return PlacedStage(int(status.split()[-1]), done)
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
    return PlacedStage(removed, done)


async def drop_stages(conn: asyncpg.Connection, table: Table, plan: Iterable[WholeYear]) -> None:
    """Drop what is left of the stages (nothing after a successful write). A stage that
    cannot be dropped now is dropped by the next build of its year."""
    for whole in plan:
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {_stage(table, whole.year)}")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("[partitions] %s: could not drop stage %d: %s", table.name, whole.year, exc)


def copy_streams(db: Database, streams: int | None) -> int:
    """COPY streams for a whole-partition build: `streams` (DEFAULT_COPY_STREAMS for None,
    never the environment), at most the pool's size; one for a single connection."""
    if not isinstance(db, asyncpg.Pool):
        return 1
    wanted = DEFAULT_COPY_STREAMS if streams is None else streams
    if wanted < 1:
        raise ValueError(f"streams must be >= 1, got {wanted}")
    return min(wanted, db.get_max_size())


@contextlib.asynccontextmanager
async def table_session_locks(
    pool: asyncpg.Pool, table: Table
) -> AsyncIterator[asyncpg.Connection]:
    """A connection holding the table's write and partition locks for the whole session
    (stages are built over several transactions); released on every path."""
    keys = [write_lock(table.name), partitions_lock(table.name)]
    async with pool.acquire() as conn:
        for key in keys:
            await conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", key)
        try:
            yield conn
        finally:
            # A broken connection cannot unlock, but is closed by the pool, which ends the
            # session and its locks (a healthy one is also reset with pg_advisory_unlock_all).
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                for key in reversed(keys):
                    await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)
