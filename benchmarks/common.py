"""What the benchmark scripts share: JSON lines out, a server to run on, a scratch database."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg

from stock_pipeline.settings import Settings
from stock_pipeline.warehouse.urls import asyncpg_dsn


def emit(record: dict[str, Any]) -> None:
    """One JSON line (the last one a benchmark prints is its summary)."""
    print(json.dumps(record, ensure_ascii=False, default=str), flush=True)


def _given_or_embedded(
    url: str | None, embedded: Callable[[], Any]
) -> tuple[str, Callable[[], None]]:
    """`url` when set, else the embedded server `embedded()` makes, started here; and how to
    let it go afterwards (a server started here is stopped again)."""
    if url:
        return url, lambda: None
    server = embedded()
    was_running = server.is_running()
    server.start()
    return server.url(), (lambda: None) if was_running else server.stop


def server_url(given: str | None, settings: Settings) -> tuple[str, Callable[[], None]]:
    """The PostgreSQL server to use and how to let it go afterwards."""
    from stock_pipeline.embedded.postgres import EmbeddedPostgres

    return _given_or_embedded(
        given or settings.database_url, lambda: EmbeddedPostgres(settings.home / "postgres")
    )


def redis_server(given: str | None, settings: Settings) -> tuple[str, Callable[[], None]]:
    """The Redis to use and how to let it go afterwards."""
    from stock_pipeline.embedded.redis import EmbeddedRedis

    return _given_or_embedded(
        given or settings.redis_url, lambda: EmbeddedRedis(settings.home / "redis")
    )


@contextlib.asynccontextmanager
async def scratch_database(server_url: str, prefix: str) -> AsyncIterator[str]:
    """A database of its own for one benchmark run, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield asyncpg_dsn(server_url, database=name)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
