"""The daily run: one job over the whole daily graph, its schedule, and the freshness the daily
assets promise.

After the close on every trading day (STOCK_PIPELINE_DAILY_RUN_TIME, 17:30 Asia/Shanghai by
default, when BaoStock has published the day) the schedule requests that day's partition of
`daily_job`: the calendar and listings, raw bars and factors, stock_daily, technical_daily, the
cache, and the index bars of P3. It is built with `build_schedule_from_partitioned_job`: it
fires every day at that time, and its guard skips a day whose partition does not exist yet, so
weekends and holidays produce no run (partitions.py). The slower groups have jobs and schedules
of their own cadence (automation/cadence.py).
"""

from __future__ import annotations

import datetime as dt
import warnings

import dagster as dg

from stock_pipeline.assets.partitions import TIMEZONE
from stock_pipeline.automation.gaps import DAILY_ASSETS, INDEX_DAILY_ASSETS, REFERENCE_ASSETS
from stock_pipeline.settings import Settings

DAILY_JOB = "daily_job"
DAILY_SCHEDULE = "daily_schedule"


def build_daily_job(partitions: dg.PartitionsDefinition) -> dg.UnresolvedAssetJobDefinition:
    """Trading-day partitions; the references run with every day.

    `partitions_def` is deprecated (Dagster infers it from the assets), but only a job that
    carries it gets the schedule guard that skips weekends and holidays: without it
    `build_schedule_from_partitioned_job` resolves late, unguarded, and requested Monday's
    partition on Saturday (tested).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return _define_daily_job(partitions)


def _define_daily_job(partitions: dg.PartitionsDefinition) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        DAILY_JOB,
        partitions_def=partitions,
        selection=dg.AssetSelection.assets(*REFERENCE_ASSETS, *DAILY_ASSETS, *INDEX_DAILY_ASSETS),
        description="One trading day (or a range) of the daily graph: listings and calendar, "
        "raw bars and factors -> stock_daily -> technical_daily -> the Redis cache; the "
        "index bars (P3).",
    )


def build_daily_schedule(
    job: dg.UnresolvedAssetJobDefinition, settings: Settings
) -> dg.UnresolvedPartitionedAssetScheduleDefinition:
    at = settings.daily_run_time
    return dg.build_schedule_from_partitioned_job(
        job,
        name=DAILY_SCHEDULE,
        hour_of_day=at.hour,
        minute_of_hour=at.minute,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Every trading day at {at:%H:%M} {TIMEZONE}: that day's partition of "
        f"{DAILY_JOB}; no run on weekends and holidays.",
    )


def daily_freshness(settings: Settings) -> dg.FreshnessPolicy:
    """Due by the deadline on weekdays: materialized between the daily run time and then.

    Dagster's cron knows no exchange calendar: on a weekday holiday the daily assets show as
    overdue until the next trading day's run; `stock-pipeline status` judges by the calendar.
    """
    deadline, run_at = settings.freshness_deadline, settings.daily_run_time
    window = dt.datetime.combine(dt.date.min, deadline) - dt.datetime.combine(dt.date.min, run_at)
    return dg.FreshnessPolicy.cron(
        deadline_cron=f"{deadline.minute} {deadline.hour} * * 1-5",
        lower_bound_delta=window,
        timezone=TIMEZONE,
    )
