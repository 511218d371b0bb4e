"""A deterministic Chinese exchange calendar (pure, no I/O).

Weekends are closed, and so are the statutory holidays: New Year, Spring Festival (7 days from
New Year's Eve), Qingming, Labour Day, Dragon Boat, Mid-Autumn and National Day (Oct 1-7).
Lunar holidays are approximated from the Spring Festival date; that is close enough for a
simulator whose job is to have realistic gaps, not to match the real calendar day for day.
"""

from __future__ import annotations

from datetime import date, timedelta
from functools import lru_cache

import numpy as np

# Lunar New Year (Spring Festival) dates; outside this table the date is approximated.
_SPRING_FESTIVAL = {
    1990: (1, 27), 1991: (2, 15), 1992: (2, 4), 1993: (1, 23), 1994: (2, 10), 1995: (1, 31),
    1996: (2, 19), 1997: (2, 7), 1998: (1, 28), 1999: (2, 16), 2000: (2, 5), 2001: (1, 24),
    2002: (2, 12), 2003: (2, 1), 2004: (1, 22), 2005: (2, 9), 2006: (1, 29), 2007: (2, 18),
    2008: (2, 7), 2009: (1, 26), 2010: (2, 14), 2011: (2, 3), 2012: (1, 23), 2013: (2, 10),
    2014: (1, 31), 2015: (2, 19), 2016: (2, 8), 2017: (1, 28), 2018: (2, 16), 2019: (2, 5),
    2020: (1, 25), 2021: (2, 12), 2022: (2, 1), 2023: (1, 22), 2024: (2, 10), 2025: (1, 29),
    2026: (2, 17), 2027: (2, 6), 2028: (1, 26), 2029: (2, 13), 2030: (2, 3), 2031: (1, 23),
    2032: (2, 11), 2033: (1, 31), 2034: (2, 19), 2035: (2, 8),
}  # fmt: skip

# Lunar month length: Dragon Boat is the 5th day of the 5th month, Mid-Autumn the 15th of the 8th.
_LUNAR_MONTH = 29.53


def spring_festival(year: int) -> date:
    """Lunar New Year's Day of `year` (table lookup, approximated outside 1990-2035)."""
    if year in _SPRING_FESTIVAL:
        return date(year, *_SPRING_FESTIVAL[year])
    # The date drifts ~11 days a year and jumps back ~30 in leap-month years; cycle of 19 years.
    anchor = 1990 + (year - 1990) % 19
    return date(year, *_SPRING_FESTIVAL[anchor])


def _single_day_block(day: date) -> set[date]:
    """A one-day holiday plus the bridge day the State Council usually grants."""
    weekday = day.weekday()
    if weekday == 1:  # Tuesday: Monday is bridged
        return {day, day - timedelta(days=1)}
    if weekday == 3:  # Thursday: Friday is bridged
        return {day, day + timedelta(days=1)}
    if weekday in (5, 6):  # on a weekend: the following Monday is off
        return {day, day + timedelta(days=7 - weekday)}
    return {day}


def _span(first: date, days: int) -> set[date]:
    return {first + timedelta(days=i) for i in range(days)}


@lru_cache(maxsize=256)
def holidays(year: int) -> frozenset[date]:
    """Exchange holidays of `year` (weekdays and weekends alike)."""
    out: set[date] = set()
    out |= _single_day_block(date(year, 1, 1))
    sf = spring_festival(year)
    out |= _span(sf - timedelta(days=1), 7)
    if year < 2008:
        out |= _span(date(year, 5, 1), 7)
    else:
        qingming = date(year, 4, 4 if year % 4 in (0, 1) else 5)
        out |= _single_day_block(qingming)
        out |= _span(date(year, 5, 1), 5 if year >= 2020 else 3)
        out |= _single_day_block(sf + timedelta(days=round(4 * _LUNAR_MONTH + 4)))
        out |= _single_day_block(sf + timedelta(days=round(7 * _LUNAR_MONTH + 14)))
    out |= _span(date(year, 10, 1), 7)
    return frozenset(out)


def is_trading_day(day: date) -> bool:
    """True when the exchanges are open on `day`."""
    return day.weekday() < 5 and day not in holidays(day.year)


def trading_days_between(start: date, end: date) -> list[date]:
    """Trading days in [start, end], in order."""
    out = []
    day = start
    one = timedelta(days=1)
    while day <= end:
        if is_trading_day(day):
            out.append(day)
        day += one
    return out


def trading_day_array(start: date, end: date) -> np.ndarray:
    """Trading days in [start, end] as a sorted numpy datetime64[D] array."""
    return np.array(trading_days_between(start, end), dtype="datetime64[D]")
