"""Connections to the warehouse: which database, and the two pools that reach it.

- an async SQLAlchemy engine (asyncpg driver) for queries and ETL statements;
- an asyncpg pool for the COPY writer, which needs raw asyncpg connections.
Sizes come from settings (seed 000 D5: pool_size=10, max_overflow=20). Both are closed in
`finally` by `Warehouse.close()` / `async with Warehouse.connect(...)` on every path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from stock_pipeline.settings import Settings, SettingsError
from stock_pipeline.warehouse.urls import (
    asyncpg_dsn,
    check_url,
    describe_error,
    display_url,
    sqlalchemy_url,
)

log = logging.getLogger("stock_pipeline.warehouse")

WAREHOUSE_DATABASE = "stock_pipeline"


class WarehouseUnreachable(ConnectionError):
    """The warehouse database cannot be reached; the message says which and what to check."""


def warehouse_url(settings: Settings) -> str:
    """The warehouse's plain postgresql:// URL.

    STOCK_PIPELINE_DATABASE_URL when set; otherwise the embedded server under
    STOCK_PIPELINE_HOME, started (or attached to) now, with its `stock_pipeline` database.
    """
    if settings.database_url:
        try:
            check_url(settings.database_url)
        except ValueError as exc:
            raise SettingsError(f"STOCK_PIPELINE_DATABASE_URL: {exc}") from None
        return settings.database_url
    return embedded_postgres(settings).start().ensure_database(WAREHOUSE_DATABASE)


def embedded_postgres(settings: Settings):  # -> EmbeddedPostgres (import kept lazy)
    from stock_pipeline.embedded.postgres import EmbeddedPostgres

    try:
        return EmbeddedPostgres(settings.home / "postgres")
    except OSError as exc:
        raise unusable_home(settings.home, exc) from exc


def unusable_home(home: Path, exc: OSError) -> SettingsError:
    """STOCK_PIPELINE_HOME cannot hold the embedded servers' data (a file, no permission...)."""
    problem = (
        "is a file, not a folder"
        if home.exists() and not home.is_dir()
        else f"cannot be used ({exc.strerror or exc})"
    )
    return SettingsError(
        f"STOCK_PIPELINE_HOME={home} {problem}: point it at a folder for the embedded servers' "
        "data (it is created if missing), or set STOCK_PIPELINE_DATABASE_URL and "
        "STOCK_PIPELINE_REDIS_URL to servers of your own"
    )


def unreachable(url: str, exc: BaseException) -> WarehouseUnreachable:
    return WarehouseUnreachable(
        f"cannot reach the warehouse database at {display_url(url)}: "
        f"{describe_error(exc, url)}. Check that the server runs and "
        "STOCK_PIPELINE_DATABASE_URL is right, or unset it to use the embedded PostgreSQL."
    )


def create_engine(url: str, settings: Settings) -> AsyncEngine:
    return create_async_engine(
        sqlalchemy_url(url, "asyncpg"),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=True,  # a server restart must not surface as a failed query
        pool_recycle=settings.db_pool_recycle_s,
    )


async def create_copy_pool(url: str, settings: Settings) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            asyncpg_dsn(url),
            min_size=1,
            max_size=settings.db_pool_size,
            max_inactive_connection_lifetime=settings.db_pool_recycle_s,
        )
    # InterfaceError: asyncpg's ClientConfigurationError, e.g. a bad sslmode in the URL
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise unreachable(url, exc) from None
    assert pool is not None
    return pool


@dataclass
class Warehouse:
    """The warehouse's URL, SQLAlchemy engine and COPY pool, opened together."""

    url: str
    engine: AsyncEngine
    copy_pool: asyncpg.Pool
    settings: Settings

    @classmethod
    async def connect(cls, settings: Settings, url: str | None = None) -> Warehouse:
        url = url or warehouse_url(settings)
        copy_pool = await create_copy_pool(url, settings)
        engine = create_engine(url, settings)
        log.debug("[warehouse] connected to %s", display_url(url))
        return cls(url, engine, copy_pool, settings)

    async def close(self) -> None:
        try:
            await self.copy_pool.close()
        finally:
            await self.engine.dispose()

    async def __aenter__(self) -> Warehouse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
