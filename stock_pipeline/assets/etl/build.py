"""Read -> compute -> write of the P0 business tables: the bodies of the assets in p0.py.

Imported when an asset runs, not when definitions load (pandas, the writer).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import dagster as dg
import pandas as pd

from stock_pipeline.assets import runtime, store
from stock_pipeline.assets.etl.p0 import FACTOR_CHECK
from stock_pipeline.compute.checks import adjust_factor_violations
from stock_pipeline.compute.daily import stock_daily_rows
from stock_pipeline.compute.reference import stocks_rows, trade_calendar_rows
from stock_pipeline.resources import WarehouseResource
from stock_pipeline.warehouse.engine import Warehouse

# Codes per read -> compute -> write round of stock_daily: ~50k rows a year of range each.
CODES_PER_BATCH = 200


async def _rebuild(
    warehouse: WarehouseResource,
    target: str,
    source: str,
    sql: str,
    transform: Callable[[pd.DataFrame], pd.DataFrame],
) -> tuple[runtime.Report, pd.DataFrame]:
    """A whole (unpartitioned) business table from its raw table: read, compute, upsert."""
    report = runtime.Report(target)
    async with warehouse.open() as wh:
        with report.stages.time("read"):
            raw = await store.read_frame(wh, source, sql)
        with report.stages.time("transform"):
            rows = transform(raw)
        with report.stages.time("write"):
            report.wrote(await store.upsert(wh, target, rows))
    return report, rows


async def build_stocks(warehouse: WarehouseResource) -> dg.MaterializeResult:
    report, rows = await _rebuild(
        warehouse,
        "stocks",
        "raw_stock_basic",
        "SELECT code, code_name, ipo_date, out_date, security_type, status "
        "FROM raw_stock_basic ORDER BY code",
        stocks_rows,
    )
    report.preview = rows
    return report.result()


async def build_trade_calendar(warehouse: WarehouseResource) -> dg.MaterializeResult:
    report, rows = await _rebuild(
        warehouse,
        "trade_calendar",
        "raw_trade_dates",
        "SELECT calendar_date, is_trading_day FROM raw_trade_dates ORDER BY calendar_date",
        trade_calendar_rows,
    )
    report.preview = rows.tail(runtime.PREVIEW_ROWS)
    return report.result()


BARS_SQL = """
SELECT code, trade_date, open, high, low, close, pre_close, pct_chg, volume, amount, turnover,
       trade_status, is_st, pe_ttm, pb_mrq, ps_ttm, pcf_ncf_ttm, adjust_flag
FROM raw_k_daily WHERE code = ANY($1::text[]) AND trade_date BETWEEN $2 AND $3
"""
FACTORS_SQL = """
SELECT code, divid_operate_date, back_adjust_factor FROM raw_adjust_factor
WHERE code = ANY($1::text[]) AND divid_operate_date <= $2
"""
# Per code, its last row before the window and its last traded row (they differ when it is
# suspended across the window's start: the first traded bar after the suspension is then
# compared with the close before it, as an ex-right during a suspension shows there).
PREVIOUS_ROWS_SQL = """
SELECT p.code, p.trade_date, p.pre_close, p.close, p.back_adjust_factor
FROM unnest($1::text[]) AS c(code)
CROSS JOIN LATERAL (
    (SELECT code, trade_date, pre_close, close, back_adjust_factor FROM stock_daily
     WHERE code = c.code AND trade_date < $2 ORDER BY trade_date DESC LIMIT 1)
    UNION
    (SELECT code, trade_date, pre_close, close, back_adjust_factor FROM stock_daily
     WHERE code = c.code AND trade_date < $2 AND close IS NOT NULL
     ORDER BY trade_date DESC LIMIT 1)
) p
"""


async def build_stock_daily(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, window: runtime.Window
) -> tuple[dg.MaterializeResult, dg.AssetCheckResult]:
    """stock_daily for the window, code batch by code batch, and the factor rule check."""
    report = runtime.Report("stock_daily", window)
    async with warehouse.open() as wh:
        codes = await _codes_with_bars(wh, window)
        ready, waiting = await _factors_known(wh, window, codes)
        expected = await wh.copy_pool.fetchval(
            "SELECT count(*) FROM raw_k_daily WHERE trade_date BETWEEN $1 AND $2",
            window.start,
            window.end,
        )
        violations: list[pd.DataFrame] = []
        async with store.bulk_load_if_large(wh, "stock_daily", window, expected) as bulk:
            for start in range(0, len(ready), CODES_PER_BATCH):
                batch = ready[start : start + CODES_PER_BATCH]
                violations.append(await _load_batch(wh, window, batch, report))
        dropped = await _drop_codes_without_bars(wh, window, codes)
        report.extra.update(
            {
                "codes": len(ready),
                "codes_waiting_for_factors": len(waiting),
                "waiting_for_factors": ", ".join(waiting[:50]) or "none",
                "rows_deleted_of_codes_without_bars": dropped,
                "index_management": bulk,
            }
        )
    if waiting:
        context.log.warning(
            f"[etl.stock_daily] {window}: {len(waiting)} codes left as they were, their adjust "
            f"factors not known through {window.end} (e.g. {', '.join(waiting[:5])}): "
            "materialize raw_adjust_factor for these partitions, then stock_daily again"
        )
    context.log.info(
        f"[etl.stock_daily] {window}: {report.rows_written.get('stock_daily', 0)} rows of "
        f"{len(ready)} codes, {report.stages.wall_s:.1f}s"
    )
    found = pd.concat(violations, ignore_index=True) if violations else None
    return report.result(), _factor_check_result(found)


async def _factors_known(
    wh: Warehouse, window: runtime.Window, codes: list[str]
) -> tuple[list[str], list[str]]:
    """Codes whose factor list is known through the window's end (raw_adjust_factor's
    sync_state), and the others: those would get a wrong back-adjust factor, so they wait."""
    known = await store.read_sync_dates(wh, "raw_adjust_factor", codes)
    ready = [c for c in codes if (known.get(c) or dt.date.min) >= window.end]
    waiting = [c for c in codes if (known.get(c) or dt.date.min) < window.end]
    return ready, waiting


async def _codes_with_bars(wh: Warehouse, window: runtime.Window) -> list[str]:
    rows = await wh.copy_pool.fetch(
        "SELECT DISTINCT code FROM raw_k_daily WHERE trade_date BETWEEN $1 AND $2 ORDER BY code",
        window.start,
        window.end,
    )
    return [r["code"] for r in rows]


async def _load_batch(
    wh: Warehouse, window: runtime.Window, codes: list[str], report: runtime.Report
) -> pd.DataFrame:
    """One round: read the codes' raw bars and factors, build stock_daily rows, replace the
    codes' window; returns the factor rule violations among them."""
    with report.stages.time("read"):
        bars = await store.read_frame(wh, "raw_k_daily", BARS_SQL, codes, window.start, window.end)
        factors = await store.read_frame(wh, "raw_adjust_factor", FACTORS_SQL, codes, window.end)
        previous = await store.read_frame(wh, "stock_daily", PREVIOUS_ROWS_SQL, codes, window.start)
    with report.stages.time("transform"):
        rows = stock_daily_rows(bars, factors)
    with report.stages.time("write"):
        report.wrote(
            await store.replace_window(
                wh, "stock_daily", rows, start=window.start, end=window.end, codes=codes
            )
        )
    if report.preview is None:
        report.preview = rows.head(runtime.PREVIEW_ROWS)
    with report.stages.time("check"):
        columns = ["code", "trade_date", "pre_close", "close", "back_adjust_factor"]
        return adjust_factor_violations(pd.concat([previous[columns], rows[columns]]))


async def _drop_codes_without_bars(wh: Warehouse, window: runtime.Window, codes: list[str]) -> int:
    """stock_daily rows of the window whose code has no raw bar there any more."""
    status = await wh.copy_pool.execute(
        "DELETE FROM stock_daily WHERE trade_date BETWEEN $1 AND $2 "
        "AND NOT (code = ANY($3::text[]))",
        window.start,
        window.end,
        codes,
    )
    return int(status.split()[-1])


def _factor_check_result(violations: pd.DataFrame | None) -> dg.AssetCheckResult:
    count = 0 if violations is None else len(violations)
    metadata: dict[str, Any] = {"violations": count}
    if count:
        metadata["examples"] = runtime.markdown_table(violations, rows=20)
    return dg.AssetCheckResult(
        check_name=FACTOR_CHECK,
        asset_key="stock_daily",
        passed=count == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=None if count == 0 else f"{count} rows break the back-adjust factor rules",
    )
