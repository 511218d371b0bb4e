"""The cache asset's body and its check (imported when they run: pandas, redis, the reader)."""

from __future__ import annotations

import dagster as dg

from stock_pipeline.assets import runtime
from stock_pipeline.cache.connection import CacheUnreachable
from stock_pipeline.cache.refresh import (
    NothingToCache,
    current_cache_day,
    latest_indicator_day,
    refresh_cache,
)
from stock_pipeline.resources import CacheResource, WarehouseResource


async def refresh(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    cache: CacheResource,
    window: runtime.Window,
) -> dg.MaterializeResult:
    settings = cache.settings()
    try:
        async with warehouse.open() as wh, cache.connect() as redis:
            result = await refresh_cache(
                wh,
                redis,
                prefix=settings.cache_prefix,
                bars=settings.cache_bars,
                ttl_s=settings.cache_ttl_s,
            )
    except (CacheUnreachable, NothingToCache) as exc:
        # The warehouse is untouched: only the cache is behind (readers fall back to it).
        raise dg.Failure(description=f"redis_cache: {exc}", allow_retries=False) from None
    metadata = {f"cache_{k}": v for k, v in result.metadata().items()}
    metadata["window"] = str(window)
    if result.day > window.end:
        metadata["note"] = (
            f"the run's window ends {window.end}; the cache holds the warehouse's latest day, "
            f"{result.day}"
        )
    context.log.info(
        f"[cache.redis_cache] {result.version}: {result.codes} codes, {result.keys_written} "
        f"keys, {result.bytes_written / 1e6:.1f} MB, {result.seconds:.1f}s"
    )
    metadata["seconds_wall"] = result.seconds
    metadata["dagster/row_count"] = result.codes
    return dg.MaterializeResult(metadata=metadata)


async def version_check(warehouse: WarehouseResource, cache: CacheResource) -> dg.AssetCheckResult:
    settings = cache.settings()
    try:
        async with warehouse.open() as wh, cache.connect() as redis:
            latest = await latest_indicator_day(wh)
            cached = await current_cache_day(redis, settings.cache_prefix)
    except (CacheUnreachable, ValueError) as exc:  # ValueError: the pointer holds no version
        return dg.AssetCheckResult(passed=False, description=str(exc))
    passed = latest is not None and cached == latest
    if passed:
        problem = None
    elif cached is None:
        problem = (
            f"no cache under the prefix {settings.cache_prefix!r} (never refreshed, or expired "
            "after STOCK_PIPELINE_CACHE_TTL_S): materialize redis_cache"
        )
    else:
        problem = (
            f"the cache holds {cached}, technical_daily's latest day is {latest}: "
            "materialize redis_cache"
        )
    return dg.AssetCheckResult(
        passed=passed,
        metadata={"cache_day": str(cached), "technical_daily_day": str(latest)},
        description=problem,
    )
