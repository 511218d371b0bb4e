"""Read -> compute -> write of technical_daily: the body of the asset in __init__.py.

Per batch of codes: the range's stock_daily rows, the last LOOKBACK traded bars before it (the
windows' history) and the last technical_daily row before it (the recursions' state), then
compute/indicators.py, then replace the codes' window. Before anything is written, every code's
state is checked to continue its stock_daily history: a range on top of a hole would be wrong
for good, so the run fails and says where to start instead.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import dagster as dg
import pandas as pd

from stock_pipeline.assets import runtime, store
from stock_pipeline.compute.indicators import (
    INDICATORS,
    LOOKBACK,
    STATE_COLUMNS,
    compute_indicators,
)
from stock_pipeline.resources import WarehouseResource
from stock_pipeline.warehouse.engine import Warehouse

# Codes per read -> compute -> write round: about 300k rows for five years of range (two
# rounds are in memory at once, see _compute_and_write).
CODES_PER_BATCH = 250

CODES_SQL = """
SELECT code, count(*) AS rows FROM stock_daily WHERE trade_date BETWEEN $1 AND $2
GROUP BY code ORDER BY code
"""
RANGE_SQL = """
SELECT code, trade_date, high, low, close, volume, back_adjust_factor FROM stock_daily
WHERE code = ANY($1::text[]) AND trade_date BETWEEN $2 AND $3
"""
LOOKBACK_SQL = f"""
SELECT b.* FROM unnest($1::text[]) AS c(code) CROSS JOIN LATERAL (
    SELECT code, trade_date, high, low, close, volume, back_adjust_factor FROM stock_daily
    WHERE code = c.code AND trade_date < $2 AND close IS NOT NULL
    ORDER BY trade_date DESC LIMIT {LOOKBACK}
) b
"""
PREVIOUS_SQL = f"""
SELECT p.* FROM unnest($1::text[]) AS c(code) CROSS JOIN LATERAL (
    SELECT code, trade_date, {", ".join((*INDICATORS, *STATE_COLUMNS))} FROM technical_daily
    WHERE code = c.code AND trade_date < $2 ORDER BY trade_date DESC LIMIT 1
) p
"""
# Per code: its last stock_daily day before the range; the technical_daily row before it (day
# and traded bars counted); the traded days stock_daily has before the range (one aggregate
# over the history: about a second for five years of the market); and the first stock_daily
# day after that row (where a hole starts).
CONTINUITY_SQL = """
WITH traded AS (
    SELECT code, count(close) AS traded_before FROM stock_daily
    WHERE code = ANY($1::text[]) AND trade_date < $2 GROUP BY code
)
SELECT c.code, b.last_bar, t.trade_date AS last_state, t.traded_bars,
    coalesce(traded.traded_before, 0) AS traded_before,
    (SELECT min(trade_date) FROM stock_daily WHERE code = c.code AND trade_date < $2
        AND trade_date > coalesce(t.trade_date, '-infinity'::date)) AS first_missing,
    (SELECT min(trade_date) FROM stock_daily WHERE code = c.code) AS first_bar
FROM unnest($1::text[]) AS c(code)
LEFT JOIN traded USING (code)
LEFT JOIN LATERAL (SELECT max(trade_date) AS last_bar FROM stock_daily
                   WHERE code = c.code AND trade_date < $2) b ON true
LEFT JOIN LATERAL (SELECT trade_date, traded_bars FROM technical_daily
                   WHERE code = c.code AND trade_date < $2 ORDER BY trade_date DESC LIMIT 1) t
    ON true
"""
# For codes whose history changed: the first day before the range that is in one table and not
# the other (a day stock_daily gained or lost after the indicators were computed).
FIRST_CHANGE_SQL = """
SELECT min(day) FROM (
    SELECT s.trade_date AS day FROM stock_daily s
    WHERE s.code = ANY($1::text[]) AND s.trade_date < $2 AND NOT EXISTS (
        SELECT 1 FROM technical_daily t WHERE t.code = s.code AND t.trade_date = s.trade_date)
    UNION ALL
    SELECT t.trade_date FROM technical_daily t
    WHERE t.code = ANY($1::text[]) AND t.trade_date < $2 AND NOT EXISTS (
        SELECT 1 FROM stock_daily s WHERE s.code = t.code AND s.trade_date = t.trade_date)
) days
"""


def _holes(rows: list) -> list:
    """Codes whose stored state stops before their last stock_daily day before the range."""
    return [
        r
        for r in rows
        if r["last_bar"] is not None
        and (r["last_state"] is None or r["last_state"] < r["last_bar"])
    ]


def changed_history(rows: list) -> list:
    """Codes whose stored state does not match stock_daily's history before the range now: it
    stands on a day stock_daily no longer has, or it counted other traded days (days added,
    removed or turned traded after the indicators were computed)."""

    def changed(r: Any) -> bool:
        state, bar = r["last_state"], r["last_bar"]
        if state is None:
            return False
        stands_on_a_lost_day = bar is None or state > bar
        counted_other_days = state == bar and r["traded_before"] != (r["traded_bars"] or 0)
        return stands_on_a_lost_day or counted_other_days

    return [r for r in rows if changed(r)]


def continuity_problem(
    rows: list, window: runtime.Window, first_change: dt.date | None = None
) -> str | None:
    """Why the range cannot continue from the stored state (None: every code can).

    A hole: stock_daily has days before the range that technical_daily has not reached. A
    changed history (see changed_history): recompute from `first_change` (the first day that
    differs, when known), else from the first day of those codes."""
    holes, changed = _holes(rows), changed_history(rows)
    problems = []
    if holes:
        start = min(r["first_missing"] for r in holes)
        problems.append(
            f"{len(holes)} codes have stock_daily days before {window.start} without "
            f"technical_daily rows (from {start}, e.g. {_examples(holes)}): the recursive "
            f"indicators continue from the day before a range, so materialize technical_daily "
            f"from {start} first, or start this range there"
        )
    if changed:
        firsts = [r["first_bar"] for r in changed if r["first_bar"] is not None]
        start = first_change or (min(firsts) if firsts else window.start)
        problems.append(
            f"the stock_daily history of {len(changed)} codes (e.g. {_examples(changed)}) "
            "changed after their indicators were computed (other traded days before the range "
            f"than the stored state counted): materialize technical_daily again from {start}"
        )
    if not problems:
        return None
    return f"technical_daily {window}: " + "; ".join(problems) + ". Nothing was written."


def _examples(rows: list) -> str:
    return ", ".join(sorted(r["code"] for r in rows)[:5])


async def build_technical_daily(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    window: runtime.Window,
    day_before: dt.date | None,
) -> dg.MaterializeResult:
    """`day_before`: the trading day before the window (None: the calendar's first)."""
    report = runtime.Report("technical_daily", window)
    async with warehouse.open() as wh:
        await _require_day_before(wh, window, day_before)
        counts = await wh.copy_pool.fetch(CODES_SQL, window.start, window.end)
        codes = [r["code"] for r in counts]
        with report.stages.time("read"):
            continuity = await wh.copy_pool.fetch(CONTINUITY_SQL, codes, window.start)
            changed = [r["code"] for r in changed_history(continuity)]
            first_change = None
            if changed:
                first_change = await wh.copy_pool.fetchval(FIRST_CHANGE_SQL, changed, window.start)
        problem = continuity_problem(continuity, window, first_change)
        if problem:
            raise dg.Failure(description=problem, allow_retries=False)
        dropped = await _drop_codes_without_bars(wh, window, codes)
        expected = sum(r["rows"] for r in counts)
        async with store.bulk_load_if_large(wh, "technical_daily", window, expected) as bulk:
            await _compute_and_write(context, wh, window, codes, report)
    rows = report.rows_written.get("technical_daily", 0)
    compute_s = report.stages.seconds.get("compute", 0.0)
    report.extra.update(
        {
            "codes": len(codes),
            "bars_per_second_compute": round(rows / compute_s) if compute_s else None,
            "rows_deleted_of_codes_without_bars": dropped,
            "index_management": bulk,
        }
    )
    context.log.info(
        f"[indicators.technical_daily] {window}: {rows} rows of {len(codes)} codes, "
        f"{report.stages.wall_s:.1f}s"
    )
    return report.result()


async def _require_day_before(
    wh: Warehouse, window: runtime.Window, day_before: dt.date | None
) -> None:
    """A whole trading day missing from stock_daily just before the range (its run failed)
    would make the range continue across it as if it were no day at all."""
    if day_before is None:
        return
    found = await wh.copy_pool.fetchrow(
        "SELECT EXISTS (SELECT 1 FROM stock_daily WHERE trade_date < $1) AS history, "
        "EXISTS (SELECT 1 FROM stock_daily WHERE trade_date = $2) AS day_before",
        window.start,
        day_before,
    )
    if found["history"] and not found["day_before"]:
        raise dg.Failure(
            description=(
                f"technical_daily {window}: stock_daily has no rows on {day_before}, the trading "
                "day before the range, so the indicators would continue across a missing day. "
                f"Materialize the daily graph (raw assets and stock_daily) for {day_before} "
                "first, then technical_daily from it. Nothing was written."
            ),
            allow_retries=False,
        )


async def _compute_and_write(
    context: dg.AssetExecutionContext,
    wh: Warehouse,
    window: runtime.Window,
    codes: list[str],
    report: runtime.Report,
) -> None:
    """Batch by batch; the next batch is read and computed while the server stores the last
    one (two batches in memory at most; the stages' seconds overlap)."""
    writing: asyncio.Task | None = None
    try:
        for number, start in enumerate(range(0, len(codes), CODES_PER_BATCH), 1):
            batch = codes[start : start + CODES_PER_BATCH]
            rows = await _read_and_compute(wh, window, batch, report)
            if writing is not None:
                await writing
            writing = asyncio.create_task(_write(wh, window, batch, rows, report))
            context.log.debug(
                f"[indicators.technical_daily] batch {number}: {len(batch)} codes computed, "
                f"{report.stages.wall_s:.1f}s"
            )
        if writing is not None:
            await writing
    finally:
        # On an error, the write in flight is stopped (its transaction rolls back) and its own
        # error, if it had one, is logged rather than lost.
        if writing is not None:
            if not writing.done():
                writing.cancel()
            (outcome,) = await asyncio.gather(writing, return_exceptions=True)
            if isinstance(outcome, Exception):
                context.log.error(f"[indicators.technical_daily] a batch's write failed: {outcome}")


async def _read_and_compute(
    wh: Warehouse, window: runtime.Window, codes: list[str], report: runtime.Report
) -> pd.DataFrame:
    with report.stages.time("read"):
        bars = await store.read_frame(wh, "stock_daily", RANGE_SQL, codes, window.start, window.end)
        lookback = await store.read_frame(wh, "stock_daily", LOOKBACK_SQL, codes, window.start)
        previous = await store.read_frame(wh, "technical_daily", PREVIOUS_SQL, codes, window.start)
    with report.stages.time("compute"):
        # In a thread: NumPy lets the event loop go on feeding the previous batch's COPY.
        rows = await asyncio.to_thread(compute_indicators, bars, lookback, previous)
    if report.preview is None:
        report.preview = rows.loc[rows["traded_bars"] > 0].head(runtime.PREVIEW_ROWS)
    return rows


async def _write(
    wh: Warehouse,
    window: runtime.Window,
    codes: list[str],
    rows: pd.DataFrame,
    report: runtime.Report,
) -> None:
    with report.stages.time("write"):
        report.wrote(
            await store.replace_window(
                wh, "technical_daily", rows, start=window.start, end=window.end, codes=codes
            )
        )


async def _drop_codes_without_bars(wh: Warehouse, window: runtime.Window, codes: list[str]) -> int:
    """technical_daily rows of the window whose code has no stock_daily row there any more
    (before the load: the rows it writes are not scanned again)."""
    status = await wh.copy_pool.execute(
        "DELETE FROM technical_daily WHERE trade_date BETWEEN $1 AND $2 "
        "AND NOT (code = ANY($3::text[]))",
        window.start,
        window.end,
        codes,
    )
    return int(status.split()[-1])
