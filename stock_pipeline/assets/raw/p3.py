"""P3, indexes: how each raw dataset is fetched from BaoStock and written.

- raw_index_daily: daily bars of the indexes in STOCK_PIPELINE_INDEX_CODES, ONE request per
  index for the whole range; each index fetched replaces its bars of the range;
- raw_hs300_stocks, raw_sz50_stocks, raw_zz500_stocks: BaoStock answers "the constituents on
  day D" with the list in force on D, every row dated by the day that list took effect
  (updateDate). Asked on sample days (the first trading day of each month from the start date,
  and the latest published day), the answers are the history of dated snapshots. A refresh asks
  only the days whose answer can be new (compute.membership.snapshot_sample_days): the latest
  published day and the months begun since the last complete sync; an empty table is rebuilt
  from the start date.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd

from stock_pipeline.assets import runtime, store
from stock_pipeline.assets.partitions import latest_published_day
from stock_pipeline.assets.raw.job import RawJob, SyncError, fail_if_mostly_failed
from stock_pipeline.baostock.apis import K_INDEX_FIELDS
from stock_pipeline.baostock.fetch import fetch_daily_bars, fetch_many
from stock_pipeline.compute.membership import snapshot_sample_days
from stock_pipeline.warehouse.tables import RAW_DATASETS

# The day each answer was asked for, kept beside its rows until they are written.
ASKED_ON = "asked_on"


async def sync_index_daily(job: RawJob) -> runtime.Report:
    """Daily bars of the configured indexes over the window, one request per index."""
    report, window = job.report, job.window_required
    codes = list(job.settings.index_codes)
    with report.stages.time("fetch"):
        result = await fetch_daily_bars(
            job.pool,
            codes,
            window.start,
            window.end,
            fields=K_INDEX_FIELDS,
            label=f"p3.{job.name}",
            batch_size=job.batch_size,
        )
    report.requested, report.failures = result.requested, result.failures
    fetched = [c for c in codes if c not in result.failures]
    frame = result.frame
    if fetched and frame.empty:
        raise SyncError(
            f"BaoStock served no bar of any of {', '.join(fetched)} for {window}: is its data "
            "behind (the day not published yet), or does STOCK_PIPELINE_INDEX_CODES name "
            "indexes it does not know?"
        )
    if fetched:
        with report.stages.time("write"):
            report.wrote(
                await store.replace_window(
                    job.wh, job.name, frame, start=window.start, end=window.end, codes=fetched
                )
            )
    report.preview = frame.head(runtime.PREVIEW_ROWS)
    _report_missing_sessions(job, frame, fetched)
    fail_if_mostly_failed(job, result.requested, result.failures)
    return report


def _report_missing_sessions(job: RawJob, frame: pd.DataFrame, fetched: list[str]) -> None:
    """Sessions of the window an index fetched has no bar for (e.g. before its base date)."""
    window = job.window_required
    days = frame.groupby("code")["trade_date"].nunique() if len(frame) else pd.Series()
    missing = {c: window.days - int(days.get(c, 0)) for c in fetched}
    missing = {c: n for c, n in missing.items() if n}
    job.report.extra["bars_per_index"] = {c: int(days.get(c, 0)) for c in fetched}
    job.report.extra["sessions_without_bar"] = missing
    if missing:
        job.log.warning(
            f"[{job.name}] {window}: indexes without a bar on some sessions: "
            + ", ".join(f"{c} {n}/{window.days}" for c, n in missing.items())
        )


async def sync_hs300_stocks(job: RawJob) -> runtime.Report:
    """CSI 300 constituents (sh.000300), as dated snapshots."""
    return await _sync_snapshots(job)


async def sync_sz50_stocks(job: RawJob) -> runtime.Report:
    """SSE 50 constituents (sh.000016), as dated snapshots."""
    return await _sync_snapshots(job)


async def sync_zz500_stocks(job: RawJob) -> runtime.Report:
    """CSI 500 constituents (sh.000905), as dated snapshots."""
    return await _sync_snapshots(job)


async def _sync_snapshots(job: RawJob) -> runtime.Report:
    """Ask the sample days whose answer can be new; replace each snapshot answered whole."""
    report = job.report
    api = next(spec.api for spec in RAW_DATASETS if spec.table == job.name)
    days, plan = await _sample_plan(job)
    requests = {d.isoformat(): {"date": d.isoformat()} for d in days}
    with report.stages.time("fetch"):
        result = await fetch_many(
            job.pool,
            api,
            requests,
            label=f"p3.{job.name}",
            batch_size=job.batch_size,
            key_column=ASKED_ON,
        )
    report.requested, report.failures = result.requested, result.failures
    answers = result.frame
    snapshots = answers.drop(columns=ASKED_ON).drop_duplicates(["update_date", "code"])
    with report.stages.time("write"):
        for day, rows in snapshots.groupby("update_date", sort=True):
            report.wrote(
                await store.replace_window(
                    job.wh,
                    job.name,
                    rows,
                    start=day.date(),
                    end=day.date(),
                    date_column="update_date",
                )
            )
    answered = set(answers[ASKED_ON].unique()) if len(answers) else set()
    empty = [k for k in requests if k not in answered and k not in result.failures]
    members = snapshots.groupby("update_date")["code"].count()
    report.preview = snapshots.head(runtime.PREVIEW_ROWS)
    report.extra.update(
        {
            **plan,
            "sample_days_asked": len(days),
            "first_day_asked": days[0].isoformat() if days else "",
            "last_day_asked": days[-1].isoformat() if days else "",
            "snapshots": len(members),
            "members_per_snapshot": {d.date().isoformat(): int(n) for d, n in members.items()},
            "empty_answers": empty,
        }
    )
    if empty:
        job.log.warning(
            f"[{job.name}] BaoStock listed no constituents on {len(empty)} of {len(days)} days "
            f"asked (e.g. {', '.join(empty[:5])})"
        )
    fail_if_mostly_failed(job, result.requested, result.failures)
    return report


async def _sample_plan(job: RawJob) -> tuple[list[dt.date], dict[str, Any]]:
    """The days to ask, and why: all sample days when nothing is stored (or no sync completed),
    else those whose answer can be new since the last complete sync (the day sync_state holds:
    the raw asset records it when a sync ends without a failed request)."""
    settings = job.settings
    published = latest_published_day(job.calendar, settings.daily_run_time)
    if published is None or published < settings.start_date:
        raise SyncError(
            f"{job.name}: no trading day from STOCK_PIPELINE_START_DATE {settings.start_date} "
            f"is published yet (the latest is {published}): nothing to ask BaoStock for"
        )
    sessions = job.calendar.sessions_between(settings.start_date, published)
    stored = await job.wh.copy_pool.fetchrow(
        f"SELECT count(*) AS rows, min(update_date) AS first FROM {job.name}"
    )
    through = None
    if stored["rows"]:
        through = (await store.read_sync_dates(job.wh, job.name, [""])).get("")
    days = snapshot_sample_days(sessions, asked_through=through, first_stored=stored["first"])
    plan = {
        "full_rebuild": through is None,
        "synced_through": str(through) if through else "",
        "latest_published_day": published.isoformat(),
    }
    return days, plan
