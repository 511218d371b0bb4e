"""P2, corporate actions and reports, by calendar year: how each raw dataset is fetched.

- raw_dividend: query_dividend_data(code, year=Y, yearType="report") for each year Y of the
  range and each stock listed during Y: the plans ANNOUNCED in Y (report_year = Y). Each
  (year, round of codes) replaces the fetched codes' plans announced in that year;
- raw_performance_express / raw_forecast: ONE request per stock listed during the range,
  start_date..end_date = the range within the years the stock is listed in, through today
  (BaoStock filters these reports by publication date); it replaces the fetched codes' reports
  published in that span.
A range run therefore asks, and stores, what year-by-year runs would.

Rows that cannot be stored (an empty key date, a date outside the key range the request
replaces, a repeated key) are left out and listed as bad rows in the metadata and the log;
the rest of the reply is stored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from stock_pipeline.assets import runtime, store
from stock_pipeline.assets.raw.job import RawJob, SyncError, fail_if_mostly_failed
from stock_pipeline.baostock.fetch import FetchResult, fetch_many
from stock_pipeline.compute.corporate import split_bad_rows
from stock_pipeline.compute.reference import STOCK_TYPE
from stock_pipeline.warehouse.tables import RAW_TABLES

# Codes per fetch -> write round: what a round fetched is stored before the next one starts.
CODES_PER_ROUND = 500
BAD_ROWS_SHOWN = 20

LISTED_STOCKS_SQL = """
SELECT code, ipo_date, out_date FROM raw_stock_basic
WHERE security_type = $1 AND coalesce(ipo_date, $3) <= $3 AND (out_date IS NULL OR out_date >= $2)
ORDER BY code
"""


@dataclass(frozen=True)
class _Dataset:
    """How one P2 dataset's rows are keyed and replaced."""

    api: str
    date_column: str  # the date the replaced key range is on


DIVIDEND = _Dataset("query_dividend_data", "divid_plan_announce_date")
EXPRESS = _Dataset("query_performance_express_report", "performance_exp_pub_date")
FORECAST = _Dataset("query_forecast_report", "profit_forcast_exp_pub_date")


async def listed_spans(
    job: RawJob, first: dt.date, last: dt.date
) -> dict[str, tuple[dt.date, dt.date]]:
    """Stocks (raw_stock_basic type 1) listed on some day of [first, last], delisted ones
    included, each with the part of [first, last] in the calendar years it is listed in.

    A stock counts in each year it is listed on some day of, as a year run sees it: so a range
    asks every stock for what the year-by-year runs would ask it for, in one request.
    """
    if not await job.wh.copy_pool.fetchval("SELECT EXISTS (SELECT 1 FROM raw_stock_basic)"):
        raise SyncError(
            f"{job.name}: raw_stock_basic is empty: materialize it first (it gives the stocks "
            "and their listing dates)"
        )
    rows = await job.wh.copy_pool.fetch(LISTED_STOCKS_SQL, STOCK_TYPE, first, last)
    spans = {}
    for r in rows:
        ipo, out = r["ipo_date"], r["out_date"]
        since = max(first, dt.date(ipo.year, 1, 1)) if ipo else first
        until = min(last, dt.date(out.year, 12, 31)) if out else last
        spans[r["code"]] = (since, until)
    return spans


def _rounds(codes: Sequence[str]) -> list[list[str]]:
    return [list(codes[i : i + CODES_PER_ROUND]) for i in range(0, len(codes), CODES_PER_ROUND)]


class _Progress:
    """What the rounds of one sync add up to: requests, failures, bad rows."""

    def __init__(self) -> None:
        self.requested = 0
        self.server_requests = 0
        self.failures: dict[str, str] = {}
        self.bad: list[pd.DataFrame] = []

    def add(self, result: FetchResult, year: int | None = None) -> None:
        """A round's counts; its failures keyed by code, or "<code> <year>" for a year's."""
        self.requested += result.requested
        self.server_requests += result.server_requests
        for code, reason in result.failures.items():
            self.failures[code if year is None else f"{code} {year}"] = reason


async def _fetch_and_replace(
    job: RawJob,
    dataset: _Dataset,
    requests: dict[str, dict[str, str]],
    span: tuple[dt.date, dt.date],
    progress: _Progress,
    report_year: int | None = None,
) -> None:
    """One round: fetch `requests` (one per code), then make the stored rows of the codes
    fetched OK with their date in `span` exactly the valid rows of their replies."""
    report = job.report
    with report.stages.time("fetch"):
        result = await fetch_many(
            job.pool,
            dataset.api,
            requests,
            label=f"p2.{job.name}",
            batch_size=job.batch_size,
        )
    ok = [code for code in requests if code not in result.failures]
    frame = result.frame
    if report_year is not None:
        frame.insert(0, "report_year", report_year)
    first, last = span
    key = [c.name for c in RAW_TABLES[job.name].primary_key.columns]
    rows, bad = split_bad_rows(frame, key, date_column=dataset.date_column, start=first, end=last)
    if ok:
        with report.stages.time("write"):
            report.wrote(
                await store.replace_window(
                    job.wh,
                    job.name,
                    rows,
                    start=first,
                    end=last,
                    codes=ok,
                    date_column=dataset.date_column,
                )
            )
    if report.preview is None and not rows.empty:
        report.preview = rows.head(runtime.PREVIEW_ROWS)
    if not bad.empty:
        progress.bad.append(bad)
    progress.add(result, report_year)


async def sync_dividend(job: RawJob) -> runtime.Report:
    """Dividend plans announced in each year of the window, per stock listed in that year."""
    window = job.window_required
    progress = _Progress()
    listed: dict[str, int] = {}
    every: set[str] = set()
    for year in range(window.start.year, window.end.year + 1):
        first, last = dt.date(year, 1, 1), dt.date(year, 12, 31)
        codes = list(await listed_spans(job, first, last))
        listed[str(year)] = len(codes)
        every.update(codes)
        for chunk in _rounds(codes):
            requests = {c: {"code": c, "year": str(year), "yearType": "report"} for c in chunk}
            await _fetch_and_replace(job, DIVIDEND, requests, (first, last), progress, year)
    job.report.extra["stocks_listed_per_year"] = listed
    # Failure keys are "<code> <year>": a code is ok when each of its years was.
    failed: dict[str, str] = {}
    for key, reason in progress.failures.items():
        code, _, year = key.partition(" ")
        failed.setdefault(code, f"{year}: {reason}")
    return await _finish(job, progress, sorted(every), failed, min(window.end, runtime.today()))


async def sync_performance_express(job: RawJob) -> runtime.Report:
    """Performance express reports published in the window, one request per listed stock."""
    return await _sync_published_reports(job, EXPRESS)


async def sync_forecast(job: RawJob) -> runtime.Report:
    """Earnings forecasts published in the window, one request per listed stock."""
    return await _sync_published_reports(job, FORECAST)


async def _sync_published_reports(job: RawJob, dataset: _Dataset) -> runtime.Report:
    window = job.window_required
    # The current year's partition ends on Dec 31: ask for what is published through today.
    end = min(window.end, runtime.today())
    if end < window.start:
        raise SyncError(f"{job.name}: the range {window} starts after today ({end})")
    spans = await listed_spans(job, window.start, end)
    by_span: dict[tuple[dt.date, dt.date], list[str]] = {}
    for code, span in spans.items():
        by_span.setdefault(span, []).append(code)
    progress = _Progress()
    for (since, until), codes in sorted(by_span.items()):
        for chunk in _rounds(codes):
            requests = {
                c: {"code": c, "start_date": since.isoformat(), "end_date": until.isoformat()}
                for c in chunk
            }
            await _fetch_and_replace(job, dataset, requests, (since, until), progress)
    codes = sorted(spans)
    job.report.extra["stocks_listed"] = len(codes)
    job.report.extra["published_through"] = str(end)
    return await _finish(job, progress, codes, progress.failures, end)


async def _finish(
    job: RawJob,
    progress: _Progress,
    codes: Sequence[str],
    failed: Mapping[str, str],
    through: dt.date,
) -> runtime.Report:
    """The report's counts, sync_state per code (`failed`: code -> reason), the bad rows;
    fails a mostly failed range."""
    report = job.report
    report.requested = progress.requested
    report.failures = progress.failures
    report.extra["requests_per_key"] = round(
        progress.server_requests / max(1, progress.requested), 3
    )
    await job.record_state(
        ok=[c for c in codes if c not in failed], failures=dict(failed), through=through
    )
    _report_bad_rows(job, progress.bad)
    fail_if_mostly_failed(job, progress.requested, progress.failures)
    return report


def _report_bad_rows(job: RawJob, bad: list[pd.DataFrame]) -> None:
    frame = pd.concat(bad, ignore_index=True) if bad else pd.DataFrame()
    job.report.extra["bad_rows"] = len(frame)
    if frame.empty:
        return
    job.report.extra["bad_rows_examples"] = runtime.markdown_table(frame, rows=BAD_ROWS_SHOWN)
    reasons = frame["problem"].value_counts()
    job.log.warning(
        f"[p2.{job.name}] {len(frame)} rows BaoStock served could not be stored and were left "
        f"out ({'; '.join(f'{n}x {p}' for p, n in reasons.items())}), e.g. "
        + ", ".join(f"{r.code} ({r.problem})" for r in frame.head(5).itertuples())
        + ": the rest of each reply was stored"
    )
