"""P4, industries: BaoStock's CSRC classification of every stock, sampled into snapshots.

raw_stock_industry holds one snapshot per sample day (snapshot_date): query_stock_industry
with an empty code answers every stock listed on that day. History is sampled on the first
trading day of each month from STOCK_PIPELINE_START_DATE, plus the latest published day
(compute.industry.sample_days): the first run asks one day a month; later runs ask only the
months not stored yet and the latest day, one or two requests a week. Each answer replaces its
snapshot whole (a stock gone from a re-asked day's answer leaves it).
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from stock_pipeline.assets import runtime, store
from stock_pipeline.assets.partitions import latest_published_day
from stock_pipeline.assets.raw.job import RawJob, SyncError, fail_if_mostly_failed
from stock_pipeline.baostock.fetch import fetch_many
from stock_pipeline.compute.industry import sample_days

API = "query_stock_industry"
# Answers per batch: each holds every listed stock (~5,000 rows), so batches stay small.
SNAPSHOTS_PER_BATCH = 12


async def _stored_snapshots(job: RawJob) -> set[dt.date]:
    rows = await job.wh.copy_pool.fetch(f"SELECT DISTINCT snapshot_date FROM {job.name}")
    return {r["snapshot_date"] for r in rows}


def _plan(job: RawJob, stored: set[dt.date]) -> list[dt.date]:
    latest = latest_published_day(job.calendar, job.settings.daily_run_time)
    start = job.settings.start_date
    if latest is None or latest < start:
        raise SyncError(
            f"{job.name}: no trading day published between STOCK_PIPELINE_START_DATE ({start}) "
            f"and today ({runtime.today()}): set the start date earlier, or run after the "
            "first trading day's data is out"
        )
    return sample_days(job.calendar.sessions_between(start, latest), stored)


async def sync_stock_industry(job: RawJob) -> runtime.Report:
    """Every stock's industry on each sample day not stored yet (and the latest day), each
    answer replacing its snapshot whole."""
    report = job.report
    stored = await _stored_snapshots(job)
    days = _plan(job, stored)
    answered: dict[dt.date, int] = {}

    async def write(frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        frame["snapshot_date"] = pd.to_datetime(frame["snapshot_date"])
        for stamp, rows in frame.groupby("snapshot_date", sort=True):
            day = pd.Timestamp(stamp).date()
            answered[day] = len(rows)
            with report.stages.time("write"):
                report.wrote(
                    await store.replace_window(
                        job.wh, job.name, rows, start=day, end=day, date_column="snapshot_date"
                    )
                )
            if report.preview is None:
                report.preview = rows.head(runtime.PREVIEW_ROWS)

    requests = {day.isoformat(): {"code": "", "date": day.isoformat()} for day in days}
    with report.stages.time("fetch"):
        result = await fetch_many(
            job.pool,
            API,
            requests,
            label=f"p4.{job.name}",
            batch_size=min(job.batch_size, SNAPSHOTS_PER_BATCH),
            on_batch=write,
            key_column="snapshot_date",
        )
    # Batches were written while the fetch went on (on_batch): the fetch's own time is the rest.
    report.stages.add("fetch", -report.stages.seconds.get("write", 0.0))
    report.requested, report.failures = result.requested, result.failures
    empty = [d for d in days if d.isoformat() not in result.failures and d not in answered]
    report.extra.update(
        {
            "snapshots_requested": len(days),
            "snapshots_already_stored": len(stored - set(days)),
            "snapshots_stored": len(stored | set(answered)),
            "newest_snapshot": str(max(stored | set(answered), default="none")),
            "rows_per_snapshot": {str(d): n for d, n in sorted(answered.items())},
            "snapshots_without_rows": [str(d) for d in empty],
        }
    )
    if empty:
        job.log.warning(
            f"[{job.name}] BaoStock listed no stock for {len(empty)} sample days (e.g. "
            f"{', '.join(map(str, empty[:5]))}); they stay unsampled and are asked again next "
            "run. Days before BaoStock's industry history: set STOCK_PIPELINE_START_DATE later"
        )
    fail_if_mostly_failed(job, result.requested, result.failures)
    return report
