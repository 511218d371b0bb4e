"""The cache layer: after technical_daily, a new version of the Redis hot cache (cache/).

The cache always holds the warehouse's latest day, whatever the run's window: a backfill of
past days refreshes it once and leaves the latest day in it. Readers never see a half-written
set (cache/refresh.py writes a version, then switches one pointer). Redis down fails only this
asset: every warehouse asset before it stays materialized.
"""

import dagster as dg

from stock_pipeline.assets import runtime
from stock_pipeline.calendar import TradingCalendar
from stock_pipeline.resources import CacheResource, WarehouseResource

GROUP = "cache"
VERSION_CHECK = "redis_cache_version_check"


def build_redis_cache(
    calendar: TradingCalendar, partitions: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    @dg.asset(
        name="redis_cache",
        group_name=GROUP,
        deps=[dg.AssetKey("technical_daily")],
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"redis"},
        description=(
            "The latest day in Redis for strategies (stock_pipeline.read): per code its latest "
            "bar and indicators (a hash) and its recent bars (compact bytes), the day's "
            "cross-section; one version at a time, switched by one pointer, with a TTL."
        ),
    )
    async def redis_cache(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, cache: CacheResource
    ) -> dg.MaterializeResult:
        from stock_pipeline.assets.cache import build

        return await build.refresh(context, warehouse, cache, runtime.window_of(context, calendar))

    return redis_cache


def build_version_check(partitions: dg.PartitionsDefinition) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset="redis_cache",
        name=VERSION_CHECK,
        partitions_def=partitions,
        description="Readers see the warehouse's latest technical_daily day.",
    )
    async def version_check(
        warehouse: WarehouseResource, cache: CacheResource
    ) -> dg.AssetCheckResult:
        from stock_pipeline.assets.cache import build

        return await build.version_check(warehouse, cache)

    return version_check


def cache_assets(
    calendar: TradingCalendar, partitions: dg.PartitionsDefinition
) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    return [build_redis_cache(calendar, partitions)], [build_version_check(partitions)]
