"""Read -> compute -> write of the P2 business tables, and their checks: the bodies of p2.py.

Imported when an asset or check runs, not when definitions load (pandas, the writer).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import dagster as dg
import pandas as pd
from sqlalchemy import Column, Date, Double, Text

from stock_pipeline.assets import runtime, store
from stock_pipeline.assets.etl.p2 import YearCheck
from stock_pipeline.assets.window_checks import check_result
from stock_pipeline.compute.corporate import (
    AMOUNT_COLUMNS,
    CORPORATE_ACTION_COLUMNS,
    EARNINGS_FORECAST_COLUMNS,
    FACTOR_TOLERANCE,
    PERFORMANCE_EXPRESS_COLUMNS,
    FactorAgreement,
    FetchedYears,
    corporate_action_rows,
    earnings_forecast_rows,
    factor_agreement,
    performance_express_rows,
)
from stock_pipeline.resources import WarehouseResource
from stock_pipeline.warehouse.tables import table as table_spec


class _Source:
    """A business table's raw table, column mapping (raw -> business), transform and the
    business date its years are on."""

    def __init__(
        self,
        raw: str,
        columns: Mapping[str, str],
        transform: Callable[[pd.DataFrame], pd.DataFrame],
        date_column: str,
    ):
        self.raw, self.columns, self.transform = raw, dict(columns), transform
        self.date_column = date_column
        self.raw_date_column = {v: k for k, v in columns.items()}[date_column]

    def raw_select(self, *, renamed: bool) -> str:
        """The raw rows whose date lies in [$1, $2], in business column order."""
        columns = ", ".join(f"{r} AS {b}" if renamed else r for r, b in self.columns.items())
        return f"SELECT {columns} FROM {self.raw} WHERE {self.raw_date_column} BETWEEN $1 AND $2"

    def business_select(self, target: str) -> str:
        columns = ", ".join(self.columns.values())
        return f"SELECT {columns} FROM {target} WHERE {self.date_column} BETWEEN $1 AND $2"


SOURCES = {
    # raw_dividend's rows of report year Y are the plans announced in Y (raw/p2.py keeps them so).
    "corporate_actions": _Source(
        "raw_dividend", CORPORATE_ACTION_COLUMNS, corporate_action_rows, "announce_date"
    ),
    "performance_express": _Source(
        "raw_performance_express", PERFORMANCE_EXPRESS_COLUMNS, performance_express_rows, "pub_date"
    ),
    "earnings_forecast": _Source(
        "raw_forecast", EARNINGS_FORECAST_COLUMNS, earnings_forecast_rows, "pub_date"
    ),
}


async def _rebuild_years(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    window: runtime.Window,
    target: str,
) -> tuple[runtime.Report, pd.DataFrame]:
    """The target's rows dated in the window, replaced by those built from its raw rows."""
    source = SOURCES[target]
    report = runtime.Report(target, window)
    async with warehouse.open() as wh:
        with report.stages.time("read"):
            sql = source.raw_select(renamed=False) + " ORDER BY 1, 2"
            raw = await store.read_frame(wh, source.raw, sql, window.start, window.end)
        with report.stages.time("transform"):
            rows = source.transform(raw)
        with report.stages.time("write"):
            report.wrote(
                await store.replace_window(
                    wh,
                    target,
                    rows,
                    start=window.start,
                    end=window.end,
                    date_column=source.date_column,
                )
            )
    report.extra["raw_rows"] = len(raw)
    report.preview = rows
    context.log.info(
        f"[p2.{target}] {window}: {len(rows)} rows from {len(raw)} {source.raw} rows, "
        f"{report.stages.wall_s:.1f}s"
    )
    return report, rows


async def build_corporate_actions(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, window: runtime.Window
) -> dg.MaterializeResult:
    report, rows = await _rebuild_years(context, warehouse, window, "corporate_actions")
    amounts = rows[list(AMOUNT_COLUMNS)].fillna(0.0)
    ex_year = rows["ex_date"].dt.year
    report.extra.update(
        {
            "plans": len(rows),
            "plans_with_ex_date": int(rows["ex_date"].notna().sum()),
            "cash_dividends": int((amounts["cash_per_share"] > 0).sum()),
            "bonus_issues": int((amounts["bonus_shares_per_share"] > 0).sum()),
            "reserve_conversions": int((amounts["reserve_to_stock_per_share"] > 0).sum()),
            # Plans announced in the window's last year that go ex the year after it.
            "ex_dates_after_the_window": int((ex_year > window.end.year).sum()),
        }
    )
    return report.result()


async def build_performance_express(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, window: runtime.Window
) -> dg.MaterializeResult:
    report, _rows = await _rebuild_years(context, warehouse, window, "performance_express")
    return report.result()


async def build_earnings_forecast(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, window: runtime.Window
) -> dg.MaterializeResult:
    report, rows = await _rebuild_years(context, warehouse, window, "earnings_forecast")
    kinds = rows["forecast_type"].value_counts()
    report.extra["forecast_types"] = dg.MetadataValue.json(
        {str(k): int(v) for k, v in kinds.items()}
    )
    return report.result()


async def build(
    name: str,
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    window: runtime.Window,
) -> dg.MaterializeResult:
    """The body of business asset `name` for the window."""
    builders = {
        "corporate_actions": build_corporate_actions,
        "performance_express": build_performance_express,
        "earnings_forecast": build_earnings_forecast,
    }
    return await builders[name](context, warehouse, window)


# ---------------------------------------------------------------------------------------------
# Checks.


async def evaluate_check(
    spec: YearCheck, window: runtime.Window, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """`spec` evaluated over the window, as the result of its asset's check of that name."""
    found = await CHECK_FUNCTIONS[spec.function](window, warehouse, *spec.arguments)
    return dg.AssetCheckResult(
        check_name=spec.name,
        asset_key=spec.asset,
        passed=found.passed,
        severity=found.severity,
        metadata=found.metadata,
        description=found.description,
    )


PRIMARY_KEY_SQL = """
SELECT coalesce(bool_or(i.indisvalid), false) FROM pg_index i
WHERE i.indrelid = $1::regclass AND i.indisprimary
"""
CODE_PATTERN = "^(sh|sz|bj)\\.[0-9]{6}$"


async def key_uniqueness(
    window: runtime.Window, warehouse: WarehouseResource, target: str
) -> dg.AssetCheckResult:
    date_column = SOURCES[target].date_column
    rest = [c.name for c in table_spec(target).primary_key.columns if c.name != "code"]
    others = ", ".join(rest)
    in_window = f"{date_column} BETWEEN $1 AND $2"
    async with warehouse.open() as wh:
        pool = wh.copy_pool
        keyed = await pool.fetchval(PRIMARY_KEY_SQL, target)
        malformed = await pool.fetchval(
            f"SELECT count(*) FROM {target} WHERE {in_window} AND code !~ '{CODE_PATTERN}'",
            window.start,
            window.end,
        )
        collisions = await pool.fetch(
            f"SELECT lower(btrim(code)) AS code, {others}, count(*) AS copies FROM {target} "
            f"WHERE {in_window} GROUP BY 1, {others} HAVING count(*) > 1 ORDER BY 2, 1 LIMIT 20",
            window.start,
            window.end,
        )
    metadata: dict[str, Any] = {
        "primary_key_valid": keyed,
        "malformed_codes": malformed,
        "colliding_keys": len(collisions),
    }
    if collisions:
        metadata["examples"] = [" ".join(str(v) for v in r.values()) for r in collisions]
    return check_result(
        keyed and not malformed and not collisions,
        metadata,
        f"{target}: primary key valid: {keyed}; {malformed} malformed codes; "
        f"{len(collisions)} keys colliding once codes are normalised",
    )


async def raw_reconciliation(
    window: runtime.Window, warehouse: WarehouseResource, target: str
) -> dg.AssetCheckResult:
    source = SOURCES[target]
    raw, business = source.raw_select(renamed=True), source.business_select(target)
    key = ", ".join(c.name for c in table_spec(target).primary_key.columns)
    sql = f"""
    WITH raw AS ({raw}), business AS ({business}),
         missing AS (SELECT * FROM raw EXCEPT ALL SELECT * FROM business),
         extra AS (SELECT * FROM business EXCEPT ALL SELECT * FROM raw)
    SELECT (SELECT count(*) FROM raw) AS raw_rows,
           (SELECT count(*) FROM business) AS business_rows,
           (SELECT count(*) FROM missing) AS raw_rows_missing_or_different,
           (SELECT count(*) FROM extra) AS business_rows_without_raw,
           (SELECT array_agg(concat_ws(' ', {key})) FROM
               (SELECT {key} FROM missing UNION SELECT {key} FROM extra ORDER BY 1 LIMIT 10) e)
               AS examples
    """
    async with warehouse.open() as wh:
        found = dict(await wh.copy_pool.fetchrow(sql, window.start, window.end))
    examples = found.pop("examples") or []
    bad = found["raw_rows_missing_or_different"] + found["business_rows_without_raw"]
    return check_result(
        bad == 0,
        {**found, "examples": examples},
        f"{bad} rows of {target} differ from {source.raw} in {window}, e.g. "
        + ", ".join(examples)
        + f": rematerialize {target} for these years",
    )


async def published_after_period(
    window: runtime.Window,
    warehouse: WarehouseResource,
    target: str,
    severity: dg.AssetCheckSeverity,
) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        found = dict(
            await wh.copy_pool.fetchrow(
                f"SELECT count(*) AS rows, count(*) FILTER (WHERE pub_date < stat_date) AS early, "
                f"(array_agg(code || ' ' || stat_date || ' published ' || pub_date "
                f"ORDER BY pub_date, code) FILTER (WHERE pub_date < stat_date))[1:20] AS examples "
                f"FROM {target} WHERE pub_date BETWEEN $1 AND $2",
                window.start,
                window.end,
            )
        )
    early = found["early"]
    return dg.AssetCheckResult(
        passed=early == 0,
        severity=severity,
        metadata={
            "rows": found["rows"],
            "published_before_period_end": early,
            "examples": found["examples"] or [],
        },
        description=None
        if early == 0
        else f"{early} rows of {target} are published before the end of their period",
    )


# ---------------------------------------------------------------------------------------------
# The P0 x P2 cross-check.

# Each ex-date of the window with a non-zero amount; the stored stock_daily row it takes effect
# on (first on or after it), the stored row before it, and the last traded close before it.
EX_DATES_SQL = f"""
SELECT a.code, a.announce_date, a.ex_date, d.trade_date AS bar_date, d.back_adjust_factor AS factor,
       d.pre_close, p.trade_date AS previous_date, p.back_adjust_factor AS previous_factor,
       t.close AS last_close
FROM corporate_actions a
LEFT JOIN LATERAL (
    SELECT trade_date, back_adjust_factor, pre_close FROM stock_daily s
    WHERE s.code = a.code AND s.trade_date >= a.ex_date ORDER BY trade_date LIMIT 1) d ON true
LEFT JOIN LATERAL (
    SELECT trade_date, back_adjust_factor FROM stock_daily s
    WHERE s.code = a.code AND s.trade_date < a.ex_date ORDER BY trade_date DESC LIMIT 1) p ON true
LEFT JOIN LATERAL (
    SELECT close FROM stock_daily s
    WHERE s.code = a.code AND s.trade_date < a.ex_date AND s.close IS NOT NULL
    ORDER BY trade_date DESC LIMIT 1) t ON true
WHERE a.ex_date BETWEEN $1 AND $2
  AND ({" OR ".join(f"coalesce({c}, 0) > 0" for c in AMOUNT_COLUMNS)})
ORDER BY a.code, a.ex_date
"""
# Days of the window whose factor differs from the code's previous stored row (for a code's
# first row in the window: its last row before the window).
FACTOR_CHANGES_SQL = """
WITH w AS (
    SELECT code, trade_date, back_adjust_factor AS factor,
           lag(trade_date) OVER c AS previous_date,
           lag(back_adjust_factor) OVER c AS previous_factor
    FROM stock_daily WHERE trade_date BETWEEN $1 AND $2
    WINDOW c AS (PARTITION BY code ORDER BY trade_date)
), before AS (
    SELECT w.code, p.trade_date, p.back_adjust_factor
    FROM w CROSS JOIN LATERAL (
        SELECT trade_date, back_adjust_factor FROM stock_daily s
        WHERE s.code = w.code AND s.trade_date < $1 ORDER BY trade_date DESC LIMIT 1) p
    WHERE w.previous_date IS NULL
), compared AS (
    SELECT w.code, w.trade_date, coalesce(w.previous_date, b.trade_date) AS previous_date,
           w.factor, coalesce(w.previous_factor, b.back_adjust_factor) AS previous_factor
    FROM w LEFT JOIN before b ON b.code = w.code AND w.previous_date IS NULL
)
SELECT * FROM compared
WHERE abs(factor - previous_factor) > $3 * greatest(abs(previous_factor), 1)
ORDER BY code, trade_date
"""
# Ex-dates that can explain the changes: of their codes, up to the window's end.
EXPLAINING_EX_DATES_SQL = f"""
SELECT code, ex_date FROM corporate_actions
WHERE code = ANY($1::text[]) AND ex_date <= $2
  AND ({" OR ".join(f"coalesce({c}, 0) > 0" for c in AMOUNT_COLUMNS)})
"""
FETCHES_SQL = """
SELECT window_start, window_end, failures FROM fetch_log
WHERE dataset = 'raw_dividend' AND status IN ('ok', 'partial') AND window_start IS NOT NULL
"""


def _columns(dates: str, floats: str = "") -> list[Column]:
    texts = [Column("code", Text)]
    return [
        *texts,
        *(Column(n, Date) for n in dates.split()),
        *(Column(n, Double) for n in floats.split()),
    ]


EX_DATE_COLUMNS = _columns(
    "announce_date ex_date bar_date previous_date", "factor pre_close previous_factor last_close"
)
CHANGE_COLUMNS = _columns("trade_date previous_date", "factor previous_factor")


async def ex_date_factor_agreement(
    window: runtime.Window, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        pool = wh.copy_pool
        fetches = [
            (r["window_start"], r["window_end"], json.loads(r["failures"] or "{}"))
            for r in await pool.fetch(FETCHES_SQL)
        ]
        actions = await store.read_frame(
            wh, EX_DATE_COLUMNS, EX_DATES_SQL, window.start, window.end
        )
        changes = await store.read_frame(
            wh, CHANGE_COLUMNS, FACTOR_CHANGES_SQL, window.start, window.end, FACTOR_TOLERANCE
        )
        explaining = await store.read_frame(
            wh,
            _columns("ex_date"),
            EXPLAINING_EX_DATES_SQL,
            sorted(changes["code"].unique()),
            window.end,
        )
    fetched = FetchedYears.of(fetches)
    outcome = factor_agreement(actions, changes, explaining, fetched)
    return _agreement_result(outcome, fetched, window)


def _agreement_result(
    outcome: FactorAgreement, fetched: FetchedYears, window: runtime.Window
) -> dg.AssetCheckResult:
    only_p2, only_p0 = outcome.only_in_p2, outcome.only_in_p0
    metadata: dict[str, Any] = {
        "matched_ex_dates": outcome.matched_ex_dates,
        "matched_factor_changes": outcome.matched_changes,
        "only_in_p2": len(only_p2),
        "only_in_p0": len(only_p0),
        "ex_dates_without_price_effect": len(outcome.no_price_effect),
        "unverifiable_factor_changes": len(outcome.unverifiable),
        "ex_dates_outside_stock_daily": outcome.ex_dates_outside_stock_daily,
        "factor_changes_outside_p2_years": outcome.changes_outside_p2_years,
        "p2_years_held": sorted(fetched.years),
    }
    shown = {
        "only_in_p2_examples": only_p2,
        "only_in_p0_examples": only_p0,
        "unverifiable_examples": outcome.unverifiable,
        "without_price_effect_examples": outcome.no_price_effect,
    }
    for name, frame in shown.items():
        if not frame.empty:
            metadata[name] = runtime.markdown_table(frame, rows=20)
    problems = []
    if len(only_p2):
        problems.append(
            f"{len(only_p2)} ex-dates without a factor change in stock_daily: "
            + ", ".join(f"{r.code} {r.ex_date:%Y-%m-%d}" for r in only_p2.head(5).itertuples())
        )
    if len(only_p0):
        problems.append(
            f"{len(only_p0)} factor changes in stock_daily without a dividend ex-date: "
            + ", ".join(f"{r.code} {r.trade_date:%Y-%m-%d}" for r in only_p0.head(5).itertuples())
        )
    return dg.AssetCheckResult(
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=None
        if outcome.passed
        else f"{window}: " + "; ".join(problems) + " (compare raw_adjust_factor with "
        "raw_dividend for these codes; rematerialize whichever side is stale)",
    )


# YearCheck.function names one of these (p2.py declares the checks without importing them).
CHECK_FUNCTIONS: dict[str, Callable[..., Awaitable[dg.AssetCheckResult]]] = {
    "key_uniqueness": key_uniqueness,
    "raw_reconciliation": raw_reconciliation,
    "published_after_period": published_after_period,
    "ex_date_factor_agreement": ex_date_factor_agreement,
}
