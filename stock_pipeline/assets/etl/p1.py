"""P1 business asset `finance` (statement periods) and its checks.

The body is in p1_build.py (imported when it runs); pure logic in compute/finance.py. Checks
run over the run's statement periods:
- key uniqueness of (code, stat_date);
- pub_date on or after stat_date (a report cannot precede its period's end);
- coverage: statements held / stocks listed in each period; periods whose legal deadline has
  passed are expected near-complete (a shortfall warns within the grace days, fails once the
  period is settled).

No `from __future__ import annotations` here: Dagster reads the check functions' annotations.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg

from stock_pipeline.assets import runtime
from stock_pipeline.assets.partitions import Partitions
from stock_pipeline.assets.window_checks import check_result
from stock_pipeline.calendar import TradingCalendar
from stock_pipeline.resources import WarehouseResource

GROUP = "p1"
RAW_TABLES = tuple(
    f"raw_{name}" for name in ("profit", "operation", "growth", "balance", "cash_flow", "dupont")
)
# Share of the stocks listed in a period that must have its statement once the deadline has
# passed (delistings and late filers account for the rest). A period is settled
# STOCK_PIPELINE_FINANCE_GRACE_DAYS after its deadline, as for the re-fetch schedule.
COVERAGE_MINIMUM = 0.95


def build_finance(
    calendar: TradingCalendar, partitions: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    """The finance asset on statement-period partitions (one run may take a range)."""

    @dg.asset(
        name="finance",
        group_name=GROUP,
        description=(
            "One row per (code, stat_date) joined from the six quarterly APIs; pub_date the "
            "earliest of theirs. A changed statement keeps its previous version in "
            "finance_revisions (superseded_on) and gets revised_on."
        ),
        deps=[dg.AssetKey(name) for name in RAW_TABLES],
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"postgres"},
        metadata=runtime.definition_metadata("finance"),
        tags={"cadence": "quarterly"},
    )
    async def finance(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        from stock_pipeline.assets.etl import p1_build

        window = runtime.period_window_of(context, calendar)
        return await p1_build.build_finance(context, warehouse, window)

    return finance


DUPLICATES_SQL = """
SELECT code, stat_date, count(*) AS copies FROM finance WHERE stat_date BETWEEN $1 AND $2
GROUP BY 1, 2 HAVING count(*) > 1 ORDER BY 2, 1 LIMIT 20
"""
PRIMARY_KEY_SQL = """
SELECT EXISTS (SELECT 1 FROM pg_index
               WHERE indrelid = 'finance'::regclass AND indisprimary AND indisvalid)
"""
EARLY_PUB_SQL = """
SELECT code, stat_date, pub_date FROM finance
WHERE stat_date BETWEEN $1 AND $2 AND (pub_date IS NULL OR pub_date < stat_date)
ORDER BY stat_date, code
"""
REPORTED_SQL = """
SELECT stat_date, count(*) AS reported FROM finance WHERE stat_date BETWEEN $1 AND $2
GROUP BY stat_date
"""


async def key_uniqueness(
    window: runtime.Window, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        keyed = await wh.copy_pool.fetchval(PRIMARY_KEY_SQL)
        duplicates = await wh.copy_pool.fetch(DUPLICATES_SQL, window.start, window.end)
    metadata: dict[str, Any] = {"has_valid_primary_key": keyed, "duplicate_keys": len(duplicates)}
    if duplicates:
        metadata["examples"] = [f"{r['code']} {r['stat_date']} x{r['copies']}" for r in duplicates]
    return check_result(
        keyed and not duplicates,
        metadata,
        f"finance: primary key valid: {keyed}; {len(duplicates)} duplicated (code, stat_date)",
    )


async def pub_after_stat(
    window: runtime.Window, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        early = await wh.copy_pool.fetch(EARLY_PUB_SQL, window.start, window.end)
    examples = [f"{r['code']} {r['stat_date']} published {r['pub_date']}" for r in early[:20]]
    return check_result(
        not early,
        {"violations": len(early), "examples": examples},
        f"{len(early)} statements without a pub_date on or after their stat_date",
    )


async def coverage(window: runtime.Window, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    from stock_pipeline.assets import store
    from stock_pipeline.compute import finance as rules

    periods = rules.periods_between(window.start, window.end)
    grace_days = warehouse.settings().finance_grace_days
    async with warehouse.open() as wh:
        basic = await store.read_frame(
            wh,
            "raw_stock_basic",
            "SELECT code, security_type, ipo_date, out_date FROM raw_stock_basic",
        )
        counts = await wh.copy_pool.fetch(REPORTED_SQL, window.start, window.end)
        newest_listing = await wh.copy_pool.fetchval("SELECT max(trade_date) FROM raw_all_stock")
    # Settledness is judged at BaoStock's present as the warehouse last saw it (its newest
    # listing day), not the wall clock: a server whose data ends earlier (a replay, the
    # simulator) has not had the chance to publish what is due later.
    as_of = min(runtime.today(), newest_listing or runtime.today())
    reported_by_day = {r["stat_date"]: r["reported"] for r in counts}
    listed = {p: len(rules.listed_codes(basic, *p)) for p in periods}
    reported = {p: reported_by_day.get(rules.quarter_end(*p), 0) for p in periods}
    table = rules.coverage(listed, reported, as_of, COVERAGE_MINIMUM, grace_days)
    failing = table[table["verdict"] == "fail"]
    warning = table[table["verdict"] == "warn"]
    metadata: dict[str, Any] = {
        "periods": runtime.markdown_table(table, rows=len(table)),
        "minimum_coverage": COVERAGE_MINIMUM,
        "grace_days": grace_days,
        "judged_as_of": str(as_of),
        "periods_failing": failing["period"].tolist(),
        "periods_warning": warning["period"].tolist(),
    }
    if len(failing) or len(warning):
        low = failing if len(failing) else warning
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR if len(failing) else dg.AssetCheckSeverity.WARN,
            metadata=metadata,
            description=(
                "statements missing beyond the tolerance in "
                + ", ".join(f"{r.period} ({r.reported}/{r.listed})" for r in low.itertuples())
                + ": rematerialize the p1 group for these periods; if BaoStock has no more, "
                "the companies have not published"
            ),
        )
    return check_result(True, metadata, "")


@dataclass(frozen=True)
class PeriodCheck:
    """A SQL check of finance over the run's statement periods."""

    name: str
    description: str
    blocking: bool
    evaluate: Callable[[runtime.Window, WarehouseResource], Awaitable[dg.AssetCheckResult]]


FINANCE_CHECKS = (
    PeriodCheck(
        "finance_key_uniqueness_check",
        "One row per (code, stat_date), under a valid primary key.",
        True,
        key_uniqueness,
    ),
    PeriodCheck(
        "finance_pub_date_check",
        "Every statement has a pub_date on or after its stat_date.",
        True,
        pub_after_stat,
    ),
    PeriodCheck(
        "finance_coverage_check",
        f"Statements held / stocks listed, per period: at least {COVERAGE_MINIMUM:.0%} once the "
        "legal deadline has passed (a warning within STOCK_PIPELINE_FINANCE_GRACE_DAYS of it, "
        "a failure after).",
        False,  # missing late filers must not hold back the others' statements
        coverage,
    ),
)


def period_check(
    spec: PeriodCheck, calendar: TradingCalendar, partitions: dg.PartitionsDefinition
) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset="finance",
        name=spec.name,
        partitions_def=partitions,
        blocking=spec.blocking,
        description=spec.description,
    )
    async def check(
        context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
    ) -> dg.AssetCheckResult:
        return await spec.evaluate(runtime.period_window_of(context, calendar), warehouse)

    return check


def group_assets(
    calendar: TradingCalendar, partitions: Partitions
) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    """The group's business assets and the checks of its raw and business tables."""
    assets = [build_finance(calendar, partitions.quarter)]
    checks = [period_check(spec, calendar, partitions.quarter) for spec in FINANCE_CHECKS]
    return assets, checks
