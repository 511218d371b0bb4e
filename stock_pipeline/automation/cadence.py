"""Jobs and schedules of the slower groups, each on its own cadence (Asia/Shanghai):

- financials (p1), Saturdays 09:00: one ranged run over the statement periods still unsettled
  during the past week. A period's reports arrive until its legal deadline (annual reports by
  April 30), and corrections come after; it is re-fetched every week until its deadline plus a
  grace has passed (STOCK_PIPELINE_FINANCE_GRACE_DAYS), then once more, then left alone;
- corporate actions and reports (p2), Saturdays 09:30: the year(s) of the past week;
- constituents and industries (p3, p4 snapshots), Saturdays 10:00 (BaoStock refreshes them
  weekly; the assets ask only for what is new);
- weekly bars (p5), Mondays 08:00: the week that ended (Monday-Sunday); monthly bars, the 1st
  at 08:00: the month that ended; macro series, the 16th at 08:00 (money supply is out
  mid-month).

Index daily bars run with the daily job (automation/daily.py).
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from stock_pipeline.assets.partitions import SHANGHAI, TIMEZONE, Partitions, period_key
from stock_pipeline.automation.gaps import INDEX_DAILY_ASSETS
from stock_pipeline.periods import quarter_end, settled
from stock_pipeline.settings import Settings

FINANCIALS_JOB, FINANCIALS_SCHEDULE = "financials_job", "financials_schedule"
CORPORATE_JOB, CORPORATE_SCHEDULE = "corporate_actions_job", "corporate_actions_schedule"
SNAPSHOTS_JOB, SNAPSHOTS_SCHEDULE = "snapshots_job", "snapshots_schedule"
WEEKLY_BARS_JOB, WEEKLY_BARS_SCHEDULE = "weekly_bars_job", "weekly_bars_schedule"
MONTHLY_BARS_JOB, MONTHLY_BARS_SCHEDULE = "monthly_bars_job", "monthly_bars_schedule"
MACRO_JOB, MACRO_SCHEDULE = "macro_job", "macro_schedule"

# Dagster selection strings of the slower groups' runs (the CLI's --select syntax).
FINANCIALS_SELECTION = "group:p1"
CORPORATE_SELECTION = "group:p2"
WEEKLY_SELECTION = "key:raw_k_weekly"
MONTHLY_SELECTION = "key:raw_k_monthly"
INDEX_DAILY_SELECTION = "key:raw_index_daily or key:index_daily"
UNPARTITIONED_SELECTION = (
    "(group:p3 and not key:raw_index_daily and not key:index_daily) or group:p4 or "
    "(group:p5 and not key:raw_k_weekly and not key:raw_k_monthly)"
)

WEEKLY_BAR_ASSETS = ("raw_k_weekly",)
MONTHLY_BAR_ASSETS = ("raw_k_monthly",)
# Dagster's own range tags (as the integrity sensor uses them).
RANGE_START, RANGE_END = ASSET_PARTITION_RANGE_START_TAG, ASSET_PARTITION_RANGE_END_TAG


def unsettled_periods(
    today: dt.date, grace_days: int, since: dt.date | None = None
) -> list[tuple[int, int]]:
    """Ended periods still unsettled on some day of [since, today] (deadline + grace not yet
    past on `since`), oldest first; `since` defaults to today."""
    since = since or today
    out = []
    for year, quarter in _ended_periods(today, back_years=2):
        if not settled(year, quarter, since, grace_days):
            out.append((year, quarter))
    return out


def _ended_periods(today: dt.date, back_years: int) -> Iterator[tuple[int, int]]:
    for year in range(today.year - back_years, today.year + 1):
        for quarter in (1, 2, 3, 4):
            if quarter_end(year, quarter) < today:
                yield year, quarter


def _ranged(job: str, keys: Sequence[str], key: str) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=key, job_name=job, tags={RANGE_START: keys[0], RANGE_END: keys[-1]}
    )


def _shanghai(context: dg.ScheduleEvaluationContext) -> dt.date:
    moment = context.scheduled_execution_time or dt.datetime.now(SHANGHAI)
    return moment.astimezone(SHANGHAI).date()


def build_financials_schedule(partitions: Partitions, settings: Settings) -> dg.ScheduleDefinition:
    existing = set(partitions.quarter.get_partition_keys())
    grace = settings.finance_grace_days

    @dg.schedule(
        name=FINANCIALS_SCHEDULE,
        job_name=FINANCIALS_JOB,
        cron_schedule="0 9 * * 6",
        execution_timezone=TIMEZONE,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Saturdays 09:00: re-fetch the statement periods unsettled during the past "
        f"week (deadline + {grace} days), as one ranged run of {FINANCIALS_JOB}.",
    )
    def financials_schedule(context: dg.ScheduleEvaluationContext):
        today = _shanghai(context)
        periods = unsettled_periods(today, grace, since=today - dt.timedelta(days=7))
        keys = [period_key(y, q) for y, q in periods if period_key(y, q) in existing]
        if not keys:
            return dg.SkipReason("no statement period is unsettled")
        return _ranged(FINANCIALS_JOB, keys, f"financials-{today}")

    return financials_schedule


def build_corporate_schedule(partitions: Partitions) -> dg.ScheduleDefinition:
    existing = set(partitions.year.get_partition_keys())

    @dg.schedule(
        name=CORPORATE_SCHEDULE,
        job_name=CORPORATE_JOB,
        cron_schedule="30 9 * * 6",
        execution_timezone=TIMEZONE,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Saturdays 09:30: dividend plans, express and forecast reports of the "
        "year(s) of the past week.",
    )
    def corporate_actions_schedule(context: dg.ScheduleEvaluationContext):
        today = _shanghai(context)
        years = sorted({(today - dt.timedelta(days=7)).year, today.year})
        keys = [f"{y}-01-01" for y in years if f"{y}-01-01" in existing]
        if not keys:
            return dg.SkipReason(f"no year partition for {years}")
        return _ranged(CORPORATE_JOB, keys, f"corporate-{today}")

    return corporate_actions_schedule


def build_cadence(partitions: Partitions, settings: Settings) -> tuple[list, list]:
    """The jobs and schedules of P1, P2, the P3/P4 snapshots and P5."""
    p1 = dg.AssetSelection.groups("p1")
    p2 = dg.AssetSelection.groups("p2")
    weekly = dg.AssetSelection.assets(*WEEKLY_BAR_ASSETS)
    monthly = dg.AssetSelection.assets(*MONTHLY_BAR_ASSETS)
    snapshots = dg.AssetSelection.groups("p3", "p4") - dg.AssetSelection.assets(*INDEX_DAILY_ASSETS)
    macro = dg.AssetSelection.groups("p5") - weekly - monthly
    with warnings.catch_warnings():
        # partitions_def is deprecated, but only a job that carries it gets the guard of
        # build_schedule_from_partitioned_job (see automation/daily.py).
        warnings.simplefilter("ignore", DeprecationWarning)
        jobs = [
            dg.define_asset_job(FINANCIALS_JOB, selection=p1, partitions_def=partitions.quarter),
            dg.define_asset_job(CORPORATE_JOB, selection=p2, partitions_def=partitions.year),
            dg.define_asset_job(SNAPSHOTS_JOB, selection=snapshots),
            dg.define_asset_job(WEEKLY_BARS_JOB, selection=weekly, partitions_def=partitions.week),
            dg.define_asset_job(
                MONTHLY_BARS_JOB, selection=monthly, partitions_def=partitions.month
            ),
            dg.define_asset_job(MACRO_JOB, selection=macro),
        ]
    by_name = {job.name: job for job in jobs}
    running = dg.DefaultScheduleStatus.RUNNING
    schedules = [
        build_financials_schedule(partitions, settings),
        build_corporate_schedule(partitions),
        dg.ScheduleDefinition(
            name=SNAPSHOTS_SCHEDULE,
            job=by_name[SNAPSHOTS_JOB],
            cron_schedule="0 10 * * 6",
            execution_timezone=TIMEZONE,
            default_status=running,
            description="Saturdays 10:00: new index-constituent and industry snapshots.",
        ),
        dg.build_schedule_from_partitioned_job(
            by_name[WEEKLY_BARS_JOB],
            name=WEEKLY_BARS_SCHEDULE,
            day_of_week=1,
            hour_of_day=8,
            default_status=running,
            description="Mondays 08:00: the weekly bars of the week that ended.",
        ),
        dg.build_schedule_from_partitioned_job(
            by_name[MONTHLY_BARS_JOB],
            name=MONTHLY_BARS_SCHEDULE,
            day_of_month=1,
            hour_of_day=8,
            default_status=running,
            description="The 1st at 08:00: the monthly bars of the month that ended.",
        ),
        dg.ScheduleDefinition(
            name=MACRO_SCHEDULE,
            job=by_name[MACRO_JOB],
            cron_schedule="0 8 16 * *",
            execution_timezone=TIMEZONE,
            default_status=running,
            description="The 16th at 08:00: the macro series (money supply is out mid-month).",
        ),
    ]
    return jobs, schedules


@dataclass(frozen=True)
class GroupRun:
    """One run of a slower group: what to select and which partition keys (None: unpartitioned)."""

    title: str
    selection: str
    keys: tuple[str, str] | None


def covering_runs(
    partitions: Partitions, start: dt.date, end: dt.date, statements_back_days: int = 180
) -> list[GroupRun]:
    """The slower groups' runs for the days [start, end]: the statement periods that ended in
    it (and `statements_back_days` before: statements come months after their period), its
    years, the weeks and months wholly inside it, and the unpartitioned snapshots and macro."""
    runs = []
    for title, selection, definition, lo in (
        ("financial statements", FINANCIALS_SELECTION, partitions.quarter,
         start - dt.timedelta(days=statements_back_days)),
        ("dividends, express and forecast reports", CORPORATE_SELECTION, partitions.year, None),
        ("weekly bars", WEEKLY_SELECTION, partitions.week, start),
        ("monthly bars", MONTHLY_SELECTION, partitions.month, start),
    ):  # fmt: skip
        keys = _keys_within(definition, lo, end) if lo else _keys_touching(definition, start, end)
        if keys:
            runs.append(GroupRun(f"{title} {keys[0]}..{keys[-1]}", selection, (keys[0], keys[-1])))
    runs.append(GroupRun("index members, industries, macro series", UNPARTITIONED_SELECTION, None))
    return runs


def _windows(
    definition: dg.TimeWindowPartitionsDefinition,
) -> Iterator[tuple[str, dt.date, dt.date]]:
    for key in definition.get_partition_keys():
        window = definition.time_window_for_partition_key(key)
        first = window.start.astimezone(SHANGHAI).date()
        last = window.end.astimezone(SHANGHAI).date() - dt.timedelta(days=1)
        yield key, first, last


def _keys_within(
    definition: dg.TimeWindowPartitionsDefinition, start: dt.date, end: dt.date
) -> list[str]:
    return [k for k, first, last in _windows(definition) if start <= first and last <= end]


def _keys_touching(
    definition: dg.TimeWindowPartitionsDefinition, start: dt.date, end: dt.date
) -> list[str]:
    return [k for k, first, last in _windows(definition) if first <= end and last >= start]
