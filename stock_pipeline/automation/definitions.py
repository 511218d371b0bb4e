"""The automation's Dagster definitions, for the code location: jobs, schedules, sensors and the
freshness policies of the daily assets."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from stock_pipeline.assets.partitions import Partitions
from stock_pipeline.automation.cadence import build_cadence
from stock_pipeline.automation.daily import (
    build_daily_job,
    build_daily_schedule,
    daily_freshness,
)
from stock_pipeline.automation.gaps import DAILY_ASSETS
from stock_pipeline.automation.integrity import build_integrity_sensor
from stock_pipeline.calendar import TradingCalendar
from stock_pipeline.settings import Settings


@dataclass(frozen=True)
class Automation:
    jobs: list
    schedules: list
    sensors: list
    freshness: dict[str, dg.FreshnessPolicy]


def build_automation(
    calendar: TradingCalendar, partitions: Partitions, settings: Settings
) -> Automation:
    daily_job = build_daily_job(partitions.day)
    freshness = daily_freshness(settings)
    cadence_jobs, cadence_schedules = build_cadence(partitions, settings)
    return Automation(
        jobs=[daily_job, *cadence_jobs],
        schedules=[build_daily_schedule(daily_job, settings), *cadence_schedules],
        sensors=[build_integrity_sensor(calendar, settings, daily_job.name)],
        freshness={asset: freshness for asset in DAILY_ASSETS},
    )
