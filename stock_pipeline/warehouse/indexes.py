"""Secondary indexes dropped for a bulk load and rebuilt after it (seed 000 D2).

For full imports and large backfills only, never the daily increment:

    async with bulk_load(pool, "technical_daily"):
        await replace_window(pool, "technical_daily", rows, start=..., end=...)

Every non-primary-key index is dropped; the primary key (and any unique or exclusion constraint)
stays, so the load keeps its integrity checks. The exact definitions (`pg_get_indexdef`) are
written to `index_definitions` in the same transaction as the DROP, so a crash between the drop
and the rebuild loses nothing: `repair_indexes` rebuilds whatever is recorded there, and
`bulk_load` calls it before it drops anything.

Rebuilding builds each index once from sorted data, with `maintenance_work_mem` raised for the
session, instead of inserting into it row by row during the load. A year the load replaces
entirely (or whose partition is empty or missing) the writer builds whole anyway: rows first,
then the primary key and every index the table should have, the dropped ones included; the
rebuild then just attaches those. So even the primary key is built instead of maintained row by
row, while the table's primary key constraint never goes away and still rejects duplicates.
A plain CREATE INDEX lets other sessions read but blocks their writes while it runs;
CONCURRENTLY blocks neither (two table scans, no transaction block). PostgreSQL cannot build a
partitioned parent's index CONCURRENTLY, so for partitioned tables the parent index is created
ON ONLY, each partition's index is built CONCURRENTLY and then attached, which makes the parent
valid.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

import asyncpg
from sqlalchemy import Table

from stock_pipeline.warehouse.catalog import (
    Database,
    IndexDefinition,
    connection,
    partitions,
    quote,
    raise_maintenance_work_mem,
    recorded_indexes,
    secondary_indexes,
    table_name,
    table_oid,
)

log = logging.getLogger(__name__)

# -- drop ----------------------------------------------------------------------------------------


async def drop_indexes(db: Database, table: Table | str) -> list[IndexDefinition]:
    """Drop the table's secondary indexes, recording their definitions in index_definitions in
    the same transaction. Returns what was dropped (parents first, then partition indexes)."""
    name = table_name(table)
    async with connection(db) as conn, conn.transaction():
        found = await secondary_indexes(conn, name)
        if not found:
            return []
        await conn.executemany(
            "INSERT INTO index_definitions (table_name, index_name, definition) "
            "VALUES ($1, $2, $3) ON CONFLICT (table_name, index_name) "
            "DO UPDATE SET definition = excluded.definition, dropped_at = now()",
            [(d.table, d.name, d.definition) for d in found],
        )
        parents = [d for d in found if d.table == name]
        # Dropping a partitioned index drops the partition indexes attached to it.
        await conn.execute(
            "DROP INDEX " + ", ".join(quote(d.name) for d in parents)  # one lock round
        )
    log.info(
        "[indexes] %s: dropped %s (definitions kept in index_definitions)",
        name,
        ", ".join(d.name for d in parents),
    )
    return found


# -- rebuild -------------------------------------------------------------------------------------


async def _index_state(conn: asyncpg.Connection, name: str) -> tuple[bool, str] | None:
    """(valid, definition) of an existing index, or None."""
    row = await conn.fetchrow(
        "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) AS definition FROM pg_index i "
        "WHERE i.indexrelid = to_regclass($1)",
        quote(name),
    )
    return None if row is None else (row["indisvalid"], row["definition"])


async def _forget(conn: asyncpg.Connection, definitions: Sequence[IndexDefinition]) -> None:
    await conn.executemany(
        "DELETE FROM index_definitions WHERE table_name = $1 AND index_name = $2",
        [(d.table, d.name) for d in definitions],
    )


async def _rename_children(
    conn: asyncpg.Connection, parent: IndexDefinition, children: Sequence[IndexDefinition]
) -> None:
    """Give the rebuilt partition indexes their recorded names (PostgreSQL picks the same ones
    unless a name was taken meanwhile)."""
    wanted = {c.table: c.name for c in children}
    rows = await conn.fetch(
        "SELECT t.relname AS table_name, ic.relname AS index_name FROM pg_inherits h "
        "JOIN pg_class ic ON ic.oid = h.inhrelid JOIN pg_index x ON x.indexrelid = ic.oid "
        "JOIN pg_class t ON t.oid = x.indrelid WHERE h.inhparent = to_regclass($1)",
        quote(parent.name),
    )
    for row in rows:
        name = wanted.get(row["table_name"])
        if name and name != row["index_name"] and await table_oid(conn, name) is None:
            await conn.execute(f"ALTER INDEX {quote(row['index_name'])} RENAME TO {quote(name)}")


async def _unattached(
    conn: asyncpg.Connection, partition: str
) -> list[tuple[IndexDefinition, bool]]:
    """The partition's indexes that belong to no parent index and back no constraint, each
    with whether it is valid."""
    rows = await conn.fetch(
        """
        SELECT ic.relname AS index_name, pg_get_indexdef(i.indexrelid) AS definition,
               i.indisvalid AS valid
        FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
        WHERE i.indrelid = to_regclass($1)
          AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        """,
        quote(partition),
    )
    return [
        (IndexDefinition(partition, r["index_name"], r["definition"]), r["valid"]) for r in rows
    ]


async def _drop_unattached(conn: asyncpg.Connection, children: Sequence[IndexDefinition]) -> None:
    """Drop partition indexes an interrupted concurrent rebuild left invalid under the recorded
    names. A valid one stays: CREATE INDEX on the parent attaches an equal index it finds on a
    partition instead of building another (the writer builds them with a partition built
    whole during a bulk load)."""
    for child in children:
        for index, valid in await _unattached(conn, child.table):
            if index.name == child.name and not valid:
                await conn.execute(f"DROP INDEX {quote(index.name)}")


async def _build_concurrently(
    conn: asyncpg.Connection,
    table: str,
    parent: IndexDefinition,
    children: Sequence[IndexDefinition],
) -> None:
    oid = await table_oid(conn, table)
    assert oid is not None
    is_partitioned = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = $1)", oid
    )
    if not is_partitioned:
        await conn.execute(parent.create(concurrently=True))
        return
    # The parent stays invalid until every partition has an attached index.
    await conn.execute(parent.create(recurse=False))
    recorded = {c.table: c.name for c in children}
    for _, partition in await partitions(conn, oid):
        ready = [
            i for i, valid in await _unattached(conn, partition) if valid and i.body == parent.body
        ]
        if ready:
            # Built with the partition (a whole-partition build during the bulk load).
            await conn.execute(
                f"ALTER INDEX {quote(parent.name)} ATTACH PARTITION {quote(ready[0].name)}"
            )
            continue
        name = recorded.get(partition)
        if name is not None and (state := await _index_state(conn, name)) is not None:
            # Left by a crash between this partition's build and its ATTACH: reuse it if it is
            # complete and the same index, else drop it.
            valid, definition = state
            same = IndexDefinition(partition, name, definition).body == parent.body
            if valid and same:
                await conn.execute(
                    f"ALTER INDEX {quote(parent.name)} ATTACH PARTITION {quote(name)}"
                )
                continue
            await conn.execute(f"DROP INDEX {quote(name)}")
        if name is None or await table_oid(conn, name) is not None:
            name = await _free_index_name(conn, partition, parent.name)
        await conn.execute(parent.create_on(partition, name=name, concurrently=True))
        await conn.execute(f"ALTER INDEX {quote(parent.name)} ATTACH PARTITION {quote(name)}")


async def _free_index_name(conn: asyncpg.Connection, partition: str, parent: str) -> str:
    """A name for a partition index that was not recorded (a partition created meanwhile)."""
    base = f"{partition}_{parent}"[:59]
    name, suffix = base, 0
    while await table_oid(conn, name) is not None:
        suffix += 1
        name = f"{base}{suffix}"
    return name


async def _rebuild_one(
    conn: asyncpg.Connection,
    table: str,
    parent: IndexDefinition,
    children: Sequence[IndexDefinition],
    concurrently: bool,
) -> str:
    """Bring one recorded index back; returns what was done."""
    state = await _index_state(conn, parent.name)
    if state is not None and state[0]:
        # Built before a crash that came before the bookkeeping row was removed.
        if state[1] != parent.definition:
            log.warning(
                "[indexes] %s: index %s exists with a different definition; leaving it",
                table,
                parent.name,
            )
        await _forget(conn, [parent, *children])
        return "already there"
    if state is not None:
        # An interrupted CREATE INDEX CONCURRENTLY leaves an invalid index behind.
        await conn.execute(f"DROP INDEX {quote(parent.name)}")
    if concurrently:
        await _build_concurrently(conn, table, parent, children)
        await _forget(conn, [parent, *children])
        return "rebuilt concurrently"
    async with conn.transaction():
        await _drop_unattached(conn, children)
        await conn.execute(parent.create())
        await _rename_children(conn, parent, children)
        await _forget(conn, [parent, *children])
    return "rebuilt"


async def _others_use(conn: asyncpg.Connection, table: str) -> bool:
    """Whether another session holds a lock on the table or one of its partitions now."""
    return await conn.fetchval(
        """
        SELECT EXISTS (
            SELECT 1 FROM pg_locks l
            WHERE l.pid <> pg_backend_pid() AND l.database = (
                SELECT oid FROM pg_database WHERE datname = current_database())
              AND (l.relation = to_regclass($1) OR l.relation IN (
                   SELECT inhrelid FROM pg_inherits WHERE inhparent = to_regclass($1))))
        """,
        quote(table),
    )


async def rebuild_indexes(
    db: Database,
    table: Table | str,
    *,
    concurrently: bool | None = None,
    maintenance_work_mem: str | None = "1GB",
) -> list[str]:
    """Rebuild the indexes of `table` recorded in index_definitions; returns their names.

    concurrently: None decides by whether another session is using the table right now.
    maintenance_work_mem: set for the building session (sorts in memory instead of on disk).
    """
    name = table_name(table)
    async with connection(db) as conn:
        recorded = await recorded_indexes(conn)
        partition_names: set[str] = set()
        oid = await table_oid(conn, name)
        if oid is not None:
            partition_names = {p for _, p in await partitions(conn, oid)}
        parents = [d for d in recorded if d.table == name]
        children = [d for d in recorded if d.table in partition_names]
        if not parents:
            if children:
                await _forget(conn, children)
            return []
        if oid is None:
            log.warning("[indexes] %s: table is gone; forgetting its dropped indexes", name)
            await _forget(conn, parents)
            return []
        if concurrently is None:
            concurrently = await _others_use(conn, name)
        if maintenance_work_mem:
            await raise_maintenance_work_mem(conn, maintenance_work_mem, local=False)
        done = []
        try:
            for parent in parents:
                began = time.perf_counter()
                mine = [c for c in children if c.body == parent.body]
                what = await _rebuild_one(conn, name, parent, mine, concurrently)
                log.info(
                    "[indexes] %s: %s %s, %.2fs",
                    name,
                    parent.name,
                    what,
                    time.perf_counter() - began,
                )
                done.append(parent.name)
            leftovers = [c for c in children if all(c.body != p.body for p in parents)]
            if leftovers:
                await _forget(conn, leftovers)
        finally:
            if maintenance_work_mem:
                await conn.execute("RESET maintenance_work_mem")
        return done


def bulk_load_lock(table: str) -> str:
    """The advisory lock a bulk load of `table` holds for its whole duration."""
    return f"stock_pipeline.bulk_load:{table}"


async def repair_indexes(db: Database) -> list[str]:
    """Rebuild every index left in index_definitions by an interrupted bulk load.

    A bulk load that is still running holds its table's lock (bulk_load_lock, session level,
    so a crash releases it): its dropped indexes are its own, and are left to it.
    """
    async with connection(db) as conn:
        recorded = await recorded_indexes(conn)
        if not recorded:
            return []
        roots = []
        for d in recorded:
            root = await conn.fetchval(
                "SELECT CASE WHEN c.relispartition "
                "THEN pg_partition_root(c.oid)::regclass::text ELSE $1 END "
                "FROM pg_class c WHERE c.oid = to_regclass($2)",
                d.table,
                quote(d.table),
            )
            roots.append((root or d.table).strip('"'))
        repaired = []
        for root in dict.fromkeys(roots):
            key = bulk_load_lock(root)
            if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", key):
                log.info(
                    "[indexes] %s: a bulk load is running; its dropped indexes are its own", root
                )
                continue
            try:
                log.warning(
                    "[indexes] %s: rebuilding indexes an interrupted load left dropped: %s",
                    root,
                    ", ".join(
                        sorted({d.name for d, r in zip(recorded, roots, strict=True) if r == root})
                    ),
                )
                repaired += await rebuild_indexes(conn, root)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)
        return repaired


@contextlib.asynccontextmanager
async def bulk_load(
    db: Database,
    table: Table | str,
    *,
    concurrently: bool | None = None,
    maintenance_work_mem: str | None = "1GB",
) -> AsyncIterator[list[IndexDefinition]]:
    """Drop the table's secondary indexes for the block and rebuild them afterwards, also when
    the block fails. Repairs leftovers of an interrupted earlier load first.

    Holds the table's bulk-load lock throughout (on a connection of its own when given a
    pool): bulk loads of one table take turns, and repair_indexes elsewhere leaves this one's
    dropped indexes alone.
    """
    name = table_name(table)
    key = bulk_load_lock(name)
    async with connection(db) as holder:
        await holder.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", key)
        try:
            await repair_indexes(holder)
            dropped = await drop_indexes(holder, table)
            try:
                yield dropped
            finally:
                if dropped:
                    await rebuild_indexes(
                        db if isinstance(db, asyncpg.Pool) else holder,
                        table,
                        concurrently=concurrently,
                        maintenance_work_mem=maintenance_work_mem,
                    )
        finally:
            await holder.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)
