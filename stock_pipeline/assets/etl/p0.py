"""ETL of the core daily data: raw tables -> stocks, trade_calendar, stock_daily; their checks.

Bodies are read -> compute (stock_pipeline.compute) -> write, in build.py (imported when they
run). Business tables are written with upsert / replace_window, never "insert if absent": a
value BaoStock corrects reaches them.
"""

from collections.abc import Sequence
from typing import Any

import dagster as dg

from stock_pipeline.assets import runtime
from stock_pipeline.assets.window_checks import WindowCheck, check_result, window_check
from stock_pipeline.calendar import TradingCalendar
from stock_pipeline.resources import WarehouseResource

GROUP = "etl"
SINGLE_RUN = dg.BackfillPolicy.single_run()


def _asset_args(name: str, deps: Sequence[str]) -> dict[str, Any]:
    return {
        "name": name,
        "group_name": GROUP,
        "deps": [dg.AssetKey(d) for d in deps],
        "backfill_policy": SINGLE_RUN,
        "kinds": {"postgres"},
        "metadata": runtime.definition_metadata(name),
    }


@dg.asset(
    description="One row per security, from raw_stock_basic (industry: see the P4 group).",
    **_asset_args("stocks", ["raw_stock_basic"]),
)
async def stocks(warehouse: WarehouseResource) -> dg.MaterializeResult:
    from stock_pipeline.assets.etl import build

    return await build.build_stocks(warehouse)


@dg.asset(
    description="The SSE calendar with each day's previous trading day, from raw_trade_dates.",
    **_asset_args("trade_calendar", ["raw_trade_dates"]),
)
async def trade_calendar(warehouse: WarehouseResource) -> dg.MaterializeResult:
    from stock_pipeline.assets.etl import build

    return await build.build_trade_calendar(warehouse)


FACTOR_CHECK = "stock_daily_adjust_factor_check"


def build_stock_daily(
    calendar: TradingCalendar, partitions: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    @dg.asset(
        description=(
            "Unadjusted daily bars with valuation, flags and the back-adjust factor in force on "
            "each day (back-adjusted = price x factor; forward-adjusted = back-adjusted / the "
            "latest factor)."
        ),
        partitions_def=partitions,
        check_specs=[
            dg.AssetCheckSpec(
                FACTOR_CHECK,
                asset="stock_daily",
                blocking=True,
                description="The back-adjust factor never decreases and changes only on "
                "ex-right dates (a pre_close that differs from the last close).",
            )
        ],
        **_asset_args("stock_daily", ["raw_k_daily", "raw_adjust_factor"]),
    )
    async def stock_daily(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
        from stock_pipeline.assets.etl import build

        window = runtime.window_of(context, calendar)
        materialization, factor_check = await build.build_stock_daily(context, warehouse, window)
        yield materialization
        yield factor_check

    return stock_daily


COVERAGE_SQL = f"""
WITH listed AS ({runtime.LISTED_TRADING_STOCKS_SQL})
SELECT l.trade_date, count(*) AS listed, count(*) FILTER (WHERE d.code IS NULL) AS missing,
       (array_agg(l.code ORDER BY l.code) FILTER (WHERE d.code IS NULL))[1:10] AS examples
FROM listed l LEFT JOIN stock_daily d ON d.code = l.code AND d.trade_date = l.trade_date
GROUP BY l.trade_date ORDER BY l.trade_date
"""

OHLC_SQL = """
SELECT
    count(*) AS rows,
    count(*) FILTER (WHERE close IS NOT NULL AND (low > least(open, close)
        OR high < greatest(open, close) OR low > high)) AS outside_high_low,
    count(*) FILTER (WHERE open <= 0 OR high <= 0 OR low <= 0 OR close <= 0) AS non_positive,
    count(*) FILTER (WHERE volume < 0 OR amount < 0) AS negative_volume,
    count(*) FILTER (WHERE NOT trade_status AND num_nonnulls(open, high, low, close) > 0)
        AS suspended_with_prices,
    count(*) FILTER (WHERE trade_status AND close IS NULL) AS traded_without_close
FROM stock_daily WHERE trade_date BETWEEN $1 AND $2
"""
OHLC_EXAMPLES_SQL = """
SELECT code, trade_date, open, high, low, close, volume, trade_status FROM stock_daily
WHERE trade_date BETWEEN $1 AND $2 AND (
    (close IS NOT NULL AND (low > least(open, close) OR high < greatest(open, close)
        OR low > high))
    OR open <= 0 OR high <= 0 OR low <= 0 OR close <= 0 OR volume < 0 OR amount < 0
    OR (NOT trade_status AND num_nonnulls(open, high, low, close) > 0)
    OR (trade_status AND close IS NULL))
ORDER BY trade_date, code LIMIT 20
"""

# Exact duplicates of (code, trade_date) are impossible while the primary key stands: check
# that it does, on the table and every partition (a bulk load or a manual change could leave a
# partition without it). Codes in BaoStock's form cannot collide when lower-cased and trimmed;
# only malformed codes can, so only those are grouped.
PRIMARY_KEYS_SQL = """
SELECT c.relname AS relation, i.indexrelid IS NOT NULL AND i.indisvalid AS has_valid_key
FROM pg_class c
LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
WHERE c.oid = 'stock_daily'::regclass
   OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'stock_daily'::regclass)
"""
MALFORMED_CODES_SQL = """
SELECT count(*) FROM stock_daily
WHERE trade_date BETWEEN $1 AND $2 AND code !~ '^(sh|sz|bj)\\.[0-9]{6}$'
"""
COLLISIONS_SQL = """
SELECT lower(btrim(code)) AS code, trade_date, count(*) AS copies FROM stock_daily
WHERE trade_date BETWEEN $1 AND $2 AND lower(btrim(code)) IN (
    SELECT lower(btrim(code)) FROM stock_daily
    WHERE trade_date BETWEEN $1 AND $2 AND code !~ '^(sh|sz|bj)\\.[0-9]{6}$')
GROUP BY 1, 2 HAVING count(*) > 1 ORDER BY 2, 1 LIMIT 20
"""

# Per code: stock_daily holds one row per raw bar. Codes with bars but no stock_daily rows at
# all (waiting for their adjust factors) are coverage's to report, not a mismatch.
RECONCILE_SQL = """
WITH raw AS (
    SELECT code, count(*) AS n FROM raw_k_daily WHERE trade_date BETWEEN $1 AND $2 GROUP BY 1
), built AS (
    SELECT code, count(*) AS n FROM stock_daily WHERE trade_date BETWEEN $1 AND $2 GROUP BY 1
)
SELECT
    coalesce(sum(built.n), 0)::bigint AS business_rows,
    (SELECT coalesce(sum(n), 0) FROM raw)::bigint AS raw_rows,
    count(*) FILTER (WHERE raw.n IS NULL) AS codes_without_raw_bars,
    count(*) FILTER (WHERE raw.n <> built.n) AS codes_with_other_counts,
    (SELECT count(*) FROM raw) - count(*) FILTER (WHERE raw.n IS NOT NULL) AS codes_not_built,
    (array_agg(built.code ORDER BY built.code)
        FILTER (WHERE raw.n IS NULL OR raw.n <> built.n))[1:10] AS examples
FROM built LEFT JOIN raw USING (code)
"""


async def coverage(window: runtime.Window, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    tolerance = warehouse.settings().coverage_tolerance
    async with warehouse.open() as wh:
        days = await wh.copy_pool.fetch(COVERAGE_SQL, window.start, window.end)
    unlisted = sorted(set(window.sessions) - {r["trade_date"] for r in days})
    worst = max(days, key=lambda r: r["missing"] / r["listed"], default=None)
    over = [r for r in days if r["missing"] > tolerance * r["listed"]]
    metadata: dict[str, Any] = {
        "days_checked": len(days),
        "days_over_tolerance": len(over),
        "missing_bars": sum(r["missing"] for r in days),
        "tolerance": tolerance,
        "days_without_listing": [str(d) for d in unlisted[:20]],
    }
    if worst is not None:
        metadata["worst_day"] = f"{worst['trade_date']}: {worst['missing']}/{worst['listed']}"
    if over:
        metadata["examples"] = dg.MetadataValue.md(
            "\n".join(
                f"- {r['trade_date']}: {r['missing']} of {r['listed']} missing, e.g. "
                + ", ".join(r["examples"] or [])
                for r in over[:10]
            )
        )
    problems = []
    if over:
        problems.append(f"{len(over)} days miss bars of listed stocks beyond the tolerance")
    if unlisted:
        problems.append(f"{len(unlisted)} days have no listing in raw_all_stock")
    return check_result(not problems, metadata, "; ".join(problems))


async def ohlc_sanity(window: runtime.Window, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        counts = dict(await wh.copy_pool.fetchrow(OHLC_SQL, window.start, window.end))
        bad = sum(v for k, v in counts.items() if k != "rows")
        metadata: dict[str, Any] = dict(counts)
        if bad:
            from stock_pipeline.assets import store

            examples = await store.read_frame(
                wh, "stock_daily", OHLC_EXAMPLES_SQL, window.start, window.end
            )
            metadata["examples"] = runtime.markdown_table(examples, rows=20)
    return check_result(bad == 0, metadata, f"{bad} rows break OHLC sanity")


async def key_uniqueness(
    window: runtime.Window, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        keys = await wh.copy_pool.fetch(PRIMARY_KEYS_SQL)
        malformed = await wh.copy_pool.fetchval(MALFORMED_CODES_SQL, window.start, window.end)
        duplicates = []
        if malformed:
            duplicates = await wh.copy_pool.fetch(COLLISIONS_SQL, window.start, window.end)
    unkeyed = [r["relation"] for r in keys if not r["has_valid_key"]]
    metadata: dict[str, Any] = {
        "relations_without_valid_primary_key": unkeyed,
        "malformed_codes": malformed,
        "colliding_keys": len(duplicates),
    }
    if duplicates:
        metadata["examples"] = [f"{r['code']} {r['trade_date']} x{r['copies']}" for r in duplicates]
    return check_result(
        not unkeyed and not malformed,
        metadata,
        f"{len(unkeyed)} relations without a valid primary key, {malformed} malformed codes, "
        f"{len(duplicates)} keys colliding once normalised",
    )


async def raw_reconciliation(
    window: runtime.Window, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        found = dict(await wh.copy_pool.fetchrow(RECONCILE_SQL, window.start, window.end))
    examples = found.pop("examples") or []
    bad = found["codes_without_raw_bars"] + found["codes_with_other_counts"]
    return check_result(
        bad == 0,
        {**found, "examples": examples},
        f"{bad} codes whose stock_daily rows do not match their raw bars, e.g. "
        + ", ".join(examples),
    )


STOCK_DAILY_CHECKS = (
    WindowCheck(
        "stock_daily_coverage_check",
        "Every stock query_all_stock lists as trading on a day has its bar "
        "(STOCK_PIPELINE_COVERAGE_TOLERANCE: share allowed to be missing).",
        False,  # a few missing stocks must not hold back the whole market's downstream
        coverage,
    ),
    WindowCheck(
        "stock_daily_ohlc_sanity_check",
        "low <= open, close <= high; prices > 0; volume, amount >= 0; suspended days carry no "
        "prices and traded days a close.",
        True,
        ohlc_sanity,
    ),
    WindowCheck(
        "stock_daily_key_uniqueness_check",
        "One row per (code, trade_date), codes in BaoStock's form (sh.600000), also when "
        "compared case- and space-insensitively.",
        True,
        key_uniqueness,
    ),
    WindowCheck(
        "stock_daily_raw_reconciliation_check",
        "Each code's stock_daily rows match its raw_k_daily bars one for one.",
        True,
        raw_reconciliation,
    ),
)


def build_stock_daily_checks(
    calendar: TradingCalendar, partitions: dg.PartitionsDefinition
) -> list[dg.AssetChecksDefinition]:
    """SQL checks of stock_daily over the run's window (blocking ones stop downstream assets)."""
    return [window_check("stock_daily", spec, calendar, partitions) for spec in STOCK_DAILY_CHECKS]


async def _reconcile(warehouse: WarehouseResource, sql: str, what: str) -> dg.AssetCheckResult:
    """`sql` counts raw_rows and the business rows matching them: every raw row must match."""
    async with warehouse.open() as wh:
        counts = dict(await wh.copy_pool.fetchrow(sql))
    missing = counts["raw_rows"] - counts["matched"]
    return check_result(missing == 0, counts, f"{missing} {what} missing or different")


@dg.asset_check(asset="stocks", blocking=True, description="stocks has a row per raw security.")
async def stocks_raw_reconciliation_check(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    return await _reconcile(
        warehouse,
        "SELECT (SELECT count(*) FROM raw_stock_basic) AS raw_rows, "
        "(SELECT count(*) FROM stocks s JOIN raw_stock_basic r USING (code)) AS matched, "
        "(SELECT count(*) FROM stocks) AS business_rows",
        "securities",
    )


@dg.asset_check(
    asset="trade_calendar", blocking=True, description="trade_calendar has a row per raw day."
)
async def trade_calendar_raw_reconciliation_check(
    warehouse: WarehouseResource,
) -> dg.AssetCheckResult:
    return await _reconcile(
        warehouse,
        "SELECT (SELECT count(*) FROM raw_trade_dates) AS raw_rows, "
        "(SELECT count(*) FROM trade_calendar c JOIN raw_trade_dates r "
        "ON r.calendar_date = c.cal_date AND r.is_trading_day = c.is_open) AS matched",
        "days",
    )


def etl_assets(
    calendar: TradingCalendar, partitions: dg.PartitionsDefinition
) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    """The P0 business tables and their SQL checks."""
    assets = [stocks, trade_calendar, build_stock_daily(calendar, partitions)]
    checks = [
        *build_stock_daily_checks(calendar, partitions),
        stocks_raw_reconciliation_check,
        trade_calendar_raw_reconciliation_check,
    ]
    return assets, checks
