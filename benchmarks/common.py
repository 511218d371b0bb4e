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


def server_url(given: str | None, settings: Settings) -> tuple[str, Callable[[], None]]:
    """The server to use and how to let it go afterwards (an embedded server started here is
    stopped again)."""
    url = given or settings.database_url
    if url:
        return url, lambda: None
    from stock_pipeline.embedded.postgres import EmbeddedPostgres

    server = EmbeddedPostgres(settings.home / "postgres")
    was_running = server.is_running()
    server.start()
    return server.url(), (lambda: None) if was_running else server.stop


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
