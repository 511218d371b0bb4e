"""Automation: what runs the graph without anyone at the keyboard. The daily schedule
(daily.py), the integrity-gap sensor (integrity.py, with the gap rules in gaps.py) and the
freshness the daily assets declare."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from stock_pipeline.automation.daily import (
    DAILY_ASSETS,
    build_daily_job,
    build_daily_schedule,
    daily_freshness,
)
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
    calendar: TradingCalendar, partitions: dg.PartitionsDefinition, settings: Settings
) -> Automation:
    daily_job = build_daily_job(partitions)
    freshness = daily_freshness(settings)
    return Automation(
        jobs=[daily_job],
        schedules=[build_daily_schedule(daily_job, settings)],
        sensors=[build_integrity_sensor(calendar, settings, daily_job.name)],
        freshness={asset: freshness for asset in DAILY_ASSETS},
    )
