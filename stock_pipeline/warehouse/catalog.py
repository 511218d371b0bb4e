"""What the writer and the index management read from PostgreSQL's catalog, and how they reach
the database (an asyncpg pool or one connection)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from sqlalchemy import Table

from stock_pipeline.warehouse import tables

Database = asyncpg.Pool | asyncpg.Connection


def quote(name: str) -> str:
    """An SQL identifier, always quoted."""
    return '"' + name.replace('"', '""') + '"'


def resolve(table: Table | str) -> Table:
    """The warehouse table of that name (or the table itself)."""
    return tables.table(table) if isinstance(table, str) else table


def table_name(table: Table | str) -> str:
    return table if isinstance(table, str) else table.name


@contextlib.asynccontextmanager
async def connection(db: Database) -> AsyncIterator[asyncpg.Connection]:
    """A connection from the pool (released on every path, errors and cancellation included),
    or the connection given."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


def partitions_lock(table: str) -> str:
    """The advisory lock key held while a table's partitions are created or dropped."""
    return f"stock_pipeline.partitions:{table}"


def write_lock(table: str) -> str:
    """The advisory lock key of a table's writers: upserts share it, replace writers take it
    alone."""
    return f"stock_pipeline.write:{table}"


async def lock_until_commit(conn: asyncpg.Connection, key: str, *, shared: bool = False) -> None:
    """Take the advisory lock `key` for the rest of the current transaction."""
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    await conn.execute(f"SELECT {function}(hashtextextended($1, 0))", key)


async def raise_maintenance_work_mem(conn: asyncpg.Connection, value: str, *, local: bool) -> None:
    """Set maintenance_work_mem to `value` unless it is already higher (index builds sort in
    it); `local` limits it to the current transaction."""
    await conn.execute(
        "SELECT set_config('maintenance_work_mem', $1, $2) "
        "WHERE pg_size_bytes(current_setting('maintenance_work_mem')) < pg_size_bytes($1)",
        value,
        local,
    )


async def table_oid(conn: asyncpg.Connection, name: str) -> int | None:
    return await conn.fetchval("SELECT to_regclass($1)::oid", quote(name))


async def partitions(conn: asyncpg.Connection, oid: int) -> list[tuple[int, str]]:
    """(oid, name) of the table's partitions."""
    rows = await conn.fetch(
        "SELECT c.oid, c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1 ORDER BY c.relname",
        oid,
    )
    return [(r["oid"], r["relname"]) for r in rows]


_DEFINITION = re.compile(
    r"^CREATE (?P<unique>UNIQUE )?INDEX (?P<name>.+?) ON (?P<only>ONLY )?(?P<table>.+?) "
    r"USING (?P<body>.+)$",
    re.DOTALL,
)


@dataclass(frozen=True)
class IndexDefinition:
    """One index as PostgreSQL prints it: `definition` is pg_get_indexdef()."""

    table: str
    name: str
    definition: str

    @property
    def parts(self) -> re.Match[str]:
        match = _DEFINITION.match(self.definition)
        if match is None:
            raise ValueError(f"cannot read index definition {self.definition!r}")
        return match

    @property
    def body(self) -> str:
        """What the index covers, e.g. 'USING btree (trade_date, code)': equal for a
        partitioned index and the partition indexes attached to it."""
        parts = self.parts
        return f"{parts['unique'] or ''}USING {parts['body']}"

    def create(self, *, recurse: bool = True, concurrently: bool = False) -> str:
        """The CREATE INDEX statement; `recurse=False` keeps a partitioned parent's ON ONLY."""
        parts = self.parts
        only = "ONLY " if parts["only"] and not recurse else ""
        how = "CONCURRENTLY " if concurrently else ""
        return (
            f"CREATE {parts['unique'] or ''}INDEX {how}{parts['name']} "
            f"ON {only}{parts['table']} USING {parts['body']}"
        )

    def create_on(
        self,
        table: str,
        *,
        name: str | None = None,
        concurrently: bool = False,
        qualified: bool = False,
    ) -> str:
        """The same index on another table (a partition), named `name` or as PostgreSQL
        names it by default. `qualified`: `table` is already a quoted, schema-qualified name."""
        parts = self.parts
        how = "CONCURRENTLY " if concurrently else ""
        named = f"{quote(name)} " if name else ""
        target = table if qualified else quote(table)
        return f"CREATE {parts['unique'] or ''}INDEX {how}{named}ON {target} USING {parts['body']}"


async def recorded_indexes(conn: asyncpg.Connection) -> list[IndexDefinition]:
    """Indexes a bulk load dropped and has not rebuilt yet (the index_definitions table; none
    where that table does not exist)."""
    if not await conn.fetchval("SELECT to_regclass('index_definitions') IS NOT NULL"):
        return []
    rows = await conn.fetch(
        "SELECT table_name, index_name, definition FROM index_definitions "
        "ORDER BY dropped_at, table_name, index_name"
    )
    return [IndexDefinition(r["table_name"], r["index_name"], r["definition"]) for r in rows]


async def plain_indexes(conn: asyncpg.Connection, table: str) -> list[IndexDefinition]:
    """Indexes of this one table (a partition, say) that no constraint needs."""
    rows = await conn.fetch(
        """
        SELECT ic.relname AS index_name, pg_get_indexdef(i.indexrelid) AS definition
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        WHERE i.indrelid = to_regclass($1)
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid
                          AND c.contype IN ('p', 'u', 'x'))
        ORDER BY ic.relname
        """,
        quote(table),
    )
    return [IndexDefinition(table, r["index_name"], r["definition"]) for r in rows]


async def secondary_indexes(conn: asyncpg.Connection, table: Table | str) -> list[IndexDefinition]:
    """The table's indexes that no constraint needs (not the primary key, not unique or
    exclusion constraints), followed by the partition indexes attached to them."""
    name = table_name(table)
    oid = await table_oid(conn, name)
    if oid is None:
        raise LookupError(f"table {name} does not exist: run the migrations first")
    rows = await conn.fetch(
        """
        SELECT i.indexrelid, ic.relname AS index_name, pg_get_indexdef(i.indexrelid) AS definition
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        WHERE i.indrelid = $1
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid
                          AND c.contype IN ('p', 'u', 'x'))
        ORDER BY ic.relname
        """,
        oid,
    )
    found = [IndexDefinition(name, r["index_name"], r["definition"]) for r in rows]
    for row in rows:
        children = await conn.fetch(
            """
            SELECT t.relname AS table_name, ic.relname AS index_name,
                   pg_get_indexdef(ic.oid) AS definition
            FROM pg_inherits h
            JOIN pg_class ic ON ic.oid = h.inhrelid
            JOIN pg_index x ON x.indexrelid = ic.oid
            JOIN pg_class t ON t.oid = x.indrelid
            WHERE h.inhparent = $1
            ORDER BY t.relname
            """,
            row["indexrelid"],
        )
        found += [
            IndexDefinition(c["table_name"], c["index_name"], c["definition"]) for c in children
        ]
    return found
