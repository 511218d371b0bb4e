"""Trading-day partitions: one per SSE session, Asia/Shanghai, from the configured start date.

Weekends are excluded by cron and weekday holidays by date, which keeps Dagster's time windows
(each key's window is [D, D+1) Shanghai time), time-window dependency mapping and single-run
ranges working. A weekday-only cron (`0 0 * * 1-5`) is avoided on purpose: it makes Friday's
window run to Monday (dagster#17464).

`end_offset=1`: day D's partition exists from D 00:00 Shanghai, so the daily schedule can request
it at 17:30 the same day (without it, D would exist only from D+1 00:00). Its cost: on a weekend
or holiday the newest key is the NEXT trading day (dagster#33551). The schedule is built with
`build_schedule_from_partitioned_job`, whose guard skips such a key; the integrity sensor works
from `latest_published_day`, and the raw assets refuse a day BaoStock has not published yet. The
set ends where the known calendar ends (see calendar.py): no partition ever exists for a day not
yet known to be a trading day.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg

from stock_pipeline.calendar import NotATradingDayError, TradingCalendar

TIMEZONE = "Asia/Shanghai"
SHANGHAI = ZoneInfo(TIMEZONE)
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
        end_offset=1,
        exclusions=[*WEEKENDS, *(dt.datetime(d.year, d.month, d.day) for d in holidays)],
    )


def partition_day(key: str) -> dt.date:
    return dt.datetime.strptime(key, DATE_FORMAT).date()


def shanghai_now() -> dt.datetime:
    return dt.datetime.now(SHANGHAI)


def latest_published_day(
    calendar: TradingCalendar, publish_time: dt.time, now: dt.datetime | None = None
) -> dt.date | None:
    """The latest trading day BaoStock has published at `now`: today from `publish_time`
    (Shanghai) on a trading day, else the trading day before (None before the calendar)."""
    now = (now or shanghai_now()).astimezone(SHANGHAI)
    today = now.date()
    if calendar.is_session(today) and now.time() >= publish_time:
        return today
    return calendar.previous_session(today)


def require_published(calendar: TradingCalendar, last_day: dt.date, publish_time: dt.time) -> None:
    """Refuse a range reaching past what BaoStock has published: its bars would be missing,
    and a run would store an empty day."""
    published = latest_published_day(calendar, publish_time)
    if published is None or last_day > published:
        raise NotPublishedError(
            f"{last_day} is not published yet: BaoStock publishes a trading day's data after "
            f"{publish_time:%H:%M} Asia/Shanghai (STOCK_PIPELINE_DAILY_RUN_TIME); the latest "
            f"published day is {published}. Run it after that time, or pick an earlier range."
        )


class NotPublishedError(ValueError):
    """A partition for a day whose data BaoStock has not published yet."""
