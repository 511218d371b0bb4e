"""Index management for bulk loads against real PostgreSQL: drop and rebuild restore the exact
definitions (plain and partitioned tables, plain and CONCURRENTLY), also after a crash between
the two or in the middle of a concurrent rebuild."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import asyncpg
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Column, Integer, MetaData, Table, Text, UniqueConstraint, text
from sqlalchemy.engine import Engine

from stock_pipeline.warehouse import partitions
from stock_pipeline.warehouse.indexes import (
    bulk_load,
    drop_indexes,
    rebuild_indexes,
    repair_indexes,
)
from stock_pipeline.warehouse.tables import (
    INDICATOR_COLUMNS,
    fetch_log,
    index_definitions,
    technical_daily,
)
from stock_pipeline.warehouse.writer import replace_window
from stock_pipeline_tests.helpers import recreate_tables
from stock_pipeline_tests.helpers import run_with_pool as run

TABLES = [technical_daily, fetch_log, index_definitions]


@pytest.fixture(autouse=True)
def fresh_tables(engine: Engine) -> Iterator[None]:
    """technical_daily with partitions 2023 and 2024 holding rows, fetch_log with rows."""
    recreate_tables(engine, TABLES)
    with engine.begin() as conn:
        for year in (2023, 2024):
            conn.execute(
                text(
                    f"CREATE TABLE technical_daily_{year} PARTITION OF technical_daily "
                    f"FOR VALUES FROM ('{year}-01-01') TO ('{year + 1}-01-01')"
                )
            )
        conn.execute(
            text(
                "INSERT INTO technical_daily (code, trade_date, ma5) "
                "SELECT 'sh.' || (600000 + c), d, c * 0.5 FROM generate_series(1, 50) c, "
                "generate_series('2023-12-01'::date, '2024-01-31', '1 day') d"
            )
        )
        conn.execute(
            text(
                "INSERT INTO fetch_log (dataset, codes_requested, codes_failed, rows, seconds, "
                "status) SELECT 'raw_k_daily', 10, 0, g, 0.5, 'ok' FROM generate_series(1, 500) g"
            )
        )
    yield


def index_state(engine: Engine, table: str) -> list[tuple]:
    """(index, definition, valid, attached to) for the table and its partitions."""
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    """
                    SELECT ic.relname, pg_get_indexdef(i.indexrelid), i.indisvalid,
                           (SELECT p.relname FROM pg_inherits h JOIN pg_class p
                              ON p.oid = h.inhparent WHERE h.inhrelid = i.indexrelid)
                    FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                    WHERE i.indrelid = to_regclass(:t) OR i.indrelid IN (
                        SELECT inhrelid FROM pg_inherits WHERE inhparent = to_regclass(:t))
                    ORDER BY 1
                    """
                ),
                {"t": table},
            )
        ]


def recorded(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text("SELECT table_name, index_name FROM index_definitions ORDER BY 1, 2")
            )
        ]


PARTITIONED_SECONDARY = [
    ("technical_daily", "ix_technical_daily_trade_date_code"),
    ("technical_daily_2023", "technical_daily_2023_trade_date_code_idx"),
    ("technical_daily_2024", "technical_daily_2024_trade_date_code_idx"),
]


@pytest.mark.parametrize("concurrently", [False, True])
def test_bulk_load_restores_the_exact_indexes_of_a_partitioned_table(
    pg_dsn: str, engine: Engine, concurrently: bool
):
    before = index_state(engine, "technical_daily")
    assert {name for name, *_ in before} >= {name for _, name in PARTITIONED_SECONDARY}

    async def load(pool: asyncpg.Pool) -> list:
        async with bulk_load(pool, technical_daily, concurrently=concurrently) as dropped:
            during = index_state(engine, "technical_daily")
            assert recorded(engine) == PARTITIONED_SECONDARY
            return [(d.table, d.name) for d in dropped], during

    dropped, during = run(pg_dsn, load)
    assert dropped == PARTITIONED_SECONDARY
    # Only the primary key and its partition indexes stay during the load.
    assert [name for name, *_ in during] == [
        "pk_technical_daily",
        "technical_daily_2023_pkey",
        "technical_daily_2024_pkey",
    ]
    assert index_state(engine, "technical_daily") == before
    assert recorded(engine) == []


@pytest.mark.parametrize("concurrently", [False, True])
def test_bulk_load_restores_the_exact_indexes_of_a_plain_table(
    pg_dsn: str, engine: Engine, concurrently: bool
):
    before = index_state(engine, "fetch_log")

    async def load(pool: asyncpg.Pool) -> None:
        async with bulk_load(pool, "fetch_log", concurrently=concurrently):
            assert [n for n, *_ in index_state(engine, "fetch_log")] == ["pk_fetch_log"]

    run(pg_dsn, load)
    assert index_state(engine, "fetch_log") == before
    assert "ix_fetch_log_dataset_fetched_at" in {name for name, *_ in before}


def test_rebuild_runs_concurrently_on_its_own_while_another_session_reads(
    pg_dsn: str, engine: Engine
):
    """concurrently=None: a session holding the table (a reader in a transaction) makes the
    rebuild use CONCURRENTLY, which does not wait for that reader's lock to go away."""
    before = index_state(engine, "fetch_log")
    run(pg_dsn, lambda pool: drop_indexes(pool, "fetch_log"))

    async def rebuild_while_read(pool: asyncpg.Pool) -> list[str]:
        async with pool.acquire() as reader:
            transaction = reader.transaction()
            await transaction.start()
            await reader.fetchval("SELECT count(*) FROM fetch_log")
            try:
                # CONCURRENTLY waits for transactions that could use the index to finish:
                # end the reader shortly after the rebuild started.
                rebuild = asyncio.create_task(rebuild_indexes(pool, "fetch_log"))
                await asyncio.sleep(0.5)
                waiting = await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                    "'CREATE INDEX CONCURRENTLY%' AND state = 'active'"
                )
            finally:
                await transaction.rollback()
            assert waiting == 1
            return await rebuild

    assert run(pg_dsn, rebuild_while_read) == ["ix_fetch_log_dataset_fetched_at"]
    assert index_state(engine, "fetch_log") == before


def test_partition_created_during_the_load_gets_the_index(pg_dsn: str, engine: Engine):
    rows = pd.DataFrame(
        {
            "code": ["sh.600001", "sh.600002"],
            "trade_date": [dt.date(2025, 3, 3)] * 2,
            **{c: np.ones(2) for c in INDICATOR_COLUMNS},
        }
    )

    async def load(pool: asyncpg.Pool) -> None:
        async with bulk_load(pool, technical_daily, concurrently=True):
            await replace_window(
                pool, technical_daily, rows, start=dt.date(2025, 3, 3), end=dt.date(2025, 3, 3)
            )

    run(pg_dsn, load)
    state = {name: rest for name, *rest in index_state(engine, "technical_daily")}
    new = [name for name in state if name.startswith("technical_daily_2025") and "pkey" not in name]
    assert len(new) == 1
    definition, valid, parent = state[new[0]]
    assert definition.endswith("ON public.technical_daily_2025 USING btree (trade_date, code)")
    assert (valid, parent) == (True, "ix_technical_daily_trade_date_code")
    assert state["ix_technical_daily_trade_date_code"][1] is True


def test_a_full_import_builds_partitions_whole_and_the_rebuild_only_attaches(
    pg_dsn: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
):
    """The load replaces every stored year, so the writer builds each partition whole with
    all the table's indexes, the dropped one included; the rebuild attaches those instead of
    building them again. Afterwards the table has exactly the indexes it had, and every row."""
    monkeypatch.setattr(partitions, "WHOLE_PARTITION_MIN_ROWS", 100)
    before = index_state(engine, "technical_daily")
    with engine.connect() as conn:
        rows = pd.read_sql("SELECT code, trade_date, ma5 FROM technical_daily", conn)

    def index_oids() -> dict[str, int]:
        with engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT ic.relname, ic.oid FROM pg_index i "
                    "JOIN pg_class ic ON ic.oid = i.indexrelid "
                    "JOIN pg_class t ON t.oid = i.indrelid "
                    "WHERE t.relname LIKE 'technical_daily_%' AND NOT i.indisprimary"
                )
            )
            return {name: oid for name, oid in found}

    async def load(pool: asyncpg.Pool) -> tuple[list[str], dict[str, int]]:
        async with bulk_load(pool, technical_daily):
            during = [name for name, *_ in index_state(engine, "technical_daily")]
            await replace_window(
                pool, technical_daily, rows, start=dt.date(2023, 1, 1), end=dt.date(2024, 12, 31)
            )
            built = index_oids()
        return during, built

    during, built = run(pg_dsn, load)
    assert "ix_technical_daily_trade_date_code" not in during
    assert sorted(built) == [
        "technical_daily_2023_trade_date_code_idx",
        "technical_daily_2024_trade_date_code_idx",
    ]
    assert index_oids() == built, "the rebuild attached the indexes built with the partitions"
    assert index_state(engine, "technical_daily") == before
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM technical_daily")).scalar() == len(rows)


def test_bulk_load_rebuilds_even_when_the_load_fails(pg_dsn: str, engine: Engine):
    before = index_state(engine, "technical_daily")

    async def failing(pool: asyncpg.Pool) -> None:
        async with bulk_load(pool, technical_daily):
            raise RuntimeError("source went away")

    with pytest.raises(RuntimeError, match="source went away"):
        run(pg_dsn, failing)
    assert index_state(engine, "technical_daily") == before
    assert recorded(engine) == []


# -- crashes -------------------------------------------------------------------------------------

CRASHING_LOAD = textwrap.dedent(
    """
    import asyncio, sys
    import asyncpg
    from stock_pipeline.warehouse.indexes import bulk_load

    async def main():
        pool = await asyncpg.create_pool(sys.argv[1], min_size=1, max_size=2)
        async with bulk_load(pool, sys.argv[2]):
            print("dropped", flush=True)
            await asyncio.sleep(120)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("table", ["technical_daily", "fetch_log"])
def test_a_load_killed_between_drop_and_rebuild_is_repaired_by_the_next_run(
    pg_dsn: str, engine: Engine, table: str
):
    before = index_state(engine, table)
    process = subprocess.Popen(
        [sys.executable, "-c", CRASHING_LOAD, pg_dsn, table],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "dropped"
    finally:
        process.kill()  # SIGKILL: no finally blocks, no rebuild
        process.wait(timeout=30)
    assert len(index_state(engine, table)) < len(before)

    left_by_crash = recorded(engine)
    assert left_by_crash, "the dropped definitions must survive the crash"

    # The next bulk load repairs first, then drops again for its own load.
    async def next_run(pool: asyncpg.Pool) -> tuple[list, list]:
        async with bulk_load(pool, table) as dropped:
            return [(d.table, d.name) for d in dropped], recorded(engine)

    dropped, during = run(pg_dsn, next_run)
    assert dropped == during == left_by_crash
    assert index_state(engine, table) == before
    assert recorded(engine) == []


def test_repair_leaves_the_indexes_of_a_running_bulk_load_alone(pg_dsn: str, engine: Engine):
    """Another run's write during a long backfill must not rebuild the backfill's indexes
    under it; once the load ends (or its session dies), they are its own to rebuild."""
    before = index_state(engine, "technical_daily")

    async def work(pool: asyncpg.Pool) -> tuple[list[str], list[tuple], list[str]]:
        async with bulk_load(pool, technical_daily):
            during = await repair_indexes(pool)  # e.g. a daily run writing meanwhile
            left = recorded(engine)
        after = await repair_indexes(pool)
        return during, left, after

    during, left, after = run(pg_dsn, work)
    assert during == [] and left  # the running load's drop was left alone
    assert after == [] and recorded(engine) == []  # and it rebuilt them itself
    assert index_state(engine, "technical_daily") == before


def test_repair_indexes_after_a_crash_restores_exact_definitions(pg_dsn: str, engine: Engine):
    before_partitioned = index_state(engine, "technical_daily")
    before_plain = index_state(engine, "fetch_log")
    run(pg_dsn, lambda pool: drop_indexes(pool, technical_daily))
    run(pg_dsn, lambda pool: drop_indexes(pool, "fetch_log"))
    repaired = run(pg_dsn, repair_indexes)
    assert sorted(repaired) == [
        "ix_fetch_log_dataset_fetched_at",
        "ix_technical_daily_trade_date_code",
    ]
    assert index_state(engine, "technical_daily") == before_partitioned
    assert index_state(engine, "fetch_log") == before_plain
    assert run(pg_dsn, repair_indexes) == []


def test_repair_after_an_interrupted_concurrent_rebuild(pg_dsn: str, engine: Engine):
    """What a crash during the CONCURRENTLY path leaves: an invalid parent index created ON
    ONLY, one partition index built but not attached. Repair must end with exactly the
    original indexes, no leftovers."""
    before = index_state(engine, "technical_daily")
    run(pg_dsn, lambda pool: drop_indexes(pool, technical_daily))
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE INDEX ix_technical_daily_trade_date_code "
                "ON ONLY technical_daily USING btree (trade_date, code)"
            )
        )
        conn.execute(
            text(
                "CREATE INDEX technical_daily_2023_trade_date_code_idx "
                "ON technical_daily_2023 USING btree (trade_date, code)"
            )
        )
    assert run(pg_dsn, repair_indexes) == ["ix_technical_daily_trade_date_code"]
    assert index_state(engine, "technical_daily") == before


def test_repair_replaces_an_invalid_index_left_by_a_failed_concurrent_build(
    pg_dsn: str, engine: Engine
):
    before = index_state(engine, "fetch_log")
    run(pg_dsn, lambda pool: drop_indexes(pool, "fetch_log"))
    # A failed CREATE INDEX CONCURRENTLY leaves an INVALID index under the name it was given.
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(Exception, match="could not create unique index"):
            conn.execute(
                text(
                    "CREATE UNIQUE INDEX CONCURRENTLY ix_fetch_log_dataset_fetched_at "
                    "ON fetch_log (dataset)"
                )
            )
    assert ("ix_fetch_log_dataset_fetched_at", False) in {
        (name, valid) for name, _, valid, _ in index_state(engine, "fetch_log")
    }
    assert run(pg_dsn, repair_indexes) == ["ix_fetch_log_dataset_fetched_at"]
    assert index_state(engine, "fetch_log") == before


def test_drop_and_its_record_commit_together(pg_dsn: str, engine: Engine):
    """A DROP that cannot get its lock fails, and then nothing is recorded either."""
    before = index_state(engine, "fetch_log")

    async def blocked(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as holder:
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute("LOCK TABLE fetch_log IN ACCESS SHARE MODE")
            try:
                async with asyncpg.create_pool(
                    pg_dsn, min_size=1, max_size=1, server_settings={"lock_timeout": "300ms"}
                ) as impatient:
                    await drop_indexes(impatient, "fetch_log")
            finally:
                await transaction.rollback()

    with pytest.raises(asyncpg.LockNotAvailableError):
        run(pg_dsn, blocked)
    assert recorded(engine) == []
    assert index_state(engine, "fetch_log") == before


def test_constraint_indexes_stay(pg_dsn: str, engine: Engine):
    scratch = MetaData()
    table = Table(
        "scratch_constraints",
        scratch,
        Column("id", Integer, primary_key=True),
        Column("name", Text),
        Column("other", Text),
        UniqueConstraint("name"),
    )
    with engine.begin() as conn:
        table.drop(conn, checkfirst=True)
        table.create(conn)
        conn.execute(text("CREATE INDEX scratch_other ON scratch_constraints (other)"))
    try:
        dropped = run(pg_dsn, lambda pool: drop_indexes(pool, "scratch_constraints"))
        assert [d.name for d in dropped] == ["scratch_other"]
        remaining = {name for name, *_ in index_state(engine, "scratch_constraints")}
        assert remaining == {"scratch_constraints_pkey", "scratch_constraints_name_key"}
        run(pg_dsn, lambda pool: rebuild_indexes(pool, "scratch_constraints"))
        assert "scratch_other" in {name for name, *_ in index_state(engine, "scratch_constraints")}
    finally:
        with engine.begin() as conn:
            table.drop(conn)
