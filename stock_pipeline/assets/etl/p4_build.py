"""Read -> compute -> write of the P4 business tables and their checks: the bodies of p4.py.

Imported when an asset runs, not when definitions load (pandas, the writer).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg

from stock_pipeline.assets import runtime, store
from stock_pipeline.assets.window_checks import check_result
from stock_pipeline.compute.industry import membership_intervals
from stock_pipeline.resources import WarehouseResource
from stock_pipeline.warehouse.engine import Warehouse

# replace_window bounds that hold every interval: industry_membership is rebuilt whole.
ALL_TIME = (dt.date(1900, 1, 1), dt.date(2199, 12, 31))

RAW_SQL = """
SELECT snapshot_date, code, industry, industry_classification FROM raw_stock_industry
ORDER BY code, snapshot_date
"""
# Each stock's latest interval: its current industry, or its last known one once delisted.
LATEST_SQL = """
SELECT DISTINCT ON (code) code, industry, classification FROM industry_membership
ORDER BY code, valid_from DESC
"""
UPDATE_STOCKS_SQL = f"""
WITH latest AS ({LATEST_SQL}), target AS (
    SELECT s.code, l.industry, l.classification FROM stocks s LEFT JOIN latest l USING (code)
)
UPDATE stocks s
SET industry = t.industry, industry_classification = t.classification, updated_at = now()
FROM target t
WHERE s.code = t.code
  AND (s.industry, s.industry_classification) IS DISTINCT FROM (t.industry, t.classification)
"""
STOCKS_SUMMARY_SQL = """
SELECT count(*) FILTER (WHERE security_type = 1) AS stocks,
       count(*) FILTER (WHERE industry IS NOT NULL) AS with_industry,
       count(*) FILTER (WHERE security_type = 1 AND is_listed AND industry IS NULL)
           AS listed_stocks_without_industry,
       count(DISTINCT industry) AS industries
FROM stocks
"""
STOCKS_MISMATCH_SQL = f"""
WITH latest AS ({LATEST_SQL})
SELECT count(*) AS stocks,
       count(*) FILTER (WHERE (s.industry, s.industry_classification)
           IS DISTINCT FROM (l.industry, l.classification)) AS mismatched,
       (array_agg(s.code ORDER BY s.code) FILTER (WHERE (s.industry, s.industry_classification)
           IS DISTINCT FROM (l.industry, l.classification)))[1:10] AS examples
FROM stocks s LEFT JOIN latest l USING (code)
"""
# The stocks raw_stock_basic lists on the latest snapshot date, and which have a current
# industry.
COVERAGE_SQL = """
WITH latest AS (SELECT max(snapshot_date) AS day FROM raw_stock_industry), listed AS (
    SELECT b.code FROM raw_stock_basic b, latest
    WHERE b.security_type = 1 AND b.ipo_date <= latest.day
      AND (b.out_date IS NULL OR b.out_date > latest.day)
)
SELECT (SELECT day FROM latest) AS latest_snapshot,
       count(*) AS listed_stocks,
       count(m.code) AS with_current_industry,
       count(*) - count(m.code) AS without_current_industry,
       (SELECT count(DISTINCT industry) FROM industry_membership WHERE valid_to IS NULL)
           AS industries,
       (array_agg(l.code ORDER BY l.code) FILTER (WHERE m.code IS NULL))[1:10] AS examples
FROM listed l
LEFT JOIN industry_membership m
    ON m.code = l.code AND m.valid_to IS NULL AND m.industry IS NOT NULL
"""
INTERVALS_SQL = """
WITH ordered AS (
    SELECT code, valid_from, valid_to,
           lag(coalesce(valid_to, 'infinity'::date)) OVER (PARTITION BY code ORDER BY valid_from)
               AS previous_end
    FROM industry_membership
)
SELECT count(*) AS intervals,
       count(DISTINCT code) AS codes,
       count(*) FILTER (WHERE valid_to <= valid_from) AS empty_intervals,
       count(*) FILTER (WHERE previous_end > valid_from) AS overlaps,
       (array_agg(code ORDER BY code, valid_from)
           FILTER (WHERE valid_to <= valid_from OR previous_end > valid_from))[1:10] AS examples
FROM ordered
"""
# Exact reconciliation: every raw row matches the interval containing its snapshot, every
# (interval, snapshot inside it) pair has its raw row, every interval starts on one.
RECONCILE_SQL = """
WITH snapshots AS (SELECT DISTINCT snapshot_date FROM raw_stock_industry)
SELECT
    (SELECT count(*) FROM raw_stock_industry) AS raw_rows,
    (SELECT count(*) FROM raw_stock_industry r JOIN industry_membership m
        ON m.code = r.code AND m.valid_from <= r.snapshot_date
        AND (m.valid_to IS NULL OR m.valid_to > r.snapshot_date)
        AND m.industry IS NOT DISTINCT FROM r.industry
        AND m.classification IS NOT DISTINCT FROM r.industry_classification) AS matched,
    (SELECT count(*) FROM industry_membership m JOIN snapshots s
        ON s.snapshot_date >= m.valid_from
        AND (m.valid_to IS NULL OR s.snapshot_date < m.valid_to)) AS covered,
    (SELECT count(*) FROM industry_membership m WHERE NOT EXISTS (
        SELECT 1 FROM raw_stock_industry r
        WHERE r.code = m.code AND r.snapshot_date = m.valid_from)) AS intervals_off_snapshot
"""


async def build_industry_membership(warehouse: WarehouseResource) -> dg.MaterializeResult:
    """industry_membership from every stored snapshot, replaced whole in one transaction."""
    report = runtime.Report("industry_membership")
    async with warehouse.open() as wh:
        with report.stages.time("read"):
            raw = await store.read_frame(wh, "raw_stock_industry", RAW_SQL)
        if raw.empty:
            raise dg.Failure(
                "raw_stock_industry holds no snapshot: materialize raw_stock_industry first",
                allow_retries=False,
            )
        with report.stages.time("transform"):
            rows = membership_intervals(raw)
        with report.stages.time("write"):
            start, end = ALL_TIME
            report.wrote(
                await store.replace_window(
                    wh, "industry_membership", rows, start=start, end=end, date_column="valid_from"
                )
            )
        coverage = await _coverage(wh)
    per_code = rows.groupby("code").size()
    current = rows[rows["valid_to"].isna()]
    report.preview = rows[rows["code"].isin(per_code[per_code > 1].index)].head(10)
    report.extra.update(
        {
            "snapshots": int(raw["snapshot_date"].nunique()),
            "first_snapshot": str(raw["snapshot_date"].min().date()),
            "codes": int(len(per_code)),
            "intervals": int(len(rows)),
            "codes_with_several_intervals": int((per_code > 1).sum()),
            "current_intervals": int(len(current)),
            **{k: v for k, v in coverage.items() if k != "examples"},
        }
    )
    return report.result()


async def update_stocks_industry(warehouse: WarehouseResource) -> dg.MaterializeResult:
    """stocks.industry / industry_classification from each stock's latest interval, in one
    statement (changed rows only)."""
    report = runtime.Report("stocks")
    async with warehouse.open() as wh:
        if not await wh.copy_pool.fetchval("SELECT EXISTS (SELECT 1 FROM industry_membership)"):
            raise dg.Failure(
                "industry_membership is empty: materialize raw_stock_industry and "
                "industry_membership first (updating now would clear every stock's industry)",
                allow_retries=False,
            )
        with report.stages.time("write"):
            status = await wh.copy_pool.execute(UPDATE_STOCKS_SQL)
        report.rows_written["stocks"] = int(status.split()[-1])
        summary = dict(await wh.copy_pool.fetchrow(STOCKS_SUMMARY_SQL))
    report.extra.update({"stocks_changed": report.rows_written["stocks"], **summary})
    return report.result()


async def _coverage(wh: Warehouse) -> dict[str, Any]:
    found = dict(await wh.copy_pool.fetchrow(COVERAGE_SQL))
    found["latest_snapshot"] = str(found["latest_snapshot"])
    found["examples"] = found["examples"] or []
    return found


async def check_coverage(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    tolerance = warehouse.settings().coverage_tolerance
    async with warehouse.open() as wh:
        found = await _coverage(wh)
    listed, missing = found["listed_stocks"], found["without_current_industry"]
    if not listed:
        return check_result(
            False,
            found,
            f"raw_stock_basic lists no stock on {found['latest_snapshot']}: materialize "
            "raw_stock_basic",
        )
    return check_result(
        missing <= tolerance * listed,
        {**found, "tolerance": tolerance},
        f"{missing} of {listed} stocks listed on {found['latest_snapshot']} have no current "
        f"industry, e.g. {', '.join(found['examples'])}",
    )


async def check_intervals(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        found = dict(await wh.copy_pool.fetchrow(INTERVALS_SQL))
    found["examples"] = found["examples"] or []
    bad = found["empty_intervals"] + found["overlaps"]
    return check_result(
        bad == 0,
        found,
        f"{found['overlaps']} intervals overlap an earlier one of their stock and "
        f"{found['empty_intervals']} end before they start, e.g. " + ", ".join(found["examples"]),
    )


async def check_raw_reconciliation(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        found = dict(await wh.copy_pool.fetchrow(RECONCILE_SQL))
    raw = found["raw_rows"]
    passed = found["matched"] == raw == found["covered"] and found["intervals_off_snapshot"] == 0
    return check_result(
        passed,
        found,
        f"of {raw} raw rows {found['matched']} match their interval; intervals span "
        f"{found['covered']} (stock, snapshot) pairs; {found['intervals_off_snapshot']} "
        "intervals start off a snapshot of their stock: rematerialize industry_membership",
    )


async def check_stocks_industry(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        found = dict(await wh.copy_pool.fetchrow(STOCKS_MISMATCH_SQL))
    found["examples"] = found["examples"] or []
    return check_result(
        found["mismatched"] == 0,
        found,
        f"{found['mismatched']} stocks carry another industry than their latest interval, e.g. "
        + ", ".join(found["examples"])
        + ": rematerialize stocks_industry",
    )
