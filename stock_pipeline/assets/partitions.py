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
from dataclasses import dataclass
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


# ---------------------------------------------------------------------------------------------
# The slower groups' partitions (P1, P2, P5). Time windows in Shanghai time, so ranges, the
# latest window and single-run backfills work as for trading days.

# Quarterly BaoStock statements start in 2007 (the simulator and the real service agree).
FIRST_STATEMENT_YEAR = 2007


def build_statement_period_partitions(start: dt.date) -> dg.TimeWindowPartitionsDefinition:
    """One partition per statement period (quarter), keyed by its FIRST day: "2025-10-01" is
    2025Q4, stat_date 2025-12-31. A period's partition exists once the period has ended; its
    reports arrive over the following months (see automation/cadence.py for the re-fetch)."""
    first = dt.date(max(start.year, FIRST_STATEMENT_YEAR), 1, 1)
    return dg.TimeWindowPartitionsDefinition(
        start=first.strftime(DATE_FORMAT),
        cron_schedule="0 0 1 1,4,7,10 *",
        timezone=TIMEZONE,
        fmt=DATE_FORMAT,
    )


def build_year_partitions(start: dt.date) -> dg.TimeWindowPartitionsDefinition:
    """One partition per calendar year (dividend plans by announcement year, express and
    forecast reports by publication date); the current year exists (end_offset=1), since its
    announcements arrive during it."""
    return dg.TimeWindowPartitionsDefinition(
        start=dt.date(start.year, 1, 1).strftime(DATE_FORMAT),
        cron_schedule="0 0 1 1 *",
        timezone=TIMEZONE,
        fmt=DATE_FORMAT,
        end_offset=1,
    )


def build_week_partitions(start: dt.date) -> dg.WeeklyPartitionsDefinition:
    """One partition per week, Monday to Sunday (weekly bars are dated by the week's last
    trading day); a week exists once it has ended."""
    monday = start - dt.timedelta(days=start.weekday())
    return dg.WeeklyPartitionsDefinition(
        start_date=monday.strftime(DATE_FORMAT),
        day_offset=1,
        timezone=TIMEZONE,
        fmt=DATE_FORMAT,
    )


def build_month_partitions(start: dt.date) -> dg.MonthlyPartitionsDefinition:
    """One partition per calendar month, keyed by its first day; it exists once it has ended."""
    return dg.MonthlyPartitionsDefinition(
        start_date=dt.date(start.year, start.month, 1).strftime(DATE_FORMAT),
        timezone=TIMEZONE,
        fmt=DATE_FORMAT,
    )


def statement_period(key: str) -> tuple[int, int]:
    """(year, quarter) of a statement-period key ("2025-10-01" -> (2025, 4))."""
    first = partition_day(key)
    if first.day != 1 or first.month not in (1, 4, 7, 10):
        raise ValueError(f"{key!r} is not a statement-period key (the first day of a quarter)")
    return first.year, (first.month - 1) // 3 + 1


def period_key(year: int, quarter: int) -> str:
    return dt.date(year, 3 * quarter - 2, 1).strftime(DATE_FORMAT)


@dataclass(frozen=True)
class Partitions:
    """Every partitions definition of the code location, by kind (raw/job.py PARTITION_KINDS)."""

    day: dg.PartitionsDefinition
    quarter: dg.TimeWindowPartitionsDefinition
    year: dg.TimeWindowPartitionsDefinition
    week: dg.TimeWindowPartitionsDefinition
    month: dg.TimeWindowPartitionsDefinition

    @property
    def by_kind(self) -> dict[str, dg.PartitionsDefinition]:
        return {
            "day": self.day,
            "quarter": self.quarter,
            "year": self.year,
            "week": self.week,
            "month": self.month,
        }


def build_partitions(calendar: TradingCalendar, start: dt.date) -> Partitions:
    return Partitions(
        day=build_trading_day_partitions(calendar, start),
        quarter=build_statement_period_partitions(start),
        year=build_year_partitions(start),
        week=build_week_partitions(start),
        month=build_month_partitions(start),
    )
