"""Which Redis holds the cache, and connecting to it with a clear error when it does not answer.

STOCK_PIPELINE_REDIS_URL when set; otherwise the embedded server under STOCK_PIPELINE_HOME,
started (or attached to), as warehouse_url does for PostgreSQL. Settings are handed in.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis
import redis.asyncio

from stock_pipeline.settings import Settings
from stock_pipeline.warehouse.urls import describe_error, display_url

# What redis-py raises when a server cannot be reached or stops answering (ValueError: a URL
# with a bad port or database number).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    OSError,
    ValueError,
)


class CacheUnreachable(ConnectionError):
    """The cache's Redis cannot be reached; the message says which and what to do."""


def unreachable(url: str, exc: BaseException) -> CacheUnreachable:
    return CacheUnreachable(
        f"cannot reach the Redis cache at {display_url(url)}: {describe_error(exc, url)}. "
        "Start that Redis server, fix STOCK_PIPELINE_REDIS_URL, or unset it to use the "
        "embedded Redis under STOCK_PIPELINE_HOME (`stock-pipeline services start`)."
    )


def cache_url(settings: Settings) -> str:
    """The cache's redis:// URL: the configured one, else the embedded server's, started now
    (or attached to)."""
    if settings.redis_url:
        return settings.redis_url
    from stock_pipeline.embedded.redis import EmbeddedRedis
    from stock_pipeline.warehouse.engine import unusable_home

    try:
        server = EmbeddedRedis(settings.home / "redis")
    except OSError as exc:
        raise unusable_home(settings.home, exc) from exc
    return server.start().url()


@dataclass(frozen=True)
class CacheConnection:
    """An asyncio Redis client and the URL it was made from (for messages; shown masked)."""

    client: redis.asyncio.Redis
    url: str

    def unreachable(self, exc: BaseException) -> CacheUnreachable:
        return unreachable(self.url, exc)


@contextlib.asynccontextmanager
async def connect(
    url: str, *, connect_timeout_s: float = 5.0, timeout_s: float = 60.0
) -> AsyncIterator[CacheConnection]:
    """A client on `url`, pinged first (CacheUnreachable if the server does not answer),
    closed when the block ends, also on errors and cancellation."""
    try:
        client = redis.asyncio.Redis.from_url(
            url, socket_connect_timeout=connect_timeout_s, socket_timeout=timeout_s
        )
    except CONNECTION_ERRORS as exc:
        raise unreachable(url, exc) from None
    try:
        try:
            await client.ping()
        except CONNECTION_ERRORS as exc:
            raise unreachable(url, exc) from None
        yield CacheConnection(client, url)
    finally:
        await client.aclose()
