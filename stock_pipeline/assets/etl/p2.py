"""P2 business tables, by calendar year: corporate_actions (dividend plans announced in the
year), performance_express and earnings_forecast (reports published in the year); their checks.

Bodies are read -> compute (stock_pipeline.compute.corporate) -> write, in p2_build.py
(imported when they run); each year range is replaced whole, so a plan or report BaoStock no
longer serves leaves the business table too.

The cross-check of P0 and P2 (corporate_actions_ex_date_factor_check) compares dividend
ex-dates with the back-adjust factor changes in stock_daily, both ways, for the run's years.
What it can compare is bounded by what both hold:
- an ex-date is compared when stock_daily holds the code on both sides of it (a stored day
  before it, and one on or after it, where its factor change shows);
- a plan is fetched by its ANNOUNCEMENT year, and plans announced late in year Y-1 go ex early
  in Y (a year never runs ex before its announcement). So the ex-dates of year Y are all known
  once P2 holds Y-1 and Y: a factor change in Y is compared when P2 holds Y for its code, and
  one no ex-date explains is an error only when P2 also holds Y-1; otherwise it is listed as
  unverifiable (materialize Y-1 of this group to settle it). Which years P2 holds comes from
  raw_dividend's fetch_log (codes that failed in every fetch of a year do not count).
stock_daily materialized after this check ran is compared the next time corporate_actions is
materialized for the year (cheap: it only rebuilds from raw_dividend, and runs its checks).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from stock_pipeline.assets import runtime
from stock_pipeline.assets.partitions import Partitions
from stock_pipeline.calendar import TradingCalendar
from stock_pipeline.resources import WarehouseResource

GROUP = "p2"
SINGLE_RUN = dg.BackfillPolicy.single_run()
CROSS_CHECK = "corporate_actions_ex_date_factor_check"
# A year of corporate_actions reads the stock_daily days of that year (the cross-check); the
# current year's days are not all partitions yet.
DAYS_OF_THE_YEAR = dg.TimeWindowPartitionMapping(allow_nonexistent_upstream_partitions=True)


@dataclass(frozen=True)
class YearCheck:
    """A check of a P2 table over the run's years: p2_build's `function`(window, warehouse,
    *arguments), named rather than imported (p2_build imports pandas; definitions do not)."""

    asset: str
    name: str
    description: str
    blocking: bool
    function: str
    arguments: tuple[Any, ...] = ()


TABLES = ("corporate_actions", "performance_express", "earnings_forecast")
CHECKS = (
    *(
        YearCheck(
            table,
            f"{table}_key_uniqueness_check",
            "One row per key, codes in BaoStock's form (sh.600000), also when compared case- "
            "and space-insensitively; the primary key stands.",
            True,
            "key_uniqueness",
            (table,),
        )
        for table in TABLES
    ),
    *(
        YearCheck(
            table,
            f"{table}_raw_reconciliation_check",
            "The year's rows equal their raw rows one for one (same keys, same values).",
            True,
            "raw_reconciliation",
            (table,),
        )
        for table in TABLES
    ),
    YearCheck(
        "performance_express",
        "performance_express_pub_after_stat_check",
        "An express report is published after the period it reports on (pub_date >= stat_date).",
        False,
        "published_after_period",
        ("performance_express", dg.AssetCheckSeverity.ERROR),
    ),
    YearCheck(
        "earnings_forecast",
        "earnings_forecast_pub_after_stat_check",
        "A forecast is published after its period ends (pub_date >= stat_date). A warning: "
        "listed companies may forecast the year with their Q3 report, before it ends.",
        False,
        "published_after_period",
        ("earnings_forecast", dg.AssetCheckSeverity.WARN),
    ),
    YearCheck(
        "corporate_actions",
        CROSS_CHECK,
        "P0 x P2: every ex-date of a cash dividend, bonus issue or conversion changes the "
        "back-adjust factor in stock_daily on that day, and every factor change in stock_daily "
        "has such an ex-date; over what both hold (see the group's module docstring). A rights "
        "issue also moves the factor without a dividend plan: it shows as only in P0.",
        False,  # a disagreement is for a person to look into; the tables themselves are fine
        "ex_date_factor_agreement",
    ),
)


def _asset_args(
    name: str, deps: Sequence[str | dg.AssetDep], partitions: dg.PartitionsDefinition
) -> dict[str, Any]:
    return {
        "name": name,
        "group_name": GROUP,
        "deps": [d if isinstance(d, dg.AssetDep) else dg.AssetKey(d) for d in deps],
        "partitions_def": partitions,
        "backfill_policy": SINGLE_RUN,
        "kinds": {"postgres"},
        "metadata": runtime.definition_metadata(name),
    }


def build_business_asset(
    name: str,
    description: str,
    deps: Sequence[str | dg.AssetDep],
    calendar: TradingCalendar,
    years: dg.PartitionsDefinition,
) -> dg.AssetsDefinition:
    """A P2 business table over the run's years, with its checks evaluated in the same step
    (they are quick SQL over small tables; a step of their own would cost more than they do).
    Rematerializing the table, which is cheap and idempotent, runs them again."""
    specs = [c for c in CHECKS if c.asset == name]

    @dg.asset(
        description=description,
        check_specs=[
            dg.AssetCheckSpec(c.name, asset=name, blocking=c.blocking, description=c.description)
            for c in specs
        ],
        **_asset_args(name, deps, years),
    )
    async def business_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
        from stock_pipeline.assets.etl import p2_build

        window = runtime.period_window_of(context, calendar)
        yield await p2_build.build(name, context, warehouse, window)
        for spec in specs:
            yield await p2_build.evaluate_check(spec, window, warehouse)

    return business_asset


def build_p2_assets(
    calendar: TradingCalendar, years: dg.PartitionsDefinition
) -> list[dg.AssetsDefinition]:
    return [
        build_business_asset(
            "corporate_actions",
            "Dividends, bonus shares and conversions of capital reserve, one row per plan, from "
            "raw_dividend (the plans announced in the year).",
            ["raw_dividend", dg.AssetDep("stock_daily", partition_mapping=DAYS_OF_THE_YEAR)],
            calendar,
            years,
        ),
        build_business_asset(
            "performance_express",
            "Performance express reports (业绩快报) published in the year, from "
            "raw_performance_express.",
            ["raw_performance_express"],
            calendar,
            years,
        ),
        build_business_asset(
            "earnings_forecast",
            "Earnings forecasts (业绩预告) published in the year, from raw_forecast.",
            ["raw_forecast"],
            calendar,
            years,
        ),
    ]


def group_assets(
    calendar: TradingCalendar, partitions: Partitions
) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    """The group's business assets and the checks of its business tables."""
    # The checks are the business assets' own (check_specs): no separate definitions.
    return build_p2_assets(calendar, partitions.year), []
