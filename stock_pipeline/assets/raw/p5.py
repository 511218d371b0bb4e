"""P5, the extended data: weekly and monthly k-lines, macro series.

- raw_k_weekly / raw_k_monthly: unadjusted bars (adjustflag 3, apis.K_PERIOD_FIELDS) of the
  stocks listed during the range, ONE request per code for the whole range (Monday..Sunday of
  its weeks, or the first..last day of its months). BaoStock dates a bar by its last trading
  day in the period, so every bar falls inside the range it was fetched for, and a range run
  stores what week-by-week (month-by-month) runs would;
- raw_deposit_rate, raw_loan_rate, raw_required_reserve_ratio, raw_money_supply_month,
  raw_money_supply_year: the whole history each time (one request each, a few hundred rows),
  upserted. Not from STOCK_PIPELINE_START_DATE: the benchmark rates in force on that date were
  announced years before it (BaoStock's have not changed since 2015).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from stock_pipeline.assets import runtime, store
from stock_pipeline.assets.raw.job import RawJob, SyncError, fail_if_mostly_failed
from stock_pipeline.baostock.apis import K_PERIOD_FIELDS
from stock_pipeline.baostock.fetch import fetch_daily_bars
from stock_pipeline.baostock.typed import empty_frame
from stock_pipeline.compute.reference import STOCK_TYPE

if TYPE_CHECKING:
    from stock_pipeline.warehouse.writer import WriteResult

# query_history_k_data_plus's frequency per period kind.
FREQUENCY = {"week": "w", "month": "m"}

LISTED_STOCKS_SQL = """
SELECT code FROM raw_stock_basic
WHERE security_type = $1 AND (ipo_date IS NULL OR ipo_date <= $3)
  AND (out_date IS NULL OR out_date >= $2)
ORDER BY code
"""


async def listed_stocks(job: RawJob) -> list[str]:
    """The stocks (raw_stock_basic type 1) listed on some day of the window: listed on or
    before its end, and not delisted before its start (delisted ones included). A stock
    without an IPO date is kept: none is skipped for lack of metadata."""
    window = job.window_required
    if not await job.wh.copy_pool.fetchval("SELECT EXISTS (SELECT 1 FROM raw_stock_basic)"):
        raise SyncError(
            f"{job.name}: raw_stock_basic is empty: materialize it first (it gives the stocks "
            "and their listing dates)"
        )
    rows = await job.wh.copy_pool.fetch(LISTED_STOCKS_SQL, STOCK_TYPE, window.start, window.end)
    return [r["code"] for r in rows]


async def sync_k_weekly(job: RawJob) -> runtime.Report:
    """Weekly bars of the stocks listed during the weeks of the range."""
    return await _sync_period_bars(job, "week")


async def sync_k_monthly(job: RawJob) -> runtime.Report:
    """Monthly bars of the stocks listed during the months of the range."""
    return await _sync_period_bars(job, "month")


async def _sync_period_bars(job: RawJob, kind: str) -> runtime.Report:
    """One request per code for the whole window; each batch replaces its codes' bars in the
    window as it arrives. Codes fetched without a bar (suspended throughout, or delisted
    before the window's first trading day) get their stored bars in the window removed too."""
    report, window = job.report, job.window_required
    universe = await listed_stocks(job)
    written: set[str] = set()

    async def write(frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        codes = frame["code"].unique().tolist()
        with report.stages.time("write"):
            report.wrote(await _replace(job, frame, codes))
        written.update(codes)
        if report.preview is None:
            report.preview = frame.head(runtime.PREVIEW_ROWS)

    with report.stages.time("fetch"):
        result = await fetch_daily_bars(
            job.pool,
            universe,
            window.start,
            window.end,
            frequency=FREQUENCY[kind],
            fields=K_PERIOD_FIELDS,
            label=f"p5.{job.name}",
            batch_size=job.batch_size,
            on_batch=write,
        )
    # Batches were written while the fetch went on (on_batch): the fetch's own time is the rest.
    report.stages.add("fetch", -report.stages.seconds.get("write", 0.0))
    without_bars = [c for c in universe if c not in written and c not in result.failures]
    if without_bars:
        with report.stages.time("write"):
            report.wrote(await _replace(job, _no_bars(), without_bars))
    report.requested = result.requested
    report.failures = result.failures
    report.extra.update(
        {
            "listed_codes": len(universe),
            "codes_without_bars": len(without_bars),
            "kline_requests_per_code": round(result.server_requests / max(1, result.requested), 3),
            f"{kind}s": _periods(window, kind),
        }
    )
    await job.record_state(
        ok=[c for c in universe if c not in result.failures], failures=result.failures
    )
    fail_if_mostly_failed(job, result.requested, result.failures)
    return report


async def _replace(job: RawJob, frame: pd.DataFrame, codes: list[str]) -> WriteResult:
    window = job.window_required
    return await store.replace_window(
        job.wh, job.name, frame, start=window.start, end=window.end, codes=codes
    )


def _no_bars() -> pd.DataFrame:
    return empty_frame("query_history_k_data_plus", [f.name for f in K_PERIOD_FIELDS])


def _periods(window: runtime.Window, kind: str) -> int:
    if kind == "week":
        return (window.end - window.start).days // 7 + 1
    return (window.end.year - window.start.year) * 12 + window.end.month - window.start.month + 1


# Macro datasets: the request of each, for the whole history BaoStock has.
MACRO_REQUESTS: dict[str, tuple[str, dict[str, str]]] = {
    "raw_deposit_rate": ("query_deposit_rate_data", {}),
    "raw_loan_rate": ("query_loan_rate_data", {}),
    # yearType "0": selected by announcement date (pub_date), like the rate tables.
    "raw_required_reserve_ratio": ("query_required_reserve_ratio_data", {"yearType": "0"}),
    "raw_money_supply_month": ("query_money_supply_data_month", {}),
    "raw_money_supply_year": ("query_money_supply_data_year", {}),
}


async def _sync_macro(job: RawJob) -> runtime.Report:
    """One request for the table's whole history, upserted by its key."""
    report = job.report
    api, params = MACRO_REQUESTS[job.name]
    with report.stages.time("fetch"):
        result = await job.pool.query(api, start_date="", end_date="", **params)
        frame = job.to_frame(api, result)
    report.requested = 1
    if frame.empty:
        raise SyncError(
            f"{job.name}: BaoStock's {api} returned no rows for its whole history: check "
            "STOCK_PIPELINE_BAOSTOCK_ENDPOINT and rematerialize (nothing was written)"
        )
    with report.stages.time("write"):
        report.wrote(await store.upsert(job.wh, job.name, frame))
    report.preview = frame.tail(runtime.PREVIEW_ROWS)
    report.extra.update(_coverage(frame))
    return report


def _coverage(frame: pd.DataFrame) -> dict[str, Any]:
    """The first and last period served, for the metadata."""
    if "stat_year" in frame.columns:
        keys = ["stat_year", "stat_month"] if "stat_month" in frame.columns else ["stat_year"]
        ordered = frame.sort_values(keys)
        first, last = ("-".join(f"{int(v):02d}" for v in ordered.iloc[i][keys]) for i in (0, -1))
    else:
        dates = pd.to_datetime(frame["pub_date"])
        first, last = f"{dates.min():%Y-%m-%d}", f"{dates.max():%Y-%m-%d}"
    return {"rows_served": len(frame), "first_period": first, "last_period": last}


async def sync_deposit_rate(job: RawJob) -> runtime.Report:
    """Benchmark deposit rates, by announcement date."""
    return await _sync_macro(job)


async def sync_loan_rate(job: RawJob) -> runtime.Report:
    """Benchmark loan rates, by announcement date."""
    return await _sync_macro(job)


async def sync_required_reserve_ratio(job: RawJob) -> runtime.Report:
    """Required reserve ratio changes (announcement and effective dates)."""
    return await _sync_macro(job)


async def sync_money_supply_month(job: RawJob) -> runtime.Report:
    """M0/M1/M2 month-end balances with their changes, per month."""
    return await _sync_macro(job)


async def sync_money_supply_year(job: RawJob) -> runtime.Report:
    """M0/M1/M2 year-end balances with their changes, per year."""
    return await _sync_macro(job)
