"""P5 business assets and checks: macro_series (the macro tables in long form), and the checks
of the weekly and monthly bars.

Bodies are in p5_build.py (imported when they run: pandas, the writer); pure reshaping in
stock_pipeline.compute.macro.
"""

import dagster as dg

from stock_pipeline.assets import runtime
from stock_pipeline.assets.partitions import Partitions
from stock_pipeline.calendar import TradingCalendar
from stock_pipeline.resources import WarehouseResource

GROUP = "p5"
MACRO_RAW = (
    "raw_deposit_rate",
    "raw_loan_rate",
    "raw_required_reserve_ratio",
    "raw_money_supply_month",
    "raw_money_supply_year",
)
# Raw period-bar tables and the partition kind (and date_trunc unit) of each.
PERIOD_BARS = {"raw_k_weekly": "week", "raw_k_monthly": "month"}


@dg.asset(
    name="macro_series",
    group_name=GROUP,
    deps=[dg.AssetKey(name) for name in MACRO_RAW],
    kinds={"postgres"},
    metadata=runtime.definition_metadata("macro_series"),
    description=(
        "Every numeric column of the five raw macro tables in long form: series "
        '"<table without raw_>.<column>" (e.g. "money_supply_month.m2_month"), dated by '
        "pub_date (deposit and loan rates), effective_date (reserve ratios), the month's last "
        "day (monthly money supply) or Dec 31 (yearly). Rebuilt whole in one transaction."
    ),
)
async def macro_series(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    from stock_pipeline.assets.etl import p5_build

    return await p5_build.build_macro_series(context, warehouse)


def _macro_check(name: str, description: str, blocking: bool) -> dg.AssetChecksDefinition:
    """A check of macro_series whose body is p5_build's function `name`."""

    @dg.asset_check(asset="macro_series", name=name, blocking=blocking, description=description)
    async def check(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        from stock_pipeline.assets.etl import p5_build

        return await getattr(p5_build, name)(warehouse)

    return check


MACRO_CHECKS = (
    (
        "macro_series_cadence_check",
        "The monthly money-supply series have every month between their first and last, the "
        "yearly ones every year; metadata: first, last and count per series.",
        False,
    ),
    (
        "macro_series_raw_reconciliation_check",
        "Every non-empty value of the raw macro tables appears once in macro_series, at its "
        "date and with its value, and macro_series holds nothing else.",
        True,
    ),
    (
        "macro_series_rate_dates_check",
        "The rate tables have one change per announcement date (pub_date), and reserve ratios "
        "one per effective date (their macro_series date).",
        False,
    ),
)


def _period_bar_check(
    table: str,
    kind: str,
    suffix: str,
    description: str,
    calendar: TradingCalendar,
    partitions: dg.PartitionsDefinition,
) -> dg.AssetChecksDefinition:
    """A check of `table` over each run's weeks or months (body: p5_build.period_bars_<suffix>)."""

    @dg.asset_check(
        asset=table,
        name=f"{table}_{suffix}_check",
        partitions_def=partitions,
        blocking=True,
        description=description,
    )
    async def check(
        context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
    ) -> dg.AssetCheckResult:
        from stock_pipeline.assets.etl import p5_build

        window = runtime.period_window_of(context, calendar)
        return await getattr(p5_build, f"period_bars_{suffix}")(table, kind, window, warehouse)

    return check


def _period_bar_checks(
    calendar: TradingCalendar, partitions: Partitions
) -> list[dg.AssetChecksDefinition]:
    checks = []
    for table, kind in PERIOD_BARS.items():
        defs = partitions.by_kind[kind]
        checks += [
            _period_bar_check(
                table,
                kind,
                "key_uniqueness",
                f"One bar per (code, trade_date) under a valid primary key, and per code at "
                f"most one bar in each {kind}.",
                calendar,
                defs,
            ),
            _period_bar_check(
                table,
                kind,
                "trade_date",
                f"Every bar is dated on a trading day (BaoStock: the last one of its {kind}).",
                calendar,
                defs,
            ),
        ]
    return checks


def group_assets(
    calendar: TradingCalendar, partitions: Partitions
) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    """The group's business assets and the checks of its raw and business tables."""
    macro_checks = [_macro_check(*spec) for spec in MACRO_CHECKS]
    return [macro_series], [*macro_checks, *_period_bar_checks(calendar, partitions)]
