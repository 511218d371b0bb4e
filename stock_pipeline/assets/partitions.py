"""Trading-day partitions: one per SSE session, Asia/Shanghai, from the configured start date.

Weekends are excluded by cron and weekday holidays by date, which keeps Dagster's time windows
(each key's window is [D, D+1) Shanghai time), time-window dependency mapping and single-run
ranges working. Two traps avoided on purpose: a weekday-only cron (`0 0 * * 1-5`) makes
Friday's window run to Monday (dagster#17464), and `end_offset=1` yields a future partition on
holidays (dagster#33551). The set ends where the known calendar ends (see calendar.py): no
partition ever exists for a day not yet known to be a trading day.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from stock_pipeline.calendar import NotATradingDayError, TradingCalendar

TIMEZONE = "Asia/Shanghai"
DATE_FORMAT = "%Y-%m-%d"
WEEKENDS = ("0 0 * * 6", "0 0 * * 0")


def build_trading_day_partitions(
    calendar: TradingCalendar, start: dt.date
) -> dg.DailyPartitionsDefinition:
    """Daily partitions whose keys are exactly the calendar's sessions from `start` on."""
    first = calendar.first_session_on_or_after(start)
    if first is None:
        raise NotATradingDayError(
            f"STOCK_PIPELINE_START_DATE {start} is past the known trading calendar "
            f"(it ends {calendar.last_day})"
        )
    holidays = calendar.closed_weekdays(first, calendar.last_day)
    return dg.DailyPartitionsDefinition(
        start_date=first.strftime(DATE_FORMAT),
        end_date=(calendar.last_day + dt.timedelta(days=1)).strftime(DATE_FORMAT),
        timezone=TIMEZONE,
        fmt=DATE_FORMAT,
        exclusions=[*WEEKENDS, *(dt.datetime(d.year, d.month, d.day) for d in holidays)],
    )


def partition_day(key: str) -> dt.date:
    return dt.datetime.strptime(key, DATE_FORMAT).date()
