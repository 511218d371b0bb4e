"""P4 business assets and checks: the industry history and each stock's current industry.

- industry_membership: raw_stock_industry's snapshots turned into intervals [valid_from,
  valid_to) per stock (compute.industry), rebuilt whole in one transaction; read.industry_as_of
  reads it;
- stocks_industry: stocks.industry / industry_classification set to each stock's latest
  interval (the `stocks` asset of the etl group upserts only the columns it builds, so its
  rebuild keeps them).

Bodies are in p4_build.py (imported when they run).
"""

import dagster as dg

from stock_pipeline.assets import runtime
from stock_pipeline.assets.partitions import Partitions
from stock_pipeline.calendar import TradingCalendar
from stock_pipeline.resources import WarehouseResource

GROUP = "p4"


@dg.asset(
    name="industry_membership",
    group_name=GROUP,
    description="CSRC industry history per stock from BaoStock's sampled snapshots: a new "
    "interval when a stock's industry changes between snapshots, valid_to NULL for the "
    "current one.",
    deps=[dg.AssetKey("raw_stock_industry")],
    kinds={"postgres"},
    metadata=runtime.definition_metadata("industry_membership"),
)
async def industry_membership(warehouse: WarehouseResource) -> dg.MaterializeResult:
    from stock_pipeline.assets.etl import p4_build

    return await p4_build.build_industry_membership(warehouse)


@dg.asset(
    name="stocks_industry",
    group_name=GROUP,
    description="stocks.industry and stocks.industry_classification: each stock's latest "
    "industry_membership interval (the current one; the last known one for a stock no longer "
    "listed), NULL for securities without any.",
    deps=[dg.AssetKey("stocks"), dg.AssetKey("industry_membership")],
    kinds={"postgres"},
    # It writes two columns of the etl group's table, which that asset's metadata describes.
    metadata={"writes": "public.stocks (industry, industry_classification)"},
)
async def stocks_industry(warehouse: WarehouseResource) -> dg.MaterializeResult:
    from stock_pipeline.assets.etl import p4_build

    return await p4_build.update_stocks_industry(warehouse)


@dg.asset_check(
    asset="industry_membership",
    blocking=True,
    description="Intervals are well formed: valid_to after valid_from, no two intervals of a "
    "stock overlap, at most one current interval per stock.",
)
async def industry_membership_intervals_check(
    warehouse: WarehouseResource,
) -> dg.AssetCheckResult:
    from stock_pipeline.assets.etl import p4_build

    return await p4_build.check_intervals(warehouse)


@dg.asset_check(
    asset="industry_membership",
    blocking=True,
    description="Every raw_stock_industry row lies in an interval of its stock with the same "
    "industry and classification, and every interval starts on a snapshot of its stock.",
)
async def industry_membership_raw_reconciliation_check(
    warehouse: WarehouseResource,
) -> dg.AssetCheckResult:
    from stock_pipeline.assets.etl import p4_build

    return await p4_build.check_raw_reconciliation(warehouse)


@dg.asset_check(
    asset="industry_membership",
    description="Every stock listed on the latest snapshot date (raw_stock_basic's listing "
    "dates) has a current industry (STOCK_PIPELINE_COVERAGE_TOLERANCE: share allowed without).",
)
async def industry_membership_coverage_check(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    from stock_pipeline.assets.etl import p4_build

    return await p4_build.check_coverage(warehouse)


@dg.asset_check(
    asset="stocks_industry",
    blocking=True,
    description="stocks.industry and industry_classification equal each stock's latest "
    "industry_membership interval.",
)
async def stocks_industry_current_check(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    from stock_pipeline.assets.etl import p4_build

    return await p4_build.check_stocks_industry(warehouse)


def group_assets(
    calendar: TradingCalendar, partitions: Partitions
) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    """The group's business assets and the checks of its raw and business tables."""
    assets = [industry_membership, stocks_industry]
    checks = [
        industry_membership_intervals_check,
        industry_membership_raw_reconciliation_check,
        industry_membership_coverage_check,
        stocks_industry_current_check,
    ]
    return assets, checks
