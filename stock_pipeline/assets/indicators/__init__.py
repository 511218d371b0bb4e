"""The indicator layer: technical_daily from stock_daily, on back-adjusted prices.

The math is compute/indicators.py; the body (build.py) reads each code batch's range, its
lookback and the previous day's state, computes, and replaces the window. A range continues
from the state stored on the day before it, so earlier days must be there first: the body
refuses a range with a hole before it and names the day to start from.
"""

import dagster as dg

from stock_pipeline.assets import runtime
from stock_pipeline.assets.indicators import checks
from stock_pipeline.assets.window_checks import WindowCheck, window_check
from stock_pipeline.calendar import TradingCalendar
from stock_pipeline.resources import WarehouseResource

GROUP = "indicators"


def build_technical_daily(
    calendar: TradingCalendar, partitions: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    @dg.asset(
        name="technical_daily",
        group_name=GROUP,
        deps=[dg.AssetKey("stock_daily")],
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"postgres", "pandas"},
        metadata=runtime.definition_metadata("technical_daily"),
        description=(
            "31 technical indicators (MA, MACD, KDJ, RSI, BOLL, ATR, WR, CCI, OBV, Donchian...) "
            "on back-adjusted prices, for every stock_daily row, with the recursive indicators' "
            "state of each day so later ranges continue exactly."
        ),
    )
    async def technical_daily(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        from stock_pipeline.assets.indicators import build

        window = runtime.window_of(context, calendar)
        day_before = calendar.previous_session(window.start)
        return await build.build_technical_daily(context, warehouse, window, day_before)

    return technical_daily


TECHNICAL_DAILY_CHECKS = (
    WindowCheck(
        "technical_daily_rows_check",
        "One technical_daily row per stock_daily row of each day, and none without one.",
        True,  # the cache must not publish indicators that fail either
        checks.rows_match_stock_daily,
    ),
    WindowCheck(
        "technical_daily_warm_up_check",
        "Every indicator has a value once the code has traded long enough for it (its "
        "warm-up), and traded_bars rises by the code's traded days.",
        True,
        checks.warmed_up_values,
    ),
)


def indicator_assets(
    calendar: TradingCalendar, partitions: dg.PartitionsDefinition
) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    checks = [
        window_check("technical_daily", spec, calendar, partitions)
        for spec in TECHNICAL_DAILY_CHECKS
    ]
    return [build_technical_daily(calendar, partitions)], checks
