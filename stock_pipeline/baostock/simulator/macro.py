"""Synthetic macro series (pure): benchmark deposit/loan rates, reserve ratios, money supply.

Deterministic per seed. Rate changes come every few months until late 2015, after which the
benchmark rates stay frozen (as the real ones did); reserve ratios keep moving; money supply is
monthly from 2007, published mid next month.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

import numpy as np

from .calendar import is_trading_day

FIRST_MACRO_DATE = date(2007, 1, 1)
RATES_FROZEN_FROM = date(2015, 10, 24)


def _fmt(x: float) -> str:
    return f"{x:.2f}"


@dataclass(frozen=True)
class RateChange:
    pub_date: date
    deposit: tuple[float, ...]  # demand, 3M, 6M, 1Y, 2Y, 3Y, 5Y, installment 1Y/3Y/5Y
    loan: tuple[float, ...]  # 6M, 6M-1Y, 1-3Y, 3-5Y, >5Y, mortgage <=5Y, >5Y


@dataclass(frozen=True)
class ReserveChange:
    pub_date: date
    effective_date: date
    big: tuple[float, float]  # before, after
    medium: tuple[float, float]


@dataclass(frozen=True)
class MoneySupply:
    year: int
    month: int
    m0: float  # 100 million yuan
    m1: float
    m2: float


def _event_dates(rng: np.random.Generator, start: date, end: date, mean_days: int) -> list[date]:
    out, day = [], start
    while True:
        day += timedelta(days=int(rng.integers(mean_days // 2, mean_days * 3 // 2)))
        if day > end:
            return out
        out.append(day)


@lru_cache(maxsize=16)
def rate_changes(seed: int, end: date) -> tuple[RateChange, ...]:
    rng = np.random.default_rng((seed, 0x52415445))
    one_year = 2.52
    out = []
    for day in _event_dates(rng, FIRST_MACRO_DATE, min(end, RATES_FROZEN_FROM), 200):
        one_year = float(np.clip(one_year + rng.choice([-0.27, -0.25, 0.25, 0.27]), 1.5, 4.14))
        deposit = (
            max(0.35, one_year * 0.14),
            one_year * 0.87,
            one_year * 0.93,
            one_year,
            one_year * 1.2,
            one_year * 1.4,
            one_year * 1.5,
            one_year * 0.87,
            one_year * 0.93,
            one_year,
        )
        loan_base = one_year + 2.0
        loan = (
            loan_base * 0.97,
            loan_base,
            loan_base * 1.02,
            loan_base * 1.05,
            loan_base * 1.08,
            loan_base * 0.9,
            loan_base * 0.95,
        )
        out.append(
            RateChange(day, tuple(round(x, 2) for x in deposit), tuple(round(x, 2) for x in loan))
        )
    return tuple(out)


@lru_cache(maxsize=16)
def reserve_changes(seed: int, end: date) -> tuple[ReserveChange, ...]:
    rng = np.random.default_rng((seed, 0x525252))
    big, medium = 9.0, 9.0
    out = []
    for day in _event_dates(rng, FIRST_MACRO_DATE, end, 170):
        # Cuts and hikes in 0.25/0.5 steps, pulled back towards a long-run level so the series
        # never sticks to a bound.
        step = float(rng.choice([-0.5, -0.25, 0.25, 0.5])) + round((13.0 - big) * 0.15 * 4) / 4
        step = step or 0.25
        new_big = float(np.clip(big + step, 6.0, 21.5))
        new_medium = float(np.clip(new_big - 2.0, 4.0, 19.5))
        effective = day + timedelta(days=int(rng.integers(5, 20)))
        while not is_trading_day(effective):
            effective += timedelta(days=1)
        out.append(ReserveChange(day, effective, (big, new_big), (medium, new_medium)))
        big, medium = new_big, new_medium
    return tuple(out)


@lru_cache(maxsize=16)
def money_supply(seed: int, end: date) -> tuple[MoneySupply, ...]:
    """Month-end balances of M0/M1/M2, for months published (15th of next month) by `end`."""
    rng = np.random.default_rng((seed, 0x4D32))
    m0, m1, m2 = 27000.0, 126000.0, 350000.0
    out = []
    year, month = FIRST_MACRO_DATE.year, FIRST_MACRO_DATE.month
    while True:
        publish = date(year + (month == 12), month % 12 + 1, 15)
        if publish > end:
            return tuple(out)
        season = 1.12 if month in (1, 2) else 1.0  # cash demand around Spring Festival
        m0 = m0 * (1 + rng.normal(0.006, 0.01))
        m1 = m1 * (1 + rng.normal(0.008, 0.012))
        m2 = m2 * (1 + rng.normal(0.009, 0.006))
        out.append(MoneySupply(year, month, round(m0 * season, 2), round(m1, 2), round(m2, 2)))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def deposit_rows(seed: int, end: date, lo: date, hi: date) -> list[list[str]]:
    return [
        [c.pub_date.isoformat(), *(_fmt(x) for x in c.deposit)]
        for c in rate_changes(seed, end)
        if lo <= c.pub_date <= hi
    ]


def loan_rows(seed: int, end: date, lo: date, hi: date) -> list[list[str]]:
    return [
        [c.pub_date.isoformat(), *(_fmt(x) for x in c.loan)]
        for c in rate_changes(seed, end)
        if lo <= c.pub_date <= hi
    ]


def reserve_rows(seed: int, end: date, lo: date, hi: date, by_effective: bool) -> list[list[str]]:
    rows = []
    for c in reserve_changes(seed, end):
        key = c.effective_date if by_effective else c.pub_date
        if lo <= key <= hi:
            rows.append(
                [
                    c.pub_date.isoformat(),
                    c.effective_date.isoformat(),
                    _fmt(c.big[0]),
                    _fmt(c.big[1]),
                    _fmt(c.medium[0]),
                    _fmt(c.medium[1]),
                ]
            )
    return rows


def _yoy(values: list[float], i: int, lag: int) -> str:
    return f"{(values[i] / values[i - lag] - 1) * 100:.2f}" if i >= lag else ""


def money_month_rows(
    seed: int, end: date, lo: tuple[int, int], hi: tuple[int, int]
) -> list[list[str]]:
    series = money_supply(seed, end)
    cols = {name: [getattr(s, name) for s in series] for name in ("m0", "m1", "m2")}
    rows = []
    for i, s in enumerate(series):
        if not lo <= (s.year, s.month) <= hi:
            continue
        row = [str(s.year), str(s.month)]
        for name in ("m0", "m1", "m2"):
            row += [_fmt(cols[name][i]), _yoy(cols[name], i, 12), _yoy(cols[name], i, 1)]
        rows.append(row)
    return rows


def money_year_rows(seed: int, end: date, lo: int, hi: int) -> list[list[str]]:
    december = [s for s in money_supply(seed, end) if s.month == 12]
    rows = []
    for i, s in enumerate(december):
        if not lo <= s.year <= hi:
            continue
        row = [str(s.year)]
        for name in ("m0", "m1", "m2"):
            values = [getattr(d, name) for d in december]
            row += [_fmt(values[i]), _yoy(values, i, 1)]
        rows.append(row)
    return rows
