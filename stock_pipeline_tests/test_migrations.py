"""Migrations against real PostgreSQL: round trip, no drift from the table specs, partitions."""

from __future__ import annotations

from collections.abc import Callable

import psycopg2
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from stock_pipeline.warehouse import migrate
from stock_pipeline.warehouse.tables import RAW_DATASETS, metadata, partitioned_tables
from stock_pipeline.warehouse.urls import sqlalchemy_url


def _tables(dsn: str) -> dict[str, str]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT relname, relkind FROM pg_class c JOIN pg_namespace n ON n.oid = relnamespace "
            "WHERE nspname = 'public' AND relkind IN ('r', 'p') AND NOT relispartition"
        )
        return dict(cur.fetchall())


def test_upgrade_creates_every_declared_table(migrated_dsn: str):
    tables = _tables(migrated_dsn)
    assert set(metadata.tables) <= set(tables)
    assert {spec.table for spec in RAW_DATASETS} <= set(tables)
    for table in partitioned_tables():
        assert tables[table.name] == "p", f"{table.name} should be range-partitioned"


def test_migrations_match_the_table_specs(migrated_dsn: str):
    engine = create_engine(sqlalchemy_url(migrated_dsn, "psycopg2"))
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == [], f"tables.py and migrations/ disagree; generate a migration: {diff}"


def test_downgrade_to_base_and_back(make_database: Callable[[], str]):
    dsn = make_database()
    migrate.upgrade(dsn)
    migrate.downgrade(dsn, "base")
    assert set(_tables(dsn)) == {"alembic_version"}
    migrate.upgrade(dsn)
    assert set(metadata.tables) <= set(_tables(dsn))


def test_raw_values_are_typed_and_keys_not_null(migrated_dsn: str):
    with psycopg2.connect(migrated_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = 'raw_k_daily'"
        )
        columns = {name: (type_, nullable) for name, type_, nullable in cur.fetchall()}
    assert columns["trade_date"] == ("date", "NO")
    assert columns["code"] == ("text", "NO")
    assert columns["close"][0] == "double precision"
    assert columns["volume"][0] == "bigint"
    assert columns["is_st"][0] == "boolean"
    assert columns["fetched_at"] == ("timestamp with time zone", "NO")
