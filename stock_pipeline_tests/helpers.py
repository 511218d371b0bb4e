"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import psutil

from stock_pipeline.baostock.pool import PoolConfig
from stock_pipeline.baostock.simulator import protocol as proto


def assert_gone(pids: list[int], within_s: float = 5.0) -> None:
    """Every pid has exited (zombies count as gone only once reaped by their parent)."""
    deadline = time.monotonic() + within_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p)]
        time.sleep(0.05)
    assert not alive, f"worker processes still running: {alive}"


def recreate_tables(engine: Any, tables: list[Any]) -> None:
    """Drop `tables` (and their partitions) and create them again, empty, from tables.py."""
    from sqlalchemy import text

    from stock_pipeline.warehouse.tables import metadata

    with engine.begin() as conn:
        for table in tables:
            conn.execute(text(f'DROP TABLE IF EXISTS "{table.name}" CASCADE'))
    metadata.create_all(engine, tables=tables)


def run_with_pool(dsn: str, work: Callable[[asyncpg.Pool], Awaitable[Any]]) -> Any:
    """Run `work(pool)` with a fresh asyncpg pool on `dsn`, closed afterwards."""

    async def main() -> Any:
        async with asyncpg.create_pool(dsn, min_size=1, max_size=4) as pool:
            return await work(pool)

    return asyncio.run(main())


def fast_pool_config(server: Any, **overrides: Any) -> PoolConfig:
    """Fast-failing pool settings for a simulator (anything with .host and .port): short
    timeouts and backoff, no practical QPS limit."""
    base: dict[str, Any] = {
        "endpoint": (server.host, server.port),
        "concurrency": 4,
        "qps": 100_000.0,
        "request_timeout_s": 5.0,
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.2,
        "blacklist_backoff_s": 0.5,
        "max_retries": 2,
    }
    base.update(overrides)
    return PoolConfig(**base)


def exchange(endpoint: tuple[str, int], requests: list, timeout: float = 5.0) -> list:
    """Send raw BaoStock requests on one socket; returns decoded replies. Raises on EOF or
    timeout (the real client would spin forever on a dropped connection)."""
    replies = []
    with socket.create_connection(endpoint, timeout=timeout) as sock:
        for msg_type, body in requests:
            sock.sendall(proto.encode_request(msg_type, body))
            data = b""
            while not data.endswith(proto.TERMINATOR):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError(f"closed after {len(data)} bytes")
                data += chunk
            replies.append(proto.decode_response(data))
    return replies
