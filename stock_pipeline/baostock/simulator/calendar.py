"""The simulator's exchange calendar: the real SSE sessions where they are known, rules after.

From 1990-12-19 to the end of the bundled XSHG calendar (`stock_pipeline.calendar`, today
2026-12-31) the simulator opens exactly on the Shanghai exchange's sessions, so its
query_trade_dates agrees with BaoStock's. Outside that span (2027 on, and before the exchange
opened) the calendar is generated: weekends are closed, and so are the statutory holidays: New
Year, Spring Festival (7 days from New Year's Eve), Qingming, Labour Day, Dragon Boat,
Mid-Autumn and National Day (Oct 1-7), the lunar ones approximated from the Spring Festival
date. Realistic gaps, not a forecast of the State Council's schedule.

Every open/closed flag from 1900 to 2199 is computed once, on first use, into a byte table:
`is_trading_day` is one index, ranges are one slice.
"""

from __future__ import annotations

from datetime import date, timedelta
from functools import lru_cache

import numpy as np

from stock_pipeline.calendar import SSE_FIRST_SESSION, bundled_calendar

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

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()  # datetime64[D] counts days from here
_TABLE_FIRST = date(1900, 1, 1).toordinal()
_TABLE_END = date(2200, 1, 1).toordinal()  # exclusive


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


@lru_cache(maxsize=512)
def holidays(year: int) -> frozenset[date]:
    """The generated holidays of `year` (weekdays and weekends alike), used outside the span
    the bundled XSHG calendar covers."""
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


def _generated_flags(lo: int, hi: int) -> np.ndarray:
    """Open flags of ordinals [lo, hi) by the rules alone."""
    if hi <= lo:
        return np.zeros(0, dtype=bool)
    first, last = date.fromordinal(lo), date.fromordinal(hi - 1)
    closed = [d for year in range(first.year, last.year + 1) for d in holidays(year)]
    days = np.arange(lo - _EPOCH_ORDINAL, hi - _EPOCH_ORDINAL).astype("datetime64[D]")
    return np.is_busday(days, holidays=np.array(closed, dtype="datetime64[D]"))


@lru_cache(maxsize=1)
def _table() -> tuple[np.ndarray, bytes]:
    """Open flags of every day of [1900, 2200): real sessions where bundled, rules elsewhere."""
    flags = _generated_flags(_TABLE_FIRST, _TABLE_END)
    bundled = bundled_calendar()
    real_lo = SSE_FIRST_SESSION.toordinal() - _TABLE_FIRST
    real_hi = bundled.last_day.toordinal() + 1 - _TABLE_FIRST
    flags[real_lo:real_hi] = False
    flags[bundled.sessions.astype(np.int64) + (_EPOCH_ORDINAL - _TABLE_FIRST)] = True
    flags.flags.writeable = False
    return flags, flags.tobytes()


def open_flags(start: date, end: date) -> np.ndarray:
    """One bool per calendar day of [start, end]: True where the exchange is open."""
    lo, hi = start.toordinal(), end.toordinal() + 1
    if hi <= lo:
        return np.zeros(0, dtype=bool)
    flags, _ = _table()
    if lo >= _TABLE_FIRST and hi <= _TABLE_END:
        return flags[lo - _TABLE_FIRST : hi - _TABLE_FIRST]
    inner_lo, inner_hi = max(lo, _TABLE_FIRST), min(hi, _TABLE_END)
    return np.concatenate(
        [
            _generated_flags(lo, min(hi, _TABLE_FIRST)),
            flags[inner_lo - _TABLE_FIRST : max(inner_lo, inner_hi) - _TABLE_FIRST],
            _generated_flags(max(lo, _TABLE_END), hi),
        ]
    )


def is_trading_day(day: date) -> bool:
    """True when the exchange is open on `day`."""
    i = day.toordinal() - _TABLE_FIRST
    if 0 <= i < _TABLE_END - _TABLE_FIRST:
        return _table()[1][i] == 1
    return bool(open_flags(day, day)[0])


def trading_day_ordinals(start: date, end: date) -> np.ndarray:
    """Trading days in [start, end] as sorted int64 proleptic ordinals (date.toordinal())."""
    return np.flatnonzero(open_flags(start, end)).astype(np.int64) + start.toordinal()


def trading_day_array(start: date, end: date) -> np.ndarray:
    """Trading days in [start, end] as a sorted numpy datetime64[D] array."""
    return (trading_day_ordinals(start, end) - _EPOCH_ORDINAL).astype("datetime64[D]")


def trading_days_between(start: date, end: date) -> list[date]:
    """Trading days in [start, end], in order."""
    return trading_day_array(start, end).tolist()
