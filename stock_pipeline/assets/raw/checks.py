"""Checks of the raw P0 tables, beside their assets (bodies import what they use)."""

from typing import Any

import dagster as dg

from stock_pipeline import calendar as trading_calendar
from stock_pipeline.resources import WarehouseResource


@dg.asset_check(
    asset="raw_trade_dates",
    blocking=True,
    description="BaoStock's calendar agrees with the bundled XSHG calendar (exchange_calendars) "
    "on every day both know.",
)
async def raw_trade_dates_calendar_agreement_check(
    warehouse: WarehouseResource,
) -> dg.AssetCheckResult:
    from stock_pipeline.assets import store

    async with warehouse.open() as wh:
        days = await store.read_frame(
            wh,
            "raw_trade_dates",
            "SELECT calendar_date, is_trading_day FROM raw_trade_dates ORDER BY calendar_date",
        )
    bundled = trading_calendar.bundled_calendar()
    dates = [d.date() for d in days["calendar_date"]]
    flags = days["is_trading_day"].fillna(False).astype(bool).tolist()
    differ = trading_calendar.disagreements(bundled, dates, flags)
    overlap = sum(1 for d in dates if d <= bundled.last_day)
    metadata: dict[str, Any] = {
        "days_compared": overlap,
        "disagreements": len(differ),
        "bundled_calendar": f"exchange_calendars {bundled.version}, through {bundled.last_day}",
        "baostock_calendar_through": str(max(dates)) if dates else "",
    }
    if differ:
        metadata["examples"] = [str(d) for d in differ[:20]]
    return dg.AssetCheckResult(
        passed=not differ and overlap > 0,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=None
        if not differ
        else f"{len(differ)} days differ between BaoStock and exchange_calendars: one of them "
        "is wrong; the partitions follow exchange_calendars up to its end",
    )


P0_CHECKS = [raw_trade_dates_calendar_agreement_check]
