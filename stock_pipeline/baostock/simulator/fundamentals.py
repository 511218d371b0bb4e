"""Quarterly financial statements of one synthetic company (pure, no I/O).

One `Fundamentals` holds a stock's quarterly revenue, profit, balance sheet and cash flow, plus the
date each quarter's report was published. The six quarterly BaoStock APIs, the express and
forecast reports and the daily valuation ratios (peTTM, pbMRQ, ...) are all derived from it, so
they agree with each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

import numpy as np

from .calendar import trading_day_ordinals

# Seasonality of quarterly revenue (Q4 is usually the biggest quarter in China).
_SEASON = np.array([0.92, 1.02, 0.98, 1.08])
# Earliest statement BaoStock serves.
FIRST_STATEMENT_YEAR = 2007


def quarter_end(year: int, quarter: int) -> date:
    return date(year, 3 * quarter, 31 if quarter in (1, 4) else 30)


def _deadline_window(year: int, quarter: int) -> tuple[date, date]:
    """Earliest and latest publication dates of a quarter's report (CSRC deadlines)."""
    if quarter == 1:
        return date(year, 4, 8), date(year, 4, 30)
    if quarter == 2:
        return date(year, 7, 15), date(year, 8, 31)
    if quarter == 3:
        return date(year, 10, 10), date(year, 10, 31)
    return date(year + 1, 1, 15), date(year + 1, 4, 30)


# Report ids (year * 4 + quarter - 1) covered by publication tables: 1990 Q1 .. 2049 Q4.
REPORT_ID_BASE = 1990 * 4
REPORT_ID_SPAN = 60 * 4


@lru_cache(maxsize=1)
def _publication_windows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per report id: earliest and latest publication ordinals; sorted trading-day ordinals."""
    lo, hi = [], []
    for rid in range(REPORT_ID_SPAN):
        year, quarter = divmod(REPORT_ID_BASE + rid, 4)
        first, last = _deadline_window(year, quarter + 1)
        lo.append(first.toordinal())
        hi.append(last.toordinal())
    first_day = date(REPORT_ID_BASE // 4, 1, 1)
    trading = trading_day_ordinals(first_day, first_day + timedelta(days=365 * 62 - 1))
    return np.array(lo), np.array(hi), trading


def publication_ordinals(lateness: np.ndarray) -> np.ndarray:
    """Publication ordinal of every report id, given each report's lateness in [0, 1].

    Lateness places a report between the earliest usual date and the legal deadline; the date
    moves back to a trading day, and never before the previous report's (an annual report that
    comes late is published together with the next Q1 report).
    """
    lo, hi, trading = _publication_windows()
    wanted = lo + np.round(lateness * (hi - lo)).astype(np.int64)
    snapped = trading[np.searchsorted(trading, wanted, side="right") - 1]
    return np.maximum.accumulate(snapped)


@dataclass(frozen=True)
class Fundamentals:
    """Quarterly statements; arrays are per quarter (flows are for the quarter, not YTD)."""

    years: np.ndarray
    quarters: np.ndarray
    stat_dates: list[date]
    pub_dates: list[date]
    revenue: np.ndarray
    gross_profit: np.ndarray
    net_profit: np.ndarray
    parent_net_profit: np.ndarray
    pretax: np.ndarray
    ebit: np.ndarray
    interest: np.ndarray
    cfo: np.ndarray
    total_assets: np.ndarray
    equity: np.ndarray
    liabilities: np.ndarray
    current_assets: np.ndarray
    current_liabilities: np.ndarray
    inventory: np.ndarray
    receivables: np.ndarray
    cash: np.ndarray
    intangibles: np.ndarray
    total_share: np.ndarray
    liqa_share: np.ndarray

    def __len__(self) -> int:
        return len(self.stat_dates)

    def index_of(self, year: int, quarter: int) -> int | None:
        hit = np.flatnonzero((self.years == year) & (self.quarters == quarter))
        return int(hit[0]) if len(hit) else None

    def ytd(self, values: np.ndarray, i: int) -> float:
        """Year-to-date sum of a flow up to quarter i (how Chinese reports state flows)."""
        q = int(self.quarters[i])
        lo = max(0, i - q + 1)
        return float(values[lo : i + 1].sum())

    def ttm(self, values: np.ndarray, i: int) -> float:
        """Trailing twelve months of a flow ending at quarter i (annualised if history is short)."""
        lo = max(0, i - 3)
        window = values[lo : i + 1]
        return float(window.sum() * 4 / len(window))

    def average(self, values: np.ndarray, i: int) -> float:
        """Average of a stock (balance) between the start and end of quarter i's year-to-date."""
        q = int(self.quarters[i])
        start = i - q
        begin = values[start] if start >= 0 else values[max(0, i - q + 1)]
        return float((begin + values[i]) / 2)


def build_fundamentals(
    rng: np.random.Generator,
    first_year: int,
    last_stat: date,
    shares_at: Callable[[list[date]], tuple[np.ndarray, np.ndarray]],
    pub_date: Callable[[int, int], date],
    scale: float,
) -> Fundamentals:
    """Generate quarterly statements from `first_year` Q1 to the last quarter ending <= last_stat.

    `shares_at(days)` returns (total_share, liqa_share) arrays on those days,
    `pub_date(year, quarter)` the report's publication date; `scale` is annual revenue in yuan.
    """
    years, quarters = [], []
    year, quarter = max(first_year, FIRST_STATEMENT_YEAR), 1
    while quarter_end(year, quarter) <= last_stat:
        years.append(year)
        quarters.append(quarter)
        year, quarter = (year, quarter + 1) if quarter < 4 else (year + 1, 1)
    n = len(years)
    ys, qs = np.array(years, dtype=np.int64), np.array(quarters, dtype=np.int64)
    stat_dates = [quarter_end(y, q) for y, q in zip(years, quarters, strict=True)]

    pub_dates = [pub_date(y, q) for y, q in zip(years, quarters, strict=True)]

    growth = np.cumsum(rng.normal(0.012, 0.05, n))
    revenue = scale / 4 * np.exp(growth) * _SEASON[qs - 1] * np.exp(rng.normal(0, 0.04, n))
    base_margin = rng.normal(0.08, 0.06)
    margin = np.clip(base_margin + np.cumsum(rng.normal(0, 0.01, n)) * 0.5, -0.35, 0.45)
    margin += rng.normal(0, 0.015, n)
    net_profit = revenue * margin
    gross_profit = revenue * np.clip(margin + rng.uniform(0.1, 0.35), 0.03, 0.9)
    tax_burden = rng.uniform(0.75, 0.88)
    int_burden = rng.uniform(0.85, 0.99)
    pretax = net_profit / tax_burden
    ebit = pretax / int_burden
    interest = np.abs(ebit - pretax) + revenue * 0.002
    parent_net_profit = net_profit * rng.uniform(0.85, 1.0)
    cfo = net_profit * rng.normal(1.1, 0.25, n) + revenue * rng.normal(0.0, 0.03, n)

    annual_revenue = revenue * 4
    total_assets = annual_revenue * rng.uniform(1.2, 3.5) * np.exp(rng.normal(0, 0.03, n))
    leverage = np.clip(rng.uniform(0.25, 0.72) + rng.normal(0, 0.02, n), 0.05, 0.95)
    liabilities = total_assets * leverage
    equity = total_assets - liabilities
    current_assets = total_assets * np.clip(
        rng.uniform(0.3, 0.7) + rng.normal(0, 0.02, n), 0.1, 0.95
    )
    current_liabilities = liabilities * rng.uniform(0.5, 0.9)
    inventory = current_assets * rng.uniform(0.1, 0.4)
    receivables = current_assets * rng.uniform(0.1, 0.35)
    cash = current_assets * rng.uniform(0.1, 0.35)
    intangibles = total_assets * rng.uniform(0.01, 0.08)

    total_share, liqa_share = shares_at(stat_dates)
    return Fundamentals(
        years=ys,
        quarters=qs,
        stat_dates=stat_dates,
        pub_dates=pub_dates,
        revenue=revenue,
        gross_profit=gross_profit,
        net_profit=net_profit,
        parent_net_profit=parent_net_profit,
        pretax=pretax,
        ebit=ebit,
        interest=interest,
        cfo=cfo,
        total_assets=total_assets,
        equity=equity,
        liabilities=liabilities,
        current_assets=current_assets,
        current_liabilities=current_liabilities,
        inventory=inventory,
        receivables=receivables,
        cash=cash,
        intangibles=intangibles,
        total_share=total_share,
        liqa_share=liqa_share,
    )
