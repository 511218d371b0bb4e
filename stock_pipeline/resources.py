"""Dagster resources: the BaoStock session pool, the warehouse (pools + COPY writer) and the
Redis cache.

These are the one place the asset layer reads configuration: each resource starts from the
STOCK_PIPELINE_* settings, applies the fields set on it (definitions, the launchpad), and hands
the resulting `Settings` down to the pool and the warehouse; nothing below reads the
environment. Secrets (the BaoStock password, database and Redis URLs) are set through
`dg.EnvVar`, so the UI shows the variable's name, never its value.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from stock_pipeline.settings import (
    CACHE_MIN_TTL_S,
    CACHE_PREFIX_PATTERN,
    BaostockEndpoint,
    Settings,
    SettingsError,
)

if TYPE_CHECKING:  # imported when used: loading the code location stays light
    from stock_pipeline.baostock.pool import BaostockPool
    from stock_pipeline.cache.connection import CacheConnection
    from stock_pipeline.warehouse.engine import Warehouse


class BaostockResource(dg.ConfigurableResource):
    """Logged-in BaoStock sessions, one worker process each (see baostock/pool.py)."""

    endpoint: str | None = Field(
        default=None, description="host:port of a BaoStock server; default from settings"
    )
    concurrency: int | None = Field(default=None, description="sessions; default from settings")
    qps: float | None = Field(default=None, description="requests/s for all sessions together")
    user: str | None = Field(default=None, description="BaoStock user; default anonymous")
    password: str | None = Field(default=None, description="BaoStock password (use an EnvVar)")

    def settings(self) -> Settings:
        base = Settings.from_env()
        overrides: dict[str, Any] = {}
        if self.endpoint:
            overrides["baostock_endpoint"] = BaostockEndpoint.parse(self.endpoint)
        if self.concurrency:
            overrides["baostock_concurrency"] = self.concurrency
        if self.qps:
            overrides["baostock_qps"] = self.qps
        if self.user:
            overrides["baostock_user"] = self.user
        if self.password:
            overrides["baostock_password"] = self.password
        settings = dataclasses.replace(base, **overrides)
        settings.require_consistent()  # a launchpad concurrency above the session budget
        return settings

    @asynccontextmanager
    async def pool(self) -> AsyncIterator[BaostockPool]:
        """The session pool for one asset body; every session is logged out and every worker
        joined when the block ends, also on errors and cancellation."""
        from stock_pipeline.baostock.pool import BaostockPool

        async with BaostockPool.from_settings(self.settings()) as pool:
            yield pool


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse PostgreSQL: its pools and the COPY writer (see warehouse/writer.py)."""

    database_url: str | None = Field(
        default=None, description="postgresql:// URL; default from settings (or embedded)"
    )

    def settings(self) -> Settings:
        base = Settings.from_env()
        return dataclasses.replace(base, database_url=self.database_url or base.database_url)

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Warehouse]:
        """The warehouse's pools for one asset body: both close when the block ends."""
        from stock_pipeline.warehouse.engine import Warehouse

        warehouse = await Warehouse.connect(self.settings())
        try:
            yield warehouse
        finally:
            await warehouse.close()


class CacheResource(dg.ConfigurableResource):
    """The Redis hot cache (see cache/): which server, and how long and how much it keeps."""

    redis_url: str | None = Field(
        default=None, description="redis:// URL (use an EnvVar); default from settings (embedded)"
    )
    ttl_s: int | None = Field(default=None, gt=0, description="seconds every key lives")
    bars: int | None = Field(default=None, gt=0, description="trading days of bars per code")
    prefix: str | None = Field(default=None, description="start of every key's name")

    def settings(self) -> Settings:
        base = Settings.from_env()
        overrides: dict[str, Any] = {}
        if self.redis_url:
            overrides["redis_url"] = self.redis_url
        if self.ttl_s:
            if self.ttl_s < CACHE_MIN_TTL_S:
                raise SettingsError(
                    f"CacheResource ttl_s={self.ttl_s} is too short: at least {CACHE_MIN_TTL_S} s "
                    "(a replaced version stays readable for a minute after each refresh)"
                )
            overrides["cache_ttl_s"] = self.ttl_s
        if self.bars:
            overrides["cache_bars"] = self.bars
        if self.prefix:
            if not CACHE_PREFIX_PATTERN.fullmatch(self.prefix):
                raise SettingsError(
                    f"CacheResource prefix {self.prefix!r} must be 1-100 letters, digits, "
                    "_ . : or - (starting with a letter or digit)"
                )
            overrides["cache_prefix"] = self.prefix
        return dataclasses.replace(base, **overrides)

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[CacheConnection]:
        """A connected client for one asset body (CacheUnreachable if Redis does not answer),
        closed when the block ends, also on errors and cancellation. Without a URL the
        embedded Redis under STOCK_PIPELINE_HOME is started (or attached to)."""
        from stock_pipeline.cache.connection import cache_url, connect

        url = await asyncio.to_thread(cache_url, self.settings())
        async with connect(url) as connection:
            yield connection
