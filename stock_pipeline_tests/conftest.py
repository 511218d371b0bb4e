"""Shared fixtures: real PostgreSQL and Redis, embedded by default.

STOCK_PIPELINE_TEST_DATABASE_URL / STOCK_PIPELINE_TEST_REDIS_URL point the suite at external
servers instead (e.g. this machine's PostgreSQL 15 and Redis 7). Every test session gets its own
freshly created database, dropped at the end, so runs never see each other's tables.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql
from sqlalchemy import Engine, create_engine

from stock_pipeline.warehouse.urls import asyncpg_dsn, sqlalchemy_url


@pytest.fixture(scope="session")
def test_home() -> Iterator[Path]:
    """A private STOCK_PIPELINE_HOME for embedded servers started by this test session."""
    with tempfile.TemporaryDirectory(prefix="sp-test-") as tmp:
        yield Path(tmp)


def _external_or_embedded(variable: str, embedded: Callable[[], Any]) -> Iterator[str]:
    """The server URL in `variable` if set, else that of the embedded server `embedded()`
    makes, started here and stopped at the end."""
    external = os.environ.get(variable)
    if external:
        yield external
        return
    server = embedded()
    server.start()
    try:
        yield server.url()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_server_url(test_home: Path) -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database (`postgres`)."""
    from stock_pipeline.embedded.postgres import EmbeddedPostgres

    yield from _external_or_embedded(
        "STOCK_PIPELINE_TEST_DATABASE_URL",
        lambda: EmbeddedPostgres(test_home / "postgres"),
    )


@pytest.fixture(scope="session")
def make_database(pg_server_url: str) -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty databases (plain postgresql:// DSNs), all dropped at the end."""
    admin = psycopg2.connect(asyncpg_dsn(pg_server_url))
    admin.autocommit = True
    created: list[str] = []

    def create() -> str:
        name = f"sp_test_{uuid.uuid4().hex[:10]}"
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return asyncpg_dsn(pg_server_url, database=name)

    try:
        yield create
    finally:
        with admin.cursor() as cur:
            for name in created:
                cur.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        admin.close()


@pytest.fixture(scope="session")
def pg_dsn(make_database: Callable[[], str]) -> str:
    """A plain postgresql:// DSN to a fresh, empty database owned by this test session."""
    return make_database()


@pytest.fixture(scope="session")
def migrated_dsn(make_database: Callable[[], str]) -> str:
    """A fresh database migrated to head by the project's Alembic migrations."""
    from stock_pipeline.warehouse import migrate

    dsn = make_database()
    migrate.upgrade(dsn)
    return dsn


@pytest.fixture(scope="session")
def engine(pg_dsn: str) -> Iterator[Engine]:
    """A synchronous SQLAlchemy engine on the session's database, for test setup and checks."""
    engine = create_engine(sqlalchemy_url(pg_dsn, "psycopg2"))
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def redis_url(test_home: Path) -> Iterator[str]:
    from stock_pipeline.embedded.redis import EmbeddedRedis

    yield from _external_or_embedded(
        "STOCK_PIPELINE_TEST_REDIS_URL", lambda: EmbeddedRedis(test_home / "redis")
    )
