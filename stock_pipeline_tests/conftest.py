"""Shared fixtures: real PostgreSQL and Redis, embedded by default.

STOCK_PIPELINE_TEST_DATABASE_URL / STOCK_PIPELINE_TEST_REDIS_URL point the suite at external
servers instead (e.g. this machine's PostgreSQL 15 and Redis 7). Every test session gets its own
freshly created database, dropped at the end, so runs never see each other's tables.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import pytest
from psycopg2 import sql
from sqlalchemy import Engine, create_engine

from stock_pipeline.warehouse.urls import asyncpg_dsn, sqlalchemy_url


@pytest.fixture(scope="session")
def test_home() -> Iterator[Path]:
    """A private STOCK_PIPELINE_HOME for embedded servers started by this test session."""
    with tempfile.TemporaryDirectory(prefix="sp-test-") as tmp:
        # Enterable (not listable) by the embedded PostgreSQL's OS user under root, so the
        # session's cluster stays in here rather than being placed in /var/lib/stock-pipeline.
        os.chmod(tmp, 0o711)
        yield Path(tmp)


def processes_working_in(*folders: Path) -> list[psutil.Process]:
    """Live processes whose working directory is inside one of `folders`: a PostgreSQL or
    Valkey server works in its data directory."""
    roots = [str(Path(folder).resolve()) for folder in folders]
    found = []
    for proc in psutil.process_iter():
        try:
            cwd = proc.cwd()
        except psutil.Error:  # exited, a zombie, or not ours to inspect
            continue
        if any(cwd == root or cwd.startswith(root + os.sep) for root in roots):
            found.append(proc)
    return found


def assert_no_server_left_in(*folders: Path, within_s: float = 10.0) -> None:
    """Fail if a server process still works inside one of `folders` after `within_s` (a
    server stopped with -w has removed its pid file but may take a moment to exit)."""
    deadline = time.monotonic() + within_s
    while (left := processes_working_in(*folders)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"server processes left running in {folders}: {left}"


@pytest.fixture(scope="session")
def assert_no_server_in() -> Callable[..., None]:
    """`assert_no_server_left_in`, for test modules (conftest is not imported by name)."""
    return assert_no_server_left_in


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
        assert_no_server_left_in(server.dir.root, server.dir.data.resolve())


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
